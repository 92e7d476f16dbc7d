# -*- test-case-name: tests.test_protocol,tests.test_dispatch -*-
"""
The protocol's side of the descriptor exchange: the ordinals of descriptors
sent, the table of those received, and how long they may stay unclaimed.

L{DescriptorExchange} is mixed into L{pyamp_fds.AMP} and
L{pyamp_fds.BinaryBoxProtocol} as Twisted's own exchanger is into its
protocols; the argument types (L{pyamp_fds.arguments}) reach it only
through its public methods and its C{receivedDescriptors}.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IUNIXTransport
from zope.interface import implementer

from pyamp_fds.arguments import listUnsupported, unsupportedTransport
from pyamp_fds.closer import discard
from pyamp_fds.errors import DescriptorsUnsupported, UnclaimedTooLong
from pyamp_fds.fdio import _fileno
from pyamp_fds.interfaces import IFileDescriptorsReceiver
from pyamp_fds.outgoing import Ownership

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike
    from twisted.internet.interfaces import IDelayedCall, ITransport
    from twisted.python.failure import Failure

    from pyamp_fds.descriptors import ReceivedDescriptors

    _T = TypeVar("_T")

__all__ = ["DescriptorExchange"]

_DUPLICATE = Ownership.DUPLICATE


# On a batching transport (self._batching) the exchange calls what
# IBatchingTransport adds to ITransport: those lines carry a "type: ignore".
@implementer(IFileDescriptorsReceiver)
class DescriptorExchange:
    """
    Descriptors sent and received on one connection.

    @ivar maxUnclaimedSeconds: if not C{None}, the longest the peer may
        keep descriptors unclaimed without a pause (some unclaimed all that
        time) before the connection is closed: a peer that sends descriptors
        and never the boxes naming them holds part of the budget otherwise.
    @ivar allowUncheckedDescriptors: whether to take descriptors from a
        transport that cannot report the ones the kernel dropped
        (C{MSG_CTRUNC}), such as Twisted's own UNIX transports: after a drop,
        every later ordinal names the wrong descriptor, so a box could be
        handed a different file than its sender meant.  Refused by default
        (the connection is closed with
        L{pyamp_fds.errors.DescriptorsUnsupported}); use
        L{pyamp_fds.endpoints}, whose transports report drops.
    """

    maxUnclaimedSeconds: float | None = None
    allowUncheckedDescriptors = False
    _maxUnclaimed = 8192
    _unclaimedTimer: IDelayedCall | None = None
    _sent = 0
    # _sent when the last box was queued: the descriptors queued since are
    # the next box's.
    _sentBeforeBox = 0
    _batching = False
    _failReason: Failure | None = None

    if TYPE_CHECKING:
        # What the protocol this is mixed into provides.
        transport: ITransport | None
        receivedDescriptors: ReceivedDescriptors

        def _protocolError(self, error: Exception) -> None: ...

    @property
    def maxUnclaimedDescriptors(self) -> int:
        """
        How many descriptors the peer may have sent that no box has claimed
        yet; past it, the connection is closed.  At most the descriptor
        budget's per-connection share
        (L{pyamp_fds.budget.DescriptorBudget.share}); 8192 by default, and
        settable.  A L{pyamp_fds.DescriptorList}'s descriptors all arrive
        before its box, so this must leave room for the longest expected.
        """
        budget = self.receivedDescriptors.budget
        if budget is None:
            return self._maxUnclaimed
        return min(self._maxUnclaimed, budget.share)

    @maxUnclaimedDescriptors.setter
    def maxUnclaimedDescriptors(self, value: int) -> None:
        self._maxUnclaimed = value

    @property
    def descriptorsUnclaimed(self) -> int:
        """
        How many descriptors the peer sent that no box has claimed yet.
        """
        return self.receivedDescriptors.unclaimed

    @property
    def descriptorsSent(self) -> int:
        """
        How many descriptors this protocol has queued for sending: the next
        one sent gets this ordinal.
        """
        return self._sent

    # Receiving

    def fileDescriptorReceived(self, descriptor: int) -> None:
        if self._batching:
            # A batching transport reaching us through a wrapper (Twisted's
            # endpoints wrap protocols) that passes descriptors one by one:
            # it received them close-on-exec and checked for drops.
            self.fileDescriptorsReceived((descriptor,))
            return
        # Twisted's own transports receive without MSG_CMSG_CLOEXEC: a
        # child spawned before the box that names it is handled must not
        # inherit it.
        try:
            os.set_inheritable(descriptor, False)
        except OSError as e:
            if e.errno != errno.EBADF:
                raise
            # Not open here (a fake transport's number): it still takes its
            # ordinal, and claiming it gives the number, as in Twisted.
        if not self.allowUncheckedDescriptors:
            discard([descriptor], self.receivedDescriptors.budget)
            self._protocolError(
                DescriptorsUnsupported(
                    "received a descriptor over %r, which cannot report descriptors the "
                    "kernel dropped (MSG_CTRUNC): a later box could be handed the wrong "
                    "file. Use pyamp_fds.endpoints (or adoptStreamConnection) for its "
                    "transports, or set allowUncheckedDescriptors = True to accept the "
                    "risk" % (type(self.transport).__name__,)
                )
            )
            return
        self.fileDescriptorsReceived((descriptor,))

    def fileDescriptorsReceived(self, descriptors: Sequence[int]) -> None:
        """
        Take descriptors in the order they arrived; each gets the next ordinal.
        """
        if self._failReason is not None:
            discard(descriptors, self.receivedDescriptors.budget)
            return
        table = self.receivedDescriptors
        table.receive(descriptors, self.maxUnclaimedDescriptors)
        if self.maxUnclaimedSeconds is not None and self._unclaimedTimer is None:
            self._startUnclaimedTimer()

    def _startUnclaimedTimer(self) -> None:
        from twisted.internet import reactor

        clock = getattr(self.transport, "reactor", None) or reactor
        self._unclaimedTimer = clock.callLater(self.maxUnclaimedSeconds, self._unclaimedTooLong)  # type: ignore[arg-type]
        self._unclaimedSince = self.receivedDescriptors.received

    def _stopUnclaimedTimer(self) -> None:
        if self._unclaimedTimer is not None:
            if self._unclaimedTimer.active():
                self._unclaimedTimer.cancel()
            self._unclaimedTimer = None

    def _unclaimedTooLong(self) -> None:
        self._unclaimedTimer = None
        table = self.receivedDescriptors
        if not table.unclaimed or self._failReason is not None:
            return
        if table.oldestUnclaimed >= self._unclaimedSince:
            # Everything held then has been claimed since: start again.
            self._startUnclaimedTimer()
            return
        self._protocolError(
            UnclaimedTooLong(
                "descriptors received were left unclaimed for over %g seconds"
                % (self.maxUnclaimedSeconds,)  # type: ignore[str-format]
            )
        )

    # Sending

    def serializing(self, toStrings: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """
        Run C{toStrings(*args, **kwargs)}, which makes a box's strings, taking back the
        descriptors its arguments queued if it fails (L{takeBackUnboxed}).
        """
        try:
            return toStrings(*args, **kwargs)
        except BaseException:
            self.takeBackUnboxed()
            raise

    def takeBackUnboxed(self) -> None:
        """
        The box being made failed (its strings could not be made, it does
        not encode, or no box may be sent now): take back the descriptors
        queued since the last box was queued, which are this box's.  It will
        not be sent, so neither may they (the peer would hold them
        unclaimed; handed-over ones are the caller's again), and their
        ordinals are given again.  One rule, whichever path made the box.
        """
        count = self._sent - self._sentBeforeBox
        transport = self.transport
        if count <= 0 or not self._batching or transport is None:
            return
        transport.withdrawDescriptors(transport.descriptorMark() - count)  # type: ignore[attr-defined]
        self._sent -= count

    def sendDescriptor(self, descriptor: FileDescriptorLike, transfer: bool = False) -> int:
        """
        Queue a descriptor on the transport and return its ordinal.

        @param transfer: hand the descriptor over rather than a duplicate
            (a batching transport only).
        @raise twisted.internet.error.ConnectionLost: the connection is gone;
            nothing was queued.
        @raise pyamp_fds.errors.DescriptorsUnsupported: the transport cannot
            send it.
        """
        transport = self.transport
        if transport is None:
            raise ConnectionLost()
        if self._batching:
            transport.sendFileDescriptor(descriptor, transfer)  # type: ignore[attr-defined]
        elif IUNIXTransport.providedBy(transport):
            if transfer:
                raise DescriptorsUnsupported(
                    "transfer=True needs a pyamp_fds transport: Twisted's own cannot "
                    "say when a descriptor has been sent"
                )
            transport.sendFileDescriptor(_fileno(descriptor))
        else:
            raise unsupportedTransport(transport)
        ordinal = self._sent
        self._sent += 1
        return ordinal

    def sendDescriptors(
        self, descriptors: Sequence[int], ownership: Ownership = _DUPLICATE
    ) -> int:
        """
        Queue a run of descriptors (ints) on a batching transport, all or
        none, and return the first one's ordinal; the rest follow it.

        @param ownership: an L{pyamp_fds.outgoing.Ownership}.
        @raise twisted.internet.error.ConnectionLost: the connection is gone;
            nothing was queued.
        @raise pyamp_fds.errors.DescriptorsUnsupported: the transport cannot
            batch them.
        """
        transport = self.transport
        if transport is None:
            raise ConnectionLost()
        if not self._batching:
            raise listUnsupported(transport)
        transport.sendFileDescriptors(descriptors, ownership)  # type: ignore[attr-defined]
        start = self._sent
        self._sent = start + len(descriptors)
        return start
