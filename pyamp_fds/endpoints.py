# -*- test-case-name: tests.test_endpoints -*-
"""
UNIX socket endpoints, listeners and connectors whose connections use
pyamp_fds's batching transports.

They are used as Twisted's are; the one difference is the safer default
mode of a listening socket, C{0o600} (Twisted's is C{0o666}).
"""

import socket

from twisted.internet import defer, endpoints

from pyamp_fds.transport import Connector, Port, Server

__all__ = [
    "UNIXServerEndpoint",
    "UNIXClientEndpoint",
    "listenUNIX",
    "connectUNIX",
    "adoptStreamConnection",
]


def listenUNIX(
    reactor,
    address,
    factory,
    backlog=50,
    mode=0o600,
    wantPID=0,
    allowedUIDs=None,
    allowedGIDs=None,
):
    """
    Listen on a UNIX socket, like C{reactor.listenUNIX}.

    @param allowedUIDs: if given, the user ids that may connect.
    @param allowedGIDs: if given, the group ids that may connect.  With
        both, a peer whose user or group is allowed may connect.  Others are
        disconnected at once, before a protocol is built; see L{Port}.

    @return: the listening port (L{IListeningPort}).
    """
    port = Port(address, factory, backlog, mode, reactor, wantPID, allowedUIDs, allowedGIDs)
    port.startListening()
    return port


def connectUNIX(reactor, address, factory, timeout=30, checkPID=0):
    """
    Connect to a UNIX socket, like C{reactor.connectUNIX}.

    @return: the connector (L{IConnector}).
    """
    connector = Connector(address, factory, timeout, reactor, checkPID)
    connector.connect()
    return connector


def adoptStreamConnection(reactor, fileDescriptor, factory):
    """
    Run a protocol from C{factory} over an already connected C{AF_UNIX}
    stream socket, such as one end of a C{socketpair} handed to a worker.

    As with C{reactor.adoptStreamConnection}, the transport uses a duplicate:
    the caller still owns C{fileDescriptor} and should close it.  The socket
    is made non-blocking.

    @return: the transport, or L{None} if the factory built no protocol.
    """
    fileno = fileDescriptor if isinstance(fileDescriptor, int) else fileDescriptor.fileno()
    sock = socket.socket(fileno=fileno)
    try:
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise ValueError("adoptStreamConnection needs a connected AF_UNIX stream socket")
        sock.setblocking(False)
    finally:
        sock.detach()
    return Server._fromConnectedSocket(fileno, factory, reactor)


class UNIXServerEndpoint(endpoints.UNIXServerEndpoint):
    """
    A UNIX socket server endpoint producing batching transports, admitting
    every peer the socket file's mode lets in, or only the users and groups
    given (see L{listenUNIX}).
    """

    def __init__(
        self,
        reactor,
        address,
        backlog=50,
        mode=0o600,
        wantPID=0,
        allowedUIDs=None,
        allowedGIDs=None,
    ):
        endpoints.UNIXServerEndpoint.__init__(self, reactor, address, backlog, mode, wantPID)
        self._allowedUIDs = allowedUIDs
        self._allowedGIDs = allowedGIDs

    def listen(self, protocolFactory):
        return defer.execute(
            listenUNIX,
            self._reactor,
            self._address,
            protocolFactory,
            backlog=self._backlog,
            mode=self._mode,
            wantPID=self._wantPID,
            allowedUIDs=self._allowedUIDs,
            allowedGIDs=self._allowedGIDs,
        )


class UNIXClientEndpoint(endpoints.UNIXClientEndpoint):
    """
    A UNIX socket client endpoint producing batching transports.
    """

    def connect(self, protocolFactory):
        try:
            wrapping = endpoints._WrappingFactory(protocolFactory)
            connectUNIX(
                self._reactor,
                self._path,
                wrapping,
                timeout=self._timeout,
                checkPID=self._checkPID,
            )
            return wrapping._onConnection
        except BaseException:
            return defer.fail()
