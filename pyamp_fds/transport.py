# -*- test-case-name: tests.test_transport -*-
"""
UNIX stream transports that pass descriptors in batches.

L{Server} and L{Client} are Twisted's C{unix.Server} and C{unix.Client}
(L{twisted.internet.interfaces.IUNIXTransport} providers) with the descriptor path replaced; they
provide L{IBatchingTransport}:

  - C{sendFileDescriptor} queues the descriptor with its place in the byte
    stream (an L{pyamp_fds.outgoing.OutgoingDescriptors}); a write sends the buffered bytes and
    the queued descriptors together, up to 253 descriptors a C{sendmsg},
    each descriptor going with a byte no later than the box that names it
    (the write path is L{pyamp_fds.writing}'s).
  - A read takes everything available (64 KiB) with room for 253
    descriptors, close-on-exec, hands the descriptors to the protocol in one
    batch and in order, then the bytes.

The wire is the same as Twisted's, so either end may be stock Twisted.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import interfaces, main, unix
from twisted.logger import Logger
from zope.interface import implementer

from pyamp_fds import _twisted
from pyamp_fds.backpressure import ReadGate, ReadStops
from pyamp_fds.budget import processBudget
from pyamp_fds.closer import closeLater, discard
from pyamp_fds.credentials import PeerCredentialsMixin, describePeer
from pyamp_fds.errors import DescriptorsTruncated
from pyamp_fds.fdio import Receiver
from pyamp_fds.interfaces import IBatchingTransport, IFileDescriptorsReceiver
from pyamp_fds.writing import BatchedWrites

if TYPE_CHECKING:
    from twisted.python.failure import Failure

    from pyamp_fds.budget import DescriptorBudget

__all__ = ["Server", "Client", "Connector"]

_log = Logger()


def _unreadBytes(fileno: int) -> int:
    # FIONREAD: the bytes waiting to be read (descriptors travel only with
    # some).
    return struct.unpack("i", fcntl.ioctl(fileno, termios.FIONREAD, b"\0\0\0\0"))[0]  # type: ignore[no-any-return]


class _Batching(PeerCredentialsMixin, BatchedWrites, ReadGate):
    """
    The descriptor path shared by L{Server} and L{Client}: the read path
    here, the write path in L{BatchedWrites}, when to stop reading in
    L{ReadGate}.

    @ivar descriptorBudget: the L{pyamp_fds.budget.DescriptorBudget} this connection's
        descriptors count in (by default the process's): the transport
        reads only when a full receive fits in it (L{ReadGate}).
    @ivar recvmsgCalls: C{recvmsg} calls made, for measurement.
    """

    if TYPE_CHECKING:
        # Set by _initBatching, before the transport is used.
        descriptorBudget: DescriptorBudget
        _receiver: Receiver
    else:
        descriptorBudget = None
    recvmsgCalls = 0
    # Whether this connection's socket counts among the budget's connections.
    _socketCounted = False

    def _initBatching(self) -> None:
        if self.descriptorBudget is None:
            self.descriptorBudget = processBudget()
        self._readStops = ReadStops(self)
        self.initWrites()
        # Descriptors of a truncated receive come back open, to be closed
        # off the reactor thread (closing a peer's descriptor may block).
        self._receiver = Receiver(self.bufferSize, closeTruncated=False)

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
            # (A descriptor queued with no byte to carry it is lost now,
            # with FileDescriptorOverrun, as outside a read.)
            and (self._writeHooks or _twisted.hasBufferedOutput(self) or self._queue)
            and not self.disconnecting
        ):
            # Answers to what was just read go out now, in one sendmsg.
            result = self._flushAfterRead()
            if result is None:
                # (With nothing left to send, the peer cannot be behind.)
                self.stopReadingIfPeerIsBehind()
        return result

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
        counted, self._socketCounted = self._socketCounted, False
        skt = self.socket
        try:
            unread = _unreadBytes(skt.fileno())
        except OSError:
            unread = 0
        if not unread:
            self.stockCloseSocket(orderly)
            if counted:
                self.descriptorBudget.connectionClosed()
                self._connectionReleased()
            return
        if orderly:
            # What Twisted's close does first; the peer sees the end now.
            try:
                skt.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        # A server connection's socket counts as a connection until closed.
        closeLater([skt.detach()], self.descriptorBudget.connectionSockets if counted else None)
        if counted:
            self._connectionReleased()

    def _connectionReleased(self) -> None:
        """
        This server connection's socket no longer counts for the listening
        port that accepted it.
        """

    def connectionLost(self, reason: Failure) -> None:
        self.stopWaitingForHeadroom()
        self.dropWrites()
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
        # Its socket counts among the process's server connections until
        # closed (closeSocket).
        self.descriptorBudget.connectionOpened()
        self._socketCounted = True

    def _connectionReleased(self) -> None:
        released = getattr(self.server, "connectionReleased", None)
        if released is not None:
            released(self)

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
