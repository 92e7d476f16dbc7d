# -*- test-case-name: tests.test_dispatch,tests.test_protocol -*-
"""
How L{pyamp_fds.AMP} serves and calls one command type, worked out once per
type rather than on every box: which of Twisted's steps a command leaves as
they are (those L{pyamp_fds.AMP} runs inline, as Twisted runs them) and which
it overrides (those are called, through Twisted's own chain).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.protocols import amp

from pyamp_fds import _twisted

if TYPE_CHECKING:
    from pyamp_fds.protocol import _Framing

__all__ = ["planFor", "newBox", "SettlingCommand"]


# Twisted leaves AMP's commands and dispatcher unannotated: the lines that
# reach them carry a "type: ignore" naming the check that cannot see through
# them.
class SettlingCommand:
    """
    A command whose response, if it fails to serialize, takes back the
    descriptors it queued: how Twisted's own chain answers for
    L{pyamp_fds.AMP}.

    @ivar parsed: whether the box's arguments were parsed already (Twisted's
        chain then takes over from a responder's result).
    """

    def __init__(self, command: type[amp.Command], parsed: bool = False) -> None:
        self._command = command
        self.parsed = parsed

    def parseArguments(self, box: amp.AmpBox, protocol: amp.BinaryBoxProtocol) -> dict[str, Any]:
        if self.parsed:
            return {}
        return self._command.parseArguments(box, protocol)  # type: ignore[no-any-return]

    def makeResponse(self, objects: Mapping[str, Any], protocol: _Framing) -> Any:
        return protocol.serializing(self._command.makeResponse, objects, protocol)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._command, name)

    def __repr__(self) -> str:
        return repr(self._command)


class _CommandPlan:
    """
    How L{pyamp_fds.AMP} serves and calls one command type, worked out once: which of
    Twisted's steps the command leaves as they are (those run inline, as
    Twisted runs them) and which it overrides (those are called).

    @ivar arguments: the argument spec, or C{None} if the command overrides
        C{parseArguments}.
    @ivar response: the response spec, or C{None} if the command overrides
        C{makeResponse}.
    @ivar directCall: whether C{callRemote} may skip making an instance of
        the command: its construction, argument checking and sending are
        Twisted's own.
    """

    def __init__(self, command: type[amp.Command]) -> None:
        self.command = command
        self.arguments: _ArgumentSpec | None
        self.response: _ArgumentSpec | None
        self.arguments = self.response = None
        if _inherits(command, "parseArguments") and _inherits(command, "makeArguments"):
            self.arguments = _spec(command, "arguments")
        if _inherits(command, "makeResponse") and _inherits(command, "parseResponse"):
            self.response = _spec(command, "response")
        self.directCall = (
            self.arguments is not None
            and command.__init__ is amp.Command.__init__
            and not _twisted.overridesDoCommand(command)
        )

    def parseResponse(self, box: amp.AmpBox, proto: amp.BinaryBoxProtocol) -> dict[str, Any]:
        if self.response is not None:
            return self.response.toObjects(box, proto)
        return self.command.parseResponse(box, proto)  # type: ignore[no-any-return]

    def remoteError(self, error: amp.RemoteAmpError) -> Exception:
        """
        What Twisted's C{callRemote} chain makes of a
        L{twisted.protocols.amp.RemoteAmpError}: the command's own exception
        for that code.
        """
        errorType = self.command.reverseErrors.get(error.errorCode, amp.UnknownRemoteError)  # type: ignore[attr-defined]
        return errorType(error.description)  # type: ignore[no-any-return]


def newBox(boxType: type[amp.AmpBox]) -> amp.AmpBox:
    # AmpBox.__init__ only converts str keys: an empty one needs none of it.
    if boxType is amp.AmpBox:
        return amp.AmpBox.__new__(amp.AmpBox)
    return boxType()


def _inherits(command: type[amp.Command], name: str) -> bool:
    return getattr(command, name).__func__ is getattr(amp.Command, name).__func__


_plans: dict[type[amp.Command], _CommandPlan] = {}


def planFor(command: type[amp.Command]) -> _CommandPlan:
    plan = _plans.get(command)
    if plan is None:
        plan = _plans[command] = _CommandPlan(command)
    return plan


class _ArgumentSpec:
    """
    A command's argument list, with what Twisted works out on every call
    worked out once: each wire name's Python name, and which arguments use
    L{twisted.protocols.amp.Argument}'s own C{toBox}/C{fromBox} (those are run inline, exactly
    as Twisted runs them; the others through their own methods).
    """

    def __init__(self, arglist: list[tuple[bytes, amp.Argument]]) -> None:
        self.arglist = arglist
        self.entries: list[tuple[bytes, str, amp.Argument, bool, bool]] = []
        self.required: list[str] = []
        self.allowed: set[str] = set()
        for wireName, argument in arglist:
            pythonName = _twisted.wireNameToPythonIdentifier(wireName)  # type: ignore[no-untyped-call]
            self.allowed.add(pythonName)
            if not argument.optional:
                self.required.append(pythonName)
            kind = type(argument)
            plain = (
                kind.toBox is amp.Argument.toBox
                and kind.fromBox is amp.Argument.fromBox
                and kind.retrieve is amp.Argument.retrieve
            )
            self.entries.append((wireName, pythonName, argument, argument.optional, plain))

    def toStrings(
        self, objects: Mapping[str, Any], strings: amp.AmpBox, proto: amp.BinaryBoxProtocol
    ) -> amp.AmpBox:
        # What Command.makeArguments does, with Argument.toBox inlined.
        objects = dict(objects)
        for wireName, pythonName, argument, optional, plain in self.entries:
            if not plain:
                argument.toBox(wireName, strings, objects, proto)
                continue
            if optional:
                value = objects.pop(pythonName, None)
                if value is None:
                    continue
            else:
                value = objects.pop(pythonName)
            strings[wireName] = argument.toStringProto(value, proto)
        return strings

    def toObjects(
        self, strings: Mapping[bytes, bytes], proto: amp.BinaryBoxProtocol
    ) -> dict[str, Any]:
        # What Command.parseArguments does, with Argument.fromBox inlined.
        objects: dict[str, Any] = {}
        strings = dict(strings)
        for wireName, pythonName, argument, optional, plain in self.entries:
            if not plain:
                argument.fromBox(wireName, strings, objects, proto)
                continue
            if optional:
                value = strings.pop(wireName, None)
                if value is None:
                    objects[pythonName] = None
                    continue
            else:
                value = strings.pop(wireName)
            objects[pythonName] = argument.fromStringProto(value, proto)
        return objects


_specs: dict[tuple[type[amp.Command], str], _ArgumentSpec] = {}


def _spec(commandType: type[amp.Command], which: str) -> _ArgumentSpec:
    key = (commandType, which)
    spec = _specs.get(key)
    if spec is None:
        spec = _specs[key] = _ArgumentSpec(getattr(commandType, which))
    return spec


