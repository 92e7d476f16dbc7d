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

A listening socket in the abstract namespace (an address beginning with a
NUL byte) has no file mode to keep anyone out: with no allow-list given, it
admits only the listening process's own user.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet import endpoints
from twisted.internet.interfaces import (
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer

from pyamp_fds import _twisted
from pyamp_fds.credentials import Port, checkConnectionsPerUser, checkMode
from pyamp_fds.transport import Connector, Server

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike
    from twisted.internet.protocol import ClientFactory, Factory

    from pyamp_fds._twisted import IPortReactor

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
    reactor: IPortReactor,
    address: str | bytes,
    factory: Factory,
    backlog: int = 50,
    mode: int = 0o600,
    wantPID: int = 0,
    allowedUIDs: Iterable[int] | None = None,
    allowedGIDs: Iterable[int] | None = None,
    connectionsPerUser: int | None = None,
) -> Port:
    """
    Listen on a UNIX socket, like C{reactor.listenUNIX}.

    @param mode: the socket file's mode, within C{0..0o777}.
    @param allowedUIDs: if given, the user ids that may connect.
    @param allowedGIDs: if given, the group ids that may connect.  With
        both, a peer whose user or group is allowed may connect.  Others are
        disconnected at once, before a protocol is built; see
        L{pyamp_fds.credentials.Port}.  With
        neither, an C{address} in the abstract namespace admits only this
        process's user.
    @param connectionsPerUser: the most connections one user may hold at
        once (by default half of what the process may keep: see
        L{pyamp_fds.credentials.Port.connectionsPerUser}).

    @return: the listening port
        (L{twisted.internet.interfaces.IListeningPort}).
    @raise ValueError: C{mode} is outside C{0..0o777}, or
        C{connectionsPerUser} is below 1.
    """
    port = Port(
        address, factory, backlog, mode, reactor, wantPID, allowedUIDs, allowedGIDs,
        connectionsPerUser,
    )
    port.startListening()  # type: ignore[no-untyped-call]
    return port


def connectUNIX(
    reactor: IPortReactor,
    address: str,
    factory: ClientFactory,
    timeout: float = 30,
    checkPID: int = 0,
) -> Connector:
    """
    Connect to a UNIX socket, like C{reactor.connectUNIX}.

    @return: the connector (L{twisted.internet.interfaces.IConnector}).
    """
    connector = Connector(address, factory, timeout, reactor, checkPID)  # type: ignore[no-untyped-call]
    connector.connect()
    return connector


def adoptStreamConnection(
    reactor: IPortReactor, fileDescriptor: FileDescriptorLike, factory: Factory
) -> Server | None:
    """
    Run a protocol from C{factory} over an already connected C{AF_UNIX}
    stream socket, such as one end of a C{socketpair} handed to a worker.

    As with C{reactor.adoptStreamConnection}, the transport uses a duplicate:
    the caller still owns C{fileDescriptor} and should close it.  The socket
    is made non-blocking.

    @return: the transport (a L{pyamp_fds.transport.Server}; its protocol is
        its C{protocol}), or C{None} if the factory built no protocol.
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

    def __init__(
        self,
        reactor: IPortReactor,
        allowedUIDs: Iterable[int] | None = None,
        allowedGIDs: Iterable[int] | None = None,
        connectionsPerUser: int | None = None,
    ) -> None:
        self._reactor = reactor
        self._allowedUIDs = allowedUIDs
        self._allowedGIDs = allowedGIDs
        self._connectionsPerUser = connectionsPerUser

    def listenUNIX(
        self,
        address: str | bytes,
        factory: Factory,
        backlog: int = 50,
        mode: int = 0o666,
        wantPID: int = 0,
    ) -> Port:
        return listenUNIX(
            self._reactor,
            address,
            factory,
            backlog,
            mode,
            wantPID,
            self._allowedUIDs,
            self._allowedGIDs,
            self._connectionsPerUser,
        )

    def connectUNIX(
        self, address: str, factory: ClientFactory, timeout: float = 30, checkPID: int = 0
    ) -> Connector:
        return connectUNIX(self._reactor, address, factory, timeout, checkPID)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


class UNIXServerEndpoint(endpoints.UNIXServerEndpoint):
    """
    A UNIX socket server endpoint producing batching transports, admitting
    every peer the socket file's mode lets in, or only the users and groups
    given (see L{listenUNIX}; an abstract address admits only this
    process's user unless lists are given).

    The arguments are kept as read-only attributes of the same names.

    @raise ValueError: C{mode} is outside C{0..0o777}.
    """

    def __init__(
        self,
        reactor: IPortReactor,
        address: str,
        backlog: int = 50,
        mode: int = 0o600,
        wantPID: int = 0,
        allowedUIDs: Iterable[int] | None = None,
        allowedGIDs: Iterable[int] | None = None,
        connectionsPerUser: int | None = None,
    ) -> None:
        # Checked now rather than when listen() is called, or the mistake
        # would only surface as a failed Deferred.
        checkMode(mode)
        checkConnectionsPerUser(connectionsPerUser)
        endpoints.UNIXServerEndpoint.__init__(  # type: ignore[no-untyped-call]
            self,
            _BatchingUNIXReactor(reactor, allowedUIDs, allowedGIDs, connectionsPerUser),
            address,
            backlog,
            mode,
            wantPID,
        )
        self._arguments = (
            reactor, address, backlog, mode, wantPID, allowedUIDs, allowedGIDs, connectionsPerUser,
        )

    reactor = property(lambda self: self._arguments[0])
    address = property(lambda self: self._arguments[1])
    backlog = property(lambda self: self._arguments[2])
    mode = property(lambda self: self._arguments[3])
    wantPID = property(lambda self: self._arguments[4])
    allowedUIDs = property(lambda self: self._arguments[5])
    allowedGIDs = property(lambda self: self._arguments[6])
    connectionsPerUser = property(lambda self: self._arguments[7])


class UNIXClientEndpoint(endpoints.UNIXClientEndpoint):
    """
    A UNIX socket client endpoint producing batching transports.

    The arguments are kept as read-only attributes of the same names.
    """

    def __init__(
        self, reactor: IPortReactor, path: str, timeout: float = 30, checkPID: int = 0
    ) -> None:
        endpoints.UNIXClientEndpoint.__init__(  # type: ignore[no-untyped-call]
            self, _BatchingUNIXReactor(reactor), path, timeout, checkPID
        )
        self._arguments = (reactor, path, timeout, checkPID)

    reactor = property(lambda self: self._arguments[0])
    path = property(lambda self: self._arguments[1])
    timeout = property(lambda self: self._arguments[2])
    checkPID = property(lambda self: self._arguments[3])


# What an integer option may look like: int() also takes signs, underscores,
# surrounding whitespace and other scripts' digits ("\u0661\u0662"), none of
# which a configuration file should be able to slip past a reader.
_DECIMAL = re.compile("[0-9]+")
_OCTAL = re.compile("[0-7]+")

# The largest id: (uid_t)-1 means "no change" to the kernel, never a user.
_MAX_ID = 2**32 - 2


def _text(name: str, value: str | bytes) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("%s must be ASCII, not %r" % (name, value)) from None
    return value


def _decimal(name: str, value: str | bytes) -> int:
    value = _text(name, value)
    if not _DECIMAL.fullmatch(value):
        raise ValueError("%s must be a decimal number (digits 0-9 only), not %r" % (name, value))
    return int(value)


def _octal(name: str, value: str | bytes) -> int:
    value = _text(name, value)
    if not _OCTAL.fullmatch(value):
        raise ValueError("%s must be an octal number (digits 0-7 only), not %r" % (name, value))
    return int(value, 8)


def _flag(name: str, value: str | bytes) -> bool:
    value = _text(name, value)
    if value not in ("0", "1"):
        raise ValueError("%s must be 0 or 1, not %r" % (name, value))
    return value == "1"


def _eitherFlag(
    name: str, value: str | bytes | None, alias: str, aliasValue: str | bytes | None
) -> bool:
    # Twisted's parser keeps only the last of a repeated keyword, so a
    # repetition cannot be seen here; a keyword and its alias can.
    if value is not None and aliasValue is not None:
        raise ValueError("%s and %s say the same thing: give one" % (name, alias))
    if aliasValue is not None:
        return _flag(alias, aliasValue)
    return _flag(name, "0" if value is None else value)


def _ids(name: str, value: str | bytes) -> list[int]:
    value = _text(name, value)
    ids = [_decimal(name, part) for part in value.split(",")] if value else []
    if not ids:
        # Admitting nobody is never what an empty value means to say.
        raise ValueError("an allow-list needs at least one id, not %r" % (value,))
    for i in ids:
        if i > _MAX_ID:
            raise ValueError("%s: %d is not a user or group id" % (name, i))
    return ids


# Twisted's parser interfaces declare (reactor, *args, **kwargs): a parser's
# own keywords are narrower, as in Twisted's own parsers.  Twisted leaves the
# UNIX port and connector unannotated.
@implementer(IPlugin, IStreamServerEndpointStringParser)
class UNIXServerParser:
    """
    Parses C{fdunix:} server endpoint strings into L{UNIXServerEndpoint}s.

    The keywords are those of Twisted's C{unix:}: C{address} (or the first
    positional argument), C{backlog}, C{mode} (octal, default C{600}, at
    most C{777}), C{lockfile} (C{0} or C{1}; C{wantPID} is taken instead,
    not as well), the comma-separated id lists C{allowedUIDs} and
    C{allowedGIDs}, and C{connectionsPerUser}.  Numbers are ASCII digits
    only: no signs, spaces or underscores.
    """

    prefix = "fdunix"

    def parseStreamServer(  # type: ignore[override]
        self,
        reactor: IPortReactor,
        address: str,
        backlog: str = "50",
        mode: str = "600",
        lockfile: str | None = None,
        wantPID: str | None = None,
        allowedUIDs: str | None = None,
        allowedGIDs: str | None = None,
        connectionsPerUser: str | None = None,
    ) -> UNIXServerEndpoint:
        return UNIXServerEndpoint(
            reactor,
            address,
            backlog=_decimal("backlog", backlog),
            mode=_octal("mode", mode),
            wantPID=_eitherFlag("lockfile", lockfile, "wantPID", wantPID),
            allowedUIDs=None if allowedUIDs is None else _ids("allowedUIDs", allowedUIDs),
            allowedGIDs=None if allowedGIDs is None else _ids("allowedGIDs", allowedGIDs),
            connectionsPerUser=None
            if connectionsPerUser is None
            else _decimal("connectionsPerUser", connectionsPerUser),
        )


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class UNIXClientParser:
    """
    Parses C{fdunix:} client endpoint strings into L{UNIXClientEndpoint}s.

    The keywords are those of Twisted's C{unix:}: C{path} (or the first
    positional argument), C{timeout} (seconds), and C{lockfile} (C{0} or
    C{1}; C{checkPID} is taken instead, not as well).  Numbers are ASCII
    digits only.
    """

    prefix = "fdunix"

    def parseStreamClient(  # type: ignore[override]
        self,
        reactor: IPortReactor,
        path: str,
        timeout: str = "30",
        lockfile: str | None = None,
        checkPID: str | None = None,
    ) -> UNIXClientEndpoint:
        return UNIXClientEndpoint(
            reactor,
            path,
            timeout=_decimal("timeout", timeout),
            checkPID=_eitherFlag("lockfile", lockfile, "checkPID", checkPID),
        )
