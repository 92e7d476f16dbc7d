# -*- test-case-name: tests.test_protocol,tests.test_codec,tests.test_fdio -*-
"""
Exceptions raised by pyamp_fds, and the one helper that turns C failures into them.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Sequence

__all__ = [
    "DescriptorsTruncated",
    "FramingError",
    "KeyTooLong",
    "BoxTooLarge",
    "DescriptorProtocolError",
    "UnknownDescriptor",
    "InvalidDescriptorOrdinal",
    "TooManyUnclaimedDescriptors",
    "UnclaimedTooLong",
    "DescriptorListTooLong",
    "ReceivedDescriptorListTooLong",
    "DescriptorsUnsupported",
    "DescriptorBudgetExhausted",
]


class DescriptorsTruncated(ConnectionError):
    """
    The kernel dropped descriptors in a receive (C{MSG_CTRUNC}): the control
    buffer was too small, the receiver was at C{RLIMIT_NOFILE}, or a security
    module refused them.  How many were lost is unknown, so no ordinal after
    this point can be trusted, and none of the descriptors that did arrive in
    that call may be used.

    @ivar data: the bytes that arrived with the truncated descriptors.
    @type data: C{bytes}
    @ivar descriptors: the descriptors that did arrive and are still open,
        for whoever catches this to close; empty when they were closed
        before it was raised (as L{pyamp_fds.fdio.recv_with_fds} does).
    @type descriptors: a sequence of C{int}
    """

    def __init__(self, data: bytes, descriptors: Sequence[int] = ()) -> None:
        ConnectionError.__init__(
            self,
            "descriptors were dropped by the kernel (MSG_CTRUNC): receiver at "
            "RLIMIT_NOFILE, control buffer too small, or refused by a security module",
        )
        self.data = data
        self.descriptors = descriptors


class FramingError(ValueError):
    """
    The byte stream is not a sequence of AMP boxes.

    @ivar offset: where in the bytes fed so far the offending box or length
        prefix starts, counted from the first byte of the first box that feed
        could not complete.
    @ivar boxes: the boxes completed before the error in the same feed; they
        are valid and may be dispatched before the connection is closed.
    """

    def __init__(self, message: str, offset: int = 0, boxes: Iterable[dict[bytes, bytes]] = ()) -> None:
        ValueError.__init__(self, message)
        self.offset = offset
        self.boxes = list(boxes)


class KeyTooLong(FramingError):
    """
    A key length prefix over 255: the condition Twisted reports as
    L{twisted.protocols.amp.TooLong}.
    """


class BoxTooLarge(FramingError):
    """
    A box longer than the decoder's C{max_box_size}: refused before it is
    buffered whole, so a peer cannot grow our memory without bound.
    """


class DescriptorProtocolError(ConnectionError):
    """
    The peer broke the descriptor-passing rules of the connection; it has
    been closed, with every descriptor it held, and every call still waiting
    for an answer fails with this error.
    """


class UnknownDescriptor(DescriptorProtocolError):
    """
    A box named a descriptor ordinal that has not been received, or was
    already claimed by another argument.

    @ivar ordinal: the ordinal named.
    """

    def __init__(self, ordinal: int, received: int) -> None:
        state = "was already claimed" if ordinal < received else "has not been received"
        DescriptorProtocolError.__init__(
            self,
            "descriptor %d %s (%d received on this connection)" % (ordinal, state, received),
        )
        self.ordinal = ordinal


class InvalidDescriptorOrdinal(DescriptorProtocolError):
    """
    A descriptor argument's value is not a decimal ordinal.
    """


class TooManyUnclaimedDescriptors(DescriptorProtocolError):
    """
    The peer sent more descriptors than any box claimed, past the
    connection's limit (C{maxUnclaimedDescriptors}).
    """


class UnclaimedTooLong(DescriptorProtocolError):
    """
    The peer left descriptors unclaimed for longer than the connection's
    C{maxUnclaimedSeconds}.
    """


class DescriptorListTooLong(ValueError):
    """
    A L{pyamp_fds.DescriptorList} longer than its C{maxDescriptors}, given
    to send: raised before any descriptor is duplicated or queued.  One
    received from the peer is a L{ReceivedDescriptorListTooLong}.
    """


class ReceivedDescriptorListTooLong(DescriptorListTooLong, DescriptorProtocolError):
    """
    The peer sent a L{pyamp_fds.DescriptorList} longer than the receiving
    argument's C{maxDescriptors}: a protocol error that closes the
    connection.
    """


class DescriptorsUnsupported(TypeError):
    """
    A descriptor argument was sent over a transport that cannot carry
    descriptors (not a UNIX socket, e.g. TCP).
    """


class DescriptorBudgetExhausted(OSError):
    """
    Duplicates could not be queued: they would take the connection past its
    share of the descriptor budget, or the budget past its limit (its
    C{errno} is C{EMFILE}).  A peer that does not read what it is sent gets
    this for the answers that would carry descriptors, rather than making
    the process hold more.
    """


def nativeError(
    code: int,
    boxes: Iterable[dict[bytes, bytes]] | None = None,
    offset: int = 0,
    parts: Sequence[bytes] | None = None,
    index: int = 0,
) -> Exception:
    """
    The exception for a failed call into C{pyamp_fds._native}, for the
    caller to raise.  Every C function there that can fail returns -1 (or
    C{NULL}) with C{errno} set: this is the one place that turns that
    C{errno} into an exception.

    @param code: the C{errno} (C{ffi.errno} right after the call).
    @param boxes: for the box decoder: the boxes completed before the fault,
        which lies at C{offset}.  Its C{ENAMETOOLONG} is then L{KeyTooLong},
        C{EMSGSIZE} L{BoxTooLarge} and C{ENOMEM} C{MemoryError}.
    @param parts: for the box encoder: the keys and values it was given,
        C{parts[index]} the one it refused.  Its C{ENAMETOOLONG} and
        C{EMSGSIZE} are then Twisted's C{TooLong} for that key or value; any
        other error is a broken invariant of the caller's (an
        C{AssertionError}).
    @return: otherwise, the C{OSError} for C{code}, as the matching subclass
        (C{BlockingIOError} for C{EAGAIN}, C{BrokenPipeError} for C{EPIPE},
        ...).
    """
    if boxes is not None:
        if code == errno.ENAMETOOLONG:
            return KeyTooLong("AMP key length prefix over 255 bytes", offset, boxes)
        if code == errno.EMSGSIZE:
            return BoxTooLarge("AMP box over the size limit", offset, boxes)
        if code == errno.ENOMEM:
            return MemoryError()
        return FramingError("AMP framing error: %s" % (os.strerror(code),), offset, boxes)
    if parts is not None:
        from twisted.protocols.amp import TooLong

        if code == errno.ENAMETOOLONG:
            return TooLong(True, True, parts[index], None)
        if code == errno.EMSGSIZE:
            return TooLong(False, True, parts[index], parts[index - 1])
        return AssertionError(
            "pyamp_fds encoder invariant broken: %s at part %d" % (os.strerror(code), index)
        )
    return OSError(code, os.strerror(code))
