# -*- test-case-name: tests.test_fdio -*-
"""
Batched descriptor passing on a connected C{AF_UNIX} stream socket.

One call is one C{sendmsg} or one C{recvmsg}, carrying up to
C{MAX_FDS_PER_MESSAGE} descriptors.  The socket's own blocking mode applies:
on a non-blocking socket, a call that would block raises C{BlockingIOError}.
"""

from __future__ import annotations

import os
import socket
from array import array
from collections.abc import Sequence
from struct import Struct
from typing import TYPE_CHECKING, Any

from pyamp_fds._native import ffi, lib
from pyamp_fds.errors import DescriptorsTruncated, nativeError

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike, ReadableBuffer, WriteableBuffer

__all__ = [
    "MAX_FDS_PER_MESSAGE",
    "send_with_fds",
    "recv_with_fds",
    "recv_into_with_fds",
    "duplicate_all",
    "duplicate_array",
    "int_array",
    "close_all",
    "Receiver",
]

#: The kernel's C{SCM_MAX_FD}: the most descriptors one C{sendmsg} may carry.
MAX_FDS_PER_MESSAGE: int = lib.PAF_MAX_FDS_PER_MESSAGE

# A plain int: socket.MSG_CTRUNC is an IntFlag, slow to test on every read.
_MSG_CTRUNC = int(socket.MSG_CTRUNC)

_uninitialized = ffi.new_allocator(should_clear_after_alloc=False)
_BYTES_LIKE = (bytes, bytearray, memoryview)


def _fileno(descriptor: FileDescriptorLike) -> int:
    # The number of a descriptor given as an int or an object with fileno();
    # the package's other modules use this one too.
    return descriptor if isinstance(descriptor, int) else descriptor.fileno()


# Packing ints with struct is several times faster than cffi's or array's
# conversion of a list; one Struct per count, made once.
_packers = [Struct("%di" % (n,)) for n in range(MAX_FDS_PER_MESSAGE + 1)]


def _fdArray(fds: Sequence[FileDescriptorLike]) -> Any:
    if type(fds) is array and fds.typecode == "i":
        return ffi.from_buffer("int[]", fds)
    count = len(fds)
    packer = _packers[count] if count <= MAX_FDS_PER_MESSAGE else Struct("%di" % (count,))
    try:
        packed = packer.pack(*fds)
    except Exception:
        packed = packer.pack(*[_fileno(f) for f in fds])
    return ffi.from_buffer("int[]", packed)


def int_array(fds: Sequence[int]) -> array[int]:
    """
    Descriptor numbers (ints) as an C{array('i')}: the form the rest of this
    module passes to C without converting each one again.  An C{array('i')}
    is returned as it is.

    @raise struct.error: one of them is not an int (or out of C{int}'s range).
    """
    if type(fds) is array and fds.typecode == "i":
        return fds
    count = len(fds)
    packer = _packers[count] if count <= MAX_FDS_PER_MESSAGE else Struct("%di" % (count,))
    return array("i", packer.pack(*fds))


def _unpackFds(cArray: Any, count: int) -> list[int]:
    if not count:
        return []
    if count == 1:
        return [cArray[0]]
    return array("i", ffi.buffer(cArray, count * _INT_SIZE)[:]).tolist()


_INT_SIZE = ffi.sizeof("int")


def send_with_fds(
    sockfd: FileDescriptorLike,
    data: bytes | bytearray | memoryview | Sequence[ReadableBuffer],
    fds: Sequence[FileDescriptorLike] = (),
) -> tuple[int, int]:
    """
    Send C{data} with C{fds} attached, in one C{sendmsg} (C{MSG_NOSIGNAL}).

    @param sockfd: a connected C{AF_UNIX} stream socket (an int, or an object
        with C{fileno()}).
    @param data: a bytes-like object, or a sequence of them sent as one
        iovec without joining them.
    @param fds: up to C{MAX_FDS_PER_MESSAGE} descriptors (ints or objects with
        C{fileno()}).  They are duplicated into the receiver; the caller keeps
        its own copies.

    @return: C{(bytes_sent, fds_sent)}.  The descriptors travel with the first
        byte, so C{fds_sent} is C{len(fds)} whenever anything was sent: a
        partial send must go on without them.
    @raise ValueError: more than C{MAX_FDS_PER_MESSAGE} descriptors, or
        descriptors without any data to carry them.
    @raise BlockingIOError: a non-blocking socket's buffer is full.
    @raise OSError: any other failure, with its C{errno} (C{BrokenPipeError}
        when the peer has gone; no C{SIGPIPE} is raised).
    """
    nfds = len(fds)
    if nfds > MAX_FDS_PER_MESSAGE:
        raise ValueError(
            "at most %d descriptors fit in one message, not %d"
            % (MAX_FDS_PER_MESSAGE, nfds)
        )
    fdArray = _fdArray(fds) if nfds else ffi.NULL
    if type(sockfd) is not int:
        # Not exactly an int: an object with fileno(), as documented.
        sockfd = sockfd.fileno()  # type: ignore[union-attr]
    if type(data) is bytes:
        # cffi passes a bytes object's own buffer: no copy, no wrapper.
        if nfds and not data:
            raise ValueError("descriptors need at least one byte of data to travel with")
        sent = lib.paf_send(sockfd, data, len(data), fdArray, nfds, 0)
    elif isinstance(data, _BYTES_LIKE):
        view = ffi.from_buffer(data)
        if nfds and not len(view):
            raise ValueError("descriptors need at least one byte of data to travel with")
        sent = lib.paf_send(sockfd, view, len(view), fdArray, nfds, 0)
    else:
        buffers = [ffi.from_buffer(b) for b in data]
        if nfds and not any(len(b) for b in buffers):
            raise ValueError("descriptors need at least one byte of data to travel with")
        iov = ffi.new("struct iovec[]", len(buffers))
        for vec, buf in zip(iov, buffers):
            vec.iov_base = buf
            vec.iov_len = len(buf)
        sent = lib.paf_sendmsg(sockfd, iov, len(buffers), fdArray, nfds, 0)
    if sent < 0:
        raise nativeError(ffi.errno)
    return sent, (nfds if sent > 0 else 0)


def recv_into_with_fds(
    sockfd: FileDescriptorLike, buffer: WriteableBuffer, max_fds: int = MAX_FDS_PER_MESSAGE
) -> tuple[int, list[int], int]:
    """
    Receive into a writable buffer, with room for C{max_fds} descriptors.

    Received descriptors are close-on-exec.  Control messages other than
    C{SCM_RIGHTS} are ignored.

    @return: C{(nbytes, fds, flags)}: the bytes read (0 at end of stream), the
        descriptors now owned by the caller, and the kernel's C{msg_flags}.
    @raise DescriptorsTruncated: the kernel dropped descriptors
        (C{MSG_CTRUNC}), or more than C{max_fds} arrived; those that did
        arrive are already closed, and the exception's C{data} holds the
        bytes read.
    """
    if not 0 <= max_fds <= MAX_FDS_PER_MESSAGE:
        raise ValueError("max_fds must be between 0 and %d" % (MAX_FDS_PER_MESSAGE,))
    view = ffi.from_buffer(buffer, require_writable=True)
    # Room for every descriptor that may arrive, whatever max_fds is: a
    # truncated receive returns them too.
    fds = ffi.new("int[]", MAX_FDS_PER_MESSAGE)
    out = ffi.new("int[2]")
    got = lib.paf_recvmsg(_fileno(sockfd), view, len(view), fds, max_fds, out, out + 1)
    if got < 0:
        raise nativeError(ffi.errno)
    if out[1] & _MSG_CTRUNC:
        close_all(_unpackFds(fds, out[0]))
        raise DescriptorsTruncated(bytes(memoryview(buffer)[:got]))
    return got, _unpackFds(fds, out[0]), out[1]


def recv_with_fds(
    sockfd: FileDescriptorLike, max_bytes: int, max_fds: int = MAX_FDS_PER_MESSAGE
) -> tuple[bytes, list[int], int]:
    """
    Receive up to C{max_bytes} with room for C{max_fds} descriptors, in one
    C{recvmsg}.  See L{recv_into_with_fds}.

    @return: C{(data, fds, flags)}; C{data} is empty at end of stream.
    """
    if max_bytes < 0:
        raise ValueError("max_bytes must not be negative")
    buf = _uninitialized("char[]", max(max_bytes, 1))
    got, fds, flags = recv_into_with_fds(sockfd, ffi.buffer(buf, max_bytes), max_fds)
    return ffi.buffer(buf, got)[:], fds, flags


class Receiver:
    """
    Repeated receives on one socket, into buffers allocated once.

    @ivar bufferSize: the most bytes one L{receive} reads.
    """

    def __init__(
        self,
        bufferSize: int = 65536,
        max_fds: int = MAX_FDS_PER_MESSAGE,
        closeTruncated: bool = True,
    ) -> None:
        """
        @param closeTruncated: whether the descriptors of a truncated
            receive are closed before L{DescriptorsTruncated} is raised (the
            default), or handed to the caller, open, in its C{descriptors}:
            for a caller that must not block on a close (closing a peer's
            descriptor may).
        """
        if not 0 <= max_fds <= MAX_FDS_PER_MESSAGE:
            raise ValueError("max_fds must be between 0 and %d" % (MAX_FDS_PER_MESSAGE,))
        self.bufferSize = bufferSize
        self._maxFds = max_fds
        self._closeTruncated = closeTruncated
        self._buffer = _uninitialized("char[]", bufferSize)
        # Room for every descriptor that may arrive, whatever max_fds is: a
        # truncated receive returns them too.
        self._fds = ffi.new("int[]", MAX_FDS_PER_MESSAGE)
        self._out = ffi.new("int[2]")

    def receive(self, sockfd: int, max_fds: int | None = None) -> tuple[bytes, Sequence[int]]:
        """
        One C{recvmsg}, as L{recv_with_fds}.

        @param max_fds: room for this many descriptors this time, at most
            the room given when made (C{None}: all of it).

        @return: C{(data, fds)}; C{data} is empty at end of stream and
            C{fds} is an C{array('i')} of the descriptors received (a
            sequence of ints, which L{close_all} takes without converting).
        @raise DescriptorsTruncated: see L{recv_into_with_fds}; unless this
            receiver closes them, its C{descriptors} are those that did
            arrive, open, the caller's to close.
        """
        out = self._out
        room = self._maxFds if max_fds is None or max_fds > self._maxFds else max_fds
        got = lib.paf_recvmsg(sockfd, self._buffer, self.bufferSize, self._fds, room, out, out + 1)
        if got < 0:
            raise nativeError(ffi.errno)
        data = ffi.buffer(self._buffer, got)[:]
        count = out[0]
        if out[1] & _MSG_CTRUNC:
            arrived = array("i", ffi.buffer(self._fds, count * _INT_SIZE)[:])
            if self._closeTruncated:
                close_all(arrived)
                raise DescriptorsTruncated(data)
            raise DescriptorsTruncated(data, arrived)
        if not count:
            return data, ()
        if count == 1:
            return data, array("i", (self._fds[0],))
        return data, array("i", ffi.buffer(self._fds, count * _INT_SIZE)[:])


def duplicate_all(fds: Sequence[FileDescriptorLike]) -> list[int]:
    """
    Duplicate every descriptor in C{fds} (ints), close-on-exec, in one C
    call: all of them, or none.

    @return: a list of the duplicates, in order, owned by the caller.
    @raise OSError: one could not be duplicated (C{EMFILE}, C{EBADF}, ...);
        those already made were closed again.
    """
    return duplicate_array(fds).tolist()


def duplicate_array(fds: Sequence[FileDescriptorLike]) -> array[int]:
    """
    L{duplicate_all}, returning the duplicates as an C{array('i')}, which
    L{send_with_fds} and L{close_all} take without converting them.
    """
    count = len(fds)
    duplicates = _NO_FDS * count
    if count and lib.paf_dup_all(_fdArray(fds), count, ffi.from_buffer("int[]", duplicates)) < 0:
        raise nativeError(ffi.errno)
    return duplicates


_NO_FDS = array("i", [-1])


def close_all(fds: Sequence[FileDescriptorLike]) -> None:
    """
    Close every descriptor in C{fds}, ignoring errors: for cleanup paths,
    where one bad descriptor must not keep the rest open.
    """
    if len(fds) == 1:
        try:
            os.close(_fileno(fds[0]))
        except OSError:
            pass
    elif fds:
        lib.paf_close_all(_fdArray(fds), len(fds))
