# -*- test-case-name: tests.test_twisted_private -*-
"""
Every private name of Twisted's AMP that pyamp_fds uses, each with why.

Twisted's AMP has no public hooks for what pyamp_fds replaces (framing, the
descriptor exchange, the dispatch of boxes), so the package reaches into it
here; the private names of Twisted's reactor side (transports, connectors,
the accept loop) are in L{pyamp_fds._twistedsockets}.  Nowhere else does the
package name one.  The rest of the package calls these modules' functions,
or inherits their hook classes, which route Twisted's private hooks to
methods with the package's own names.  C{tests/test_twisted_private.py}
fails when any of these names disappears or changes the shape relied on.
"""

# Twisted leaves most of these private names unannotated (or, for the
# attributes its metaclass and untyped __init__s set, undeclared): the calls
# and returns that reach them carry a "type: ignore" naming the check that
# cannot see through them.

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.protocols import amp

if TYPE_CHECKING:
    from twisted.internet.interfaces import IProtocolFactory
    from twisted.internet.protocol import Protocol
    from twisted.python.failure import Failure

    from pyamp_fds.descriptors import ReceivedDescriptors

    # To the type checker, each hook class is a subclass of the Twisted
    # class it is mixed in ahead of, so that what it reaches for there is
    # checked; at run time each is a plain mixin.
    _BoxProtocolBase = amp.BinaryBoxProtocol
    _AMPBase = amp.AMP
else:
    _BoxProtocolBase = _AMPBase = object

__all__ = [
    "BoxProtocolHooks",
    "AMPHooks",
    "wireNameToPythonIdentifier",
    "overridesDoCommand",
    "locatorResponderFor",
    "nextSendingOrdinal",
    "sendStockDescriptor",
    "claimStockDescriptor",
]


# Command argument names become responder keywords this way (a public
# behaviour of Command, done by a private function): the fast argument path
# must name them exactly as Twisted does.
wireNameToPythonIdentifier = amp._wireNameToPythonIdentifier


def overridesDoCommand(command: type[amp.Command]) -> bool:
    """
    Whether a command class overrides C{Command._doCommand}, the private
    step C{callRemote} goes through (C{StartTLS} and
    C{ProtocolSwitchCommand} do): such commands keep Twisted's own path.
    """
    return command._doCommand is not amp.Command._doCommand


def locatorResponderFor(
    locator: object, name: bytes
) -> tuple[type[amp.Command], Callable[..., Any]] | None:
    """
    The C{(command, responder)} a separate
    L{twisted.protocols.amp.CommandLocator} registered for a command name
    (the metaclass's private C{_commandDispatch}), if it finds its
    responders Twisted's own way: neither C{locateResponder} (nor
    C{lookupFunction}, which the metaclass turns into it) nor the private
    C{_wrapWithSerialization} it calls is overridden.  C{None} otherwise,
    or if none is registered.

    Twisted's own wrapper parses arguments and makes responses with the
    locator in place of the protocol, where no descriptor can be claimed or
    sent; with this, the protocol wraps the responder itself.
    """
    if not isinstance(locator, amp.CommandLocator):
        return None
    locate = getattr(locator.locateResponder, "__func__", None)
    wrap = getattr(locator._wrapWithSerialization, "__func__", None)
    if (
        locate is not amp.CommandLocator.locateResponder
        or wrap is not amp.CommandLocator._wrapWithSerialization
    ):
        return None
    return locator._commandDispatch.get(name)  # type: ignore[attr-defined, no-any-return]


def nextSendingOrdinal(proto: amp.BinaryBoxProtocol) -> int:
    """
    The next ordinal of a stock L{twisted.protocols.amp.BinaryBoxProtocol}, which numbers the
    descriptors it sends with this private counter.
    """
    return proto._sendingDescriptorCounter()  # type: ignore[no-any-return]


def sendStockDescriptor(proto: amp.BinaryBoxProtocol, descriptor: int) -> int:
    """
    Send a descriptor the way a stock protocol's own
    L{twisted.protocols.amp.Descriptor}
    does, through its private C{_sendFileDescriptor}.
    """
    return proto._sendFileDescriptor(descriptor)  # type: ignore[no-any-return]


def claimStockDescriptor(proto: amp.BinaryBoxProtocol, ordinal: int) -> int:
    """
    Claim a received descriptor from a stock protocol, as its own
    L{twisted.protocols.amp.Descriptor} does, through its private
    C{_getDescriptor}.
    """
    return proto._getDescriptor(ordinal)  # type: ignore[no-any-return]


class BoxProtocolHooks(_BoxProtocolBase):
    """
    L{twisted.protocols.amp.BinaryBoxProtocol}'s private state and hooks,
    with the package's names.  Mixed in ahead of it.
    """

    if TYPE_CHECKING:
        # What the class these hooks serve (pyamp_fds.protocol._Framing) defines.
        def switchProtocol(
            self, newProto: Protocol, clientFactory: IProtocolFactory | None = None
        ) -> None: ...

        def flushBoxes(self) -> None: ...

        def sendDescriptor(self, descriptor: int, transfer: bool = False) -> int: ...

    def _switchTo(
        self, newProto: Protocol, clientFactory: IProtocolFactory | None = None
    ) -> None:
        # ProtocolSwitchCommand switches through this private method.
        return self.switchProtocol(newProto, clientFactory)

    def _startTLS(self, certificate: Any, verifyAuthorities: Any) -> Any:
        # StartTLS's box starts TLS through this private method; the boxes
        # queued before it must be written first.
        self.flushBoxes()
        return super()._startTLS(certificate, verifyAuthorities)  # type: ignore[no-untyped-call]

    def _sendFileDescriptor(self, descriptor: int) -> int:
        # Stock amp.Descriptor arguments send through this private method.
        return self.sendDescriptor(descriptor, False)

    def useDescriptorTable(self, table: ReceivedDescriptors) -> None:
        """
        Make stock L{twisted.protocols.amp.Descriptor} arguments claim from C{table}: they
        call the private C{_getDescriptor} that Twisted's exchanger set.
        """
        self._getDescriptor = table.claim  # type: ignore[assignment]

    def dataArrived(self) -> None:
        """
        What Twisted's C{dataReceived} does before parsing: any data after
        starting TLS means the peer accepted the certificate.
        """
        if self._justStartedTLS:
            self._justStartedTLS = False

    def checkCanSend(self) -> list[Mapping[bytes, bytes]] | None:
        """
        Raise as Twisted's C{sendBox} does when no box may be sent, and say
        whether the box must wait for TLS to start.

        @return: the list boxes wait in while TLS starts, or C{None}.
        @raise twisted.protocols.amp.ProtocolSwitched: the connection has switched protocols.
        """
        if self._locked:
            raise amp.ProtocolSwitched(
                "This connection has switched: no AMP traffic allowed."
            )
        return self._startingTLSBuffer


class AMPHooks(_AMPBase):
    """
    L{twisted.protocols.amp.AMP}'s (L{twisted.protocols.amp.BoxDispatcher}'s)
    private hooks and state, with the package's names.  Mixed in ahead of it.
    """

    if TYPE_CHECKING:
        # What the class these hooks serve (pyamp_fds.dispatch.FastDispatch) defines.
        def commandBoxReceived(self, box: amp.AmpBox) -> Deferred[Any] | None: ...

        def answerBoxReceived(self, box: amp.AmpBox) -> None: ...

        def errorBoxReceived(self, box: amp.AmpBox) -> None: ...

        def wrapResponder(
            self, aCallable: Callable[..., Any], command: Any
        ) -> Callable[[amp.AmpBox], Any]: ...

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "ampBoxReceived" not in cls.__dict__ and (
            cls._commandReceived is not AMPHooks._commandReceived
            or cls._answerReceived is not AMPHooks._answerReceived
            or cls._errorReceived is not AMPHooks._errorReceived
        ):
            # A class that overrides the dispatcher's private routing hooks
            # gets its boxes through them, as in Twisted.
            cls.ampBoxReceived = amp.BoxDispatcher.ampBoxReceived  # type: ignore[method-assign]

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        """
        Route a box by its kind, as Twisted's dispatcher does, straight to
        the package's handlers (the three hooks below only forward to them).
        """
        if amp.ANSWER in box:
            self.answerBoxReceived(box)
        elif amp.ERROR in box:
            self.errorBoxReceived(box)
        elif amp.COMMAND in box:
            self.commandBoxReceived(box)
        else:
            raise amp.NoEmptyBoxes(box)

    # The dispatcher routes each box by its kind through these three.
    def _commandReceived(self, box: amp.AmpBox) -> Deferred[Any] | None:
        return self.commandBoxReceived(box)

    def _answerReceived(self, box: amp.AmpBox) -> None:
        return self.answerBoxReceived(box)

    def _errorReceived(self, box: amp.AmpBox) -> None:
        return self.errorBoxReceived(box)

    def _wrapWithSerialization(
        self, aCallable: Callable[..., Any], command: Any
    ) -> Callable[[amp.AmpBox], Any]:
        # Responders found by locateResponder are wrapped by this: the
        # package wraps the wrapper to settle descriptors on failure.
        return self.wrapResponder(aCallable, command)

    def stockCommandReceived(self, box: amp.AmpBox) -> Deferred[Any] | None:
        """
        Twisted's own handling of a command box.
        """
        return super()._commandReceived(box)  # type: ignore[no-any-return, no-untyped-call]

    def stockAnswerReceived(self, box: amp.AmpBox) -> None:
        """
        Twisted's own handling of an answer box.
        """
        return super()._answerReceived(box)  # type: ignore[no-any-return, no-untyped-call]

    def stockErrorReceived(self, box: amp.AmpBox) -> None:
        """
        Twisted's own handling of an error box.
        """
        return super()._errorReceived(box)  # type: ignore[no-any-return, no-untyped-call]

    def stockWrapResponder(
        self, aCallable: Callable[..., Any], command: Any
    ) -> Callable[[amp.AmpBox], Any]:
        """
        Twisted's own responder wrapper: parse, call, serialize.
        """
        return super()._wrapWithSerialization(aCallable, command)  # type: ignore[no-any-return, no-untyped-call]

    def stockSendBoxCommand(
        self, command: bytes, box: amp.AmpBox, requiresAnswer: bool
    ) -> Deferred[Any] | None:
        """
        Twisted's own sending of a command box (tags, waiting Deferreds).
        """
        return self._sendBoxCommand(command, box, requiresAnswer)  # type: ignore[no-any-return, no-untyped-call]

    def safeEmit(self, box: amp.AmpBox) -> None:
        """
        Twisted's C{_safeEmit}: send an answer box, ignoring a connection
        that switched or went away meanwhile.
        """
        return self._safeEmit(box)  # type: ignore[no-any-return, no-untyped-call]

    def responderFor(
        self, name: bytes
    ) -> tuple[type[amp.Command], Callable[..., Any]] | None:
        """
        The C{(command, responder)} registered on this class for a command
        name (the metaclass's private C{_commandDispatch}), or C{None}.
        """
        return self._commandDispatch.get(name)  # type: ignore[attr-defined, no-any-return]

    def failedAllOutgoing(self) -> Failure | None:
        """
        The reason every call fails now that the connection is gone, or
        C{None} (Twisted's private C{_failAllReason}).
        """
        return self._failAllReason

    def newTag(self) -> bytes:
        """
        The next question tag (Twisted's private C{_nextTag}).
        """
        return self._nextTag()  # type: ignore[no-any-return, no-untyped-call]

    def waitForAnswer(self, tag: bytes) -> Deferred[Any]:
        """
        A L{twisted.internet.defer.Deferred} for the answer to question
        C{tag}, in Twisted's private table of outstanding requests.
        """
        d: Deferred[Any] = Deferred()
        self._outstandingRequests[tag] = d
        return d

    def takeWaiting(self, tag: bytes) -> Deferred[Any]:
        """
        Remove and return the L{twisted.internet.defer.Deferred} waiting for
        the answer to C{tag}.
        """
        return self._outstandingRequests.pop(tag)  # type: ignore[no-any-return]


# Run per call: the hook is Twisted's own function, rather than one more
# call in between.
AMPHooks.newTag = amp.BoxDispatcher._nextTag  # type: ignore[method-assign]
