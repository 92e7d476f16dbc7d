"""
Resource exhaustion and faults, each with the outcome the protocol promises:
a clear error, the connection closed where the protocol says so, and every
process left with the descriptors it started with.

Faults that need a process of their own (a lowered C{RLIMIT_NOFILE}, a user
without privileges) run L{tests.children.faults} as that process.
"""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

from twisted.internet import defer, error, protocol, reactor, task
from twisted.trial.unittest import SkipTest

import pyamp_fds
from pyamp_fds import fdio
from pyamp_fds.endpoints import UNIXServerEndpoint
from pyamp_fds.errors import BoxTooLarge, TooManyUnclaimedDescriptors
from tests import peer
from tests.children.faults import Hello, Take, Taker, countDescriptors, freshPipe
from tests.reactorhelpers import ReactorTestCase, adopt, settle, watchLost

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ChildProcess:
    """
    A child running L{tests.children.faults} over one end of a socketpair,
    reporting JSON lines.
    """

    def __init__(self, testCase, role, sock):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.children.faults", role, str(sock.fileno())],
            cwd=ROOT,
            pass_fds=[sock.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        os.set_blocking(self.process.stdout.fileno(), False)
        self._buffer = b""
        self.reports = []
        testCase.addCleanup(self.reap)

    def reap(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self.process.stdout.close()

    def _readReports(self):
        try:
            chunk = self.process.stdout.read()
        except BlockingIOError:
            chunk = None
        if chunk:
            self._buffer += chunk
            *lines, self._buffer = self._buffer.split(b"\n")
            self.reports.extend(json.loads(line) for line in lines)

    @defer.inlineCallbacks
    def waitFor(self, event, timeout=30, orElse=()):
        """
        Wait for the child's report of C{event}, or of one in C{orElse};
        fire with it.
        """
        events = (event,) + tuple(orElse)
        for _ in range(int(timeout / 0.01)):
            self._readReports()
            for r in self.reports:
                if r["event"] in events:
                    return r
            if self.process.poll() is not None:
                self._readReports()
                found = [r for r in self.reports if r["event"] in events]
                if found:
                    return found[0]
                raise AssertionError(
                    "child ended (%s) without reporting %r: %r"
                    % (self.process.returncode, event, self.reports)
                )
            yield settle(0.01)
        raise AssertionError("child did not report %r: %r" % (event, self.reports))


class ReceiverAtLimitTests(ReactorTestCase):
    """
    A receiver at C{RLIMIT_NOFILE}, in a process of its own.
    """

    @defer.inlineCallbacks
    def test_truncatedThroughAMP(self):
        """
        A receiver with too few descriptor numbers left for a batch loses
        the connection with L{DescriptorsTruncated}, dispatches nothing from
        that read, and ends with the descriptors it had; the sender's calls
        fail and it ends balanced too.
        """
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child = ChildProcess(self, "truncate", b)
        b.close()
        proto = pyamp_fds.AMP()
        self._lost.append(watchLost(proto))
        lost = watchLost(proto)
        adopt(a, proto)
        made = yield child.waitFor("made")
        fd, found = freshPipe()
        first = yield proto.callRemote(Take, fd=fd, n=0)
        os.close(fd)
        self.assertEqual(first["id"], found)
        # Thirty descriptors in one sendmsg, five numbers free to take them.
        calls = []
        for n in range(1, 31):
            fd, _ = freshPipe()
            calls.append(proto.callRemote(Take, fd=fd, n=n))
            os.close(fd)
        reason = yield lost
        self.assertIsInstance(reason, (error.ConnectionDone, error.ConnectionLost))
        results = yield defer.DeferredList(calls, consumeErrors=True)
        self.assertEqual([ok for ok, _ in results], [False] * 30)
        for _, failure in results:
            failure.trap(error.ConnectionDone, error.ConnectionLost)
        childLost = yield child.waitFor("lost")
        self.assertEqual(childLost["reason"], "DescriptorsTruncated")
        # Only the call before the truncated batch was dispatched.
        self.assertEqual(childLost["taken"], 1)
        # Its socket is the one descriptor it no longer has.
        self.assertEqual(childLost["fds"], made["fds"] - 1)
        self.assertEqual(child.process.wait(timeout=30), 0)


class SenderInflightLimitTests(ReactorTestCase):
    """
    A sender with too many descriptors in flight (C{ETOOMANYREFS}).
    """

    @defer.inlineCallbacks
    def backOffAndDeliver(self, role):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(a.close)
        child = ChildProcess(self, role, b)
        b.close()
        made = yield child.waitFor("made", orElse=["privileged"])
        if made["event"] == "privileged":
            raise SkipTest("the kernel's in-flight limit cannot apply: " + made["why"])
        self.assertNotEqual(made["uid"], 0)
        backedOff = yield child.waitFor("backedOff")
        self.assertGreaterEqual(backedOff["backOffs"], 1)
        # Still connected: nothing read yet, nothing lost.
        self.assertNotIn("lost", [r["event"] for r in child.reports])
        server = Taker()
        self._lost.append(watchLost(server))
        lost = watchLost(server)
        adopt(a, server)
        answered = yield child.waitFor("answered")
        self.assertEqual(answered["matched"], answered["sent"])
        self.assertEqual(server.taken, answered["sent"])
        yield lost
        childLost = yield child.waitFor("lost")
        self.assertEqual(childLost["reason"], "ConnectionDone")
        self.assertEqual(childLost["fds"], made["fds"] - 1)
        self.assertEqual(server.receivedDescriptors.unclaimed, 0)

    def test_backsOffAndDelivers(self):
        """
        A sender without privileges whose descriptors in flight exceed its
        C{RLIMIT_NOFILE}, to a peer that does not read, gets
        C{ETOOMANYREFS}: its transport backs off instead of losing the
        connection, and once the peer reads, every call is delivered with
        the right descriptor and both ends are balanced.
        """
        return self.backOffAndDeliver("inflight")

    def test_backsOffBetweenGroupsOfOneBox(self):
        """
        The same with lists of 260 descriptors handed over, more than one
        C{sendmsg} takes: the limit strikes between the groups of one box,
        and the rest of that box's descriptors still arrive with it, in
        order, and are closed once sent.
        """
        return self.backOffAndDeliver("inflightLists")


class UnclaimedFloodTests(ReactorTestCase):
    """
    A peer flooding descriptors that no box claims.
    """

    @defer.inlineCallbacks
    def flood(self, fast):
        proto = Taker()
        peerSock = self.rawPeer(proto, fast=fast)
        lost = watchLost(proto)
        limit = proto.maxUnclaimedDescriptors
        held = []
        original = proto.fileDescriptorsReceived

        def fileDescriptorsReceived(fds):
            held.append(proto.receivedDescriptors.unclaimed + len(fds))
            original(fds)

        proto.fileDescriptorsReceived = fileDescriptorsReceived
        waiting = proto.callRemote(Hello)
        base = countDescriptors()
        peak = [0]

        def sample():
            peak[0] = max(peak[0], countDescriptors() - base)

        sampler = task.LoopingCall(sample)
        sampler.start(0.001)
        # Full batches, each with one byte of a box that never ends: a key,
        # then a long value.
        stream = b"\x00\x03key\xff\xff" + b"v" * 0xFFFF
        sentBatches = 0
        pipe, _ = freshPipe()
        self.addCleanup(os.close, pipe)
        fds = [pipe] * fdio.MAX_FDS_PER_MESSAGE
        for i in range(2 * limit // len(fds) + 2):
            try:
                fdio.send_with_fds(peerSock, stream[i : i + 1], fds)
            except OSError as e:
                self.assertIn(e.errno, (errno.EPIPE, errno.ECONNRESET))
                break
            sentBatches += 1
            yield settle(0.005)
        reason = yield lost
        sampler.stop()
        # We closed it, cleanly; the calls waiting say why.
        self.assertIsInstance(reason, error.ConnectionDone)
        yield self.assertFailure(waiting, TooManyUnclaimedDescriptors)
        # Cut off at the first batch past the limit, never holding more.
        self.assertLessEqual(max(held), limit + fdio.MAX_FDS_PER_MESSAGE)
        self.assertGreater(max(held), limit)
        self.assertEqual(proto.receivedDescriptors.unclaimed, 0)
        self.assertLessEqual(peak[0], limit + fdio.MAX_FDS_PER_MESSAGE)
        # The flooder sees the connection end: closed while what it sent
        # was still unread, so it may be reset rather than ended.
        peerSock.settimeout(5)
        try:
            while fdio.recv_with_fds(peerSock, 65536)[0]:
                pass
        except ConnectionResetError:
            pass
        self.flushLoggedErrors(TooManyUnclaimedDescriptors)

    def test_floodBatchingTransport(self):
        """
        Over pyamp_fds's transport, at the default limit, with full batches
        of 253: closed with L{TooManyUnclaimedDescriptors} at the first
        batch past the limit; every descriptor held is closed, at no point
        more than the limit and one batch are held, and the flooder sees
        the connection end.
        """
        return self.flood(fast=True)

    def test_floodStockTransport(self):
        """
        The same over Twisted's own transport, which hands descriptors over
        one by one.
        """
        return self.flood(fast=False)


class EndlessBoxTests(ReactorTestCase):
    """
    A peer sending a box that never ends.
    """

    @defer.inlineCallbacks
    def test_refusedBeforeLimit(self):
        """
        A box that grows without end is refused with L{BoxTooLarge} once it
        passes C{maxBoxSize}, and the decoder never holds more than that.
        """
        proto = Taker()
        proto.maxBoxSize = 256 * 1024
        peerSock = self.rawPeer(proto)
        lost = watchLost(proto)
        waiting = proto.callRemote(Hello)
        pending = []
        original = proto.dataReceived

        def dataReceived(data):
            original(data)
            pending.append(proto.pendingBytes)

        proto.dataReceived = dataReceived
        peerSock.setblocking(False)
        pair = b"\x00\x01k\xff\xff" + b"v" * 0xFFFF
        sent = [0]
        stopped = []

        def push():
            # As much as the socket takes, every turn, until refused.
            while True:
                try:
                    count = peerSock.send(pair)
                except BlockingIOError:
                    return
                except OSError as e:
                    stopped.append(e.errno)
                    loop.stop()
                    return
                sent[0] += count
                if sent[0] > 64 * proto.maxBoxSize:
                    stopped.append("never refused")
                    loop.stop()
                    return

        loop = task.LoopingCall(push)
        loop.start(0.001)
        reason = yield lost
        if loop.running:
            loop.stop()
        # We closed it, cleanly; the calls waiting say why.
        self.assertIsInstance(reason, error.ConnectionDone)
        yield self.assertFailure(waiting, BoxTooLarge)
        self.assertNotIn("never refused", stopped)
        self.assertTrue(pending)
        self.assertLessEqual(max(pending), proto.maxBoxSize)
        self.flushLoggedErrors(BoxTooLarge)


class PausingProducer:
    """
    Makes L{Take} calls, a few per reactor turn, while not paused.
    """

    perTurn = 20

    def __init__(self, proto, total):
        self.proto = proto
        self.total = total
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.calls = []
        self.expected = []
        self.queued = []
        self.held = []
        self.base = countDescriptors()
        self.done = defer.Deferred()
        self._call = None

    def start(self):
        self._call = reactor.callLater(0, self.turn)

    def turn(self):
        self._call = None
        transport = self.proto.transport
        for _ in range(self.perTurn):
            if self.paused or len(self.calls) == self.total:
                break
            fd, found = freshPipe()
            self.expected.append(found)
            self.calls.append(self.proto.callRemote(Take, fd=fd, n=len(self.calls)))
            os.close(fd)
            self.queued.append(len(transport.queuedDescriptors))
            self.held.append(countDescriptors() - self.base)
        if len(self.calls) == self.total:
            self.done.callback(None)
        elif not self.paused:
            self._call = reactor.callLater(0, self.turn)

    def pauseProducing(self):
        self.pauses += 1
        self.paused = True

    def resumeProducing(self):
        self.resumes += 1
        self.paused = False
        if self._call is None and not self.done.called:
            self._call = reactor.callLater(0, self.turn)

    def stopProducing(self):
        if self._call is not None:
            self._call.cancel()
            self._call = None


class StalledPeerTests(ReactorTestCase):
    """
    A peer that stops reading while we keep calling.
    """

    @defer.inlineCallbacks
    def test_producerPausedAndBounded(self):
        """
        Calling a peer that does not read pauses a registered producer once
        the socket is full and more than C{maxQueuedDescriptors} wait; the
        queue and our descriptor count stay bounded while it waits; when the
        peer reads again, the producer resumes and every call is answered
        with the right descriptor.
        """
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        client = pyamp_fds.AMP()
        self._lost.append(watchLost(client))
        adopt(a, client)
        self.addCleanup(self._disconnect, client)
        limit = client.transport.maxQueuedDescriptors
        producer = PausingProducer(client, total=3 * limit)
        client.transport.registerProducer(producer, True)
        producer.start()
        while not producer.paused:
            self.assertFalse(producer.done.called, "never paused")
            yield settle(0.005)
        madeAtPause = len(producer.calls)
        # It stays paused while the peer does not read, holding no more.
        yield settle(0.2)
        self.assertTrue(producer.paused)
        self.assertEqual(len(producer.calls), madeAtPause)
        self.assertLess(madeAtPause, producer.total)
        self.assertLessEqual(max(producer.queued), limit + 1)
        # Each call held one pipe of its own for a moment, besides the queue.
        self.assertLessEqual(max(h - q for h, q in zip(producer.held, producer.queued)), 1)
        # The kernel took some before the queue filled: paused by the peer.
        self.assertGreater(madeAtPause, max(producer.queued))
        server = Taker()
        self._lost.append(watchLost(server))
        adopt(b, server)
        self.addCleanup(self._disconnect, server)
        yield producer.done
        answers = yield defer.gatherResults(producer.calls)
        client.transport.unregisterProducer()
        self.assertGreaterEqual(producer.pauses, 1)
        self.assertGreaterEqual(producer.resumes, 1)
        self.assertEqual([x["id"] for x in answers], producer.expected)
        self.assertEqual(server.taken, producer.total)
        self.assertEqual(len(client.transport.queuedDescriptors), 0)


class KilledPeerTests(ReactorTestCase):
    """
    A peer killed with descriptors in flight both ways.
    """

    @defer.inlineCallbacks
    def killMidStream(self, childKind):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "sock")
        connected = defer.Deferred()
        factory = protocol.Factory.forProtocol(peer.FastPeer)
        build = factory.buildProtocol

        def buildProtocol(addr):
            p = build(addr)
            self._lost.append(watchLost(p))
            connected.callback(p)
            return p

        factory.buildProtocol = buildProtocol
        port = yield UNIXServerEndpoint(reactor, path).listen(factory)
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.peer", childKind, "flood", path],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )

        def reap():
            if child.poll() is None:
                child.kill()
            child.wait(timeout=30)

        self.addCleanup(reap)
        p = yield connected
        yield port.stopListening()
        lost = watchLost(p)
        transport = p.transport
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        while p.receivedDescriptors.received < 60:
            yield settle(0.01)
        # The child's calls pile up, descriptors and all, in our socket.
        p.transport.stopReading()
        yield settle(0.1)
        os.kill(child.pid, signal.SIGSTOP)
        # Ours pile up in its socket, then in our queue.
        writeEnds = []
        self.addCleanup(lambda: [os.close(w) for w in writeEnds])
        calls = []
        for _ in range(400):
            for _ in range(10):
                fds = []
                for _ in range(3):
                    r, w = os.pipe()
                    fds.append(r)
                    writeEnds.append(w)
                ids = [peer.identity(fd) for fd in fds]
                calls.append(p.callRemote(peer.Check, a=fds[0], b=fds[1], c=fds[2], ids=ids))
                for fd in fds:
                    os.close(fd)
            yield settle(0)
            if p.transport.queuedDescriptors:
                break
        self.assertTrue(p.transport.queuedDescriptors, "the child's socket never filled")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        p.transport.startReading()
        reason = yield lost
        self.assertIsInstance(reason, (error.ConnectionDone, error.ConnectionLost))
        results = yield defer.DeferredList(calls, consumeErrors=True)
        self.assertEqual({ok for ok, _ in results}, {False})
        self.assertEqual(p.receivedDescriptors.unclaimed, 0)
        self.assertEqual(len(transport.queuedDescriptors), 0)
        # No copy of a pipe we sent is left anywhere: not in our queue, not
        # in flight, not in the dead child.  Closing can lag the kill.
        for w in writeEnds:
            for _ in range(500):
                try:
                    os.write(w, b"x")
                except BrokenPipeError:
                    break
                yield settle(0.01)
            else:
                self.fail("a pipe sent to the killed peer is still open somewhere")

    def test_fastPeerKilled(self):
        """
        A pyamp_fds peer, stopped and then killed while both sides have
        descriptors in flight and ours still has some queued: our calls
        fail, every descriptor we held or queued is closed, and none of the
        pipes we sent survives anywhere.
        """
        return self.killMidStream("fast")

    def test_stockPeerKilled(self):
        """
        The same with a stock Twisted peer.
        """
        return self.killMidStream("stock")

