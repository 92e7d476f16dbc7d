# -*- test-case-name: tests.test_handover -*-
"""
Listening sockets that can pass from one process to the next: opened here
or received from the previous process, made into Twisted ports, and given
up again without disturbing the process that serves them next.

A listening socket is one kernel object however many descriptors (in however
many processes) refer to it; its queue of connections waiting to be accepted
is shared by all of them.  Closing a descriptor gives up only that
process's share.  But C{shutdown()} acts on the socket: a listening socket
shut down refuses every connection, for everyone.  Twisted's ports shut
their sockets down when they stop, except TCP ports made by
C{reactor.adoptStreamPort}; its UNIX ports also unlink their socket's file,
which names the socket for the next process too, and made by
C{adoptStreamPort} they make that file C{0o666}.  So TCP and UDP sockets are
adopted with the reactor's C{adoptStreamPort} and C{adoptDatagramPort}, and
UNIX ones with L{SharedUNIXPort}.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, error, tcp

from pyamp_fds import _twisted
from pyamp_fds.credentials import Port

if TYPE_CHECKING:
    from twisted.internet.interfaces import IListeningPort
    from twisted.python.failure import Failure

    from pyamp_fds._twisted import IPortReactor

__all__ = ["PortSpec", "SharedUNIXPort", "openSocket", "adoptSocket", "describe", "giveUp"]

KINDS = {"tcp": socket.SOCK_STREAM, "unix": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}


@dataclass
class PortSpec:
    """
    A named listening port: what a process serves and hands over.

    @ivar kind: C{"tcp"}, C{"unix"} or C{"udp"}.
    @ivar address: C{(interface, port)} for TCP and UDP, a path for UNIX.
    @ivar factory: the protocol factory of a stream port, or the
        C{DatagramProtocol} of a UDP one.
    """

    name: str
    kind: str
    address: Any
    factory: Any
    backlog: int = 50
    mode: int = 0o600
    maxPacketSize: int = 8192
    allowedUIDs: Iterable[int] | None = None
    allowedGIDs: Iterable[int] | None = None


class SharedUNIXPort(Port):
    """
    A listening UNIX socket port (a L{pyamp_fds.credentials.Port}: batching
    transports, optional allow-lists) over a socket already bound, that can
    be given up to another process: with C{handedOver} set, stopping it
    closes this process's descriptor only, leaving the socket listening and
    its file in place.
    """

    handedOver = False

    def __init__(
        self,
        skt: socket.socket,
        factory: Any,
        backlog: int,
        mode: int,
        reactor: IPortReactor,
        allowedUIDs: Iterable[int] | None = None,
        allowedGIDs: Iterable[int] | None = None,
    ) -> None:
        Port.__init__(
            self, skt.getsockname(), factory, backlog, mode, reactor, 0, allowedUIDs, allowedGIDs
        )
        _twisted.listenOnSocket(self, skt)

    def connectionLost(self, reason: Failure) -> None:
        if not self.handedOver:
            return Port.connectionLost(self, reason)
        if self._refusalCall is not None:
            self._refusalCall.cancel()
            self._refusalCall = None
            self._logRefusedSince()
        _twisted.keepSocketListening(self)
        # Past unix.Port's, which unlinks the file.
        tcp.Port.connectionLost(self, reason)


def _removeStale(path: str) -> None:
    """
    Remove the socket file at C{path} if no process listens on it any more
    (one that ended without removing it): a restarted server must be able
    to listen again.

    @raise error.CannotListenError: a process listens on it.
    """
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return  # Not ours to remove: bind() will say why it fails.
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)
            return
        except OSError:
            return
    raise error.CannotListenError(  # type: ignore[no-untyped-call]
        None, path, OSError(errno.EADDRINUSE, "a process listens there")
    )


def openSocket(spec: PortSpec) -> socket.socket:
    """
    A new non-blocking socket bound to C{spec}'s address, listening if it is
    a stream socket.

    @raise error.CannotListenError: it cannot be bound.
    """
    if spec.kind == "unix":
        _removeStale(spec.address)
        family = socket.AF_UNIX
    else:
        family = socket.AF_INET6 if ":" in spec.address[0] else socket.AF_INET
    skt = socket.socket(family, KINDS[spec.kind])
    try:
        if spec.kind == "tcp":
            skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            skt.bind(spec.address)
        except OSError as e:
            raise error.CannotListenError(None, spec.address, e) from None  # type: ignore[no-untyped-call]
        if spec.kind == "unix":
            os.chmod(spec.address, spec.mode)
        if spec.kind != "udp":
            skt.listen(spec.backlog)
        skt.setblocking(False)
    except BaseException:
        skt.close()
        raise
    return skt


def adoptSocket(reactor: Any, spec: PortSpec, skt: socket.socket) -> IListeningPort:
    """
    Serve C{spec}'s factory on C{skt}, which this takes over (it is closed
    here, or belongs to the port).

    @raise error.CannotListenError: C{skt} is not a socket of C{spec}'s kind.
    """
    if skt.type != KINDS[spec.kind] or (spec.kind == "unix") != (skt.family == socket.AF_UNIX):
        skt.close()
        raise error.CannotListenError(  # type: ignore[no-untyped-call]
            None, spec.address, ValueError("not a %s socket" % spec.kind)
        )
    skt.setblocking(False)
    if spec.kind == "unix":
        port = SharedUNIXPort(
            skt, spec.factory, spec.backlog, spec.mode, reactor, spec.allowedUIDs, spec.allowedGIDs
        )
        port.startListening()  # type: ignore[no-untyped-call]
        return port
    with skt:  # The reactor's ports keep their own duplicate.
        if spec.kind == "tcp":
            return reactor.adoptStreamPort(skt.fileno(), skt.family, spec.factory)  # type: ignore[no-any-return]
        return reactor.adoptDatagramPort(  # type: ignore[no-any-return]
            skt.fileno(), skt.family, spec.factory, spec.maxPacketSize
        )


def describe(skt: socket.socket) -> tuple[str, str]:
    """
    The kind and the address of a bound socket, as the handover commands
    give them.
    """
    if skt.family == socket.AF_UNIX:
        return "unix", os.fsdecode(skt.getsockname())
    host, port = skt.getsockname()[:2]
    kind = "udp" if skt.type == socket.SOCK_DGRAM else "tcp"
    return kind, ("[%s]:%d" if skt.family == socket.AF_INET6 else "%s:%d") % (host, port)


def giveUp(port: IListeningPort, handedOver: bool) -> defer.Deferred[Any]:
    """
    Stop accepting on C{port} now and close its socket.  When another
    process was handed it, only this process's descriptor is closed: the
    socket keeps listening, and its connections waiting to be accepted
    stay for the other process.  (The reactor's adopted TCP ports never shut
    their socket down; its UDP ports have nothing to shut down.)
    """
    if isinstance(port, SharedUNIXPort):
        port.handedOver = handedOver
    return defer.maybeDeferred(port.stopListening)
