# -*- test-case-name: tests.test_transport -*-
"""
The write path of the package's UNIX transports (L{pyamp_fds.transport}):
bytes and queued descriptors sent together, up to 253 descriptors a
C{sendmsg}, each with a byte no later than the box that names it; write
hooks that let a protocol encode what it queued just before the transport
writes; and backing off while the kernel cannot take descriptors.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import error, main

from pyamp_fds import _twisted
from pyamp_fds.fdio import MAX_FDS_PER_MESSAGE, _fileno, send_with_fds
from pyamp_fds.outgoing import Ownership, OutgoingDescriptors

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

    from pyamp_fds.budget import DescriptorBudget

__all__ = ["BatchedWrites"]

# Errors that mean "the kernel cannot take this now": ENOBUFS (memory
# pressure) and ETOOMANYREFS (too many descriptors in flight for this user).
# The socket may well be writable, so waiting for writability would spin:
# back off on a timer instead.
_BACK_OFF = (errno.ENOBUFS, errno.ETOOMANYREFS)
_FIRST_BACK_OFF = 0.001
_LONGEST_BACK_OFF = 0.1

_DUPLICATE = Ownership.DUPLICATE
_HANDED_OVER = Ownership.HANDED_OVER


class BatchedWrites(_twisted.TransportHooks):
    """
    The write path of a batching transport.  Mixed in ahead of Twisted's
    transport.

    @ivar maxQueuedDescriptors: descriptors queued beyond this count make
        the send buffer "full" for producers, so that a sender facing a slow
        reader pauses rather than filling its own descriptor table.
    @ivar sendmsgCalls: C{sendmsg} calls made, for measurement.
    """

    maxQueuedDescriptors = MAX_FDS_PER_MESSAGE
    sendmsgCalls = 0
    _backOffDelay = 0.0
    _backOffCall = None
    _backOffs = 0
    # Whether the transport is inside a read: what is written then goes out
    # in the flush at its end, without registering for writability.
    _reading = False
    # Whether Twisted's write is buffering bytes written inside a read: its
    # startWriting is skipped (registering for writability, then
    # unregistering once the flush has sent them, would cost two system
    # calls per write).  The flush registers if the socket does not take
    # everything.  Other registrations inside a read (a close waiting to
    # flush) go ahead.  See _twistedWrite.
    _buffering = False

    if TYPE_CHECKING:
        # What the transport this is mixed into provides.
        descriptorBudget: DescriptorBudget

        def resumeReadingIfPeerCaughtUp(self) -> None: ...

    def initWrites(self) -> None:
        """
        Set up the write path, once the descriptor budget is known.
        """
        self._queue = OutgoingDescriptors(self.descriptorBudget)
        # Stream positions: bytes written to this transport, and bytes sent.
        self._bytesWritten = 0
        self._bytesSent = 0
        self._writeHooks: list[Callable[[], bytes]] = []

    def dropWrites(self) -> None:
        """
        The connection is gone: stop backing off, close the descriptors the
        queue owns, forget the write hooks.
        """
        if self._backOffCall is not None:
            self._backOffCall.cancel()
            self._backOffCall = None
        self._queue.drop()
        self._writeHooks = []

    @property
    def backOffs(self) -> int:
        """
        How many times this transport has stopped writing for a while
        because the kernel could not take its descriptors then (C{ENOBUFS},
        C{ETOOMANYREFS}), for measurement.
        """
        return self._backOffs

    @property
    def queuedDescriptors(self) -> list[int]:
        """
        The descriptors queued and not yet sent, in order (a copy).
        """
        return self._queue.descriptors

    # Writing

    def write(self, data: bytes) -> None:
        if self._writeHooks:
            self._runWriteHooks()
        self._bytesWritten += len(data)
        self._twistedWrite(super().write, data)

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        if self._writeHooks:
            self._runWriteHooks()
        iovec = list(iovec)
        self._bytesWritten += sum(map(len, iovec))
        self._twistedWrite(super().writeSequence, iovec)

    def _twistedWrite(self, write: Callable[[Any], None], data: Any) -> None:
        # Inside a read, Twisted's write (or writeSequence) only buffers and
        # registers for writability, and the flush at the end of the read
        # sends what it buffered (through Twisted's doWrite, which then does
        # what an emptied buffer calls for: a close, a half-close, a
        # producer): it buffers without registering.  With a producer or
        # TLS, it may also run code that asks for a close: then it runs as
        # it is.
        if self._reading and self.producer is None and not self.TLS:
            self._buffering = True
            try:
                write(data)
            finally:
                self._buffering = False
        else:
            write(data)

    def addWriteHook(self, hook: Callable[[], bytes]) -> None:
        """
        Call C{hook()} once before the next bytes are written or sent, and
        write the bytes it returns: lets a protocol encode everything it has
        queued in one go, keeping its place in the stream.  Once the
        connection or its write side is closed, or aborted, C{hook()} is
        called at once and its bytes dropped, as C{write} drops them.
        """
        if not self.connected or _twisted.writesEnded(self):
            # Nothing more goes out: registering for writability would have
            # doWrite close the write side a second time, or the reactor
            # take a transport with no descriptor; the flush at the end of a
            # read would send them to the shut socket, or after an abort.
            hook()
            return
        self._writeHooks.append(hook)
        if not self._reading:
            # Inside doRead, the flush at its end sends it.
            self.startWriting()

    def startTLS(self, *args: Any, **kwargs: Any) -> Any:
        # The hooks' bytes were written before TLS starts: they go out in
        # the clear, ahead of it, as written bytes do.
        if self._writeHooks:
            self._runWriteHooks()
        return super().startTLS(*args, **kwargs)  # type: ignore[no-untyped-call]

    def _runWriteHooks(self) -> None:
        hooks, self._writeHooks = self._writeHooks, []
        for hook in hooks:
            data = hook()
            if data:
                self._bytesWritten += len(data)
                self._twistedWrite(super().write, data)

    def flushNow(self) -> None:
        """
        Send what has been written so far now, if the socket takes it; what
        it does not take waits for writability as usual.
        """
        if self._outputPending() and not self.disconnecting and self.connected:
            why = self._flushAfterRead()
            if why is not None:
                # Lost while writing: let the reactor's next pass report it.
                self.startWriting()

    def _flushAfterRead(self) -> BaseException | None:
        """
        Send what was written while handling a read, now: straight to the
        socket when nothing older is buffered, so that neither a trip
        through the reactor nor registering for writability is needed.
        """
        result: int | BaseException | None
        if (
            self.TLS
            or self.producer is not None
            or len(self._writeHooks) != 1
            or _twisted.hasBufferedOutput(self)
        ):
            # After startTLS the bytes must go through the TLS layer; a
            # producer is resumed by doWrite once everything is sent.
            result = self.doWrite()
        else:
            written = self._bytesWritten
            data = self._writeHooks.pop()()
            hookWrote = self._bytesWritten != written
            self._bytesWritten += len(data)
            if hookWrote:
                # The hook wrote bytes of its own, now buffered: its bytes
                # go after them, as _runWriteHooks sends them.
                super().write(data)  # type: ignore[no-untyped-call]
                result = self.doWrite()
            else:
                result = self.writeSomeData(data)
                if isinstance(result, int) and result >= 0:
                    if result < len(data):
                        super().write(data[result:])  # type: ignore[no-untyped-call]
                    result = None
        if result is None and (self._writeHooks or _twisted.hasBufferedOutput(self)):
            self.startWriting()
        return result  # type: ignore[return-value]

    # Twisted's _AbortingMixin declares doWrite and doRead as returning None;
    # FileDescriptor's, as here, return why the connection is lost, if it is.
    def doWrite(self) -> BaseException | None:  # type: ignore[override]
        if self._writeHooks:
            self._runWriteHooks()
        result = super().doWrite()  # type: ignore[no-untyped-call]
        self.resumeReadingIfPeerCaughtUp()
        return result  # type: ignore[no-any-return]

    def abortConnection(self) -> None:
        super().abortConnection()  # type: ignore[no-untyped-call]
        # What the hooks would write is dropped with what is buffered
        # (the flush at the end of a read would send it).
        self._writeHooks = []

    def loseConnection(self, *args: Any, **kwargs: Any) -> None:
        if self._writeHooks and self.connected:
            self._runWriteHooks()
        return super().loseConnection(*args, **kwargs)  # type: ignore[no-any-return, no-untyped-call]

    def sendFileDescriptor(self, fileno: FileDescriptorLike, transfer: bool = False) -> None:
        """
        Queue a descriptor to go with the next bytes written.  Write them
        before the transport next writes (in the same call, as a protocol
        does writing the box that names it): if it finds a descriptor
        queued and no byte to carry it, the connection is lost with
        C{FileDescriptorOverrun}, as in Twisted.

        @param fileno: a descriptor, or an object with C{fileno()}.
        @param transfer: if false (the default), a duplicate is queued and
            the caller may close its own copy at once; if true, the
            descriptor itself is queued and this transport closes it once
            sent, or when the connection is lost first.
        @raise ConnectionLost: the connection is gone; nothing was queued,
            and the descriptor is still the caller's.
        """
        if not self.connected:
            raise error.ConnectionLost()
        self._queue.enqueueOne(
            fileno if type(fileno) is int else _fileno(fileno),
            self._bytesWritten,
            _HANDED_OVER if transfer else _DUPLICATE,
        )
        if self.producer is not None:
            self.pauseProducerIfFull()
        if not self._reading:
            # Inside doRead, the flush at its end sends it with the bytes
            # that name it, without registering for writability.
            self.startWriting()

    def sendFileDescriptors(
        self, filenos: Sequence[int], ownership: Ownership = _DUPLICATE
    ) -> None:
        """
        Queue several descriptors at once, all or none.

        @param filenos: a sequence of descriptors (ints).
        @param ownership: an L{pyamp_fds.outgoing.Ownership}: duplicates made here (the
            default), the descriptors handed over, or lent (Twisted's own
            rule: the caller keeps them open until they have been sent).
        @raise ConnectionLost: nothing was queued.
        @raise OSError: a duplicate could not be made; nothing was queued.
        """
        if not self.connected:
            raise error.ConnectionLost()
        if not filenos:
            return
        if self._writeHooks:
            # Encode the boxes already sent first, so these descriptors are
            # placed after them: then each box travels in a message of its
            # own with its own descriptors, and the peer can act on the first
            # while the next is still on its way (otherwise every group would
            # go ahead of every box, and both ends would take turns).
            self._runWriteHooks()
        self._queue.enqueue(filenos, self._bytesWritten, ownership)
        self.pauseProducerIfFull()
        if not self._reading:
            self.startWriting()

    def descriptorMark(self) -> int:
        """
        A mark for L{withdrawDescriptors}: where the queue ends now.
        """
        return self._queue.mark()

    def withdrawDescriptors(self, mark: int) -> None:
        """
        Take back every descriptor queued since C{mark}, none of which has
        been sent yet: the box that named them will not be.  Our duplicates
        are closed; handed-over and lent descriptors are the caller's again
        (the call that named them failed: nothing was taken).
        """
        self._queue.withdraw(mark)

    def sendBufferFull(self) -> bool:
        """
        Whether more descriptors are queued than L{maxQueuedDescriptors}.
        """
        return len(self._queue) > self.maxQueuedDescriptors

    def writeSomeData(self, data: bytes) -> int | error.ConnectionLost:
        """
        Send as much of C{data} as the socket takes, with every queued
        descriptor that may go with it, in as few C{sendmsg} calls as the
        kernel allows.
        """
        view = memoryview(data)
        size = len(view)
        queue = self._queue
        if not size and not self.TLS and queue:
            # Every byte written has gone, and a descriptor still waits:
            # none is left to carry it (IUNIXTransport's rule, as in
            # Twisted: write at least one byte with descriptors).  After
            # startTLS the bytes come out of the TLS layer when it has them.
            return error.FileDescriptorOverrun()
        fileno = self.socket.fileno()
        total = 0
        fds: Sequence[int]
        while total < size:
            length = size - total
            # Every queued descriptor, or the first groupful (limit: then
            # more are left).
            fds, limit = queue.nextGroupArray(self._bytesSent)
            if limit is not None and limit < length:
                # The next group must still find a byte of the box that
                # names it: stop this message where that box may begin.
                length = limit
            try:
                sent, _ = send_with_fds(fileno, view[total : total + length], fds)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno in _BACK_OFF:
                    self._backOff()
                    break
                return main.CONNECTION_LOST
            finally:
                self.sendmsgCalls += 1
            self._backOffDelay = 0.0
            if fds:
                # They went with the first byte: never again.
                queue.sent(len(fds))
            total += sent
            self._bytesSent += sent
            if sent < length and limit is None:
                # The socket is full, and no descriptor is left to send.
                break
        return total

    def _backOff(self) -> None:
        if self._backOffCall is not None:
            return
        self._backOffs += 1
        self._backOffDelay = min(
            max(self._backOffDelay * 2, _FIRST_BACK_OFF), _LONGEST_BACK_OFF
        )
        self.stopWriting()  # type: ignore[no-untyped-call]

        def retry() -> None:
            self._backOffCall = None
            if self.connected:
                self.startWriting()

        self._backOffCall = self.reactor.callLater(self._backOffDelay, retry)

    def startWriting(self) -> None:
        # While backing off, the timer registers for writing: anything else
        # that would (a write, a queued descriptor, a flush) would have the
        # reactor call doWrite in a loop, each sendmsg failing again.
        if self._backOffCall is None and not self._buffering:
            # FileDescriptor.startWriting, without a call in between: this
            # runs for every descriptor queued outside a read.
            self.reactor.addWriter(self)

    def _outputPending(self) -> bool:
        return bool(self._writeHooks) or _twisted.hasBufferedOutput(self)

