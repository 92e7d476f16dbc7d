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
L{pyamp_fds.dispatch}, and the descriptor exchange in L{pyamp_fds.exchange}.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from pyamp_fds import _twisted
from pyamp_fds.budget import processBudget
from pyamp_fds.codec import (
    DEFAULT_MAX_BOX_SIZE,
    MAX_KEY_LENGTH,
    BoxDecoder,
    check_box,
    encode_box,
    encode_boxes,
)
from pyamp_fds.credentials import describePeer
from pyamp_fds.descriptors import ReceivedDescriptors
from pyamp_fds.dispatch import FastDispatch
from pyamp_fds.exchange import DescriptorExchange
from pyamp_fds.errors import (
    FramingError,
    KeyTooLong,
    TooManyUnclaimedDescriptors,
)
from pyamp_fds.interfaces import IBatchingTransport

if TYPE_CHECKING:
    from twisted.internet.interfaces import IProtocolFactory, ITransport
    from twisted.internet.protocol import Protocol


__all__ = ["AMP", "BinaryBoxProtocol"]

_log = Logger()


# On a batching transport (self._batching) the protocol calls what
# IBatchingTransport adds to ITransport; and Twisted leaves much of AMP
# unannotated: the lines that reach those carry a "type: ignore" naming the
# check that cannot see through them.
class _Framing(DescriptorExchange, _twisted.BoxProtocolHooks):
    """
    What L{AMP} and L{BinaryBoxProtocol} add to Twisted's classes: framing,
    and the descriptor exchange (L{DescriptorExchange}).

    @ivar maxBoxSize: the largest box accepted from the peer, in bytes.
    @ivar receivedDescriptors: the
        L{pyamp_fds.descriptors.ReceivedDescriptors} of this connection.
    """

    maxBoxSize = DEFAULT_MAX_BOX_SIZE
    #: While dispatching a long run of boxes from one read, send what they
    #: produced every this many boxes: the peer starts on the first answers
    #: while later ones are still being made, so both ends work at once.
    flushEvery = 128

    _decoder: BoxDecoder | None = None
    _failReason: Failure | None = None
    _batching = False
    _dispatching = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._startConnectionState()

    def _startConnectionState(self) -> None:
        self.receivedDescriptors = ReceivedDescriptors(self._protocolError)
        # Stock amp.Descriptor arguments claim from the same table.
        self.useDescriptorTable(self.receivedDescriptors)
        self._outgoing: list[Mapping[bytes, bytes]] = []

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
                peer=describePeer(self.transport),
            )
            if isinstance(error, TooManyUnclaimedDescriptors):
                # A listening port may keep the peer's process out a while.
                penalize = getattr(self.transport, "peerExceededShare", None)
                if penalize is not None:
                    penalize()
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
        checked: bool = False,
    ) -> None:
        """
        L{sendBox} for a box nobody else holds, which needs no snapshot.

        @param checked: the box's keys and values are known to be C{bytes}
            of lengths AMP allows (it was made from a command's plan): it
            needs no check before it is queued.
        """
        try:
            waiting = self.checkCanSend()
            if self.transport is None:
                raise ConnectionLost()
            if self._batching and waiting is None and not checked:
                check_box(box)
        except BaseException:
            # The box goes nowhere: nor may the descriptors queued for it.
            self.takeBackUnboxed()
            raise
        self._sentBeforeBox = self._sent
        if waiting is not None:
            waiting.append(box)
        elif not self._batching:
            self.transport.write(encode_box(box))
        else:
            outgoing = self._outgoing
            outgoing.append(box if snapshot is None else snapshot(box))
            if len(outgoing) == 1:
                self.transport.addWriteHook(self._encodeOutgoing)  # type: ignore[attr-defined]

    def _encodeOutgoing(self) -> bytes:
        boxes, self._outgoing = self._outgoing, []
        if len(boxes) == 1:
            return encode_box(boxes[0])
        return encode_boxes(boxes) if boxes else b""

    def flushBoxes(self) -> None:
        """
        Write the boxes queued for the transport's next write now, ahead of
        anything written after them.
        """
        if self._outgoing and self.transport is not None:
            self.transport.write(b"")


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
