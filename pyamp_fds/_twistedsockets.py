# -*- test-case-name: tests.test_twisted_private -*-
"""
Every private name of Twisted's reactor side that pyamp_fds uses, each with
why: the transport's write and read paths, the connector's transport, the
accept loop, and the listening socket's adoption and close.  The private
names of Twisted's AMP are in L{pyamp_fds._twisted}; between them, the package
reaches into Twisted there and nowhere else.  C{tests/test_twisted_private.py}
fails when any of these names disappears or changes the shape relied on.
"""

# Twisted leaves most of these private names unannotated: the calls and
# returns that reach them carry a "type: ignore" naming the check that
# cannot see through them.

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet import abstract, tcp
from twisted.python import log

if TYPE_CHECKING:
    from twisted.internet import base
    from twisted.internet.interfaces import (
        IProtocolFactory,
        IReactorFDSet,
        IReactorThreads,
        IReactorTime,
    )
    from twisted.logger import Logger

    from pyamp_fds.credentials import PeerCredentials, Port
    from pyamp_fds.transport import Client, Server

    # To the type checker, each hook class is a subclass of the Twisted
    # class it is mixed in ahead of; at run time each is a plain mixin.
    _TransportBase = tcp.Connection
    _ConnectorBase = base.BaseConnector

    class IPortReactor(IReactorFDSet, IReactorTime, IReactorThreads):
        """
        What a port or transport of the package asks of its reactor: Twisted
        declares only L{twisted.internet.interfaces.IReactorFDSet}.
        """

else:
    _TransportBase = _ConnectorBase = object

__all__ = [
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
