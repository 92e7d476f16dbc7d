"""
Peers that try to exhaust a server's descriptors or its reactor, each over
real sockets on the real reactor: a peer that sends requests and never
reads the answers, a kernel that refuses descriptors for a while, a
descriptor whose close blocks, a kernel that attaches a pidfd to every
message, a transport that cannot report dropped descriptors, and a
connection that holds more than its share of the descriptor budget.

Every test ends with exactly the descriptors it started with.
"""

import errno
import os
import socket
import struct
import time

from twisted.internet import defer, protocol, reactor, task, threads
from twisted.logger import formatEvent
from twisted.protocols import amp
from twisted.trial.unittest import SkipTest, TestCase

import pyamp_fds
from pyamp_fds import closer, fdio
from pyamp_fds import writing as writingModule
from pyamp_fds.budget import DescriptorBudget, processBudget, setProcessBudget
from pyamp_fds.closer import waitUntilClosed
from pyamp_fds.errors import (
    DescriptorProtocolError,
    DescriptorsTruncated,
    DescriptorsUnsupported,
    TooManyUnclaimedDescriptors,
)
from tests.fdcheck import assertNoNewDescriptors, identity, openDescriptors
from tests.reactorhelpers import ReactorTestCase, adopt, capturedEvents, settle, watchLost

# Linux 6.5's SO_PASSPIDFD; the socket module may not name it yet.
SO_PASSPIDFD = getattr(socket, "SO_PASSPIDFD", 76)


class GivePadded(amp.Command):
    """
    Ask for a descriptor; the padding makes each request large, so that one
    read of the server holds few of them.
    """

    arguments = [(b"pad", amp.String())]
    response = [(b"fd", pyamp_fds.Descriptor())]


class Give(amp.Command):
    arguments = []
    response = [(b"fd", pyamp_fds.Descriptor())]


class Take(amp.Command):
    arguments = [(b"fd", pyamp_fds.Descriptor()), (b"n", amp.Integer())]
    response = [(b"n", amp.Integer())]


class Hello(amp.Command):
    arguments = [(b"text", amp.Unicode())]
    response = [(b"text", amp.Unicode())]


class Responder(pyamp_fds.AMP):
    """
    Answers with duplicates of one descriptor of its own, and records the
    identity of each descriptor taken (closing it).
    """

    def __init__(self, given=None):
        super().__init__()
        self.given = given
        self.taken = []

    @GivePadded.responder
    def givePadded(self, pad):
        return {"fd": self.given}

    @Give.responder
    def give(self):
        return {"fd": self.given}

    @Take.responder
    def take(self, fd, n):
        self.taken.append(identity(fd))
        os.close(fd)
        return {"n": n}

    @Hello.responder
    def hello(self, text):
        return {"text": text.upper()}


def countOpen():
    """
    How many descriptors this process has open.
    """
    return len(openDescriptors())


@defer.inlineCallbacks
def waitFor(predicate, timeout, step=0.005):
    """
    Let the reactor run until C{predicate()} is true, or C{timeout} seconds
    have passed.

    @return: a L{Deferred} firing with the last value of C{predicate()}.
    """
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        yield settle(step)
    return predicate()


def box(**fields):
    """
    An encoded box of these fields (values as bytes, or anything whose
    C{str} is the value).
    """
    return pyamp_fds.encode_box(
        {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}
    )


def lingeringSocket(case, linger):
    """
    A TCP socket on the loopback with C{SO_LINGER} whose peer never reads
    and whose send buffer is full: closing it blocks for the linger time.

    @param case: the test case, which closes the rest when it ends.
    @return: C{(lingering, quietPeer)}; the caller closes C{lingering},
        C{quietPeer} is closed when the test ends.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    case.addCleanup(listener.close)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    lingering = socket.create_connection(listener.getsockname())
    quiet, _ = listener.accept()
    case.addCleanup(quiet.close)
    lingering.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    lingering.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, linger))
    lingering.setblocking(False)
    try:
        while True:
            lingering.send(b"x" * 65536)
    except BlockingIOError:
        pass
    return lingering, quiet


class HostileTestCase(ReactorTestCase):
    """
    A L{ReactorTestCase} with a descriptor the server hands out, and raw
    peers on sockets the test sets up.
    """

    def setUp(self):
        d = super().setUp()

        def made(_):
            r, w = os.pipe()
            os.close(w)
            self.given = r
            self.addCleanup(os.close, r)

        return d.addCallback(made)

    def rawPeerOn(self, proto, server, peer):
        """
        Run C{proto} over C{server} (one end of a socketpair, then closed)
        and return C{peer}, the other end, non-blocking, closed when the
        test ends.
        """
        self._lost.append(watchLost(proto))
        adopt(server, proto)
        self.addCleanup(self._disconnect, proto)
        self.addCleanup(peer.close)
        peer.setblocking(False)
        return peer


class RefusedAnswersTests(HostileTestCase):
    """
    Answers whose duplicates the descriptor budget refuses are refused as
    Twisted refuses an answer that fails (an unknown error, and the
    connection closed), and logged in two lines however many there are,
    not a traceback each.
    """

    def setUp(self):
        self.events = capturedEvents(self)
        return super().setUp()

    @defer.inlineCallbacks
    def test_loggedOnce(self):
        """
        A peer that sends 200 requests at once, each answered with a
        descriptor, and reads nothing, on a connection whose share is 30:
        the first 30 answers carry their descriptors, the 31st is an error
        that closes the connection, and the log says so once, then once for
        the other 169 refused; nothing is left open.
        """
        old = processBudget()
        setProcessBudget(DescriptorBudget(limit=2000, share=30))
        try:
            proto = Responder(self.given)
            server, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            peer = self.rawPeerOn(proto, server, peer)
        finally:
            setProcessBudget(old)
        lost = watchLost(proto)
        peer.sendall(b"".join(box(_ask=i, _command="Give") for i in range(200)))
        yield lost

        data, fds = b"", []
        while True:
            try:
                got, more, _ = fdio.recv_with_fds(peer, 1 << 20)
            except BlockingIOError:
                yield settle(0.01)
                continue
            fds += more
            data += got
            if not got:
                break
        fdio.close_all(fds)
        answers = pyamp_fds.BoxDecoder().feed(data)
        self.assertEqual([a[b"_answer"] for a in answers[:30]], [b"%d" % i for i in range(30)])
        self.assertEqual(len(fds), 30)
        first = answers[30]
        self.assertEqual(
            (first[b"_error"], first[b"_error_code"]), (b"30", amp.UNKNOWN_ERROR_CODE)
        )
        refusals = [e for e in self.events if "refused" in e.get("log_format", "")]
        self.assertEqual(len(refusals), 2, [formatEvent(e) for e in refusals])
        self.assertIn("no descriptor budget left", formatEvent(refusals[0]))
        self.assertIn("169 more answers", formatEvent(refusals[1]))
        self.assertEqual(self.flushLoggedErrors(amp.BadLocalReturn), [])


class SilentReaderTests(HostileTestCase):
    """
    A peer that sends requests whose answers carry descriptors and never
    reads them makes the server stop reading its requests once more than
    C{maxPendingDescriptors} duplicates are queued, rather than queue a
    duplicate for every request.
    """

    REQUESTS = 3000
    BOUND = 20

    @defer.inlineCallbacks
    def test_readingStopsWhilePeerDoesNotRead(self):
        """
        While the peer does not read, the server's count of open descriptors
        stays within the bound plus one read's worth of requests; once the
        peer reads, every request is answered, each with its descriptor.
        """
        server, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # A small send buffer, so that answers stay queued (as descriptors of
        # ours) rather than waiting in the kernel.
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        proto = Responder(self.given)
        peer = self.rawPeerOn(proto, server, peer)
        transport = proto.transport
        transport.maxPendingDescriptors = self.BOUND

        requests = [
            box(_ask=i, _command="GivePadded", pad=b"x" * 1000) for i in range(self.REQUESTS)
        ]
        perRead = transport.bufferSize // len(requests[0]) + 1
        data = memoryview(b"".join(requests))
        state = {"written": 0, "progress": time.monotonic(), "most": 0, "fds": 0, "got": []}
        baseline = countOpen()

        def write():
            while state["written"] < len(data):
                try:
                    sent = peer.send(data[state["written"] : state["written"] + 65536])
                except BlockingIOError:
                    break
                state["written"] += sent
                state["progress"] = time.monotonic()
            state["most"] = max(state["most"], countOpen() - baseline)

        def read():
            while True:
                try:
                    got, fds, _ = fdio.recv_with_fds(peer, 1 << 20)
                except BlockingIOError:
                    return
                fdio.close_all(fds)
                state["fds"] += len(fds)
                state["got"].append(got)
                if not got:
                    return

        writer = task.LoopingCall(write)
        writer.clock = reactor
        writer.start(0.002)
        try:
            # Until everything is written, or the server has read nothing
            # for a while: it has stopped reading.
            yield waitFor(
                lambda: state["written"] == len(data)
                or time.monotonic() - state["progress"] > 0.3,
                timeout=20,
            )
            stalledAt = state["written"]
            self.assertLess(stalledAt, len(data), "the server read every request")
            self.assertGreaterEqual(transport.readPauses, 1)
            self.assertLessEqual(
                state["most"],
                self.BOUND + perRead + 16,
                "the server held %d more descriptors (bound %d, %d requests a read)"
                % (state["most"], self.BOUND, perRead),
            )

            reader = task.LoopingCall(read)
            reader.clock = reactor
            reader.start(0.002)
            try:
                yield waitFor(lambda: state["fds"] >= self.REQUESTS, timeout=30)
            finally:
                reader.stop()
        finally:
            writer.stop()
        self.assertEqual(state["written"], len(data))
        self.assertEqual(state["fds"], self.REQUESTS)
        self.assertEqual(b"".join(state["got"]).count(b"\x00\x07_answer"), self.REQUESTS)
        self.assertTrue(transport.connected)
        self.assertEqual(len(transport.queuedDescriptors), 0)


class BackOffTests(HostileTestCase):
    """
    While the kernel refuses descriptors (C{ETOOMANYREFS}, C{ENOBUFS}), the
    transport waits on a timer and is not registered for writing: it does
    not call C{sendmsg} again and again.
    """

    CALLS = 60
    FAILING = 0.3

    @defer.inlineCallbacks
    def test_noSpinningWhileRefused(self):
        """
        For 0.3 s every C{sendmsg} of the server fails with C{ETOOMANYREFS}
        while a client sends 60 calls whose answers carry descriptors: the
        server tries tens of times, not thousands, backs off, and then
        delivers every answer.
        """
        server, client = self.connect(Responder(self.given), pyamp_fds.AMP())
        serverFd = server.transport.fileno()
        real = writingModule.send_with_fds
        state = {"until": None, "refused": 0}

        def sendWithFds(fileno, data, fds=()):
            refusing = state["until"] is not None and time.monotonic() < state["until"]
            if fileno == serverFd and refusing:
                state["refused"] += 1
                raise OSError(errno.ETOOMANYREFS, os.strerror(errno.ETOOMANYREFS))
            return real(fileno, data, fds)

        self.patch(writingModule, "send_with_fds", sendWithFds)
        state["until"] = time.monotonic() + self.FAILING
        answers = []

        def call():
            answers.append(client.callRemote(Give))

        sender = task.LoopingCall(call)
        sender.clock = reactor
        sender.start(self.FAILING / self.CALLS)
        try:
            yield waitFor(lambda: len(answers) >= self.CALLS, timeout=5)
        finally:
            sender.stop()
        results = yield defer.gatherResults(answers)
        for result in results:
            self.assertEqual(identity(result["fd"]), identity(self.given))
            os.close(result["fd"])
        self.assertGreater(state["refused"], 0)
        self.assertGreaterEqual(server.transport.backOffs, 1)
        self.assertLess(
            state["refused"],
            200,
            "%d sendmsg calls refused in %g s" % (state["refused"], self.FAILING),
        )


class BlockingCloseTests(HostileTestCase):
    """
    Descriptors a peer sent and never claimed, or that arrived in a
    truncated receive, are closed on a background thread: a close that
    blocks does not block the reactor.
    """

    LINGER = 2

    def lingeringSocket(self):
        """
        See L{lingeringSocket}.
        """
        return lingeringSocket(self, self.LINGER)

    @defer.inlineCallbacks
    def test_unclaimedLingeringSocket(self):
        """
        A raw peer sends a lingering socket's descriptor, never claims it,
        and disconnects; another client's call to the same process is
        answered at once, and its connection loss is handled at once, while
        the close takes the linger time in the background.
        """
        innocentServer, innocent = self.connect(Responder(), pyamp_fds.AMP())
        yield innocent.callRemote(Hello, text="warm")
        proto = Responder()
        server, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        peer = self.rawPeerOn(proto, server, peer)
        lost = watchLost(proto)
        lingering, _ = self.lingeringSocket()
        # The first byte of a box never finished: the descriptor stays
        # unclaimed.
        fdio.send_with_fds(peer, b"\x00", [lingering.fileno()])
        yield waitFor(lambda: proto.descriptorsUnclaimed == 1, timeout=2)
        self.assertEqual(proto.descriptorsUnclaimed, 1)
        # Ours goes: the server's is now the last, whose close lingers.
        lingering.close()

        start = time.monotonic()
        peer.shutdown(socket.SHUT_RDWR)
        timings = {}
        lost.addCallback(lambda _: timings.setdefault("lost", time.monotonic() - start))
        answer = yield innocent.callRemote(Hello, text="hello")
        answered = time.monotonic() - start
        self.assertEqual(answer, {"text": "HELLO"})
        yield waitFor(lambda: "lost" in timings, timeout=self.LINGER + 2)
        self.assertLess(answered, self.LINGER / 4)
        self.assertLess(timings["lost"], self.LINGER / 4)

        yield threads.deferToThread(waitUntilClosed)
        closed = time.monotonic() - start
        # The close really did linger (else this test proves nothing).
        self.assertGreater(closed, self.LINGER / 2)


    @defer.inlineCallbacks
    def test_unreadLingeringSocket(self):
        """
        A raw peer breaks the rules with one message and sends a lingering
        socket's descriptor in the next, which the server never reads: the
        connection is closed at once, and another client's call is answered
        at once, while the close of its socket, which releases that
        descriptor, takes the linger time in the background.
        """
        innocentServer, innocent = self.connect(Responder(), pyamp_fds.AMP())
        yield innocent.callRemote(Hello, text="warm")
        proto = Responder()
        server, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        peer = self.rawPeerOn(proto, server, peer)
        lost = watchLost(proto)
        lingering, _ = self.lingeringSocket()
        harmless = os.open(os.devnull, os.O_RDONLY)
        self.addCleanup(os.close, harmless)
        start = time.monotonic()
        # A read stops right after a message carrying descriptors: the first
        # is read, and names a descriptor never sent (the connection is
        # closed for it); the second stays in the socket.
        fdio.send_with_fds(peer, box(_ask=1, _command="Take", fd=5, n=1), [harmless])
        fdio.send_with_fds(peer, b"\x00", [lingering.fileno()])
        lingering.close()

        timings = {}

        def lostAt(reason):
            timings["lost"] = time.monotonic() - start
            return reason

        lost.addCallback(lostAt)
        answer = yield innocent.callRemote(Hello, text="hello")
        answered = time.monotonic() - start
        self.assertEqual(answer, {"text": "HELLO"})
        yield lost
        self.assertLess(answered, self.LINGER / 4)
        self.assertLess(timings["lost"], self.LINGER / 4)
        self.assertEqual(proto.receivedDescriptors.received, 1)

        yield threads.deferToThread(waitUntilClosed)
        closed = time.monotonic() - start
        # The close really did linger (else this test proves nothing).
        self.assertGreater(closed, self.LINGER / 2)
        self.flushLoggedErrors(DescriptorProtocolError)

    @defer.inlineCallbacks
    def test_truncatedLingeringSocket(self):
        """
        A raw peer sends more copies of a lingering socket's descriptor than
        a connection's receive has room for, so the receive is truncated
        (C{MSG_CTRUNC}): the connection is lost with L{DescriptorsTruncated}
        at once, and another client's call to the same process is answered
        at once, while the descriptors that did arrive are closed in the
        background, taking the linger time.
        """
        innocentServer, innocent = self.connect(Responder(), pyamp_fds.AMP())
        yield innocent.callRemote(Hello, text="warm")
        proto = Responder()
        server, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # A budget with room for four descriptors: this connection reads
        # with room for four, and the kernel drops the rest of a message.
        budget = DescriptorBudget(limit=4)
        old = processBudget()
        setProcessBudget(budget)
        try:
            peer = self.rawPeerOn(proto, server, peer)
        finally:
            setProcessBudget(old)
        self.assertIs(proto.transport.descriptorBudget, budget)
        lost = watchLost(proto)
        lingering, _ = self.lingeringSocket()
        start = time.monotonic()
        fdio.send_with_fds(peer, b"\x00", [lingering.fileno()] * 20)
        # Ours goes before the server can read (the reactor does not run
        # until this test yields): the copies the server receives are then
        # the last (those the kernel drops are not, they go first), and
        # closing the last lingers.
        lingering.close()

        timings = {}

        def lostAt(reason):
            timings["lost"] = time.monotonic() - start
            return reason

        lost.addCallback(lostAt)
        answer = yield innocent.callRemote(Hello, text="hello")
        answered = time.monotonic() - start
        self.assertEqual(answer, {"text": "HELLO"})
        reason = yield lost
        self.assertIsInstance(reason, DescriptorsTruncated)
        self.assertLess(answered, self.LINGER / 4)
        self.assertLess(timings["lost"], self.LINGER / 4)
        self.assertTrue(innocentServer.transport.connected)
        # Counted in the budget until closed, and never more than its room.
        self.assertEqual(budget.used, 4)

        yield threads.deferToThread(waitUntilClosed)
        closed = time.monotonic() - start
        # The close really did linger (else this test proves nothing).
        self.assertGreater(closed, self.LINGER / 2)
        self.assertEqual(budget.used, 0)


class CloserTests(TestCase):
    """
    L{pyamp_fds.closer} closes what it is handed, in order, counted in a
    budget until closed, and handing over never waits for a close.
    """

    def openPipes(self, count):
        fds = []
        for _ in range(count):
            r, w = os.pipe()
            os.close(w)
            fds.append(r)
        return fds

    def test_countedUntilClosed(self):
        """
        Descriptors discarded without patience count in the budget until
        the closer has closed them, then not at all; every one is closed.
        """
        before = countOpen()
        budget = DescriptorBudget(limit=1000)
        for _ in range(20):
            closer.discard(self.openPipes(5), budget, patience=0)
        self.assertLessEqual(budget.used, 100)
        closer.waitUntilClosed()
        self.assertEqual(budget.used, 0)
        self.assertEqual(countOpen(), before)

    def test_forkedChild(self):
        """
        A child made by C{fork()} while the closer runs has a closer of its
        own: what it hands over is closed there.
        """
        closer.closeLater(self.openPipes(1))
        closer.waitUntilClosed()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(w)
                closer.closeLater([r])
                closer.waitUntilClosed()
                try:
                    os.fstat(r)
                except OSError:
                    os._exit(0)
                os._exit(1)
            finally:
                os._exit(2)
        os.close(r)
        os.close(w)
        deadline = time.monotonic() + 10
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                self.fail("the child's closer never closed what it was handed")
            time.sleep(0.01)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)

    def test_handOverDoesNotWait(self):
        """
        While the closer is held by a close that blocks (a lingering
        socket), handing it more returns at once each time; they are
        closed after it.
        """
        before = countOpen()
        # Cleanups run last first: this one once the sockets are closed.
        self.addCleanup(lambda: self.assertEqual(countOpen(), before))
        linger = BlockingCloseTests.LINGER
        lingering, _ = lingeringSocket(self, linger)
        budget = DescriptorBudget(limit=1000)
        start = time.monotonic()
        closer.discard([lingering.detach()], budget, patience=0)
        for _ in range(50):
            closer.closeLater(self.openPipes(1))
        handedOver = time.monotonic() - start
        self.assertLess(handedOver, linger / 4)
        closer.waitUntilClosed()
        closed = time.monotonic() - start
        self.assertGreater(closed, linger / 2)
        self.assertEqual(budget.used, 0)


class PeerPidDescriptorTests(TestCase):
    """
    With C{SO_PASSPIDFD} set, the kernel attaches a pidfd of the sender to
    every message received: the receiving calls close it.
    """

    MESSAGES = 200

    def test_pidfdsClosed(self):
        """
        200 messages received with L{fdio.Receiver.receive} and
        L{fdio.recv_with_fds}, some carrying a descriptor, leave the
        descriptor count as it was, except for those descriptors.
        """
        before = openDescriptors()
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                b.setsockopt(socket.SOL_SOCKET, SO_PASSPIDFD, 1)
            except OSError as e:
                raise SkipTest("SO_PASSPIDFD is not supported here (Linux 6.5+): %s" % (e,))
            receiver = fdio.Receiver(4096)
            r, w = os.pipe()
            sent = identity(r)
            try:
                received = []
                for i in range(self.MESSAGES):
                    fds = [r] if i % 10 == 0 else []
                    fdio.send_with_fds(a, b"%d;" % (i,), fds)
                    if i % 2:
                        data, got = receiver.receive(b.fileno())
                    else:
                        data, got, _ = fdio.recv_with_fds(b, 4096)
                    self.assertEqual(data, b"%d;" % (i,))
                    self.assertEqual(len(got), len(fds))
                    for fd in got:
                        received.append(identity(fd))
                        os.close(fd)
                    if i % 50 == 0:
                        # Each message was read alone: a pidfd came with it.
                        self.assertEqual(countOpen(), len(before) + 4)
            finally:
                os.close(r)
                os.close(w)
            self.assertEqual(received, [sent] * (self.MESSAGES // 10))
        finally:
            a.close()
            b.close()
        assertNoNewDescriptors(before)


class UncheckedTransportTests(HostileTestCase):
    """
    Over Twisted's own UNIX transport, which cannot report descriptors the
    kernel dropped, L{pyamp_fds.AMP} refuses descriptors unless told to
    accept the risk.
    """

    def rawPeerOnTwisted(self, proto):
        """
        Run C{proto} over Twisted's own transport (C{adoptStreamConnection}),
        with a plain socket as its peer.
        """
        server, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._lost.append(watchLost(proto))
        factory = protocol.Factory()
        factory.buildProtocol = lambda addr: proto
        server.setblocking(False)
        reactor.adoptStreamConnection(server.fileno(), socket.AF_UNIX, factory)
        server.close()
        self.addCleanup(self._disconnect, proto)
        self.addCleanup(peer.close)
        peer.setblocking(False)
        return peer

    @defer.inlineCallbacks
    def test_refusedByDefault(self):
        """
        A descriptor received closes the connection with
        L{DescriptorsUnsupported}, which names L{pyamp_fds.endpoints}; the
        responder is not called and nothing is held.
        """
        proto = Responder()
        self.assertFalse(proto.allowUncheckedDescriptors)
        peer = self.rawPeerOnTwisted(proto)
        lost = watchLost(proto)
        # A call of the server's own, which fails with the reason the
        # connection was closed for.
        waiting = proto.callRemote(Hello, text="waiting")
        r, w = os.pipe()
        try:
            fdio.send_with_fds(peer, box(_ask=1, _command="Take", fd=0, n=1), [r])
        finally:
            os.close(r)
            os.close(w)
        closed = yield waitFor(lambda: lost.called, timeout=2)
        self.assertTrue(closed, "the connection is still open")
        reason = yield self.assertFailure(waiting, DescriptorsUnsupported)
        self.assertIn("pyamp_fds.endpoints", str(reason))
        self.assertEqual(proto.taken, [])
        self.assertEqual(proto.descriptorsUnclaimed, 0)
        self.flushLoggedErrors(DescriptorProtocolError)

    @defer.inlineCallbacks
    def test_allowed(self):
        """
        With C{allowUncheckedDescriptors} set, the same call is answered and
        its responder gets the descriptor sent.
        """
        proto = Responder()
        proto.allowUncheckedDescriptors = True
        peer = self.rawPeerOnTwisted(proto)
        r, w = os.pipe()
        try:
            fdio.send_with_fds(peer, box(_ask=1, _command="Take", fd=0, n=7), [r])
            got = []

            def answered():
                try:
                    got.append(peer.recv(4096))
                except BlockingIOError:
                    pass
                return b"".join(got).endswith(b"\x00\x00")

            self.assertTrue((yield waitFor(answered, timeout=5)))
            self.assertEqual(proto.taken, [identity(r)])
        finally:
            os.close(r)
            os.close(w)
        self.assertIn(b"_answer", b"".join(got))
        self.assertTrue(proto.transport.connected)


class BudgetTests(HostileTestCase):
    """
    Connections sharing a small L{DescriptorBudget}: the one holding more
    than its share is closed, and a shortage of headroom pauses reading
    rather than closing anyone.
    """

    def useBudget(self, budget):
        """
        Make C{budget} the one connections made from now on count in, until
        the test ends.
        """
        old = processBudget()
        setProcessBudget(budget)
        self.addCleanup(setProcessBudget, old)

    def openPipes(self, count):
        fds = []
        for _ in range(count):
            r, w = os.pipe()
            os.close(w)
            fds.append(r)
        self.addCleanup(fdio.close_all, fds)
        return fds

    @defer.inlineCallbacks
    def test_flooderClosed(self):
        """
        A raw peer sending descriptors no box claims is closed with
        L{TooManyUnclaimedDescriptors} once it holds more than its share,
        while an innocent client's calls carrying descriptors, before and
        after, are answered.
        """
        budget = DescriptorBudget(limit=2000, share=30)
        self.useBudget(budget)
        innocentServer, innocent = self.connect(Responder(), pyamp_fds.AMP())
        flooder = Responder()
        server, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        peer = self.rawPeerOn(flooder, server, peer)
        lost = watchLost(flooder)
        fds = self.openPipes(10)
        waiting = flooder.callRemote(Hello, text="waiting")

        expected = [fds[0]]
        answer = yield innocent.callRemote(Take, fd=fds[0], n=1)
        self.assertEqual(answer, {"n": 1})
        for i in range(5):
            try:
                fdio.send_with_fds(peer, box(_ask=i, _command="Hello", text="hi"), fds)
            except (BrokenPipeError, ConnectionResetError):
                break
            expected.append(fds[i])
            answer = yield innocent.callRemote(Take, fd=fds[i], n=i)
            self.assertEqual(answer, {"n": i})
        closed = yield waitFor(lambda: lost.called, timeout=2)
        self.assertTrue(closed, "the flooder is still connected")
        yield self.assertFailure(waiting, TooManyUnclaimedDescriptors)
        expected.append(fds[1])
        answer = yield innocent.callRemote(Take, fd=fds[1], n=99)
        self.assertEqual(answer, {"n": 99})
        self.assertEqual(innocentServer.taken, [identity(fd) for fd in expected])
        self.assertTrue(innocentServer.transport.connected)
        yield threads.deferToThread(waitUntilClosed)
        self.assertEqual(budget.used, 0)
        self.flushLoggedErrors(DescriptorProtocolError)

    @defer.inlineCallbacks
    def test_pausedWhileShort(self):
        """
        With less headroom than one full receive, an innocent connection
        stops reading instead of being closed; once the headroom is given
        back it reads again and its call is answered.
        """
        budget = DescriptorBudget(limit=600, share=300)
        server = Responder()
        sockets = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for proto in (server,):
            self._lost.append(watchLost(proto))
        old = processBudget()
        setProcessBudget(budget)
        try:
            adopt(sockets[0], server)
        finally:
            setProcessBudget(old)
        client = adopt(sockets[1], pyamp_fds.AMP())
        self._lost.append(watchLost(client))
        self.addCleanup(self._disconnect, server, client)
        self.assertIs(server.transport.descriptorBudget, budget)

        short = budget.limit - 100
        budget.take(short)
        fd = self.openPipes(1)[0]
        answer = client.callRemote(Take, fd=fd, n=3)
        yield settle(0.3)
        self.assertFalse(answer.called, "answered while short of headroom")
        self.assertGreaterEqual(server.transport.readPauses, 1)
        self.assertTrue(server.transport.connected)
        budget.give(short)
        result = yield answer
        self.assertEqual(result, {"n": 3})
        self.assertEqual(server.taken, [identity(fd)])
        self.assertTrue(server.transport.connected)
        self.assertEqual(budget.used, 0)

    @defer.inlineCallbacks
    def test_hogsUnderTheShareRelieved(self):
        """
        Two peers each holding unclaimed descriptors just under their share
        take nearly the whole budget: rather than every other connection
        waiting for ever, the one holding the most is closed (logged as a
        L{TooManyUnclaimedDescriptors}), its descriptors are released, and
        an innocent client's call is answered.
        """
        budget = DescriptorBudget(limit=600, share=300)
        self.useBudget(budget)
        innocentServer, innocent = self.connect(Responder(), pyamp_fds.AMP())
        hogs, losses, peers = [], [], []
        pipes = self.openPipes(1) * 145
        for _ in range(2):
            hog = Responder()
            server, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            peers.append(self.rawPeerOn(hog, server, peer))
            losses.append(watchLost(hog))
            hogs.append(hog)
        waiting = [hog.callRemote(Hello, text="waiting") for hog in hogs]
        # Each sends 290 on two bytes of a box that never ends.
        for i, peer in enumerate(peers):
            head = b"\x00\x03key\xff\xff"
            fdio.send_with_fds(peer, head[:1], pipes)
            fdio.send_with_fds(peer, head[1:2], pipes)
            yield waitFor(lambda: hogs[i].receivedDescriptors.unclaimed == 290, timeout=2)
        self.assertEqual(budget.used, 580)
        fd = self.openPipes(1)[0]
        answer = yield innocent.callRemote(Take, fd=fd, n=7)
        self.assertEqual(answer, {"n": 7})
        self.assertEqual(innocentServer.taken, [identity(fd)])
        closed = [loss.called for loss in losses]
        self.assertEqual(sorted(closed), [False, True])
        yield self.assertFailure(waiting[closed.index(True)], TooManyUnclaimedDescriptors)
        waiting[closed.index(False)].addErrback(lambda failure: None)
        self.flushLoggedErrors(DescriptorProtocolError)


class EvictionPenaltyTests(HostileTestCase):
    """
    A process whose connection a listening port's server closed for holding
    more descriptors than its share is refused new connections for
    L{pyamp_fds.credentials.Port.evictionPenalty} seconds; its other
    connections, and everyone else, are left alone.
    """

    useBudget = BudgetTests.useBudget
    openPipes = BudgetTests.openPipes

    @defer.inlineCallbacks
    def test_refusedForAWhile(self):
        """
        After the flooding connection is closed, a new connection from the
        same process is closed as soon as it is accepted (no protocol is
        built for it) until the penalty has passed; then it is served.
        """
        from pyamp_fds.endpoints import listenUNIX

        self.useBudget(DescriptorBudget(limit=2000, share=30))
        built = []

        class Factory(protocol.Factory):
            def buildProtocol(self, addr):
                proto = Responder()
                built.append(proto)
                self_._lost.append(watchLost(proto))
                return proto

        self_ = self
        path = self.mktemp() + ".sock"
        port = listenUNIX(reactor, path, Factory())
        port.evictionPenalty = 0.5
        self.addCleanup(port.stopListening)

        def connected():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            sock.setblocking(False)
            self.addCleanup(sock.close)
            return sock

        flooder = connected()
        yield waitFor(lambda: len(built) == 1, timeout=2)
        lost = watchLost(built[0])
        fds = self.openPipes(10)
        for i in range(5):
            try:
                fdio.send_with_fds(flooder, box(_ask=i, _command="Hello", text="hi"), fds)
            except (BrokenPipeError, ConnectionResetError):
                break
        closed = yield waitFor(lambda: lost.called, timeout=2)
        self.assertTrue(closed, "the flooder is still connected")
        penalizedAt = time.monotonic()

        refused = connected()
        gone = yield waitFor(lambda: _hungUp(refused), timeout=2)
        self.assertTrue(gone, "a connection during the penalty was not closed")
        self.assertEqual(len(built), 1)

        yield waitFor(lambda: time.monotonic() - penalizedAt > 0.6, timeout=2)
        served = connected()
        yield waitFor(lambda: len(built) == 2, timeout=2)
        self.assertEqual(len(built), 2)
        fdio.send_with_fds(served, box(_ask=1, _command="Hello", text="again"))
        answered = yield waitFor(lambda: _readable(served), timeout=2)
        self.assertTrue(answered)
        yield threads.deferToThread(waitUntilClosed)
        self.flushLoggedErrors(DescriptorProtocolError)

    def test_offWithZero(self):
        """
        With C{evictionPenalty} 0, nothing is recorded.
        """
        from pyamp_fds.credentials import Port

        port = Port.__new__(Port)
        port.evictionPenalty = 0
        port._penalized = {}
        port.penalize(object())
        self.assertEqual(port._penalized, {})


def _hungUp(sock):
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _readable(sock):
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False
