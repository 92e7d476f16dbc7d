# -*- test-case-name: tests.test_endpoints -*-
"""
UNIX socket endpoints, listeners and connectors whose connections use
pyamp_fds's batching transports.

They are used as Twisted's are; the differences are the safer default mode
of a listening socket, C{0o600} (Twisted's is C{0o666}), and the optional
user and group allow-lists of listening sockets.  In endpoint strings they
are C{fdunix:}, with the keywords of Twisted's C{unix:}::

    serverFromString(reactor, "fdunix:/run/broker.sock:mode=660:allowedGIDs=100,101")
    clientFromString(reactor, "fdunix:path=/run/broker.sock:timeout=5")
"""

import socket

from twisted.internet import endpoints
from twisted.internet.interfaces import (
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer

from pyamp_fds import _twisted
from pyamp_fds.credentials import Port
from pyamp_fds.transport import Connector, Server

__all__ = [
    "UNIXServerEndpoint",
    "UNIXClientEndpoint",
    "UNIXServerParser",
    "UNIXClientParser",
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

    @return: the transport (a L{Server}; its protocol is its C{protocol}),
        or L{None} if the factory built no protocol.
    """
    fileno = fileDescriptor if isinstance(fileDescriptor, int) else fileDescriptor.fileno()
    sock = socket.socket(fileno=fileno)
    try:
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise ValueError("adoptStreamConnection needs a connected AF_UNIX stream socket")
        sock.setblocking(False)
    finally:
        sock.detach()
    return _twisted.adoptConnectedSocket(Server, fileno, factory, reactor)


class _BatchingUNIXReactor:
    """
    A reactor whose C{listenUNIX} and C{connectUNIX} make pyamp_fds's ports
    and connectors: Twisted's own UNIX endpoints, given one, make batching
    transports without any of their code copied.  Everything else is the
    wrapped reactor's.
    """

    def __init__(self, reactor, allowedUIDs=None, allowedGIDs=None):
        self._reactor = reactor
        self._allowedUIDs = allowedUIDs
        self._allowedGIDs = allowedGIDs

    def listenUNIX(self, address, factory, backlog=50, mode=0o666, wantPID=0):
        return listenUNIX(
            self._reactor,
            address,
            factory,
            backlog,
            mode,
            wantPID,
            self._allowedUIDs,
            self._allowedGIDs,
        )

    def connectUNIX(self, address, factory, timeout=30, checkPID=0):
        return connectUNIX(self._reactor, address, factory, timeout, checkPID)

    def __getattr__(self, name):
        return getattr(self._reactor, name)


class UNIXServerEndpoint(endpoints.UNIXServerEndpoint):
    """
    A UNIX socket server endpoint producing batching transports, admitting
    every peer the socket file's mode lets in, or only the users and groups
    given (see L{listenUNIX}).

    The arguments are kept as read-only attributes of the same names.
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
        endpoints.UNIXServerEndpoint.__init__(
            self,
            _BatchingUNIXReactor(reactor, allowedUIDs, allowedGIDs),
            address,
            backlog,
            mode,
            wantPID,
        )
        self._arguments = (reactor, address, backlog, mode, wantPID, allowedUIDs, allowedGIDs)

    reactor = property(lambda self: self._arguments[0])
    address = property(lambda self: self._arguments[1])
    backlog = property(lambda self: self._arguments[2])
    mode = property(lambda self: self._arguments[3])
    wantPID = property(lambda self: self._arguments[4])
    allowedUIDs = property(lambda self: self._arguments[5])
    allowedGIDs = property(lambda self: self._arguments[6])


class UNIXClientEndpoint(endpoints.UNIXClientEndpoint):
    """
    A UNIX socket client endpoint producing batching transports.

    The arguments are kept as read-only attributes of the same names.
    """

    def __init__(self, reactor, path, timeout=30, checkPID=0):
        endpoints.UNIXClientEndpoint.__init__(
            self, _BatchingUNIXReactor(reactor), path, timeout, checkPID
        )
        self._arguments = (reactor, path, timeout, checkPID)

    reactor = property(lambda self: self._arguments[0])
    path = property(lambda self: self._arguments[1])
    timeout = property(lambda self: self._arguments[2])
    checkPID = property(lambda self: self._arguments[3])


def _flag(value):
    return bool(int(value))


def _ids(value):
    ids = [int(part) for part in value.split(",") if part.strip()]
    if not ids:
        # Admitting nobody is never what an empty value means to say.
        raise ValueError("an allow-list needs at least one id, not %r" % (value,))
    return ids


@implementer(IPlugin, IStreamServerEndpointStringParser)
class UNIXServerParser:
    """
    Parses C{fdunix:} server endpoint strings into L{UNIXServerEndpoint}s.

    The keywords are those of Twisted's C{unix:}: C{address} (or the first
    positional argument), C{backlog}, C{mode} (octal, default C{600}),
    C{lockfile} (C{0} or C{1}; C{wantPID} is taken too), and the
    comma-separated id lists C{allowedUIDs} and C{allowedGIDs}.
    """

    prefix = "fdunix"

    def parseStreamServer(
        self,
        reactor,
        address,
        backlog="50",
        mode="600",
        lockfile="0",
        wantPID=None,
        allowedUIDs=None,
        allowedGIDs=None,
    ):
        return UNIXServerEndpoint(
            reactor,
            address,
            backlog=int(backlog),
            mode=int(mode, 8),
            wantPID=_flag(lockfile if wantPID is None else wantPID),
            allowedUIDs=None if allowedUIDs is None else _ids(allowedUIDs),
            allowedGIDs=None if allowedGIDs is None else _ids(allowedGIDs),
        )


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class UNIXClientParser:
    """
    Parses C{fdunix:} client endpoint strings into L{UNIXClientEndpoint}s.

    The keywords are those of Twisted's C{unix:}: C{path} (or the first
    positional argument), C{timeout} (seconds), and C{lockfile} (C{0} or
    C{1}; C{checkPID} is taken too).
    """

    prefix = "fdunix"

    def parseStreamClient(self, reactor, path, timeout="30", lockfile="0", checkPID=None):
        return UNIXClientEndpoint(
            reactor,
            path,
            timeout=int(timeout),
            checkPID=_flag(lockfile if checkPID is None else checkPID),
        )
