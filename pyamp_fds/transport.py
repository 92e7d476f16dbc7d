# -*- test-case-name: tests.test_transport -*-
"""
UNIX stream transports that pass descriptors in batches.

L{Server} and L{Client} are Twisted's C{unix.Server} and C{unix.Client}
(L{twisted.internet.interfaces.IUNIXTransport} providers) with the descriptor path replaced; they
provide L{IBatchingTransport}:

  - C{sendFileDescriptor} queues the descriptor with its place in the byte
    stream (an L{pyamp_fds.outgoing.OutgoingDescriptors}); a write sends the buffered bytes and
    the queued descriptors together, up to 253 descriptors a C{sendmsg},
    each descriptor going with a byte no later than the box that names it.
  - A read takes everything available (64 KiB) with room for 253
    descriptors, close-on-exec, hands the descriptors to the protocol in one
    batch and in order, then the bytes.

The wire is the same as Twisted's, so either end may be stock Twisted.
"""

from __future__ import annotations

import errno
import fcntl
import socket
import struct
import termios
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import error, interfaces, main, unix
from twisted.logger import Logger
from zope.interface import implementer

from pyamp_fds import _twisted
from pyamp_fds.backpressure import ReadGate, ReadStops
from pyamp_fds.budget import processBudget
from pyamp_fds.closer import closeLater, discard
from pyamp_fds.credentials import PeerCredentialsMixin, describePeer
from pyamp_fds.errors import DescriptorsTruncated
from pyamp_fds.fdio import MAX_FDS_PER_MESSAGE, Receiver, _fileno, send_with_fds
from pyamp_fds.interfaces import IBatchingTransport, IFileDescriptorsReceiver
from pyamp_fds.outgoing import Ownership, OutgoingDescriptors

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike
    from twisted.python.failure import Failure

    from pyamp_fds.budget import DescriptorBudget

__all__ = ["Server", "Client", "Connector"]

_log = Logger()

# Errors that mean "the kernel cannot take this now": ENOBUFS (memory
# pressure) and ETOOMANYREFS (too many descriptors in flight for this user).
# The socket may well be writable, so waiting for writability would spin:
# back off on a timer instead.
_BACK_OFF = (errno.ENOBUFS, errno.ETOOMANYREFS)
_FIRST_BACK_OFF = 0.001
_LONGEST_BACK_OFF = 0.1

_DUPLICATE = Ownership.DUPLICATE
_HANDED_OVER = Ownership.HANDED_OVER


def _unreadBytes(fileno: int) -> int:
    # FIONREAD: the bytes waiting to be read (descriptors travel only with
    # some).
    return struct.unpack("i", fcntl.ioctl(fileno, termios.FIONREAD, b"\0\0\0\0"))[0]  # type: ignore[no-any-return]


class _Batching(PeerCredentialsMixin, ReadGate):
    """
    The descriptor path shared by L{Server} and L{Client}.

    @ivar maxQueuedDescriptors: descriptors queued beyond this count make
        the send buffer "full" for producers, so that a sender facing a slow
        reader pauses rather than filling its own descriptor table.
    @ivar descriptorBudget: the L{pyamp_fds.budget.DescriptorBudget} this connection's
        descriptors count in (by default the process's): the transport
        reads only when a full receive fits in it (L{ReadGate}).
    @ivar sendmsgCalls: C{sendmsg} calls made, for measurement.
    @ivar recvmsgCalls: C{recvmsg} calls made, for measurement.
    """

    maxQueuedDescriptors = MAX_FDS_PER_MESSAGE
    if TYPE_CHECKING:
        # Set by _initBatching, before the transport is used.
        descriptorBudget: DescriptorBudget
        _receiver: Receiver
    else:
        descriptorBudget = None
    sendmsgCalls = 0
    recvmsgCalls = 0
    _backOffDelay = 0.0
    _backOffCall = None
    _backOffs = 0
    _reading = False

    def _initBatching(self) -> None:
        if self.descriptorBudget is None:
            self.descriptorBudget = processBudget()
        self._readStops = ReadStops(self)
        self._queue = OutgoingDescriptors(self.descriptorBudget)
        # Stream positions: bytes written to this transport, and bytes sent.
        self._bytesWritten = 0
        self._bytesSent = 0
        self._writeHooks: list[Callable[[], bytes]] = []
        # Descriptors of a truncated receive come back open, to be closed
        # off the reactor thread (closing a peer's descriptor may block).
        self._receiver = Receiver(self.bufferSize, closeTruncated=False)

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
        super().write(data)  # type: ignore[no-untyped-call]

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        if self._writeHooks:
            self._runWriteHooks()
        iovec = list(iovec)
        self._bytesWritten += sum(map(len, iovec))
        super().writeSequence(iovec)  # type: ignore[no-untyped-call]

    def addWriteHook(self, hook: Callable[[], bytes]) -> None:
        """
        Call C{hook()} once before the next bytes are written or sent, and
        write the bytes it returns: lets a protocol encode everything it has
        queued in one go, keeping its place in the stream.
        """
        self._writeHooks.append(hook)
        if not self._reading:
            # Inside doRead, the flush at its end sends it.
            self.startWriting()

    def _runWriteHooks(self) -> None:
        hooks, self._writeHooks = self._writeHooks, []
        for hook in hooks:
            data = hook()
            if data:
                self._bytesWritten += len(data)
                super().write(data)  # type: ignore[no-untyped-call]

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
        if self.TLS or len(self._writeHooks) != 1 or _twisted.hasBufferedOutput(self):
            # After startTLS the bytes must go through the TLS layer.
            result = self.doWrite()
        else:
            data = self._writeHooks.pop()()
            self._bytesWritten += len(data)
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
            fds, limit = queue.nextGroup(self._bytesSent)
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
        if self._backOffCall is None:
            # FileDescriptor.startWriting, without a call in between: this
            # runs for every descriptor queued outside a read.
            self.reactor.addWriter(self)

    # Reading

    # As doWrite; and a read may fail with DescriptorsTruncated, which is
    # not among the errors tcp.Connection declares.
    def doRead(self) -> BaseException | None:  # type: ignore[override]
        room = self.roomToRead()
        if room is None:
            return None
        try:
            data, fds = self._receiver.receive(self.socket.fileno(), room)
        except BlockingIOError:
            return None
        except DescriptorsTruncated as e:
            # Nothing of this read may be dispatched, since no later ordinal
            # can be trusted; what did arrive is closed in the background,
            # counted in the budget until then (without waiting for it: the
            # connection goes, as with what it held unclaimed).
            discard(e.descriptors, self.descriptorBudget, patience=0)
            e.descriptors = ()
            _log.error(
                "{transport}: {error}; closing the connection to {peer}",
                transport=self,
                error=e,
                peer=describePeer(self),
            )
            return e
        except OSError:
            return main.CONNECTION_LOST
        finally:
            self.recvmsgCalls += 1
        self._reading = True
        try:
            if fds:
                self._descriptorsReceived(fds)
            result = self.deliverData(data)
        finally:
            self._reading = False
        if (
            result is None
            and (self._writeHooks or _twisted.hasBufferedOutput(self))
            and not self.disconnecting
        ):
            # Answers to what was just read go out now, in one sendmsg.
            result = self._flushAfterRead()
            if result is None:
                # (With nothing left to send, the peer cannot be behind.)
                self.stopReadingIfPeerIsBehind()
        return result

    def _outputPending(self) -> bool:
        return bool(self._writeHooks) or _twisted.hasBufferedOutput(self)

    def _descriptorsReceived(self, fds: Sequence[int]) -> None:
        protocol = self.protocol
        if self.TLS:
            # They arrive beside the TLS records: they are for the protocol
            # the TLS layer decrypts for.
            protocol = protocol.wrappedProtocol  # type: ignore[attr-defined]
        if IFileDescriptorsReceiver.providedBy(protocol):
            protocol.fileDescriptorsReceived(fds)
        elif interfaces.IFileDescriptorReceiver.providedBy(protocol):
            for fd in fds:
                protocol.fileDescriptorReceived(fd)
        else:
            discard(fds, self.descriptorBudget)
            _twisted.logDescriptorsRefused(self, protocol, len(fds))

    def closeSocket(self, orderly: bool) -> None:
        """
        Close the connection's socket as Twisted does; in the background
        (L{pyamp_fds.closer}) if the peer left bytes unread in it, since
        descriptors may be in flight with them.  The kernel releases those
        when the socket closes, in the thread that closes it: a peer that
        filled its socket with descriptors makes that close take a while,
        and the last reference to one of them (a socket with C{SO_LINGER})
        blocks it for the linger time.
        """
        skt = self.socket
        try:
            unread = _unreadBytes(skt.fileno())
        except OSError:
            unread = 0
        if not unread:
            self.stockCloseSocket(orderly)
            return
        if orderly:
            # What Twisted's close does first; the peer sees the end now.
            try:
                skt.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        closeLater([skt.detach()])

    def connectionLost(self, reason: Failure) -> None:
        if self._backOffCall is not None:
            self._backOffCall.cancel()
            self._backOffCall = None
        self.stopWaitingForHeadroom()
        self._queue.drop()
        self._writeHooks = []
        # The receive buffers go now rather than when the collector breaks
        # this transport's cycle with its protocol: under connection churn
        # each dead transport would hold its 64 KiB until then, and the heap
        # keeps growing to make room for them.
        self._receiver = None  # type: ignore[assignment]  # never read once lost
        super().connectionLost(reason)


@implementer(IBatchingTransport)
class Server(_Batching, unix.Server):
    """
    The server side of a UNIX stream connection, with batched descriptors.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._initBatching()
        unix.Server.__init__(self, *args, **kwargs)

    def peerExceededShare(self) -> None:
        """
        The protocol is closing this connection because its peer held more
        descriptors than its share: the listening port may refuse the
        peer's process new connections for a while
        (L{pyamp_fds.credentials.Port.evictionPenalty}).
        """
        penalize = getattr(self.server, "penalize", None)
        if penalize is not None:
            penalize(self)


@implementer(IBatchingTransport)
class Client(_Batching, unix.Client):
    """
    The client side of a UNIX stream connection, with batched descriptors.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._initBatching()
        unix.Client.__init__(self, *args, **kwargs)


class Connector(_twisted.ConnectorHooks, unix.Connector):
    """
    Connects to a UNIX socket with a L{Client}.
    """

    def makeTransport(self) -> Client:
        return Client(self.address, self, self.reactor, self.checkPID)
