# -*- test-case-name: tests.test_credentials -*-
"""
Who is at the other end of a UNIX socket, and a listening port that admits
only some users or groups.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections import Counter, namedtuple
from collections.abc import Iterable
from typing import TYPE_CHECKING

from twisted.internet import address, unix
from twisted.logger import Logger

from pyamp_fds import _twisted
from pyamp_fds.budget import processBudget

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, ITransport
    from twisted.internet.protocol import Factory
    from twisted.python.failure import Failure

__all__ = [
    "PeerCredentials",
    "readPeerCredentials",
    "describeCredentials",
    "describePeer",
    "isAbstractAddress",
    "checkMode",
    "checkConnectionsPerUser",
    "Port",
]

_log = Logger()

# How often a port waiting for room for connections looks again by itself.
_ROOM_RETRY = 0.05


class PeerCredentials(namedtuple("PeerCredentials", "pid uid gid")):
    """
    The process at the other end of a UNIX socket connection, as the kernel
    recorded it (C{SO_PEERCRED}) when that process connected, listened, or
    made the socket pair: its process id, effective user id and effective
    group id (not its supplementary groups).
    """


# struct ucred: pid_t (signed), uid_t and gid_t (unsigned: a uid of 2**31
# or more must read as itself).
_UCRED = struct.Struct("iII")


def readPeerCredentials(skt: socket.socket) -> PeerCredentials:
    """
    The L{PeerCredentials} of a connected C{AF_UNIX} socket's peer.

    @raise OSError: they cannot be read (e.g. the socket is not connected).
    """
    return PeerCredentials._make(
        _UCRED.unpack(skt.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    )


def describeCredentials(credentials: PeerCredentials | None) -> str:
    """
    Name a peer by its credentials, for log lines.

    @param credentials: L{PeerCredentials}, or C{None} if they could not be
        read.
    @return: e.g. C{"pid 123 uid 1000 gid 1000"}.
    """
    if credentials is None:
        return "a peer whose credentials could not be read"
    return "pid %d uid %d gid %d" % tuple(credentials)


def describePeer(transport: ITransport | None) -> str:
    """
    Name the peer of C{transport} for log lines: by its credentials when the
    transport provides them (C{getPeerCredentials}), since the address of a
    UNIX socket's client is usually unnamed (C{UNIXAddress(None)}) and
    identifies nobody; otherwise by its address.

    @return: e.g. C{"pid 123 uid 1000 gid 1000"}; C{"nobody"} for no
        transport (a protocol's once its connection is gone).
    """
    if transport is None:
        return "nobody"
    getPeerCredentials = getattr(transport, "getPeerCredentials", None)
    if getPeerCredentials is not None:
        try:
            return describeCredentials(getPeerCredentials())
        except OSError:
            # Lost before they were read: the address is all there is.
            pass
    peer = transport.getPeer()
    if isinstance(peer, address.UNIXAddress):
        if peer.name:
            return "the socket at %r" % (peer.name,)
        return "an unnamed UNIX socket peer"
    return str(peer)


class PeerCredentialsMixin:
    """
    C{getPeerCredentials} for a connected UNIX socket transport (one with a
    C{socket} attribute while connected).
    """

    _peerCredentials: PeerCredentials | None = None

    def getPeerCredentials(self) -> PeerCredentials:
        """
        The peer's process id, user id and group id, read from the socket
        (C{SO_PEERCRED}) on the first call and kept: they are those of when
        the peer connected, or listened, and do not change.

        @rtype: L{PeerCredentials}
        @raise OSError: C{ENOTCONN}, the connection was lost before they
            were first asked for.
        """
        credentials = self._peerCredentials
        if credentials is None:
            skt = getattr(self, "socket", None)
            if skt is None:
                raise OSError(
                    errno.ENOTCONN,
                    "the connection is closed: its peer's credentials were not read while open",
                )
            credentials = self._peerCredentials = readPeerCredentials(skt)
        return credentials

    def peerCredentialsRead(self, credentials: PeerCredentials | None) -> None:
        """
        The listening port read the peer's credentials when it accepted the
        connection: keep them rather than asking again.
        """
        self._peerCredentials = credentials


def isAbstractAddress(path: str | bytes) -> bool:
    """
    Whether C{path} (C{bytes} or C{str}) names a socket in Linux's abstract
    namespace (it begins with a NUL byte): such a socket has no file, so no
    file mode keeps anyone out.
    """
    path = os.fspath(path)
    return path[:1] in (b"\0", "\0")


def checkMode(mode: int) -> None:
    """
    Refuse a listening socket's mode outside C{0..0o777}: C{chmod()} would
    take the bits above those (set-user-id, set-group-id, sticky), or all
    twelve for a negative mode.

    @raise ValueError: it is outside.
    """
    if not 0 <= mode <= 0o777:
        raise ValueError("a socket's mode must be within 0 and 0o777, not %r" % (mode,))


def checkConnectionsPerUser(connectionsPerUser: int | None) -> None:
    """
    Refuse a bound on one user's connections below 1 (C{None}, the
    default, is fine): it would refuse everyone.

    @raise ValueError: it is below 1.
    """
    if connectionsPerUser is not None and connectionsPerUser < 1:
        raise ValueError("connectionsPerUser must be at least 1, not %r" % (connectionsPerUser,))


def _credentialsOrNone(skt: socket.socket) -> PeerCredentials | None:
    try:
        return readPeerCredentials(skt)
    except OSError:
        return None


class Port(unix.Port):
    """
    A listening UNIX socket whose connections are
    L{pyamp_fds.transport.Server}s, optionally admitting only some users or
    groups.

    A connection from a peer that is not admitted is closed as soon as it is
    accepted, before any protocol is built for it or anything is read from
    it, and logged with the peer's credentials.  A peer that connects again
    and again must not flood the log: at most one refusal is logged per
    C{refusalLogInterval} seconds, and the refusals in between are counted
    and summed up in one line at the end of that interval.

    Every connection accepted here counts among the process budget's
    connections (L{pyamp_fds.budget.DescriptorBudget.connections}) until it
    closes.  While they are all taken, or the budget has no room for one
    more socket, the port accepts nothing: new peers wait in the listening
    socket's backlog (and are refused by the kernel once it is full), and
    it accepts again as soon as there is room.

    @ivar allowedUIDs: the user ids admitted, or C{None}.
    @ivar allowedGIDs: the group ids admitted, or C{None}.  When both are
        given, a peer is admitted if its user id is in C{allowedUIDs} or its
        group id is in C{allowedGIDs}; when neither is, every peer the socket
        file's mode lets in is admitted.  The group is the peer's effective
        group: supplementary groups are not seen.  A socket in the abstract
        namespace (an address beginning with a NUL byte) has no file and no
        mode, so with neither list it admits only the listening process's
        own user (C{os.getuid()}).
    @ivar refusalLogInterval: the seconds between log lines about refused
        connections.
    @ivar evictionPenalty: the seconds for which a process is refused new
        connections after one of its connections was closed for holding
        more descriptors than its share (or the most, when the process's
        budget ran out): it would otherwise connect again at once and take
        as much again, each time costing the server the work of receiving
        and closing what it sends.  Its other connections are left alone.
        C{0} turns this off.
    @ivar connectionsPerUser: the most connections one user (the peer's user
        id) may hold on this port at once; those past it are refused (and
        logged, as above) until one of the user's connections closes.
        C{None}, the default, is half the process budget's
        L{maxConnections<pyamp_fds.budget.DescriptorBudget.maxConnections>}
        (no bound when that has none), so that one user cannot take every
        connection the process may accept.

    """

    refusalLogInterval = 1.0
    evictionPenalty = 1.0
    connectionsPerUser: int | None = None

    if TYPE_CHECKING:
        # Twisted declares IReactorFDSet; a port's is a whole reactor.
        reactor: _twisted.IPortReactor

    # How many different peers a summary of refusals names; the others are
    # only counted, so a flood from many processes takes bounded memory.
    _summaryPeers = 5

    def __init__(
        self,
        fileName: str | bytes,
        factory: Factory,
        backlog: int = 50,
        mode: int = 0o666,
        reactor: _twisted.IPortReactor | None = None,
        wantPID: int = 0,
        allowedUIDs: Iterable[int] | None = None,
        allowedGIDs: Iterable[int] | None = None,
        connectionsPerUser: int | None = None,
    ) -> None:
        # Imported here: the transport module reads credentials from this one.
        from pyamp_fds.transport import Server

        checkMode(mode)
        self.transport = Server
        # Twisted annotates fileName as bytes; it takes str too, as its
        # own listenUNIX does.
        unix.Port.__init__(self, fileName, factory, backlog, mode, reactor, wantPID)  # type: ignore[arg-type]
        if allowedUIDs is None and allowedGIDs is None and isAbstractAddress(fileName):
            allowedUIDs = [os.getuid()]
        self.allowedUIDs = None if allowedUIDs is None else frozenset(allowedUIDs)
        self.allowedGIDs = None if allowedGIDs is None else frozenset(allowedGIDs)
        checkConnectionsPerUser(connectionsPerUser)
        if connectionsPerUser is not None:
            self.connectionsPerUser = connectionsPerUser
        self._refusalCall: IDelayedCall | None = None
        self._refusedSince: Counter[str] = Counter()
        self._refusedOthers = 0
        # Process ids refused until a time (the reactor's seconds).
        self._penalized: dict[int, float] = {}
        # Connections open, by their peer's user id.
        self._usersConnections: Counter[int] = Counter()
        self._roomCall: IDelayedCall | None = None

    def admits(self, credentials: PeerCredentials) -> bool:
        """
        Whether a peer with these L{PeerCredentials} may connect.
        """
        if self._penalized and self._penalizedNow(credentials.pid):
            return False
        if self._userHoldsShare(credentials.uid):
            return False
        uids, gids = self.allowedUIDs, self.allowedGIDs
        if uids is None and gids is None:
            return True
        return (uids is not None and credentials.uid in uids) or (
            gids is not None and credentials.gid in gids
        )

    def penalize(self, transport: ITransport) -> None:
        """
        A connection accepted here is being closed for holding more
        descriptors than its share: refuse its peer's process new
        connections for L{evictionPenalty} seconds.
        """
        if self.evictionPenalty <= 0:
            return
        try:
            credentials = transport.getPeerCredentials()  # type: ignore[attr-defined]
        except (AttributeError, OSError):
            return
        if credentials.pid <= 0:
            # No process to name (a peer in another pid namespace reads as 0).
            return
        now = self.reactor.seconds()
        for pid, until in list(self._penalized.items()):
            if until <= now:
                del self._penalized[pid]
        self._penalized[credentials.pid] = now + self.evictionPenalty
        _log.warn(
            "{port}: refusing new connections from {peer} for {seconds} s: its connection "
            "held more descriptors than its share",
            port=self,
            peer=describeCredentials(credentials),
            seconds=self.evictionPenalty,
        )

    def _penalizedNow(self, pid: int) -> bool:
        until = self._penalized.get(pid)
        if until is None:
            return False
        if self.reactor.seconds() < until:
            return True
        del self._penalized[pid]
        return False

    def _perUser(self) -> int | None:
        perUser = self.connectionsPerUser
        if perUser is None:
            most = processBudget().maxConnections
            if most is not None:
                perUser = max(1, most // 2)
        return perUser

    def _userHoldsShare(self, uid: int) -> bool:
        perUser = self._perUser()
        return perUser is not None and self._usersConnections[uid] >= perUser

    def doRead(self) -> None:
        budget = processBudget()
        room = budget.connectionRoom()
        if room == 0:
            # Every connection the process may keep is taken, or the budget
            # is: accept none (they wait in the backlog) until one closes or
            # descriptors are released.
            if budget.headroom <= 0:
                # As a reader short of headroom does: the connection holding
                # the most unclaimed descriptors is closed, if one holds
                # enough to be a hog.
                budget.relieve()
            self.stopReading()  # type: ignore[no-untyped-call]
            budget.waitForConnectionRoom(self._connectionRoomAgain)
            if self._roomCall is None:
                # Look again now and then: budgets can be replaced.
                self._roomCall = self.reactor.callLater(_ROOM_RETRY, self._connectionRoomAgain)
            return
        _twisted.acceptAdmitted(
            self, _credentialsOrNone, self.admits, self._refused, self._accepted, room
        )

    def _connectionRoomAgain(self) -> None:
        self._stopWaitingForRoom()
        if self.connected and not self.disconnecting:
            self.startReading()  # type: ignore[no-untyped-call]

    def _stopWaitingForRoom(self) -> None:
        if self._roomCall is not None:
            if self._roomCall.active():
                self._roomCall.cancel()
            self._roomCall = None

    def _accepted(self, credentials: PeerCredentials) -> None:
        self._usersConnections[credentials.uid] += 1

    def connectionReleased(self, transport: ITransport) -> None:
        """
        A connection accepted here has closed (its socket no longer counts
        among the process's connections): it no longer counts for its
        peer's user either.
        """
        try:
            uid = transport.getPeerCredentials().uid  # type: ignore[attr-defined]
        except (AttributeError, OSError):
            return
        held = self._usersConnections[uid] - 1
        if held > 0:
            self._usersConnections[uid] = held
        else:
            self._usersConnections.pop(uid, None)

    def _refused(self, credentials: PeerCredentials | None, logger: Logger) -> None:
        if self._refusalCall is not None:
            peer = describeCredentials(credentials)
            if peer in self._refusedSince or len(self._refusedSince) < self._summaryPeers:
                self._refusedSince[peer] += 1
            else:
                self._refusedOthers += 1
            return
        logger.warn(
            "{port}: refused a connection from {peer}: {why}",
            port=self,
            peer=describeCredentials(credentials),
            credentials=credentials,
            why=self._whyRefused(credentials),
        )
        self._refusalCall = self.reactor.callLater(self.refusalLogInterval, self._refusalsLogged)

    def _whyRefused(self, credentials: PeerCredentials | None) -> str:
        if credentials is None:
            return "its credentials could not be read"
        if credentials.pid in self._penalized:
            return "its process exceeded its descriptor share moments ago"
        if self._userHoldsShare(credentials.uid):
            return "its user holds as many connections as one user may (%d)" % (
                self._usersConnections[credentials.uid],
            )
        return "not an allowed user or group"

    def _refusalsLogged(self) -> None:
        """
        The end of an interval of refusals: sum up those not logged, and
        keep counting for another interval if there were any.
        """
        self._refusalCall = None
        if self._logRefusedSince():
            self._refusalCall = self.reactor.callLater(
                self.refusalLogInterval, self._refusalsLogged
            )

    def _logRefusedSince(self) -> bool:
        """
        Log one line summing up the refusals counted since the last line.

        @return: whether there were any.
        """
        counted, others = self._refusedSince, self._refusedOthers
        count = sum(counted.values()) + others
        if not count:
            return False
        peers = ", ".join("%s (%d)" % item for item in counted.most_common())
        if others:
            peers += ", and %d from other peers" % (others,)
        _log.warn(
            "{port}: refused {count} more {connections} from {peers}: not allowed users or "
            "groups, processes that exceeded their descriptor share moments ago, or users "
            "holding as many connections as one user may",
            port=self,
            count=count,
            connections="connection" if count == 1 else "connections",
            peers=peers,
        )
        self._refusedSince = Counter()
        self._refusedOthers = 0
        return True

    def connectionLost(self, reason: Failure) -> None:
        self._stopWaitingForRoom()
        if self._refusalCall is not None:
            self._refusalCall.cancel()
            self._refusalCall = None
            self._logRefusedSince()
        # Twisted leaves tcp.Port.connectionLost unannotated.
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
