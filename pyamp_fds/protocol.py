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
    are raised by C{callRemote} itself) and, on a pyamp_fds transport,
    encoded together just before the transport writes.
  - Descriptors are held per connection and checked: a box naming one that
    never arrived, or was already claimed, is a protocol error that closes
    the connection, closes every descriptor it held and fails the calls
    still waiting with a L{DescriptorProtocolError}.
"""

from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IUNIXTransport
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from pyamp_fds.codec import (
    DEFAULT_MAX_BOX_SIZE,
    MAX_KEY_LENGTH,
    MAX_VALUE_LENGTH,
    BoxDecoder,
    encode_box,
    encode_boxes,
)
from pyamp_fds.errors import (
    BoxTooLarge,
    DescriptorsUnsupported,
    FramingError,
    InvalidDescriptorOrdinal,
    KeyTooLong,
    TooManyUnclaimedDescriptors,
    UnknownDescriptor,
)
from pyamp_fds.fdio import close_all
from pyamp_fds.transport import isBatching

__all__ = ["AMP", "BinaryBoxProtocol", "Descriptor"]

_log = Logger()


def _fileno(descriptor):
    return descriptor if isinstance(descriptor, int) else descriptor.fileno()


class _Accelerated:
    """
    What L{AMP} and L{BinaryBoxProtocol} add to Twisted's classes.

    @ivar maxUnclaimedDescriptors: how many descriptors the peer may have
        sent that no box has claimed yet; past it, the connection is closed.
    @ivar maxBoxSize: the largest box accepted from the peer, in bytes.
    """

    maxUnclaimedDescriptors = 1024
    maxBoxSize = DEFAULT_MAX_BOX_SIZE

    _decoder = None
    _failReason = None
    _batching = False
    _dispatching = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Twisted's exchanger set this to a plain dict.pop: replace it with
        # the checked claim, for stock amp.Descriptor arguments too.
        self._getDescriptor = self._claimDescriptor
        self._received = 0
        self._sent = 0
        self._claimedInBox = []
        self._outgoing = []

    # Connection

    def makeConnection(self, transport):
        self._decoder = BoxDecoder(amp.AmpBox, self.maxBoxSize)
        self._batching = isBatching(transport)
        super().makeConnection(transport)

    def connectionLost(self, reason):
        self._closeUnclaimed()
        self._outgoing = []
        if self._decoder is not None:
            self._decoder.close()
        if self._failReason is not None:
            reason = self._failReason
        super().connectionLost(reason)

    # Receiving boxes

    def dataReceived(self, data):
        if self._justStartedTLS:
            self._justStartedTLS = False
        if self.innerProtocol is not None:
            self.innerProtocol.dataReceived(data)
            return
        if self._failReason is not None:
            return
        try:
            boxes = self._decoder.feed(data)
            error = None
        except FramingError as e:
            boxes, error = e.boxes, e
        receiver = self.boxReceiver
        self._dispatching = True
        try:
            for index, box in enumerate(boxes):
                self._claimedInBox = []
                receiver.ampBoxReceived(box)
                self._claimedInBox = []
                if self.innerProtocol is not None:
                    rest = self._decoder.remainder(index)
                    if rest:
                        self.innerProtocol.dataReceived(rest)
                    return
                if self._failReason is not None:
                    return
        finally:
            self._dispatching = False
        if error is not None:
            self._framingError(error)

    def _framingError(self, error):
        if isinstance(error, KeyTooLong):
            # Twisted's own path: connectionLost reports TooLong.
            self.lengthLimitExceeded(MAX_KEY_LENGTH + 1)
            return
        self._protocolError(error)

    def _protocolError(self, error):
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
                peer=self.transport.getPeer() if self.transport is not None else None,
            )
        self._closeUnclaimed()
        if self.transport is not None:
            self.transport.loseConnection()

    def _switchTo(self, newProto, clientFactory=None):
        # The switch box, and every box before it, go before the new
        # protocol's bytes.
        self._flushOutgoing()
        self.innerProtocol = newProto
        self.innerProtocolClientFactory = clientFactory
        newProto.makeConnection(self.transport)
        if not self._dispatching:
            # Outside dispatch (a responder that answered later): what is
            # held for a box not yet complete belongs to the new protocol.
            rest = self._decoder.takePending()
            if rest:
                newProto.dataReceived(rest)

    def _startTLS(self, certificate, verifyAuthorities):
        self._flushOutgoing()
        return super()._startTLS(certificate, verifyAuthorities)

    # Sending boxes

    def sendBox(self, box):
        if self._locked:
            raise amp.ProtocolSwitched(
                "This connection has switched: no AMP traffic allowed."
            )
        if self.transport is None:
            raise ConnectionLost()
        if self._startingTLSBuffer is not None:
            self._startingTLSBuffer.append(box)
        elif not self._batching:
            self.transport.write(encode_box(box))
        else:
            _checkBox(box)
            # A snapshot: later changes to the box must not reach the wire.
            self._outgoing.append(dict(box))
            if len(self._outgoing) == 1:
                self.transport.addWriteHook(self._encodeOutgoing)

    def _encodeOutgoing(self):
        boxes, self._outgoing = self._outgoing, []
        return encode_boxes(boxes) if boxes else b""

    def _flushOutgoing(self):
        if self._outgoing and self.transport is not None:
            self.transport.write(b"")

    # Descriptors

    def fileDescriptorReceived(self, descriptor):
        self.fileDescriptorsReceived((descriptor,))

    def fileDescriptorsReceived(self, descriptors):
        """
        Take descriptors in the order they arrived; each gets the next ordinal.
        """
        if self._failReason is not None:
            close_all(descriptors)
            return
        start = self._received
        self._received = start + len(descriptors)
        self._descriptors.update(zip(range(start, self._received), descriptors))
        if len(self._descriptors) > self.maxUnclaimedDescriptors:
            self._protocolError(
                TooManyUnclaimedDescriptors(
                    "%d descriptors received and not claimed by any box (limit %d)"
                    % (len(self._descriptors), self.maxUnclaimedDescriptors)
                )
            )

    def _claimDescriptor(self, ordinal):
        try:
            descriptor = self._descriptors.pop(ordinal)
        except KeyError:
            error = UnknownDescriptor(ordinal, self._received)
            self._protocolError(error)
            raise error from None
        # Until the box is dispatched, a fault in a later argument must not
        # leave this one with nobody.
        self._claimedInBox.append(descriptor)
        return descriptor

    def _closeUnclaimed(self):
        held = list(self._descriptors.values()) + self._claimedInBox
        self._descriptors.clear()
        self._claimedInBox = []
        close_all(held)

    def _sendDescriptor(self, descriptor, transfer):
        """
        Queue a descriptor on the transport and return its ordinal.
        """
        transport = self.transport
        if transport is None:
            raise ConnectionLost()
        if self._batching:
            transport.sendFileDescriptor(descriptor, transfer)
        elif IUNIXTransport.providedBy(transport):
            if transfer:
                raise DescriptorsUnsupported(
                    "transfer=True needs a pyamp_fds transport: Twisted's own cannot "
                    "say when a descriptor has been sent"
                )
            transport.sendFileDescriptor(_fileno(descriptor))
        else:
            raise _unsupported(transport)
        ordinal = self._sent
        self._sent += 1
        return ordinal

    def _sendFileDescriptor(self, descriptor):
        # Stock amp.Descriptor arguments come here.
        return self._sendDescriptor(descriptor, False)


def _unsupported(transport):
    return DescriptorsUnsupported(
        "descriptors can only be sent over a UNIX socket transport, not %r" % (transport,)
    )


def _checkBox(box):
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


class BinaryBoxProtocol(_Accelerated, amp.BinaryBoxProtocol):
    """
    L{amp.BinaryBoxProtocol} with the framing in C and checked descriptors.
    """


class AMP(_Accelerated, amp.AMP):
    """
    L{amp.AMP} with the framing in C and checked, batched descriptors.
    """


class Descriptor(amp.Descriptor):
    """
    A descriptor argument, on the wire the same as L{amp.Descriptor}.

    On a pyamp_fds transport, ownership is explicit: by default the caller
    may close its descriptor as soon as C{callRemote} (or the responder)
    returns, since a duplicate is sent; with C{transfer=True} the descriptor
    itself is handed over and closed once sent, or when the connection is
    lost first.  On Twisted's own transports, Twisted's rule holds (keep it
    open until it has been sent) and C{transfer=True} is refused.

    Values may be ints or objects with C{fileno()}.  Received values are
    ints, owned by the receiver.
    """

    def __init__(self, optional=False, transfer=False):
        amp.Descriptor.__init__(self, optional)
        self.transfer = transfer

    def toStringProto(self, inObject, proto):
        send = getattr(proto, "_sendDescriptor", None)
        if send is not None:
            return b"%d" % (send(inObject, self.transfer),)
        # A stock protocol.
        transport = proto.transport
        if isBatching(transport):
            transport.sendFileDescriptor(inObject, self.transfer)
            return b"%d" % (proto._sendingDescriptorCounter(),)
        if not IUNIXTransport.providedBy(transport):
            raise _unsupported(transport)
        if self.transfer:
            raise DescriptorsUnsupported("transfer=True needs a pyamp_fds transport")
        return b"%d" % (proto._sendFileDescriptor(_fileno(inObject)),)

    def fromStringProto(self, inString, proto):
        if not inString.isdigit():
            error = InvalidDescriptorOrdinal(
                "descriptor argument %r is not a decimal ordinal" % (inString,)
            )
            if isinstance(proto, _Accelerated):
                proto._protocolError(error)
            raise error
        return proto._getDescriptor(int(inString))
