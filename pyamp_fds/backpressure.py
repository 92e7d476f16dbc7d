# -*- test-case-name: tests.test_hostile,tests.test_transport -*-
"""
When a batching transport stops reading, and when it reads again.

Three reasons may hold reading at once (L{ReadStops}): the process's
descriptor budget is short of a full receive ("budget"), the peer does not
take what it is sent ("drain"), or a consumer paused the transport as a
producer ("producer").  L{ReadGate} is the transport's side of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyamp_fds import _twisted
from pyamp_fds.fdio import MAX_FDS_PER_MESSAGE

if TYPE_CHECKING:
    from typing import Protocol

    from twisted.internet.interfaces import IDelayedCall

    from pyamp_fds.budget import DescriptorBudget
    from pyamp_fds.outgoing import OutgoingDescriptors

    class _Reader(Protocol):
        """
        What L{ReadStops} needs of a transport.
        """

        connected: bool | int
        disconnecting: bool | int

        def stopReading(self) -> None: ...

        def startReading(self) -> None: ...


__all__ = ["ReadGate", "ReadStops"]

# How often a reader waiting for budget headroom looks again by itself.
_HEADROOM_RETRY = 0.05


class ReadStops:
    """
    Why a transport is not reading now, for each of several reasons at
    once ("budget": waiting for headroom; "drain": its peer does not take
    what it is sent; "producer": its consumer paused it): it reads again
    only once none is left.

    @ivar count: how many times reading stopped, for measurement.
    """

    def __init__(self, transport: _Reader) -> None:
        self._transport = transport
        self._reasons: set[str] = set()
        self.count = 0

    def __contains__(self, reason: str) -> bool:
        return reason in self._reasons

    def __bool__(self) -> bool:
        return bool(self._reasons)

    def stop(self, reason: str) -> None:
        """
        Stop reading for C{reason}.
        """
        if reason not in self._reasons:
            self._reasons.add(reason)
            self.count += 1
        self._transport.stopReading()

    def resume(self, reason: str) -> None:
        """
        C{reason} no longer holds: read again if no other does.
        """
        self._reasons.discard(reason)
        transport = self._transport
        if not self._reasons and transport.connected and not transport.disconnecting:
            transport.startReading()


class ReadGate(_twisted.TransportHooks):
    """
    The reading side of a batching transport's back-pressure.

    @ivar maxPendingDescriptors: descriptors queued beyond this count (by
        default half the budget's per-connection share) stop the transport
        reading until its peer has taken them, so that a peer that sends
        requests and never reads the answers cannot make it hold more.
        Duplicates past the share itself are refused (the answer or call
        that would queue them fails).
    @ivar maxPendingBytes: the same for bytes waiting to be sent.
    """

    maxPendingDescriptors: int | None = None
    maxPendingBytes = 64 << 20
    _headroomCall: IDelayedCall | None = None

    if TYPE_CHECKING:
        # What the transport this is mixed into provides.
        descriptorBudget: DescriptorBudget
        _readStops: ReadStops
        _queue: OutgoingDescriptors

    def roomToRead(self) -> int | None:
        """
        How many descriptors the next receive may take, or C{None} if the
        transport must not read now (it has stopped reading, and reads
        again when the budget has room).
        """
        budget = self.descriptorBudget
        room = budget.room()
        # A full receive's worth is at least fullReceive: no need to ask.
        if room >= MAX_FDS_PER_MESSAGE or room >= budget.fullReceive or self._holdsUnclaimed():
            # A connection holding unclaimed descriptors reads on with the
            # room there is: the rest of the box that claims them may be in
            # its socket, and one that sends more than fits is the one closed.
            return room
        # Short of headroom: what does not fit, the kernel would drop
        # (MSG_CTRUNC), and this connection would be lost for it, though
        # others hold the budget.  Wait for descriptors to be released (and
        # look again now and then: budgets can be replaced).
        self._readStops.stop("budget")
        # A peer (or a few) holding the budget must not stop everyone: the
        # one holding the most is closed, which releases it.
        budget.relieve()
        budget.waitForHeadroom(self._headroomAgain, self.reactor.callFromThread)
        if self._headroomCall is None:
            self._headroomCall = self.reactor.callLater(_HEADROOM_RETRY, self._headroomAgain)
        return None

    def stopWaitingForHeadroom(self) -> None:
        """
        The connection is gone: look for headroom no more.
        """
        if self._headroomCall is not None:
            if self._headroomCall.active():
                self._headroomCall.cancel()
            self._headroomCall = None

    def stopReadingIfPeerIsBehind(self) -> None:
        """
        After a read: if the peer is not taking what we send, read no more
        of its requests until it does.
        """
        if self._outputOverBound():
            self._readStops.stop("drain")

    def resumeReadingIfPeerCaughtUp(self) -> None:
        """
        After a write: read again if the peer has taken enough.
        """
        if "drain" in self._readStops and not self._outputOverBound():
            self._readStops.resume("drain")

    @property
    def readPauses(self) -> int:
        """
        How many times reading stopped: for the budget's headroom, for a
        peer that does not take what it is sent, or for a consumer.
        """
        return self._readStops.count

    def pauseProducing(self) -> None:
        self._readStops.stop("producer")

    def resumeProducing(self) -> None:
        self._readStops.resume("producer")

    def _headroomAgain(self) -> None:
        self.stopWaitingForHeadroom()
        self._readStops.resume("budget")

    def _holdsUnclaimed(self) -> bool:
        protocol = self.protocol
        if self.TLS:
            protocol = protocol.wrappedProtocol  # type: ignore[attr-defined]
        return bool(getattr(protocol, "descriptorsUnclaimed", 0))

    def _outputOverBound(self) -> bool:
        limit = self.maxPendingDescriptors
        if limit is None:
            # Half the share: duplicates past the share are refused, and one
            # read's requests may queue more before reading stops.
            limit = self.descriptorBudget.share // 2
        return (
            len(self._queue) > limit or _twisted.bufferedOutput(self) > self.maxPendingBytes
        )
