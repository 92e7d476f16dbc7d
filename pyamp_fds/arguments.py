# -*- test-case-name: tests.test_protocol,tests.test_descriptorlist -*-
"""
AMP argument types whose values are descriptors.

On the wire a L{Descriptor} is the same as Twisted's
L{twisted.protocols.amp.Descriptor}: the
decimal ordinal of the descriptor on the connection.  A L{DescriptorList} is
the first ordinal and the count of a run of consecutive ones.

With a pyamp_fds protocol, these types move descriptors only through the
protocol's public methods (C{sendDescriptors}, and the table of received
descriptors, C{receivedDescriptors}); with a stock Twisted protocol they use
Twisted's own descriptor exchange.
"""

from __future__ import annotations

from collections.abc import Iterable
from struct import error as StructError
from typing import TYPE_CHECKING

from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IUNIXTransport
from twisted.protocols import amp

from pyamp_fds import _twisted
from pyamp_fds.codec import MAX_VALUE_LENGTH
from pyamp_fds.errors import (
    DescriptorListTooLong,
    DescriptorsUnsupported,
    InvalidDescriptorOrdinal,
    ReceivedDescriptorListTooLong,
)
from pyamp_fds.fdio import MAX_FDS_PER_MESSAGE, _fileno, close_all, int_array
from pyamp_fds.interfaces import IBatchingTransport
from pyamp_fds.outgoing import Ownership

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

    from pyamp_fds.descriptors import ReceivedDescriptors
    from pyamp_fds.errors import DescriptorProtocolError

__all__ = ["Descriptor", "DescriptorList"]

_DUPLICATE = Ownership.DUPLICATE
_HANDED_OVER = Ownership.HANDED_OVER
_LENT = Ownership.LENT


class Descriptor(amp.Descriptor):
    """
    A descriptor argument, on the wire the same as
    L{twisted.protocols.amp.Descriptor}.

    Ownership is explicit on a pyamp_fds transport:
      - by default a duplicate is sent: the caller may close its own
        descriptor as soon as C{callRemote} (or the responder) returns;
      - with C{transfer=True} the descriptor itself is handed over, and
        closed once sent, or when the connection is lost first.
    A call that raises takes nothing: on a connection already lost
    (L{twisted.internet.error.ConnectionLost}), or when another argument of the same box fails, a
    handed-over descriptor is still the caller's.  On Twisted's own
    transports Twisted's rule holds (keep it open until it has been sent)
    and C{transfer=True} is refused.

    Values may be ints or objects with C{fileno()}.  Received values are
    ints, owned by the receiver.
    """

    def __init__(self, optional: bool = False, transfer: bool = False) -> None:
        """
        @param optional: whether the argument may be left out.
        @param transfer: hand the descriptor itself over (see above).
        """
        amp.Descriptor.__init__(self, optional)
        self.transfer = transfer

    def toStringProto(self, inObject: FileDescriptorLike, proto: amp.BinaryBoxProtocol) -> bytes:
        send = getattr(proto, "sendDescriptor", None)
        if send is not None:
            return b"%d" % (send(inObject, self.transfer),)
        # A stock protocol.
        if not isinstance(proto, amp.BinaryBoxProtocol):
            raise notAProtocol(proto)
        transport = proto.transport
        if IBatchingTransport.providedBy(transport):
            transport.sendFileDescriptor(inObject, self.transfer)
            return b"%d" % (_twisted.nextSendingOrdinal(proto),)
        if not IUNIXTransport.providedBy(transport):
            raise unsupportedTransport(transport)
        if self.transfer:
            raise DescriptorsUnsupported("transfer=True needs a pyamp_fds transport")
        return b"%d" % (_twisted.sendStockDescriptor(proto, _fileno(inObject)),)

    def fromStringProto(self, inString: bytes, proto: amp.BinaryBoxProtocol) -> int:
        table: ReceivedDescriptors | None = getattr(proto, "receivedDescriptors", None)
        if not inString.isdigit():
            error = InvalidDescriptorOrdinal(
                "descriptor argument %r is not a decimal ordinal" % (inString,)
            )
            if table is not None:
                table.refuse(error)
            raise error
        if table is not None:
            return table.claim(int(inString))
        if not isinstance(proto, amp.BinaryBoxProtocol):
            raise notAProtocol(proto)
        return _twisted.claimStockDescriptor(proto, int(inString))


class DescriptorList(amp.Argument):
    """
    An argument whose value is a list of descriptors (ints or objects with
    C{fileno()}), empty lists included.  Received values are lists of ints,
    owned by the receiver.

    Ownership is as for L{Descriptor}: by default duplicates are sent and the
    caller may close its own descriptors as soon as C{callRemote} (or the
    responder) returns; with C{transfer=True} the descriptors themselves are
    handed over and closed once sent, or when the connection is lost first.
    With C{duplicate=False}, the descriptors themselves are lent: sent and
    left open, Twisted's own rule: the caller must keep them open until they
    have gone (for a command argument, until the call's
    L{twisted.internet.defer.Deferred} fires).
    It spares two system calls per descriptor (duplicating and closing),
    which is most of the sender's cost.

    The descriptors of one list are queued together, so their ordinals on
    the connection are consecutive and the box carries only the first and
    the count: C{b"START:COUNT"} in decimal.  The kernel needs one byte of
    data for every C{sendmsg} that carries descriptors, 253 at most, so the
    value is padded with spaces to at least one byte per 253 descriptors:
    however small the rest of the box, every group of descriptors then has a
    byte of its box to travel with, and all of them arrive before the box
    is complete.  The receiver checks the value strictly (it must be exactly
    what this class writes for that start and count); a malformed value, a
    list longer than the receiver's C{maxDescriptors}, or an ordinal not
    received or already claimed closes the connection as L{Descriptor}'s
    faults do, with every descriptor it held.

    Why not C{amp.ListOf(amp.Descriptor())}: C{ListOf} serializes its
    elements with their C{toString}, which is not given the protocol, but a
    descriptor's value is an ordinal only the connection can give (and the
    descriptor must be queued on its transport), so
    L{twisted.protocols.amp.Descriptor} works
    only through C{toStringProto}; C{ListOf} can neither number nor send
    descriptors, nor claim them on receipt.

    Sending needs a pyamp_fds transport (an
    L{pyamp_fds.interfaces.IBatchingTransport}):
    Twisted's own sends one byte per descriptor and loses the connection
    when a box has fewer bytes than it has descriptors queued, which a list
    of any length would soon do, so it is refused there with
    L{pyamp_fds.errors.DescriptorsUnsupported}, before anything is queued.  Any protocol
    receives them, over any UNIX transport.

    A receiving L{pyamp_fds.AMP} holds at most C{maxUnclaimedDescriptors}
    descriptors that no box has claimed yet, and a list's descriptors all
    arrive before its box: that limit must leave room for the longest list
    expected.

    @ivar maxDescriptors: the longest list sent or accepted; a longer one is
        refused when sending with L{pyamp_fds.errors.DescriptorListTooLong}
        before any
        descriptor is duplicated or queued, and is a protocol error when
        received.
    @ivar ownership: the L{pyamp_fds.outgoing.Ownership} of the descriptors
        sent.
    """

    def __init__(
        self,
        optional: bool = False,
        transfer: bool = False,
        maxDescriptors: int = 4096,
        duplicate: bool = True,
    ) -> None:
        """
        @param optional: whether the argument may be left out.
        @param transfer: hand the descriptors themselves over.
        @param maxDescriptors: see L{maxDescriptors}.
        @param duplicate: if false (and not C{transfer}), lend the caller's
            descriptors instead of sending duplicates.
        """
        amp.Argument.__init__(self, optional)
        if not 0 <= maxDescriptors <= _MAX_LIST_LENGTH:
            raise ValueError(
                "maxDescriptors must be between 0 and %d" % (_MAX_LIST_LENGTH,)
            )
        self.transfer = transfer
        self.duplicate = duplicate
        self.maxDescriptors = maxDescriptors
        if transfer:
            self.ownership = _HANDED_OVER
        elif duplicate:
            self.ownership = _DUPLICATE
        else:
            self.ownership = _LENT

    def toStringProto(
        self, inObject: Iterable[FileDescriptorLike], proto: amp.BinaryBoxProtocol
    ) -> bytes:
        descriptors = list(inObject)
        count = len(descriptors)
        if count > self.maxDescriptors:
            raise DescriptorListTooLong(
                "%d descriptors in one DescriptorList, more than its maxDescriptors (%d)"
                % (count, self.maxDescriptors)
            )
        try:
            # Ints (the common case) are packed once here, and go on to C as
            # they are: duplicated, sent, closed.
            filenos = int_array(descriptors)  # type: ignore[arg-type]
        except StructError:
            filenos = int_array([_fileno(d) for d in descriptors])
        send = getattr(proto, "sendDescriptors", None)
        if send is not None:
            return _encodeRange(send(filenos, self.ownership), count)
        # A stock protocol over a batching transport: it counts its
        # ordinals one at a time.
        if not isinstance(proto, amp.BinaryBoxProtocol):
            raise notAProtocol(proto)
        transport = proto.transport
        if transport is None:
            raise ConnectionLost()
        if not IBatchingTransport.providedBy(transport):
            raise listUnsupported(transport)
        transport.sendFileDescriptors(filenos, self.ownership)
        start = _twisted.nextSendingOrdinal(proto) if count else 0
        for _ in range(count - 1):
            _twisted.nextSendingOrdinal(proto)
        return _encodeRange(start, count)

    def fromStringProto(self, inString: bytes, proto: amp.BinaryBoxProtocol) -> list[int]:
        table: ReceivedDescriptors | None = getattr(proto, "receivedDescriptors", None)
        # count is an int wherever start is one: mypy does not pair them, so
        # its uses below carry a "type: ignore".
        start, count = _decodeRange(inString)
        error: DescriptorProtocolError
        if start is None:
            error = InvalidDescriptorOrdinal(
                "DescriptorList value %r is not START:COUNT" % (inString[:40],)
            )
        elif count > self.maxDescriptors:  # type: ignore[operator]
            error = ReceivedDescriptorListTooLong(
                "the peer sent a DescriptorList of %d descriptors, more than its "
                "maxDescriptors (%d)" % (count, self.maxDescriptors)  # type: ignore[str-format]
            )
        elif table is not None:
            return table.claimRange(start, count)  # type: ignore[arg-type]
        elif not isinstance(proto, amp.BinaryBoxProtocol):
            raise notAProtocol(proto)
        else:
            return _claimStockRange(proto, start, count)  # type: ignore[arg-type]
        if table is not None:
            table.refuse(error)
        raise error


def unsupportedTransport(transport: object) -> DescriptorsUnsupported:
    """
    The error for sending a descriptor over a transport that cannot.
    """
    return DescriptorsUnsupported(
        "descriptors can only be sent over a UNIX socket transport, not %r" % (transport,)
    )


def notAProtocol(proto: object) -> DescriptorsUnsupported:
    """
    The error for a descriptor argument serialized or parsed with something
    other than the connection's protocol: Twisted's own responder wrapper
    passes a locator separate from its protocol in the protocol's place.
    """
    return DescriptorsUnsupported(
        "descriptors are sent and received by a connection's protocol, not by %r: a "
        "locator separate from its pyamp_fds.AMP takes and returns descriptors when it "
        "finds its responders as CommandLocator does (without overriding "
        "locateResponder)" % (proto,)
    )


def listUnsupported(transport: object) -> DescriptorsUnsupported:
    """
    The error for sending a L{DescriptorList} over a transport that cannot
    batch descriptors.
    """
    return DescriptorsUnsupported(
        "DescriptorList needs a pyamp_fds transport to send, not %r" % (transport,)
    )


# A value holds at most 65535 bytes, so a padded one can stand for this many.
_MAX_LIST_LENGTH = MAX_FDS_PER_MESSAGE * MAX_VALUE_LENGTH


def _encodeRange(start: int, count: int) -> bytes:
    value = b"%d:%d" % (start, count)
    short = -(-count // MAX_FDS_PER_MESSAGE) - len(value)
    if short > 0:
        value += b" " * short
    return value


def _decodeRange(value: bytes) -> tuple[int, int] | tuple[None, None]:
    """
    Return C{(start, count)} for a value L{_encodeRange} wrote, or
    C{(None, None)} for anything else.
    """
    value = bytes(value)
    head, colon, tail = value.rstrip(b" ").partition(b":")
    # Bounded lengths: int() of a long digit string is slow, and refused.
    if not (colon and head.isdigit() and tail.isdigit() and len(head) <= 20 and len(tail) <= 10):
        return None, None
    start, count = int(head), int(tail)
    if count > _MAX_LIST_LENGTH or _encodeRange(start, count) != value:
        return None, None
    return start, count


def _claimStockRange(proto: amp.BinaryBoxProtocol, start: int, count: int) -> list[int]:
    # A stock protocol: its own claim raises as for its own Descriptor.
    claimed: list[int] = []
    try:
        for ordinal in range(start, start + count):
            claimed.append(_twisted.claimStockDescriptor(proto, ordinal))
    except BaseException:
        close_all(claimed)
        raise
    return claimed
