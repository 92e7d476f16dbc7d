# -*- test-case-name: tests.test_budget -*-
"""
The process's descriptor budget, shared by every connection.

Descriptors a peer sent that no box has claimed yet, duplicates queued for
sending, and descriptors waiting to be closed are the library's, and each
is a slot of the process's C{RLIMIT_NOFILE}.  The budget is that soft limit
less a reserve the application keeps for itself.  A transport reads only
when the budget's headroom covers a full receive (C{MAX_FDS_PER_MESSAGE}
descriptors): otherwise the kernel would drop descriptors (C{MSG_CTRUNC})
and some innocent connection would be closed for it.  Short of headroom, a
transport stops reading and waits; it reads again when descriptors are
released.  (One whose protocol holds unclaimed descriptors reads on with the
room there is, since the rest of the box that claims them may be waiting.)
Each connection may hold at most its L{DescriptorBudget.share} unclaimed,
and queue at most as many duplicates: the one that goes over is the one
closed, or refused.  When the budget runs short, the connection holding the
most unclaimed descriptors is closed (L{DescriptorBudget.relieve}), so that
several peers each under their share cannot stop every other connection.

Connections are descriptors too: each server connection's socket counts
in the budget (L{DescriptorBudget.connections}, also among those
L{DescriptorBudget.used}), and at most L{DescriptorBudget.maxConnections} of
them, a quarter of the budget by default, so that descriptors always keep
the rest.  A listening port of the package accepts no more while they are
all taken or the budget has no room for one more socket (it stops
accepting, and resumes when there is room), so that a peer opening
connection after connection cannot take the process to its limit either
(L{pyamp_fds.credentials.Port}).
"""

from __future__ import annotations

import collections
import resource
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyamp_fds.fdio import MAX_FDS_PER_MESSAGE

__all__ = ["DescriptorBudget", "processBudget", "setProcessBudget"]

_ROOMY_SHARE = 8192

if TYPE_CHECKING:
    from typing import Protocol, TypeAlias

    class _Holder(Protocol):
        """
        What L{DescriptorBudget.relieve} needs of a table of descriptors.
        """

        @property
        def unclaimed(self) -> int: ...

        def evict(self, why: str) -> None: ...

    # How a reader is woken from another thread: the reactor's callFromThread.
    _Wake: TypeAlias = Callable[[Callable[[], object]], object]


class DescriptorBudget:
    """
    Descriptors held by the library, against a limit.

    Counts change on the thread that made the budget (the reactor's); the
    thread that closes descriptors (L{pyamp_fds.closer}) hands its releases
    over through a queue that the owning thread folds in when it next looks,
    so that the hot paths take no lock.

    @ivar limit: the most descriptors the library may hold: those sent by
        peers and not yet claimed or closed, duplicates queued for sending,
        and, when the budget bounds them, its server connections' sockets.
        L{used} counts them.
    @ivar share: the most one connection may hold (unclaimed plus queued).
    @ivar maxConnections: the most server connections (their sockets) the
        process keeps at once, or C{None} for no bound: L{connections} counts
        them, and the package's listening ports stop accepting while they
        are all taken.  With a bound they count in L{used}; without one
        (a budget given its C{limit} and no C{maxConnections}) they are
        counted, but not against the limit.
    @ivar connections: how many server connections are open now (those
        accepted or adopted as servers; the application's own client
        connections are not counted, nor ever refused).  A connection's
        socket closed in the background counts until it is closed.
        (A property.)
    @ivar connectionSockets: what to hand the closer with server
        connections' sockets (L{pyamp_fds.closer.closeLater}), so that they
        count until closed.
    """

    def __init__(
        self,
        limit: int | None = None,
        share: int | None = None,
        reserve: int | None = None,
        maxConnections: int | None = None,
    ) -> None:
        """
        @param limit: the budget; by default the soft C{RLIMIT_NOFILE} less
            C{reserve}.
        @param share: one connection's most; by default a quarter of the
            budget, or up to half of it to make room for 8192 (two of the
            longest default L{pyamp_fds.DescriptorList}s), and never less
            than one full receive.
        @param reserve: what the application keeps for itself when C{limit}
            is derived; by default a sixteenth of the soft limit, at least 64
            (but never more than a quarter of it).
        @param maxConnections: the most server connections at once; by
            default a quarter of the limit when the limit is derived, and
            no bound when it is given.
        """
        if limit is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            if soft == resource.RLIM_INFINITY:
                soft = 1 << 20
            if reserve is None:
                reserve = min(max(64, soft // 16), soft // 4)
            limit = max(0, soft - reserve)
            if maxConnections is None:
                maxConnections = limit // 4
        if share is None:
            # Well below the budget, yet room for long lists when the limit
            # allows (a DescriptorList's descriptors all arrive before its
            # box, 4096 by default).
            share = max(MAX_FDS_PER_MESSAGE, limit // 4, min(limit // 2, _ROOMY_SHARE))
        self.limit = limit
        self.share = share
        self.maxConnections = maxConnections
        self._connections = 0
        self._waitingForConnections: set[Callable[[], object]] = set()
        # Server connections' sockets the closer closed, folded in by the
        # owning thread.
        self._connectionsReleased: collections.deque[int] = collections.deque()
        self.connectionSockets = _ConnectionSockets(self)
        self._used = 0
        self._holders: weakref.WeakSet[_Holder] = weakref.WeakSet()
        self._owner = threading.get_ident()
        # Releases from other threads, folded in by the owning thread.
        self._released: collections.deque[int] = collections.deque()
        # Of those counted, how many were handed to the closer and are not
        # closed yet; and the closer's releases of them (each also in
        # _released, appended to after).
        self._closing = 0
        self._closedReleased: collections.deque[int] = collections.deque()
        self._waiting: dict[Callable[[], object], _Wake | None] = {}

    def _fold(self) -> None:
        released = self._released
        while released:
            self._used -= released.popleft()
        closed = self._closedReleased
        while closed:
            self._closing -= closed.popleft()

    @property
    def used(self) -> int:
        """
        How many descriptors the library holds now.
        """
        if self._released:
            self._fold()
        return self._used

    @property
    def headroom(self) -> int:
        """
        How many more the library may hold.
        """
        if self._released:
            self._fold()
        return self.limit - self._used

    def room(self) -> int:
        """
        How many descriptors the next receive may take: a full receive's
        worth (C{MAX_FDS_PER_MESSAGE}), or less when the headroom is short
        (0 when there is none).
        """
        if self._released:
            self._fold()
        headroom = self.limit - self._used
        if headroom >= MAX_FDS_PER_MESSAGE:
            return MAX_FDS_PER_MESSAGE
        return max(0, headroom)

    @property
    def fullReceive(self) -> int:
        """
        The room a reader waits for: a full receive, or the whole budget if
        it is smaller than one.
        """
        room = self.limit
        if self.maxConnections is not None:
            # What the connections' own sockets leave (all the budget, were
            # they more than maxConnections, which adopted ones may be: a
            # reader then reads with the room there is, never waiting for
            # room that cannot come).
            room -= self.connections
        return max(0, min(MAX_FDS_PER_MESSAGE, room))

    def hold(self, holder: _Holder) -> None:
        """
        C{holder} (a connection's table of received descriptors) holds
        descriptors counted here: L{relieve} may close its connection.
        """
        self._holders.add(holder)

    def relieve(self) -> bool:
        """
        Headroom is short: close the connection holding the most unclaimed
        descriptors, if it holds at least L{evictable} of them, so that one
        peer (or a few, each under its share) holding the budget cannot
        stop every other connection.  It is closed as a peer over its share
        is, and its descriptors are released.

        Not while the descriptors already on their way to the closer
        (L{closing}) would leave room for a full receive once closed: the
        readers waiting are woken then, and closing another connection would
        only have its peer send its descriptors again.

        @return: whether a connection was closed.
        """
        if self._released or self._closedReleased:
            self._fold()
        if self.limit - (self._used - self._closing) >= self.fullReceive:
            return False
        holders = list(self._holders)
        if not holders:
            return False
        largest = max(holders, key=lambda holder: holder.unclaimed)
        if largest.unclaimed < self.evictable:
            return False
        largest.evict(
            "the process's descriptor budget is exhausted (%d of %d held) and this "
            "connection holds the most unclaimed descriptors (%d)"
            % (self._used, self.limit, largest.unclaimed)
        )
        return True

    @property
    def evictable(self) -> int:
        """
        The fewest unclaimed descriptors for which L{relieve} closes a
        connection: more than two full receives (a client pipelining calls
        holds up to one between reads), or half a small share.
        """
        return max(1, min(2 * MAX_FDS_PER_MESSAGE + 1, self.share // 2))

    def takeForQueue(self, count: int, queued: int) -> bool:
        """
        Take C{count} for duplicates to queue on a connection that has
        C{queued} descriptors queued already, if that keeps the connection
        within its L{share} and the budget within its limit.

        @return: whether they were taken.
        """
        if self._released:
            self._fold()
        if queued + count > self.share or self.limit - self._used < count:
            return False
        self._used += count
        return True

    def take(self, count: int) -> None:
        """
        The library now holds C{count} more descriptors.
        """
        self._used += count

    def closing(self, count: int) -> None:
        """
        C{count} of the descriptors counted here were handed to the closer
        (L{pyamp_fds.closer}): they are released by L{closed} once closed.
        """
        self._closing += count

    def closed(self, count: int) -> None:
        """
        The closer closed C{count} descriptors it was handed (L{closing}):
        they are released as by L{give}.  Any thread may call it.
        """
        if threading.get_ident() != self._owner:
            # Folded in by the owner.  Appended before the release itself:
            # folded early, it makes relief more ready to close someone,
            # never less (were it folded late, relief would wait for a
            # release already made, for ever if nothing else came).
            self._closedReleased.append(count)
            self.give(count)
            return
        self._closing -= count
        self.give(count)

    def give(self, count: int) -> None:
        """
        The library holds C{count} fewer descriptors: wake the readers that
        were waiting for headroom if a full receive now fits.  Any thread
        may call it.
        """
        if threading.get_ident() != self._owner:
            self._released.append(count)
            # Wake the owner, which folds the release in and wakes readers.
            wakes = [wake for wake in list(self._waiting.values()) if wake is not None]
            if wakes:
                wakes[0](self._wakeWaiters)
            return
        self._used -= count
        if self._waiting:
            self._wakeWaiters()

    def _wakeWaiters(self) -> None:
        if self.headroom < self.fullReceive:
            return
        waiting, self._waiting = self._waiting, {}
        for resume in waiting:
            resume()

    def waitForHeadroom(
        self, resume: Callable[[], object], wake: _Wake | None = None
    ) -> None:
        """
        Call C{resume()} once a full receive (L{fullReceive}) fits again.

        @param wake: how to call the owning thread from another (e.g. the
            reactor's C{callFromThread}), for releases made there.
        """
        if self.headroom >= self.fullReceive:
            resume()
            return
        # Keyed by the callable: one waiting reader waits once.
        self._waiting[resume] = wake

    def connectionRoom(self) -> int | None:
        """
        How many more server connections may be opened now (never below
        zero): what L{maxConnections} leaves, and no more than the budget's
        headroom, since their sockets count in it; or C{None} if there is no
        bound.
        """
        if self.maxConnections is None:
            return None
        return max(0, min(self.maxConnections - self.connections, self.headroom))

    @property
    def connections(self) -> int:
        """
        How many server connections are open now.
        """
        released = self._connectionsReleased
        while released:
            self._connections -= released.popleft()
        return self._connections

    def connectionOpened(self) -> None:
        """
        A server connection's socket is open: it counts in L{connections}
        (and, with a bound on them, in L{used}) until L{connectionClosed}.
        """
        self._connections += 1
        if self.maxConnections is not None:
            self._used += 1

    def connectionClosed(self, count: int = 1) -> None:
        """
        C{count} server connections' sockets are closed: wake the listening
        ports waiting for room.  Any thread may call it (the closer, for
        sockets handed to it with L{connectionSockets}); from another than
        the owner's, it is folded in when the owner next looks, and the
        ports waiting find it when they look again by themselves.
        """
        bounded = self.maxConnections is not None
        if threading.get_ident() != self._owner:
            self._connectionsReleased.append(count)
            if bounded:
                self.give(count)
            return
        self._connections -= count
        if bounded:
            self.give(count)
        if self._waitingForConnections and self.connectionRoom() != 0:
            waiting, self._waitingForConnections = self._waitingForConnections, set()
            for resume in waiting:
                resume()

    def waitForConnectionRoom(self, resume: Callable[[], object]) -> None:
        """
        Call C{resume()} once a server connection may be opened again
        (L{connectionRoom}): at once if one may now.
        """
        if self.connectionRoom() != 0:
            resume()
            return
        self._waitingForConnections.add(resume)


class _ConnectionSockets:
    """
    Server connections' sockets handed to the closer
    (L{pyamp_fds.closer.closeLater}): they count among the budget's
    connections until closed.
    """

    def __init__(self, budget: DescriptorBudget) -> None:
        self._budget = budget

    def closing(self, count: int) -> None:
        """
        Already counted, as connections.
        """

    def closed(self, count: int) -> None:
        self._budget.connectionClosed(count)


_process: DescriptorBudget | None = None


def processBudget() -> DescriptorBudget:
    """
    The budget every connection shares unless given another: made from the
    soft C{RLIMIT_NOFILE} when first asked for.  Replace it with
    L{setProcessBudget} before making connections to configure it.
    """
    global _process
    if _process is None:
        _process = DescriptorBudget()
    return _process


def setProcessBudget(budget: DescriptorBudget) -> None:
    """
    Make C{budget} the one new connections share.
    """
    global _process
    _process = budget
