# -*- test-case-name: tests.test_protocol -*-
"""
Twisted's AMP with the framing in C and the descriptor path batched.

L{AMP} and L{BinaryBoxProtocol} are drop-in subclasses of Twisted's: every
command, responder, locator, protocol switch and TLS start works as there.
What changes:

  - Received bytes are cut into boxes by L{pyamp_fds.codec.BoxDecoder}, a
    whole read at once; boxes are then dispatched one by one, exactly as
    Twisted does, stopping at a protocol switch to hand the rest over.
  - Sent boxes are checked at once (Twisted's C{TooLong} and C{TypeError}
    are raised by C{callRemote} itself) and, on a batching transport
    (L{pyamp_fds.interfaces.IBatchingTransport}), encoded together just before it writes.
  - Received descriptors are held in a
    L{pyamp_fds.descriptors.ReceivedDescriptors} table and
    checked: a box naming one that never arrived, or was already claimed,
    is a protocol error that closes the connection, closes every descriptor
    it held and fails the calls still waiting with a
    L{pyamp_fds.errors.DescriptorProtocolError}.

L{AMP}'s fast paths for commands, answers and calls are in
L{pyamp_fds.dispatch}.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IUNIXTransport
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from pyamp_fds import _twisted
from pyamp_fds.arguments import listUnsupported, unsupportedTransport
from pyamp_fds.budget import processBudget
from pyamp_fds.codec import (
    DEFAULT_MAX_BOX_SIZE,
    MAX_KEY_LENGTH,
    MAX_VALUE_LENGTH,
    BoxDecoder,
    encode_box,
    encode_boxes,
)
from pyamp_fds.credentials import describePeer
from pyamp_fds.descriptors import ReceivedDescriptors
from pyamp_fds.dispatch import FastDispatch
from pyamp_fds.errors import (
    DescriptorsUnsupported,
    FramingError,
    KeyTooLong,
    UnclaimedTooLong,
)
from pyamp_fds.fdio import _fileno, close_all
from pyamp_fds.interfaces import IBatchingTransport, IFileDescriptorsReceiver
from pyamp_fds.outgoing import Ownership

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike
    from twisted.internet.interfaces import IDelayedCall, IProtocolFactory, ITransport
    from twisted.internet.protocol import Protocol

    _T = TypeVar("_T")

__all__ = ["AMP", "BinaryBoxProtocol"]

_log = Logger()

_HANDED_OVER = Ownership.HANDED_OVER
_DUPLICATE = Ownership.DUPLICATE


# On a batching transport (self._batching) the protocol calls what
# IBatchingTransport adds to ITransport; and Twisted leaves much of AMP
# unannotated: the lines that reach those carry a "type: ignore" naming the
# check that cannot see through them.
@implementer(IFileDescriptorsReceiver)
class _Framing(_twisted.BoxProtocolHooks):
    """
    What L{AMP} and L{BinaryBoxProtocol} add to Twisted's classes: framing,
    descriptor ordinals, and the connection's table of received descriptors.

    @ivar maxBoxSize: the largest box accepted from the peer, in bytes.
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
    @ivar receivedDescriptors: the
        L{pyamp_fds.descriptors.ReceivedDescriptors} of this connection.
    """

    maxBoxSize = DEFAULT_MAX_BOX_SIZE
    maxUnclaimedSeconds: float | None = None
    allowUncheckedDescriptors = False
    _maxUnclaimed = 8192
    _unclaimedTimer: IDelayedCall | None = None
    #: While dispatching a long run of boxes from one read, send what they
    #: produced every this many boxes: the peer starts on the first answers
    #: while later ones are still being made, so both ends work at once.
    flushEvery = 128

    _decoder: BoxDecoder | None = None
    _failReason: Failure | None = None
    _batching = False
    _dispatching = False

    _sent = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._startConnectionState()

    def _startConnectionState(self) -> None:
        self.receivedDescriptors = ReceivedDescriptors(self._protocolError)
        # Stock amp.Descriptor arguments claim from the same table.
        self.useDescriptorTable(self.receivedDescriptors)
        self._outgoing: list[Mapping[bytes, bytes]] = []

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

    @property
    def pendingBytes(self) -> int:
        """
        How many received bytes are held for a box not yet complete (none
        once the connection is lost).
        """
        decoder = self._decoder
        return 0 if decoder is None else decoder.pending

    # Connection

    def _ensureConnectionState(self) -> None:
        # A subclass whose __init__ does not call ours (Twisted's own tests
        # have one) gets its state when it is first connected or fed.
        if "receivedDescriptors" not in self.__dict__:
            self._startConnectionState()

    def makeConnection(self, transport: ITransport) -> None:
        self._ensureConnectionState()
        self._batching = IBatchingTransport.providedBy(transport)
        budget = getattr(transport, "descriptorBudget", None)
        self.receivedDescriptors.useBudget(budget if budget is not None else processBudget())
        if self._decoder is None:
            self._decoder = BoxDecoder(amp.AmpBox, self.maxBoxSize)
        super().makeConnection(transport)  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._stopUnclaimedTimer()
        self.receivedDescriptors.closeAll()
        self._outgoing = []
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
        if self._failReason is not None:
            reason = self._failReason
        super().connectionLost(reason)  # type: ignore[no-untyped-call]

    # Receiving boxes

    def dataReceived(self, data: bytes) -> None:
        self.dataArrived()
        if self.innerProtocol is not None:
            self.innerProtocol.dataReceived(data)
            return
        if self._failReason is not None:
            return
        decoder = self._decoder
        if decoder is None:
            # Bytes before makeConnection, as Twisted's own accepts them.
            self._ensureConnectionState()
            decoder = self._decoder = BoxDecoder(amp.AmpBox, self.maxBoxSize)
        try:
            boxes = decoder.feed(data)
            error = None
        except FramingError as e:
            boxes, error = e.boxes, e
        receiver = self.boxReceiver
        table = self.receivedDescriptors
        every = self.flushEvery if self._batching and len(boxes) > self.flushEvery else 0
        self._dispatching = True
        try:
            for index, box in enumerate(boxes):
                receiver.ampBoxReceived(box)
                # What the box claimed is its responder's (or its caller's) now.
                table.boxDispatched()
                if every and index % every == every - 1 and self._outgoing:
                    self.transport.flushNow()  # type: ignore[union-attr]
                if self.innerProtocol is not None:
                    rest = decoder.remainder(index)
                    if rest:
                        self.innerProtocol.dataReceived(rest)
                    return
                if self._failReason is not None:
                    return
        finally:
            self._dispatching = False
            # What the read's boxes claimed leaves the budget, once.
            table.settle()
        if error is not None:
            self._framingError(error)

    def _framingError(self, error: FramingError) -> None:
        if isinstance(error, KeyTooLong):
            # Twisted's own path: connectionLost reports TooLong.
            self.lengthLimitExceeded(MAX_KEY_LENGTH + 1)  # type: ignore[no-untyped-call]
            return
        self._protocolError(error)

    def _protocolError(self, error: Exception) -> None:
        """
        Close the connection for a fault of the peer's: log it once, close
        every descriptor held, and fail the calls waiting with C{error}.
        """
        if self._failReason is None:
            self._failReason = Failure(error)
            _log.error(
                "{protocol}: {error}; closing the connection to {peer}",
                protocol=self.__class__.__name__,
                error=error,
                peer=describePeer(self.transport) if self.transport is not None else "nobody",
            )
        self.receivedDescriptors.closeAll()
        if self.transport is not None:
            self.transport.loseConnection()

    def switchProtocol(
        self, newProto: Protocol, clientFactory: IProtocolFactory | None = None
    ) -> None:
        """
        Hand the connection to C{newProto} (what a
        L{twisted.protocols.amp.ProtocolSwitchCommand}
        does): the switch box, and every box before it, go before the new
        protocol's bytes; bytes after the switch box go to it untouched.
        """
        self.flushBoxes()
        self.innerProtocol = newProto
        self.innerProtocolClientFactory = clientFactory
        newProto.makeConnection(self.transport)  # type: ignore[no-untyped-call]
        if not self._dispatching and self._decoder is not None:
            # Outside dispatch (a responder that answered later): what is
            # held for a box not yet complete belongs to the new protocol.
            rest = self._decoder.takePending()
            if rest:
                newProto.dataReceived(rest)

    # Sending boxes

    def sendBox(self, box: Mapping[bytes, bytes]) -> None:
        # A snapshot: later changes to the caller's box must not reach the wire.
        self._sendOwnBox(box, dict)

    def _sendOwnBox(
        self,
        box: Mapping[bytes, bytes],
        snapshot: Callable[[Mapping[bytes, bytes]], Mapping[bytes, bytes]] | None = None,
    ) -> None:
        """
        L{sendBox} for a box nobody else holds, which needs no snapshot.
        """
        waiting = self.checkCanSend()
        if self.transport is None:
            raise ConnectionLost()
        if waiting is not None:
            waiting.append(box)
        elif not self._batching:
            self.transport.write(encode_box(box))
        else:
            _checkBox(box)
            self._outgoing.append(box if snapshot is None else snapshot(box))
            if len(self._outgoing) == 1:
                self.transport.addWriteHook(self._encodeOutgoing)  # type: ignore[attr-defined]

    def _encodeOutgoing(self) -> bytes:
        boxes, self._outgoing = self._outgoing, []
        return encode_boxes(boxes) if boxes else b""

    def flushBoxes(self) -> None:
        """
        Write the boxes queued for the transport's next write now, ahead of
        anything written after them.
        """
        if self._outgoing and self.transport is not None:
            self.transport.write(b"")

    # Descriptors

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
            close_all([descriptor])
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
            close_all(descriptors)
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

    def serializing(self, toStrings: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """
        Run C{toStrings(*args, **kwargs)}, which makes a box's strings, taking back the
        descriptors its arguments queued if it fails: the box will not be
        sent, so neither may they (the peer would hold them unclaimed;
        handed-over ones are the caller's again), and their ordinals are
        given again.
        """
        transport = self.transport
        if not self._batching or transport is None:
            return toStrings(*args, **kwargs)
        sent, mark = self._sent, transport.descriptorMark()  # type: ignore[attr-defined]
        try:
            return toStrings(*args, **kwargs)
        except BaseException:
            transport.withdrawDescriptors(mark)  # type: ignore[attr-defined]
            self._sent = sent
            raise

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


def _checkBox(box: Mapping[bytes, bytes]) -> None:
    for key, value in box.items():
        if (
            type(key) is not bytes
            or type(value) is not bytes
            or not 0 < len(key) <= MAX_KEY_LENGTH
            or len(value) > MAX_VALUE_LENGTH
        ):
            # The encoder knows the exact error; a bytes-like value is fine.
            encode_box(box)
            return


class BinaryBoxProtocol(_Framing, amp.BinaryBoxProtocol):
    """
    L{twisted.protocols.amp.BinaryBoxProtocol} with the framing in C and
    checked descriptors.
    """


class AMP(FastDispatch, _Framing, _twisted.AMPHooks, amp.AMP):
    """
    L{twisted.protocols.amp.AMP} with the framing in C and checked, batched
    descriptors.

    Commands answered synchronously (a responder that returns a dict) are
    answered without Twisted's C{Deferred} chain; anything else (an
    exception, a L{twisted.internet.defer.Deferred}, a result that does not serialize) runs through
    Twisted's own chain from that point, so the outcome is the same.  Calls
    made with C{callRemote} have their answers parsed before their
    L{twisted.internet.defer.Deferred} fires, rather than by callbacks in front of the caller's:
    the caller sees the same results and errors.
    """
