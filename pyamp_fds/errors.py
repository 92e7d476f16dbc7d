# -*- test-case-name: tests.test_errors -*-
"""
Exceptions raised by pyamp_fds, and the one helper that turns C failures into them.
"""

import os

__all__ = [
    "DescriptorsTruncated",
    "FramingError",
    "KeyTooLong",
    "BoxTooLarge",
    "DescriptorProtocolError",
    "UnknownDescriptor",
    "InvalidDescriptorOrdinal",
    "TooManyUnclaimedDescriptors",
    "DescriptorListTooLong",
    "DescriptorsUnsupported",
]


class DescriptorsTruncated(ConnectionError):
    """
    The kernel dropped descriptors in a receive (C{MSG_CTRUNC}): the control
    buffer was too small, the receiver was at C{RLIMIT_NOFILE}, or a security
    module refused them.  How many were lost is unknown, so no ordinal after
    this point can be trusted.  Every descriptor that did arrive in that call
    has already been closed.

    @ivar data: the bytes that arrived with the truncated descriptors.
    @type data: L{bytes}
    """

    def __init__(self, data):
        ConnectionError.__init__(
            self,
            "descriptors were dropped by the kernel (MSG_CTRUNC): receiver at "
            "RLIMIT_NOFILE, control buffer too small, or refused by a security module",
        )
        self.data = data


class FramingError(ValueError):
    """
    The byte stream is not a sequence of AMP boxes.

    @ivar offset: where in the bytes fed so far the offending box or length
        prefix starts, counted from the first byte of the first box that feed
        could not complete.
    @ivar boxes: the boxes completed before the error in the same feed; they
        are valid and may be dispatched before the connection is closed.
    """

    def __init__(self, message, offset=0, boxes=()):
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

    def __init__(self, ordinal, received):
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


class DescriptorListTooLong(DescriptorProtocolError, ValueError):
    """
    A L{pyamp_fds.DescriptorList} longer than its C{maxDescriptors}.  When
    sending, it is raised before any descriptor is duplicated or queued;
    when received, it is a protocol error that closes the connection.
    """


class DescriptorsUnsupported(TypeError):
    """
    A descriptor argument was sent over a transport that cannot carry
    descriptors (not a UNIX socket, e.g. TCP).
    """


def raiseOSError():
    """
    Raise the C{OSError} for C's C{errno}, as the matching subclass
    (C{BlockingIOError} for C{EAGAIN}, C{BrokenPipeError} for C{EPIPE}, ...).
    """
    from pyamp_fds._native import ffi

    code = ffi.errno
    raise OSError(code, os.strerror(code))
