"""
Tests for L{pyamp_fds.transport}: how queued descriptors and written bytes
are grouped into C{sendmsg} calls, seen from a plain socket on the other end.

The sockets are real, since what the kernel carries in each message is what
is tested; the reactor is run by hand (L{tests.socketdriver}), so that the
transport writes and reads exactly when the test says.
"""

import os
import socket

from zope.interface import implementer

from twisted.internet import error, protocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.python import log

from pyamp_fds import fdio
from pyamp_fds.interfaces import IBatchingTransport
from tests.fdcheck import identity
from tests.socketdriver import DrivenTestCase


def readAll(sock, until):
    """
    Read from C{sock} until C{until} bytes have arrived, recording which
    descriptors came with which read.

    @return: a list of C{(bytes, descriptors)}, one per C{recvmsg}.
    """
    reads, total = [], 0
    sock.setblocking(True)
    sock.settimeout(10)
    while total < until:
        data, fds, flags = fdio.recv_with_fds(sock, 1 << 20)
        if not data:
            break
        reads.append((data, fds))
        total += len(data)
    return reads


class TransportTests(DrivenTestCase):
    """
    The batching transport sends bytes and descriptors together, each
    descriptor no later than the bytes written after it was queued.
    """

    def openFiles(self, count):
        """
        C{count} descriptors, each for a file of its own; closed when the
        test ends.
        """
        fds = []
        for _ in range(count):
            r, w = os.pipe()
            os.close(w)
            fds.append(r)
        self.addCleanup(fdio.close_all, fds)
        return fds

    def connectRaw(self):
        connection = self.connect(protocol.Protocol())
        self.assertTrue(IBatchingTransport.providedBy(connection.transport))
        return connection

    def test_moreThanOneMessageOfDescriptors(self):
        """
        Descriptors queued before a write beyond the 253 one message may
        carry are split into groups, each with at least one byte, all of
        them before the end of those bytes, in order: two C{sendmsg} calls
        for 300.
        """
        connection = self.connectRaw()
        transport, peer = connection.transport, connection.peer
        fds = self.openFiles(300)
        for fd in fds:
            transport.sendFileDescriptor(fd)
        transport.write(b"0123456789")
        connection.turn()
        reads = readAll(peer, 10)
        self.assertEqual(b"".join(data for data, _ in reads), b"0123456789")
        received = [fd for _, got in reads for fd in got]
        try:
            self.assertEqual([identity(fd) for fd in received], [identity(fd) for fd in fds])
            # The first group went with a single byte, so that the second
            # still had bytes of the same write to travel with.
            self.assertEqual([(len(d), len(f)) for d, f in reads], [(1, 253), (9, 47)])
            self.assertEqual(transport.sendmsgCalls, 2)
        finally:
            fdio.close_all(received)

    def test_descriptorsNoLaterThanTheirBytes(self):
        """
        A descriptor travels no later than the bytes written after it was
        queued (earlier is allowed: descriptors keep their order, so the
        ordinals still match), and all of them in one C{sendmsg} when they
        fit.
        """
        connection = self.connectRaw()
        transport, peer = connection.transport, connection.peer
        first, second = self.openFiles(2)
        transport.sendFileDescriptor(first)
        transport.write(b"a" * 100)
        transport.sendFileDescriptor(second)
        transport.write(b"b" * 100)
        connection.turn()
        reads = readAll(peer, 200)
        received = [fd for _, got in reads for fd in got]
        try:
            self.assertEqual([identity(fd) for fd in received], [identity(first), identity(second)])
            offset, arrivals = 0, []
            for data, got in reads:
                arrivals.extend([offset] * len(got))
                offset += len(data)
            self.assertLessEqual(arrivals[0], 99)
            self.assertLessEqual(arrivals[1], 199)
            self.assertEqual(transport.sendmsgCalls, 1)
        finally:
            fdio.close_all(received)

    def test_partialWrites(self):
        """
        When the socket takes only part of the bytes, the descriptors that
        went with the first of them are never sent again, and the rest
        follow once the peer reads: every byte once, every descriptor once.
        """
        connection = self.connectRaw()
        transport, peer = connection.transport, connection.peer
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        fds = self.openFiles(20)
        payload = bytes(range(256)) * 4000
        chunk = len(payload) // len(fds)
        for i, fd in enumerate(fds):
            transport.sendFileDescriptor(fd)
            transport.write(payload[i * chunk : (i + 1) * chunk])
        connection.turn()
        # The peer has not read: most of it is still waiting.
        self.assertTrue(connection.wantsToWrite())
        self.assertTrue(transport.dataBuffer or transport._tempDataLen)
        peer.setblocking(False)
        reads, received, total = [], [], 0
        try:
            while total < len(payload):
                try:
                    data, got, flags = fdio.recv_with_fds(peer, 1 << 20)
                except BlockingIOError:
                    # The socket has room again: the transport's next turn.
                    self.assertTrue(connection.turn(), "nothing left to send")
                    continue
                reads.append(data)
                received.extend(got)
                total += len(data)
            self.assertEqual(b"".join(reads), payload)
            self.assertEqual([identity(fd) for fd in received], [identity(fd) for fd in fds])
        finally:
            fdio.close_all(received)

    def test_writeHookAfterLoseWriteConnection(self):
        """
        A write hook added once the write side is closed has its bytes
        dropped, as Twisted's C{write} drops them, and the protocol hears of
        the closed write side once.
        """
        proto = HalfClosing()
        connection = self.connect(proto)
        connection.peer.sendall(b"one")
        connection.run()
        self.assertEqual(proto.writeLost, 1)
        hooked = []
        connection.transport.addWriteHook(lambda: hooked.append(1) or b"late")
        connection.run()
        self.assertEqual(hooked, [1])
        self.assertTrue(connection.open())
        self.assertEqual(proto.writeLost, 1)
        self.assertEqual(readAll(connection.peer, 4), [(b"bye", [])])

    def test_writeHookAfterLoss(self):
        """
        A write hook added once the connection is lost has its bytes
        dropped, as Twisted's C{write} drops them, and the transport does
        not ask the reactor to write (a real reactor refuses a transport
        with no descriptor).
        """
        connection = self.connectRaw()
        connection.transport.loseConnection()
        connection.run()
        self.assertFalse(connection.open())
        hooked = []
        connection.transport.addWriteHook(lambda: hooked.append(1) or b"late")
        self.assertFalse(connection.wantsToWrite())
        self.assertEqual(hooked, [1])

    def test_queuedDescriptorsClosedWhenLost(self):
        """
        Duplicates queued but never sent are closed when the connection is
        lost; the caller's own descriptors stay open.
        """
        connection = self.connectRaw()
        transport = connection.transport
        fds = self.openFiles(3)
        for fd in fds:
            transport.sendFileDescriptor(fd)
        self.assertEqual(len(transport.queuedDescriptors), 3)
        connection.peer.close()
        transport.loseConnection()
        connection.run()
        self.assertIsNotNone(connection.lost)
        self.assertEqual(transport.queuedDescriptors, [])
        for fd in fds:
            os.fstat(fd)


class Replier(protocol.Protocol):
    """
    Answers every read with C{reply(data)} written to the transport, then
    does C{after(transport)}.
    """

    def __init__(self, reply, after=lambda transport: None):
        self.reply = reply
        self.after = after

    def dataReceived(self, data):
        self.transport.write(self.reply(data))
        self.after(self.transport)


@implementer(IHalfCloseableProtocol)
class HalfClosing(protocol.Protocol):
    """
    Answers its first read with C{b"bye"} and closes its write side; gives
    every later read to C{later(transport)}.

    @ivar writeLost: how many times C{writeConnectionLost} was called.
    """

    writeLost = 0
    reads = 0

    def __init__(self, later=lambda transport: None):
        self.later = later

    def dataReceived(self, data):
        self.reads += 1
        if self.reads == 1:
            self.transport.write(b"bye")
            self.transport.loseWriteConnection()
        else:
            self.later(self.transport)

    def writeConnectionLost(self):
        self.writeLost += 1

    def readConnectionLost(self):
        self.transport.loseConnection()


class WritesInsideReadsTests(DrivenTestCase):
    """
    Bytes written while a read is handled go out in the flush at the end of
    that read, straight to the socket: the transport registers for
    writability only when the socket does not take them all, or when a
    close must wait for them.
    """

    def countRegistrations(self, connection):
        registrations = []
        addWriter = connection.reactor.addWriter

        def counted(writer):
            registrations.append(writer)
            addWriter(writer)

        connection.reactor.addWriter = counted
        return registrations

    def test_noRegistration(self):
        """
        A reply written inside C{dataReceived} reaches the peer with that
        read's turn, and the transport never asked to write.
        """
        connection = self.connect(Replier(lambda data: data.upper()))
        registrations = self.countRegistrations(connection)
        for word in (b"one", b"two", b"three"):
            connection.peer.sendall(word)
            connection.turn()
            self.assertEqual(readAll(connection.peer, len(word)), [(word.upper(), [])])
        self.assertEqual(registrations, [])
        self.assertFalse(connection.wantsToWrite())

    def test_hookThatWrites(self):
        """
        A write hook that writes to the transport itself has those bytes go
        first and its own after them, inside a read as outside one, and a
        descriptor it queues goes no later than its own bytes.
        """
        fd = os.open(os.devnull, os.O_RDONLY)
        self.addCleanup(os.close, fd)

        def hook(transport):
            transport.write(b"first ")
            transport.sendFileDescriptor(fd)
            return b"second"

        class Hooking(protocol.Protocol):
            def dataReceived(self, data):
                self.transport.addWriteHook(lambda: hook(self.transport))

        connection = self.connect(Hooking())
        connection.peer.sendall(b"go")
        connection.turn()
        reads = readAll(connection.peer, len(b"first second"))
        received = [descriptor for data, descriptors in reads for descriptor in descriptors]
        try:
            self.assertEqual(b"".join(data for data, descriptors in reads), b"first second")
            self.assertEqual(len(received), 1)
            # The descriptor came with the first of the hook's own bytes or
            # before.
            offset = 0
            for data, descriptors in reads:
                if descriptors:
                    self.assertLessEqual(offset, len(b"first "))
                offset += len(data)
        finally:
            fdio.close_all(received)

    def test_socketFull(self):
        """
        A reply the socket does not take whole is registered for, and the
        rest follows once the peer reads.
        """
        reply = bytes(range(256)) * 4096
        connection = self.connect(Replier(lambda data: reply))
        connection.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        connection.peer.sendall(b"go")
        connection.turn()
        self.assertTrue(connection.wantsToWrite())
        connection.peer.setblocking(False)
        received = []
        while sum(map(len, received)) < len(reply):
            try:
                received.append(connection.peer.recv(1 << 20))
            except BlockingIOError:
                self.assertTrue(connection.turn(), "nothing left to send")
        self.assertEqual(b"".join(received), reply)

    def test_loseConnection(self):
        """
        A reply followed by C{loseConnection} inside the same read reaches
        the peer, and then the connection closes.
        """
        connection = self.connect(
            Replier(lambda data: b"bye", lambda transport: transport.loseConnection())
        )
        connection.peer.sendall(b"go")
        connection.run()
        self.assertEqual(readAll(connection.peer, 4), [(b"bye", [])])
        self.assertFalse(connection.open())

    def test_loseWriteConnection(self):
        """
        A reply followed by C{loseWriteConnection} inside the same read
        reaches the peer, then the peer reads the end of the stream, while
        the connection stays open for reading.
        """
        connection = self.connect(
            Replier(lambda data: b"bye", lambda transport: transport.loseWriteConnection())
        )
        connection.peer.sendall(b"go")
        connection.run()
        self.assertEqual(readAll(connection.peer, 4), [(b"bye", [])])
        self.assertEqual(connection.peer.recv(16), b"")
        self.assertTrue(connection.open())


    def test_producerClosesInsideWrite(self):
        """
        A producer told to pause by a write inside a read, which closes the
        connection there and then, still gets it closed once the bytes are
        sent.
        """
        reply = b"x" * (4 * 65536)

        @implementer(IPushProducer)
        class Closing:
            def pauseProducing(self):
                connection.transport.unregisterProducer()
                connection.transport.loseConnection()

            def resumeProducing(self):
                pass

            def stopProducing(self):
                pass

        def register(transport):
            transport.registerProducer(Closing(), True)

        proto = Replier(lambda data: reply)
        proto.connectionMade = lambda: register(proto.transport)
        connection = self.connect(proto)
        connection.peer.sendall(b"go")
        connection.peer.setblocking(False)
        received = []
        for _ in range(1000):
            try:
                data = connection.peer.recv(1 << 20)
            except BlockingIOError:
                connection.turn()
                continue
            if not data:
                break
            received.append(data)
        self.assertEqual(b"".join(received), reply)
        self.assertFalse(connection.open())

    def test_writeHookAfterLoseWriteConnection(self):
        """
        A write hook added inside a read once the write side is closed has
        its bytes dropped, as Twisted's C{write} drops them: the connection
        stays open for reading, its write side closed once.
        """
        hooked = []

        def later(transport):
            transport.addWriteHook(lambda: hooked.append(1) or b"late")

        proto = HalfClosing(later)
        connection = self.connect(proto)
        connection.peer.sendall(b"one")
        connection.run()
        connection.peer.sendall(b"two")
        connection.run()
        self.assertIsNone(connection.lost)
        self.assertTrue(connection.open())
        self.assertEqual(hooked, [1])
        self.assertEqual(readAll(connection.peer, 4), [(b"bye", [])])
        self.assertEqual(proto.writeLost, 1)

    def assertAbortSendsNothing(self, handleRead):
        """
        Have a protocol do C{handleRead(transport)} with the first read, and
        assert that the connection closes with nothing sent to the peer.
        """

        class Aborting(protocol.Protocol):
            def dataReceived(self, data):
                handleRead(self.transport)

        connection = self.connect(Aborting())
        connection.peer.sendall(b"go")
        connection.run()
        self.assertFalse(connection.open())
        connection.peer.settimeout(10)
        self.assertEqual(connection.peer.recv(16), b"")

    def test_abortConnectionDropsHookBytes(self):
        """
        Bytes a write hook would give, followed by C{abortConnection} inside
        the same read, are dropped with the connection, as C{abortConnection}
        drops anything buffered: the peer reads only the end of the stream.
        """

        def aborting(transport):
            transport.addWriteHook(lambda: b"never")
            transport.abortConnection()

        self.assertAbortSendsNothing(aborting)

    def test_writeHookAfterAbortConnection(self):
        """
        Nor are the bytes of a write hook added after C{abortConnection}
        inside the same read (as a protocol answering the read's next
        request adds one).
        """

        def aborting(transport):
            transport.abortConnection()
            transport.addWriteHook(lambda: b"never")

        self.assertAbortSendsNothing(aborting)

    def test_abortConnectionThenFlushNow(self):
        """
        Nor does C{flushNow} inside the read send them after
        C{abortConnection}.
        """

        def aborting(transport):
            transport.addWriteHook(lambda: b"never")
            transport.abortConnection()
            transport.flushNow()

        self.assertAbortSendsNothing(aborting)

    def test_nonStreamingProducerResumedAfterFlush(self):
        """
        A non-streaming producer is asked for more once the bytes written
        inside a read have all gone (as Twisted's C{doWrite} does when its
        buffer empties), also when they were a write hook's.
        """
        resumes = []

        @implementer(IPushProducer)
        class Pulled:
            def resumeProducing(self):
                resumes.append(len(resumes))

            def pauseProducing(self):
                pass

            def stopProducing(self):
                pass

        class Hooked(protocol.Protocol):
            def connectionMade(self):
                self.transport.registerProducer(Pulled(), False)

            def dataReceived(self, data):
                self.transport.addWriteHook(lambda: data.upper())

        connection = self.connect(Hooked())
        self.assertEqual(resumes, [0])
        connection.peer.sendall(b"go")
        connection.run()
        self.assertEqual(readAll(connection.peer, 2), [(b"GO", [])])
        self.assertEqual(resumes, [0, 1])

    def test_streamingProducerResumedAfterFlush(self):
        """
        A streaming producer paused inside a read because more descriptors
        were queued than L{maxQueuedDescriptors} is resumed once the flush
        at the end of the read has sent them, also when the bytes that carry
        them were a write hook's.
        """
        events = []

        @implementer(IPushProducer)
        class Pushing:
            def resumeProducing(self):
                events.append("resume")

            def pauseProducing(self):
                events.append("pause")

            def stopProducing(self):
                pass

        r, w = os.pipe()
        self.addCleanup(fdio.close_all, [r, w])

        class Hooked(protocol.Protocol):
            def connectionMade(self):
                self.transport.maxQueuedDescriptors = 1
                self.transport.registerProducer(Pushing(), True)

            def dataReceived(self, data):
                self.transport.sendFileDescriptors([r, w])
                self.transport.addWriteHook(lambda: data.upper())

        connection = self.connect(Hooked())
        connection.peer.sendall(b"go")
        connection.run()
        reads = readAll(connection.peer, 2)
        fdio.close_all([fd for _, got in reads for fd in got])
        self.assertEqual([(data, len(got)) for data, got in reads], [(b"GO", 2)])
        self.assertEqual(connection.transport.queuedDescriptors, [])
        # (Paused by each write while the buffer is full, as in Twisted.)
        self.assertEqual((events[0], events[-1]), ("pause", "resume"))


class TwistedParityTests(DrivenTestCase):
    """
    What Twisted's own suite (C{twisted.internet.test.test_unix}) expects of
    an C{IUNIXTransport}, which ours do too.
    """

    def test_descriptorsForAProtocolThatDoesNotTakeThem(self):
        """
        Descriptors that reach a protocol which is not an
        C{IFileDescriptorReceiver} are closed, and logged with Twisted's own
        event: its format, the protocol's log prefix, and both addresses.
        """
        events = []
        log.addObserver(events.append)
        self.addCleanup(log.removeObserver, events.append)
        proto = protocol.Protocol()
        connection = self.connect(proto)
        r, w = os.pipe()
        self.addCleanup(fdio.close_all, [r, w])
        fdio.send_with_fds(connection.peer, b"xy", [r, w])
        connection.turn()
        expected = {
            "format": (
                "%(protocolName)s (on %(hostAddress)r) does not "
                "provide IFileDescriptorReceiver; closing file "
                "descriptor received (from %(peerAddress)r)."
            ),
            "protocolName": "Protocol",
            "hostAddress": proto.transport.getHost(),
            "peerAddress": proto.transport.getPeer(),
        }
        matching = [
            event
            for event in events
            if {key: event.get(key) for key in expected} == expected
        ]
        self.assertEqual(len(matching), 1, events)

    def test_descriptorWithoutBytes(self):
        """
        A descriptor queued with no byte written to carry it cannot be
        sent: the connection is lost with C{FileDescriptorOverrun}, as
        C{IUNIXTransport} says, and the queued duplicate is closed.
        """
        proto = protocol.Protocol()
        connection = self.connect(proto)
        r, w = os.pipe()
        self.addCleanup(fdio.close_all, [r, w])
        proto.transport.sendFileDescriptor(r)
        proto.transport.loseConnection()
        connection.run()
        self.assertIsInstance(connection.lost, error.FileDescriptorOverrun)
        peer = connection.peer
        peer.setblocking(True)
        self.assertEqual(fdio.recv_with_fds(peer, 10)[:2], (b"", []))

    def test_descriptorWithoutBytesInsideRead(self):
        """
        Inside a read too: a descriptor queued in C{dataReceived} with no
        byte written loses the connection with C{FileDescriptorOverrun} at
        the end of that read (as Twisted's transport does on its next
        write), rather than waiting to go with whatever is written next.
        """
        r, w = os.pipe()
        self.addCleanup(fdio.close_all, [r, w])

        class Queuing(protocol.Protocol):
            def dataReceived(self, data):
                self.transport.sendFileDescriptor(r)

        connection = self.connect(Queuing())
        connection.peer.sendall(b"go")
        connection.run()
        self.assertIsInstance(connection.lost, error.FileDescriptorOverrun)
        peer = connection.peer
        peer.setblocking(True)
        self.assertEqual(fdio.recv_with_fds(peer, 10)[:2], (b"", []))

    def test_descriptorWithBytesLater(self):
        """
        Nor can one go with bytes written later, once the transport has
        written: Twisted's rule, a descriptor needs a byte written with it.
        """
        proto = protocol.Protocol()
        connection = self.connect(proto)
        r, w = os.pipe()
        self.addCleanup(fdio.close_all, [r, w])
        proto.transport.sendFileDescriptor(r)
        connection.turn()
        self.assertIsInstance(connection.lost, error.FileDescriptorOverrun)
