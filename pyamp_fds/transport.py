# -*- test-case-name: tests.test_transport -*-
"""
UNIX stream transports that pass descriptors in batches.

L{Server} and L{Client} are Twisted's C{unix.Server} and C{unix.Client}
(L{IUNIXTransport} providers) with the descriptor path replaced:

  - C{sendFileDescriptor} queues the descriptor with its place in the byte
    stream; a write sends the buffered bytes and the queued descriptors
    together, up to 253 descriptors a C{sendmsg}, each descriptor going with
    a byte no later than the box that names it.
  - A read takes everything available (64 KiB) with room for 253
    descriptors, close-on-exec, hands the descriptors to the protocol in one
    batch and in order, then the bytes.

The wire is the same as Twisted's, so either end may be stock Twisted.
"""

import errno
import os
import socket
import struct
from collections import namedtuple
from itertools import repeat

from twisted.internet import error, interfaces, main, tcp, unix
from twisted.logger import Logger
from twisted.python import log
from zope.interface import implementer

from pyamp_fds.errors import DescriptorsTruncated
from pyamp_fds.fdio import (
    MAX_FDS_PER_MESSAGE,
    Receiver,
    close_all,
    duplicate_all,
    send_with_fds,
)
from pyamp_fds.fdio import _fileno

__all__ = ["Server", "Client", "Port", "Connector", "PeerCredentials", "isBatching"]

_log = Logger()

# Errors that mean "the kernel cannot take this now": ENOBUFS (memory
# pressure) and ETOOMANYREFS (too many descriptors in flight for this user).
# The socket may well be writable, so waiting for writability would spin:
# back off on a timer instead.
_BACK_OFF = (errno.ENOBUFS, errno.ETOOMANYREFS)
_FIRST_BACK_OFF = 0.001
_LONGEST_BACK_OFF = 0.1



class PeerCredentials(namedtuple("PeerCredentials", "pid uid gid")):
    """
    The process at the other end of a UNIX socket connection, as the kernel
    recorded it (C{SO_PEERCRED}) when that process connected, listened, or
    made the socket pair: its process id, effective user id and effective
    group id (not its supplementary groups).
    """


_UCRED = struct.Struct("3i")


class _Lent(int):
    """
    A queued descriptor that is the caller's, not a duplicate: sent, but
    never closed here.
    """

    __slots__ = ()


class _HandedOver(int):
    """
    A queued descriptor handed over by the caller: closed once sent, or
    when the connection is lost first, but given back (left open) if the box
    that names it is withdrawn before it was sent.
    """

    __slots__ = ()


def _owned(fds):
    return [fd for fd in fds if type(fd) is not _Lent]


def _readPeerCredentials(skt):
    return PeerCredentials._make(
        _UCRED.unpack(skt.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    )


class _BatchingMixin:
    """
    The descriptor path shared by L{Server} and L{Client}.

    @ivar maxQueuedDescriptors: descriptors queued beyond this count make
        the send buffer "full" for producers, so that a sender facing a slow
        reader pauses rather than filling its own descriptor table.
    @ivar sendmsgCalls: C{sendmsg} calls made, for measurement.
    @ivar recvmsgCalls: C{recvmsg} calls made, for measurement.
    """

    maxQueuedDescriptors = MAX_FDS_PER_MESSAGE
    sendmsgCalls = 0
    recvmsgCalls = 0
    _peerCredentials = None
    _backOffDelay = 0
    _backOffCall = None
    _reading = False
    _lending = False

    def _initBatching(self):
        # The descriptors queued, in order (ours to close once sent: a
        # duplicate or one handed over, unless lent), and for each the
        # stream position of the bytes written after it was queued: it
        # must travel no later than those.
        self._queuedFds = []
        self._queuedAt = []
        self._bytesWritten = 0
        self._bytesSent = 0
        self._writeHooks = []
        self._receiver = Receiver(self.bufferSize)

    def getPeerCredentials(self):
        """
        The peer's process id, user id and group id, read from the socket
        (C{SO_PEERCRED}) on the first call and kept: they are those of when
        the peer connected, or listened, and do not change.

        @rtype: L{PeerCredentials}
        @raise OSError: C{ENOTCONN}, the connection was lost before they
            were first asked for.
        """
        credentials = self._peerCredentials
        if credentials is None:
            skt = getattr(self, "socket", None)
            if skt is None:
                raise OSError(
                    errno.ENOTCONN,
                    "the connection is closed: its peer's credentials were not read while open",
                )
            credentials = self._peerCredentials = _readPeerCredentials(skt)
        return credentials

    # Writing

    def write(self, data):
        if self._writeHooks:
            self._runWriteHooks()
        self._bytesWritten += len(data)
        super().write(data)

    def writeSequence(self, iovec):
        if self._writeHooks:
            self._runWriteHooks()
        iovec = list(iovec)
        self._bytesWritten += sum(map(len, iovec))
        super().writeSequence(iovec)

    def addWriteHook(self, hook):
        """
        Call C{hook()} once before the next bytes are written or sent, and
        write the bytes it returns: lets a protocol encode everything it has
        queued in one go, keeping its place in the stream.
        """
        self._writeHooks.append(hook)
        if not self._reading:
            # Inside doRead, the flush at its end sends it.
            self.startWriting()

    def _runWriteHooks(self):
        hooks, self._writeHooks = self._writeHooks, []
        for hook in hooks:
            data = hook()
            if data:
                self._bytesWritten += len(data)
                super().write(data)

    def flushNow(self):
        """
        Send what has been written so far now, if the socket takes it; what
        it does not take waits for writability as usual.
        """
        if self._outputPending() and not self.disconnecting and self.connected:
            why = self._flushAfterRead()
            if why is not None:
                # Lost while writing: let the reactor's next pass report it.
                self.startWriting()

    def _flushAfterRead(self):
        """
        Send what was written while handling a read, now: straight to the
        socket when nothing older is buffered, so that neither a trip
        through the reactor nor registering for writability is needed.
        """
        if (
            self.TLS
            or self._tempDataLen
            or len(self.dataBuffer) > self.offset
            or len(self._writeHooks) != 1
        ):
            # After startTLS the bytes must go through the TLS layer.
            result = self.doWrite()
        else:
            data = self._writeHooks.pop()()
            self._bytesWritten += len(data)
            result = self.writeSomeData(data)
            if isinstance(result, int) and result >= 0:
                if result < len(data):
                    super().write(data[result:])
                result = None
        if result is None and self._outputPending():
            self.startWriting()
        return result

    def doWrite(self):
        if self._writeHooks:
            self._runWriteHooks()
        return super().doWrite()

    def loseConnection(self, *args, **kwargs):
        if self._writeHooks and self.connected:
            self._runWriteHooks()
        return super().loseConnection(*args, **kwargs)

    def sendFileDescriptor(self, fileno, transfer=False):
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
        if not transfer:
            # os.dup makes a close-on-exec duplicate (F_DUPFD_CLOEXEC), at
            # half the cost of calling fcntl.fcntl for it.
            fileno = os.dup(_fileno(fileno))
        else:
            fileno = _HandedOver(_fileno(fileno))
        self._queuedFds.append(fileno)
        self._queuedAt.append(self._bytesWritten)
        self._maybePauseProducer()
        if not self._reading:
            # Inside doRead, the flush at its end sends it with the bytes
            # that name it, without registering for writability.
            self.startWriting()

    def sendFileDescriptors(self, filenos, transfer=False, duplicate=True):
        """
        Queue several descriptors at once, all or none: as many calls to
        L{sendFileDescriptor}, except that if one cannot be duplicated, the
        duplicates already made are closed and nothing is queued.

        @param filenos: a sequence of descriptors (ints).
        @param duplicate: if false (and C{transfer} too), the descriptors
            themselves are queued and left open: Twisted's own rule, the
            caller must keep them open until they have been sent.
        @raise ConnectionLost: as L{sendFileDescriptor}.
        """
        if not self.connected:
            raise error.ConnectionLost()
        if transfer:
            filenos = list(map(_HandedOver, filenos))
        elif not duplicate:
            self._lending = True
            filenos = list(map(_Lent, filenos))
        else:
            filenos = duplicate_all(filenos)
        if not filenos:
            return
        if self._writeHooks:
            # Encode the boxes already sent first, so these descriptors are
            # placed after them: then each box travels in a message of its
            # own with its own descriptors, and the peer can act on the first
            # while the next is still on its way (otherwise every group would
            # go ahead of every box, and both ends would take turns).
            self._runWriteHooks()
        self._queuedFds.extend(filenos)
        self._queuedAt.extend(repeat(self._bytesWritten, len(filenos)))
        self._maybePauseProducer()
        if not self._reading:
            self.startWriting()

    def _descriptorMark(self):
        """
        A mark for L{_withdrawDescriptors}: where the queue ends now.
        """
        return len(self._queuedFds)

    def _withdrawDescriptors(self, mark):
        """
        Take back every descriptor queued since C{mark} was taken, none of
        which has been sent yet: the box that named them will not be.  Our
        duplicates are closed; handed-over and lent descriptors are the
        caller's again (the call that named them failed: nothing was taken).
        """
        withdrawn = self._queuedFds[mark:]
        del self._queuedFds[mark:], self._queuedAt[mark:]
        close_all([fd for fd in withdrawn if type(fd) is int])

    def _isSendBufferFull(self):
        return (
            len(self._queuedFds) > self.maxQueuedDescriptors
            or super()._isSendBufferFull()
        )

    def writeSomeData(self, data):
        """
        Send as much of C{data} as the socket takes, with every queued
        descriptor that may go with it, in as few C{sendmsg} calls as the
        kernel allows.
        """
        view = memoryview(data)
        size = len(view)
        queuedFds, queuedAt = self._queuedFds, self._queuedAt
        if not size and queuedFds and not self.TLS:
            # Every byte written has gone, and a descriptor still waits:
            # none is left to carry it (IUNIXTransport's rule, as in
            # Twisted: write at least one byte with descriptors).  After
            # startTLS the bytes come out of the TLS layer when it has them.
            return error.FileDescriptorOverrun()
        fileno = self.socket.fileno()
        total = 0
        while total < size:
            length = size - total
            queued = len(queuedFds)
            if queued:
                count = min(queued, MAX_FDS_PER_MESSAGE)
                fds = queuedFds[:count]
                if queued > count:
                    # The next group must still find a byte of the box that
                    # names it: stop this message where that box may begin.
                    nextPosition = queuedAt[count]
                    length = min(length, max(1, nextPosition - self._bytesSent))
            else:
                count = 0
                fds = ()
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
            self._backOffDelay = 0
            if count:
                # They went with the first byte: never again.
                del queuedFds[:count], queuedAt[:count]
                close_all(_owned(fds) if self._lending else fds)
            total += sent
            self._bytesSent += sent
            if sent < length and not queuedFds:
                break
        return total

    def _backOff(self):
        if self._backOffCall is not None:
            return
        self._backOffDelay = min(
            max(self._backOffDelay * 2, _FIRST_BACK_OFF), _LONGEST_BACK_OFF
        )
        self.stopWriting()

        def retry():
            self._backOffCall = None
            if self.connected:
                self.startWriting()

        self._backOffCall = self.reactor.callLater(self._backOffDelay, retry)

    # Reading

    def doRead(self):
        try:
            data, fds = self._receiver.receive(self.socket.fileno())
        except BlockingIOError:
            return None
        except DescriptorsTruncated as e:
            # What arrived was closed already; nothing of this read may be
            # dispatched, since no later ordinal can be trusted.
            _log.error(
                "{transport}: {error}; closing the connection",
                transport=self,
                error=e,
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
            result = self._dataReceived(data)
        finally:
            self._reading = False
        if result is None and self._outputPending() and not self.disconnecting:
            # Answers to what was just read go out now, in one sendmsg.
            result = self._flushAfterRead()
        return result

    def _outputPending(self):
        return bool(self._writeHooks or self._tempDataLen or len(self.dataBuffer) > self.offset)

    def _descriptorsReceived(self, fds):
        protocol = self.protocol
        if self.TLS:
            # They arrive beside the TLS records: they are for the protocol
            # the TLS layer decrypts for.
            protocol = protocol.wrappedProtocol
        batch = getattr(protocol, "fileDescriptorsReceived", None)
        if batch is not None:
            batch(fds)
        elif interfaces.IFileDescriptorReceiver.providedBy(protocol):
            for fd in fds:
                protocol.fileDescriptorReceived(fd)
        else:
            close_all(fds)
            # Twisted's own event, which its users may be watching for; one
            # per read, as Twisted logs one per message of descriptors.
            log.msg(
                format=(
                    "%(protocolName)s (on %(hostAddress)r) does not "
                    "provide IFileDescriptorReceiver; closing file "
                    "descriptor received (from %(peerAddress)r)."
                ),
                hostAddress=self.getHost(),
                peerAddress=self.getPeer(),
                protocolName=self._getLogPrefix(protocol),
                count=len(fds),
            )

    def connectionLost(self, reason):
        if self._backOffCall is not None:
            self._backOffCall.cancel()
            self._backOffCall = None
        if self._queuedFds:
            close_all(_owned(self._queuedFds))
            del self._queuedFds[:], self._queuedAt[:]
        self._writeHooks = []
        # The receive buffers go now rather than when the collector breaks
        # this transport's cycle with its protocol: under connection churn
        # each dead transport would hold its 64 KiB until then, and the heap
        # keeps growing to make room for them.
        self._receiver = None
        super().connectionLost(reason)


def isBatching(transport):
    """
    Whether C{transport} is one of this module's: its C{sendFileDescriptor}
    takes C{transfer}, and it honours C{addWriteHook}.
    """
    return isinstance(transport, _BatchingMixin)


@implementer(interfaces.IUNIXTransport)
class Server(_BatchingMixin, unix.Server):
    """
    The server side of a UNIX stream connection, with batched descriptors.
    """

    def __init__(self, *args, **kwargs):
        self._initBatching()
        unix.Server.__init__(self, *args, **kwargs)


@implementer(interfaces.IUNIXTransport)
class Client(_BatchingMixin, unix.Client):
    """
    The client side of a UNIX stream connection, with batched descriptors.
    """

    def __init__(self, *args, **kwargs):
        self._initBatching()
        unix.Client.__init__(self, *args, **kwargs)


class Port(unix.Port):
    """
    A listening UNIX socket whose connections are L{Server}s, optionally
    admitting only some users or groups.

    A connection from a peer that is not admitted is closed as soon as it is
    accepted, before any protocol is built for it or anything is read from
    it, and logged with the peer's credentials.

    @ivar allowedUIDs: the user ids admitted, or L{None}.
    @ivar allowedGIDs: the group ids admitted, or L{None}.  When both are
        given, a peer is admitted if its user id is in C{allowedUIDs} or its
        group id is in C{allowedGIDs}; when neither is, every peer the socket
        file's mode lets in is admitted.  The group is the peer's effective
        group: supplementary groups are not seen.
    """

    transport = Server

    def __init__(
        self,
        fileName,
        factory,
        backlog=50,
        mode=0o666,
        reactor=None,
        wantPID=0,
        allowedUIDs=None,
        allowedGIDs=None,
    ):
        unix.Port.__init__(self, fileName, factory, backlog, mode, reactor, wantPID)
        self.allowedUIDs = None if allowedUIDs is None else frozenset(allowedUIDs)
        self.allowedGIDs = None if allowedGIDs is None else frozenset(allowedGIDs)

    def admits(self, credentials):
        """
        Whether a peer with these L{PeerCredentials} may connect.
        """
        uids, gids = self.allowedUIDs, self.allowedGIDs
        if uids is None and gids is None:
            return True
        return (uids is not None and credentials.uid in uids) or (
            gids is not None and credentials.gid in gids
        )

    def doRead(self):
        if self.allowedUIDs is None and self.allowedGIDs is None:
            return super().doRead()
        # Twisted's tcp.Port.doRead, with the peer checked before its
        # protocol is built: there is no hook between accept() and
        # buildProtocol() that sees the socket.
        try:
            with tcp._BuffersLogs(self._logger.namespace, self._logger.observer) as logger:
                accepted = 0
                clients = tcp._accept(logger, range(self.numberAccepts), self.socket, tcp._reservedFD)
                for accepted, (skt, addr) in enumerate(clients, 1):
                    try:
                        credentials = _readPeerCredentials(skt)
                    except OSError:
                        credentials = None
                    if credentials is None or not self.admits(credentials):
                        skt.close()
                        logger.warn(
                            "{port}: refused a connection from {credentials}: not an "
                            "allowed user or group",
                            port=self,
                            credentials=credentials,
                        )
                        continue
                    protocol = self.factory.buildProtocol(self._buildAddr(addr))
                    if protocol is None:
                        skt.close()
                        continue
                    session = self.sessionno
                    self.sessionno = session + 1
                    transport = self.transport(skt, protocol, addr, self, session, self.reactor)
                    transport._peerCredentials = credentials
                    protocol.makeConnection(transport)
            if accepted == self.numberAccepts:
                self.numberAccepts += 20
            else:
                self.numberAccepts = max(1, accepted)
        except BaseException:
            log.deferr()


class Connector(unix.Connector):
    """
    Connects to a UNIX socket with a L{Client}.
    """

    def _makeTransport(self):
        return Client(self.address, self, self.reactor, self.checkPID)
