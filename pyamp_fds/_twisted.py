# -*- test-case-name: tests.test_twisted_private -*-
"""
Every private name of Twisted that pyamp_fds uses, each with why: AMP's
(framing, the descriptor exchange, the dispatch of boxes, for which AMP has
no public hooks) and the reactor side's (the transport's write and read
paths, the connector's transport, the accept loop, and the listening
socket's adoption and close).  Nowhere else does the package name one.  The
rest of the package calls this module's functions, or inherits its hook
classes, which route Twisted's private hooks to methods with the package's
own names.  C{tests/test_twisted_private.py} fails when any of these names
disappears or changes the shape relied on.
"""

# Twisted leaves most of these private names unannotated (or, for the
# attributes its metaclass and untyped __init__s set, undeclared): the calls
# and returns that reach them carry a "type: ignore" naming the check that
# cannot see through them.

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet import abstract, tcp
from twisted.internet.defer import Deferred
from twisted.protocols import amp
from twisted.python import log

if TYPE_CHECKING:
    from twisted.internet import base
    from twisted.internet.interfaces import (
        IProtocolFactory,
        IReactorFDSet,
        IReactorThreads,
        IReactorTime,
    )
    from twisted.internet.protocol import Protocol
    from twisted.logger import Logger
    from twisted.python.failure import Failure

    from pyamp_fds.credentials import PeerCredentials, Port
    from pyamp_fds.descriptors import ReceivedDescriptors
    from pyamp_fds.transport import Client, Server

    # To the type checker, each hook class is a subclass of the Twisted
    # class it is mixed in ahead of, so that what it reaches for there is
    # checked; at run time each is a plain mixin.
    _BoxProtocolBase = amp.BinaryBoxProtocol
    _AMPBase = amp.AMP
    _TransportBase = tcp.Connection
    _ConnectorBase = base.BaseConnector

    class IPortReactor(IReactorFDSet, IReactorTime, IReactorThreads):
        """
        What a port or transport of the package asks of its reactor: Twisted
        declares only L{twisted.internet.interfaces.IReactorFDSet}.
        """

else:
    _BoxProtocolBase = _AMPBase = _TransportBase = _ConnectorBase = object

__all__ = [
    "BoxProtocolHooks",
    "AMPHooks",
    "wireNameToPythonIdentifier",
    "overridesDoCommand",
    "locatorResponderFor",
    "nextSendingOrdinal",
    "sendStockDescriptor",
    "claimStockDescriptor",
    "TransportHooks",
    "ConnectorHooks",
    "hasBufferedOutput",
    "bufferedOutput",
    "logDescriptorsRefused",
    "adoptConnectedSocket",
    "acceptAdmitted",
    "listenOnSocket",
    "keepSocketListening",
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


# The reactor side: transports, connectors, the accept loop, listening sockets.


class TransportHooks(_TransportBase):
    """
    The private parts of Twisted's C{FileDescriptor} write path and
    C{tcp.Connection} read path that a batching transport takes part in.
    Mixed in ahead of Twisted's transport.
    """

    if TYPE_CHECKING:
        # What the class these hooks serve (pyamp_fds.transport._Batching) defines.
        def sendBufferFull(self) -> bool: ...

        def closeSocket(self, orderly: bool) -> None: ...

        # Twisted declares IReactorFDSet; a transport's is a whole reactor.
        reactor: IPortReactor

    def _isSendBufferFull(self) -> bool:
        # Producers are paused when this says the buffer is full: queued
        # descriptors count too, so a slow reader pauses the sender.
        return self.sendBufferFull() or super()._isSendBufferFull()  # type: ignore[no-untyped-call]

    def pauseProducerIfFull(self) -> None:
        """
        Pause a streaming producer if the buffer is now full.
        """
        self._maybePauseProducer()  # type: ignore[no-untyped-call]

    def _closeSocket(self, orderly: bool) -> None:
        # tcp.Connection.connectionLost closes the socket through this.
        self.closeSocket(orderly)

    def stockCloseSocket(self, orderly: bool) -> None:
        """
        Twisted's own closing of a connection's socket (C{_SocketCloser}).
        """
        super()._closeSocket(orderly)  # type: ignore[no-untyped-call]

    def deliverData(self, data: bytes) -> BaseException | None:
        """
        Hand received bytes to the protocol as C{tcp.Connection.doRead}
        does (it also treats an empty read as the end of the stream).
        """
        return self._dataReceived(data)


# Run per descriptor: the hook is Twisted's own function, rather than one
# more call in between.
TransportHooks.pauseProducerIfFull = abstract.FileDescriptor._maybePauseProducer  # type: ignore[method-assign]


class ConnectorHooks(_ConnectorBase):
    """
    C{base.BaseConnector}'s private hook for the transport a connector
    makes.  Mixed in ahead of it.
    """

    if TYPE_CHECKING:
        # What the class these hooks serve (pyamp_fds.transport.Connector) defines.
        def makeTransport(self) -> Client: ...

    # Twisted annotates the hook as making a tcp.Client; a UNIX connector's
    # makes a UNIX client, as Twisted's own unix.Connector does.
    def _makeTransport(self) -> Client:  # type: ignore[override]
        return self.makeTransport()


def hasBufferedOutput(transport: tcp.Connection) -> bool:
    """
    Whether Twisted's write buffer of C{transport} holds bytes not yet sent
    (its private C{_tempDataLen}, and C{dataBuffer} past C{offset}).
    """
    return bool(transport._tempDataLen or len(transport.dataBuffer) > transport.offset)


def writesEnded(transport: tcp.Connection) -> bool:
    """
    Whether nothing more may be written to C{transport}:
    C{abortConnection} has been called (its private C{_aborting}; it stays
    connected until the reactor's next pass), or C{loseWriteConnection} has
    closed its write side (its private C{_writeDisconnected}; Twisted's
    C{write} drops what is written then).
    """
    return transport._aborting or transport._writeDisconnected


def bufferedOutput(transport: tcp.Connection) -> int:
    """
    How many bytes Twisted's write buffer of C{transport} holds, not yet
    sent.
    """
    return transport._tempDataLen + len(transport.dataBuffer) - transport.offset


def logDescriptorsRefused(transport: tcp.Connection, protocol: object, count: int) -> None:
    """
    Log that C{count} descriptors reached C{protocol}, which is not an
    C{IFileDescriptorReceiver}, and were closed: with Twisted's own event
    (its format and fields, the protocol named by the private
    C{_getLogPrefix}), which its users and tests watch for; one per read, as
    Twisted logs one per message of descriptors.
    """
    log.msg(
        format=(
            "%(protocolName)s (on %(hostAddress)r) does not "
            "provide IFileDescriptorReceiver; closing file "
            "descriptor received (from %(peerAddress)r)."
        ),
        hostAddress=transport.getHost(),
        peerAddress=transport.getPeer(),
        protocolName=transport._getLogPrefix(protocol),
        count=count,
    )


def adoptConnectedSocket(
    transportType: type[Server], fileno: int, factory: IProtocolFactory, reactor: IPortReactor
) -> Server | None:
    """
    Make a transport of C{transportType} (a C{unix.Server} subclass) over an
    already connected socket, as C{reactor.adoptStreamConnection} does with
    the private C{Server._fromConnectedSocket}.
    """
    return transportType._fromConnectedSocket(fileno, factory, reactor)  # type: ignore[no-any-return, no-untyped-call]


#: The names C{tcp.Port.doRead} refers to, in the Twisted versions whose
#: loop L{acceptAdmitted} copies: a change here means the copy must be
#: looked at again.  (Older releases, 23.8 among them, also made each
#: accepted socket close-on-exec in the loop, which Python's accept()
#: already does: their names are L{ACCEPT_LOOP_NAMES_BEFORE_24}.)
ACCEPT_LOOP_NAMES = frozenset(
    [
        "BaseException", "NI_NUMERICHOST", "NI_NUMERICSERV", "_BuffersLogs", "_accept",
        "_buildAddr", "_logger", "_reservedFD", "buildProtocol", "close", "deferr",
        "enumerate", "factory", "getnameinfo", "len", "list", "log", "makeConnection",
        "max", "namespace", "numberAccepts", "observer", "platformType", "range",
        "reactor", "sessionno", "socket", "transport", "tuple",
    ]
)
ACCEPT_LOOP_NAMES_BEFORE_24 = ACCEPT_LOOP_NAMES | {"fdesc", "_setCloseOnExec", "fileno"}


def acceptAdmitted(
    port: Port,
    credentialsOf: Callable[[socket.socket], PeerCredentials | None],
    admits: Callable[[PeerCredentials], bool],
    refused: Callable[[PeerCredentials | None, Logger], object],
    accepted: Callable[[PeerCredentials], object],
    most: int | None,
) -> None:
    """
    C{tcp.Port.doRead}, with each peer checked before its protocol is
    built: Twisted has no hook between C{accept()} and C{buildProtocol()}
    that sees the socket.  A copy of Twisted's loop (its private
    C{_accept}, C{_BuffersLogs} and C{_reservedFD}); the shape test in
    C{tests/test_twisted_private.py} fails when the original changes.

    @param credentialsOf: called with an accepted socket; returns its
        peer's credentials, or C{None} if they cannot be read.
    @param admits: called with credentials; whether the peer may connect.
    @param refused: called with the refused credentials and the logger.
    @param accepted: called with the credentials of each connection
        admitted, once its transport is made.
    @param most: how many connections at most to accept now (the process's
        room for them), or C{None} for no bound but Twisted's.
    """
    tries = port.numberAccepts if most is None else min(most, port.numberAccepts)
    try:
        with tcp._BuffersLogs(port._logger.namespace, port._logger.observer) as logger:
            count = 0
            clients = tcp._accept(logger, range(tries), port.socket, tcp._reservedFD)
            for count, (skt, addr) in enumerate(clients, 1):
                credentials = credentialsOf(skt)
                if credentials is None or not admits(credentials):
                    skt.close()
                    refused(credentials, logger)
                    continue
                protocol = port.factory.buildProtocol(port._buildAddr(addr))  # type: ignore[no-untyped-call, union-attr]
                if protocol is None:
                    skt.close()
                    continue
                session = port.sessionno
                port.sessionno = session + 1
                transport = port.transport(skt, protocol, addr, port, session, port.reactor)  # type: ignore[no-untyped-call]
                transport.peerCredentialsRead(credentials)  # type: ignore[attr-defined]
                accepted(credentials)
                protocol.makeConnection(transport)
        # Twisted's adaptation: more next time if every try succeeded, as
        # many as succeeded if fewer did (not when the bound cut it short).
        if count == port.numberAccepts:
            port.numberAccepts += 20
        elif count < tries:
            port.numberAccepts = max(1, count)
    except BaseException:
        log.deferr()


def listenOnSocket(port: tcp.Port, skt: socket.socket) -> None:
    """
    Make C{port}'s C{startListening} listen on C{skt}, a socket already
    bound (and perhaps listening, in this process or another), instead of
    binding one: what C{reactor.adoptStreamPort} does, through the private
    C{_preexistingSocket}, for the ports it makes.  The package's UNIX port
    needs it for a socket handed over by another process, since the
    reactor's own UNIX port, adopted, makes the socket's file C{0o666}.
    """
    port._preexistingSocket = skt


def keepSocketListening(port: tcp.Port) -> None:
    """
    Have C{port} close its socket without shutting it down first (the
    private C{_shouldShutdown}, which C{adoptStreamPort} clears on the TCP
    ports it makes, and only on those): C{shutdown()} acts on the socket,
    not on this process's descriptor, and makes a listening socket refuse
    every connection, for every process that holds it.
    """
    port._shouldShutdown = False
