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
from pyamp_fds.arguments import Descriptor
from pyamp_fds.codec import MAX_KEY_LENGTH, MAX_VALUE_LENGTH

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
    @ivar callChecked: whether a call's box, made with the argument spec,
        needs no check before it is queued (see L{_ArgumentSpec.checked}).
    @ivar emptyResponse: whether the response is Twisted's own, with no
        values: parsing it gives an empty dict.
    @ivar emptyAnswer: whether, moreover, the answer to a responder's dict
        is a plain L{twisted.protocols.amp.AmpBox} with nothing but its tag.
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
        name = command.commandName
        # A call's box is its arguments, _command and _ask (a short tag): it
        # needs no check before it is queued if they need none.
        self.callChecked = (
            self.arguments is not None
            and self.arguments.checked
            and type(name) is bytes
            and len(name) <= MAX_VALUE_LENGTH
        )
        self.emptyResponse = self.response is not None and self.response.empty
        self.emptyAnswer = self.emptyResponse and command.responseType is amp.AmpBox

    def parseResponse(self, box: amp.AmpBox, proto: amp.BinaryBoxProtocol) -> dict[str, Any]:
        if self.emptyResponse:
            return {}
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


# How an argument is made and parsed: by Argument's own toBox/fromBox,
# inlined (_PLAIN); by L{pyamp_fds.Descriptor}, inlined further (_OURS); or
# by the argument's own toBox/fromBox (_OWN).
_PLAIN, _OURS, _OWN = range(3)

# Argument types whose strings are bytes of bounded length: a box of only
# these needs no check before it is queued.
_BOUNDED_TYPES = (Descriptor, amp.Boolean, amp.Float)


class _ArgumentSpec:
    """
    A command's argument list, with what Twisted works out on every call
    worked out once: each wire name's Python name, and which arguments use
    L{twisted.protocols.amp.Argument}'s own C{toBox}/C{fromBox} (those are run inline, exactly
    as Twisted runs them; the others through their own methods).

    @ivar allowed: every argument's Python name.
    @ivar empty: whether there are no arguments at all.
    @ivar checked: whether every string these arguments make is C{bytes} of
        a length AMP allows, whatever the values: a box of them (with keys
        checked once, here) needs no check before it is queued.
    """

    def __init__(self, arglist: list[tuple[bytes, amp.Argument]]) -> None:
        self.arglist = arglist
        self.entries: list[tuple[bytes, str, amp.Argument, bool, int]] = []
        self.required: list[str] = []
        self.allowed: set[str] = set()
        self.checked = True
        for wireName, argument in arglist:
            pythonName = _twisted.wireNameToPythonIdentifier(wireName)  # type: ignore[no-untyped-call]
            self.allowed.add(pythonName)
            if not argument.optional:
                self.required.append(pythonName)
            kind = type(argument)
            if kind is Descriptor:
                how = _OURS
            elif (
                kind.toBox is amp.Argument.toBox
                and kind.fromBox is amp.Argument.fromBox
                and kind.retrieve is amp.Argument.retrieve
            ):
                how = _PLAIN
            else:
                how = _OWN
            if kind not in _BOUNDED_TYPES or not _goodKey(wireName):
                self.checked = False
            self.entries.append((wireName, pythonName, argument, argument.optional, how))
        self.empty = not self.entries
        self._copyObjects = any(e[4] is _OWN for e in self.entries)

    def toStrings(
        self, objects: Mapping[str, Any], strings: amp.AmpBox, proto: amp.BinaryBoxProtocol
    ) -> amp.AmpBox:
        # What Command.makeArguments does, with Argument.toBox inlined.  Only
        # an argument's own toBox takes its value out of the objects: they
        # are copied for it, as Twisted does.
        if self._copyObjects or type(objects) is not dict:
            # Not a dict (a responder's wrong result) fails here, as in Twisted.
            objects = dict(objects)
        for wireName, pythonName, argument, optional, how in self.entries:
            if how is _OWN:
                argument.toBox(wireName, strings, objects, proto)
                continue
            if optional:
                value = objects.get(pythonName)
                if value is None:
                    continue
            else:
                value = objects[pythonName]
            if how is _OURS:
                strings[wireName] = b"%d" % (proto.sendDescriptor(value, argument.transfer),)  # type: ignore[attr-defined]
            else:
                strings[wireName] = argument.toStringProto(value, proto)
        return strings

    def toObjects(
        self, strings: Mapping[bytes, bytes], proto: amp.BinaryBoxProtocol
    ) -> dict[str, Any]:
        # What Command.parseArguments does, with Argument.fromBox inlined.
        # Only an argument's own fromBox takes its string out of the box:
        # it gets a copy, as in Twisted.
        objects: dict[str, Any] = {}
        if self._copyObjects:
            strings = dict(strings)
        for wireName, pythonName, argument, optional, how in self.entries:
            if how is _OWN:
                argument.fromBox(wireName, strings, objects, proto)
                continue
            if optional:
                value = strings.get(wireName)
                if value is None:
                    objects[pythonName] = None
                    continue
            else:
                value = strings[wireName]
            if how is _OURS and value.isdigit():
                # Descriptor.fromStringProto, for an ordinal that is one.
                objects[pythonName] = proto.receivedDescriptors.claim(int(value))  # type: ignore[attr-defined]
            else:
                objects[pythonName] = argument.fromStringProto(value, proto)
        return objects


def _goodKey(key: bytes) -> bool:
    return type(key) is bytes and 0 < len(key) <= MAX_KEY_LENGTH


_specs: dict[tuple[type[amp.Command], str], _ArgumentSpec] = {}


def _spec(commandType: type[amp.Command], which: str) -> _ArgumentSpec:
    key = (commandType, which)
    spec = _specs.get(key)
    if spec is None:
        spec = _specs[key] = _ArgumentSpec(getattr(commandType, which))
    return spec


