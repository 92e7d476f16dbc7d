# -*- test-case-name: tests.test_handover -*-
"""
L{Handover}: a server's named listening ports, taken from the process it
replaces or opened afresh, served, and lent in turn to the process that
replaces it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet import defer, error
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from pyamp_fds.endpoints import adoptStreamConnection
from pyamp_fds.handover.commands import (
    HandoverBusy,
    HandoverError,
    List,
    NotTaking,
    Ready,
    Take,
    UnknownPort,
)
from pyamp_fds.handover.connections import IDrainable, _call, _Lender, _Previous, _TrackingFactory
from pyamp_fds.handover.ports import PortSpec, SharedUNIXPort, adoptSocket, describe, giveUp, openSocket

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IListeningPort
    from twisted.internet.protocol import Protocol
    from twisted.python.failure import Failure

__all__ = ["Handover"]

_log = Logger()


def _stopReactor(reactor: Any) -> None:
    try:
        reactor.stop()
    except error.ReactorNotRunning:
        pass


class Handover(service.Service):
    """
    Named listening ports (TCP, UNIX, UDP) that pass from each process of a
    server to the next without refusing a connection.

    Declare the ports (L{listenTCP}, L{listenUNIX}, L{listenUDP}), then
    L{start}: if a process serves the handover socket at C{path}, the ports
    it has of those names are taken from it (duplicates of its listening
    sockets), adopted and served; then it is told so (L{Ready}), stops
    accepting, drains its connections and calls its C{onDrained}.  With no
    process there (no socket, or one nobody listens on), the ports are
    opened here.  Either way this process then serves the handover socket
    for the next one: the same socket, handed over as the ports are, so it
    has one name throughout and, at every moment, a process accepting on it
    (until L{Ready} the old process, which answers a second taker with
    L{HandoverBusy}; then the new one).  Binding a new socket to a
    temporary name and renaming it into place would work too, but leaves
    the old process's socket with no name while it drains, and its port
    would unlink the new one's file when it closes.

    A service too: in a C{.tac} file, C{setServiceParent(application)};
    C{twistd -y} runs it, and C{twistd -y} again (with another pidfile, or
    C{--pidfile=}) replaces it.  Stopping the service (SIGTERM) drains.

    @ivar ports: the listening ports by name, once started.
    @ivar previous: fires when the process this one replaced has finished
        (or at once if there was none).
    @ivar drained: fires when this process has finished serving.
    """

    def __init__(
        self,
        path: str,
        reactor: Any = None,
        drainTimeout: float = 30.0,
        onDrained: Callable[[], object] | None = None,
        mode: int = 0o600,
        allowedUIDs: Iterable[int] | None = None,
        allowedGIDs: Iterable[int] | None = None,
        connectTimeout: float = 5.0,
    ) -> None:
        """
        @param path: the handover socket's path.
        @param drainTimeout: the seconds connections have to finish once this
            process stops accepting; those left are then closed.
        @param onDrained: called once drained, when another process took
            over or L{Drain} was asked for; by default, stops the reactor.
        @param mode: the handover socket's file mode.
        @param allowedUIDs: the users who may connect to the handover
            socket; by default this process's own (C{os.getuid()}).
        @param allowedGIDs: the groups who may (either list admits).
        """
        if reactor is None:
            from twisted.internet import reactor
        if allowedUIDs is None and allowedGIDs is None:
            allowedUIDs = [os.getuid()]
        self.path, self.reactor, self.drainTimeout = path, reactor, drainTimeout
        self.connectTimeout = connectTimeout
        self.onDrained = onDrained or (lambda: _stopReactor(self.reactor))
        self._handoverSpec = PortSpec("", "unix", path, Factory.forProtocol(lambda: _Lender(self)),
                                      mode=mode, allowedUIDs=allowedUIDs, allowedGIDs=allowedGIDs)
        self._specs: dict[str, PortSpec] = {}
        self.ports: dict[str, IListeningPort] = {}
        self.state = "new"
        self.previous: defer.Deferred[None] = defer.Deferred()
        self.drained: defer.Deferred[None] = defer.Deferred()
        self._listener: SharedUNIXPort | None = None
        self._taker: _Lender | None = None
        self._lent: set[str] = set()
        self._peers: set[_Lender] = set()
        self._connections: set[Protocol] = set()
        self._drainCall: IDelayedCall | None = None
        self._closing: list[defer.Deferred[Any]] = []

    def _declare(self, spec: PortSpec) -> None:
        if self.state != "new":
            raise HandoverError("ports are declared before start()")
        if spec.name in self._specs:
            raise ValueError("a port is already named %r" % (spec.name,))
        if spec.kind != "udp":
            spec.factory = _TrackingFactory(spec.factory, self)
        self._specs[spec.name] = spec

    def listenTCP(self, name: str, port: int, factory: Any, backlog: int = 50,
                  interface: str = "") -> None:
        """
        Declare a TCP port (arguments as C{reactor.listenTCP}'s).
        """
        self._declare(PortSpec(name, "tcp", (interface, port), factory, backlog))

    def listenUNIX(self, name: str, path: str, factory: Any, backlog: int = 50,
                   mode: int = 0o600, allowedUIDs: Iterable[int] | None = None,
                   allowedGIDs: Iterable[int] | None = None) -> None:
        """
        Declare a UNIX socket port (arguments as
        L{pyamp_fds.endpoints.listenUNIX}'s); its connections use the
        package's transports.
        """
        self._declare(PortSpec(name, "unix", path, factory, backlog, mode,
                               allowedUIDs=allowedUIDs, allowedGIDs=allowedGIDs))

    def listenUDP(self, name: str, port: int, protocol: Any, interface: str = "",
                  maxPacketSize: int = 8192) -> None:
        """
        Declare a UDP port (arguments as C{reactor.listenUDP}'s).
        """
        self._declare(PortSpec(name, "udp", (interface, port), protocol,
                               maxPacketSize=maxPacketSize))

    # The new process's side.

    def _connectToPrevious(self) -> _Previous | None:
        # Connecting to a local socket does not wait for the other process
        # (it completes when queued), so it is done here, at once.
        skt = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with skt:
            skt.settimeout(self.connectTimeout)
            try:
                skt.connect(self.path)
            except (FileNotFoundError, ConnectionRefusedError):
                return None
            previous = _Previous()
            adoptStreamConnection(self.reactor, skt, Factory.forProtocol(lambda: previous))
        return previous

    @defer.inlineCallbacks
    def start(self) -> Generator[defer.Deferred[Any], Any, dict[str, IListeningPort]]:
        """
        Take the ports from the process serving the handover socket, or open
        them; serve them and the handover socket.

        @return: a C{Deferred} firing with L{ports}, or failing with
            L{HandoverBusy} (another process is taking over),
            L{HandoverError}, or C{CannotListenError}.
        """
        if self.state != "new":
            raise HandoverError("already started")
        self.state = "starting"
        previous = None
        try:
            previous = self._connectToPrevious()
            if previous is None:
                self.previous.callback(None)
                sockets = self._open()
            else:
                previous.gone.chainDeferred(self.previous)
                sockets = yield self._take(previous)
            handoverSocket = sockets.pop("")
            try:
                for name, spec in self._specs.items():
                    self.ports[name] = adoptSocket(self.reactor, spec, sockets.pop(name))
            except BaseException:
                handoverSocket.close()
                raise
            finally:
                for skt in sockets.values():
                    skt.close()
        except BaseException:
            # Our descriptors only: the previous process may serve these
            # sockets still (and a stale file is removed at the next start).
            self.state = "new"
            if previous is not None and previous.transport is not None:
                previous.transport.loseConnection()
            yield defer.gatherResults([giveUp(port, True) for port in self.ports.values()])
            self.ports.clear()
            raise
        if previous is not None:
            try:
                answer = yield _call(previous, Ready)
            except (error.ConnectionLost, error.ConnectionDone):
                _log.warn("handover at {path}: the previous process went before it was told it"
                          " was replaced; serving what it handed over", path=self.path)
            else:
                _log.info("handover at {path}: took {ports}; the previous process drains"
                          " {connections} connections", path=self.path,
                          ports=sorted(self.ports), connections=answer["connections"])
        self._listener = adoptSocket(self.reactor, self._handoverSpec, handoverSocket)  # type: ignore[assignment]
        self.state = "serving"
        return dict(self.ports)

    def _open(self) -> dict[str, socket.socket]:
        # The service ports first: a second process starting at the same
        # time fails on them, before it touches the handover socket's file.
        opened: dict[str, socket.socket] = {}
        try:
            for name, spec in self._specs.items():
                opened[name] = openSocket(spec)
            opened[""] = openSocket(self._handoverSpec)
        except BaseException:
            for skt in opened.values():
                skt.close()
            raise
        return opened

    @defer.inlineCallbacks
    def _take(self, previous: _Previous) -> Generator[defer.Deferred[Any], Any, dict[str, socket.socket]]:
        try:
            listed = yield _call(previous, List)
            lent = {port["name"]: port for port in listed["ports"]}
            for name, spec in self._specs.items():
                if name in lent and lent[name]["kind"] != spec.kind:
                    raise HandoverError("the previous process's port %r is %s, not %s"
                                        % (name, lent[name]["kind"], spec.kind))
            names = [name for name in self._specs if name in lent]
            answer = yield _call(previous, Take, names=names)
        except (error.ConnectionLost, error.ConnectionDone):
            raise HandoverError(
                "the process serving %s closed the connection before answering: is this user"
                " allowed to connect?" % (self.path,)) from None
        except BaseException:
            previous.transport.loseConnection()  # type: ignore[union-attr]
            raise
        sockets = {port["name"]: socket.socket(fileno=fd)
                   for port, fd in zip(answer["ports"], answer["descriptors"])}
        sockets[""] = socket.socket(fileno=answer["handover"])
        try:
            for name, spec in self._specs.items():
                if name not in sockets:
                    _log.info("handover at {path}: the previous process has no port {name}:"
                              " opening it", path=self.path, name=name)
                    sockets[name] = openSocket(spec)
        except BaseException:
            for skt in sockets.values():
                skt.close()
            previous.transport.loseConnection()  # type: ignore[union-attr]
            raise
        return sockets

    # The old process's side.

    def _list(self) -> dict[str, Any]:
        ports = []
        for name, port in self.ports.items():
            skt = socket.socket(fileno=port.fileno())  # type: ignore[attr-defined]
            try:
                kind, address = describe(skt)
                ports.append({"name": name, "kind": kind, "family": int(skt.family),
                              "type": int(skt.type), "address": address})
            finally:
                skt.detach()
        return {"ports": ports, "pid": os.getpid(), "state": self.state}

    def _lend(self, taker: _Lender, names: list[str]) -> dict[str, Any]:
        if self.state != "serving" or self._taker not in (None, taker):
            who = ""
            if self._taker is not None:
                who = " to %s" % (self._describe(self._taker),)
            raise HandoverBusy("this process (pid %d) is %s%s" % (os.getpid(), self.state, who))
        unknown = sorted(set(names) - set(self.ports))
        if unknown:
            raise UnknownPort("no port named %s here (there are: %s)"
                              % (", ".join(map(repr, unknown)), ", ".join(sorted(self.ports))))
        self._taker, self._lent, self.state = taker, set(names), "lending"
        _log.info("handover at {path}: lending {names} to {taker}", path=self.path,
                  names=names, taker=self._describe(taker))
        described = {port["name"]: port for port in self._list()["ports"]}
        return {
            "ports": [described[name] for name in names],
            "descriptors": [self.ports[name].fileno() for name in names],  # type: ignore[attr-defined]
            "handover": self._listener.fileno(),  # type: ignore[union-attr]
        }

    def _describe(self, lender: _Lender) -> str:
        from pyamp_fds.credentials import describePeer

        return describePeer(lender.transport)

    def _handOver(self, taker: _Lender) -> dict[str, Any]:
        if self._taker is not taker:
            raise NotTaking("this connection took nothing: Take first")
        self._taker = None
        self._stopAccepting(self._lent, True)
        return {"connections": self._startDraining()}

    def _drainAlone(self) -> int:
        if self.state in ("draining", "drained"):
            return len(self._connections)
        if self.state != "serving":
            raise HandoverBusy("this process (pid %d) is %s" % (os.getpid(), self.state))
        self._stopAccepting(set(), False)
        return self._startDraining()

    def _peerLost(self, lender: _Lender) -> None:
        self._peers.discard(lender)
        if lender is self._taker:
            self._taker, self._lent, self.state = None, set(), "serving"
            _log.warn("handover at {path}: the process taking over went before it was ready;"
                      " serving on", path=self.path)

    def _stopAccepting(self, lent: set[str], successor: bool) -> None:
        ports = [(port, name in lent) for name, port in self.ports.items()]
        if self._listener is not None:
            # A successor took the handover socket too, whatever else.
            ports.append((self._listener, successor))
        for port, shared in ports:
            self._closing.append(giveUp(port, shared))

    # Draining, on either side.

    def _track(self, proto: Protocol) -> None:
        self._connections.add(proto)
        original = proto.connectionLost

        def connectionLost(reason: Failure) -> None:
            try:
                original(reason)
            finally:
                self._connections.discard(proto)
                if self.state == "draining":
                    self._checkDrained()

        proto.connectionLost = connectionLost  # type: ignore[method-assign, assignment]
        if self.state in ("draining", "drained") and IDrainable.providedBy(proto):
            # Accepted in the same turn as the port stopped.
            self.reactor.callLater(0, proto.drain)

    def _startDraining(self) -> int:
        self.state = "draining"
        count = len(self._connections)
        for proto in list(self._connections):
            if IDrainable.providedBy(proto):
                try:
                    proto.drain()
                except Exception:
                    _log.failure("draining {protocol}", protocol=proto)
        self._drainCall = self.reactor.callLater(self.drainTimeout, self._drainTimedOut)
        self.reactor.callLater(0, self._checkDrained)
        return count

    def _drainTimedOut(self) -> None:
        self._drainCall = None
        _log.warn("handover at {path}: {count} connections still open after {timeout}s:"
                  " closing them", path=self.path, count=len(self._connections),
                  timeout=self.drainTimeout)
        for proto in list(self._connections):
            if proto.transport is not None:
                proto.transport.loseConnection()
        # One that does not read what is left to write would hold its
        # connection open for ever.
        self._drainCall = self.reactor.callLater(1.0, self._abortLeft)

    def _abortLeft(self) -> None:
        self._drainCall = None
        for proto in list(self._connections):
            if proto.transport is not None:
                proto.transport.abortConnection()  # type: ignore[attr-defined]
        self._connections.clear()
        self._checkDrained()

    def _checkDrained(self) -> None:
        if self.state != "draining" or self._connections:
            return
        self.state = "drained"
        if self._drainCall is not None:
            self._drainCall.cancel()
            self._drainCall = None
        for lender in list(self._peers):
            lender.transport.loseConnection()  # type: ignore[union-attr]
        closing, self._closing = self._closing, []
        d = defer.gatherResults(closing)
        d.addBoth(lambda _: self.drained.callback(None))
        if not self._stopping:
            d.addCallback(lambda _: self.onDrained())

    _stopping = False

    # As a service.

    def privilegedStartService(self) -> None:
        """
        Start (see L{start}) before C{twistd} gives up root: ports opened
        here may be privileged ones; taken ones need no privilege.
        """
        service.Service.privilegedStartService(self)  # type: ignore[no-untyped-call]

        def failed(reason: Failure) -> None:
            _log.failure("handover at {path}: could not start", reason, path=self.path)
            _stopReactor(self.reactor)

        self.start().addErrback(failed)

    def startService(self) -> None:
        service.Service.startService(self)  # type: ignore[no-untyped-call]
        if self.state == "new":  # Not through privilegedStartService.
            self.privilegedStartService()

    def stopService(self) -> defer.Deferred[None] | None:
        """
        Stop as L{Drain} does, if serving.

        @return: L{drained}.
        """
        service.Service.stopService(self)  # type: ignore[no-untyped-call]
        self._stopping = True
        if self.state in ("serving", "lending"):
            # A process taking over keeps what it took.
            self._stopAccepting(self._lent, self.state == "lending")
            self._startDraining()
        if self.state in ("draining", "drained"):
            return self.drained
        return None
