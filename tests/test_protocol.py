"""
Tests for L{pyamp_fds.protocol}: AMP over real UNIX sockets on the reactor.
"""

import os
import resource

from twisted.internet import defer, error, protocol, reactor
from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient

import pyamp_fds
from pyamp_fds import fdio
from pyamp_fds.errors import (
    DescriptorProtocolError,
    DescriptorsTruncated,
    DescriptorsUnsupported,
    InvalidDescriptorOrdinal,
    TooManyUnclaimedDescriptors,
    UnknownDescriptor,
)
from tests.fdcheck import identity, openDescriptors
from tests.reactorhelpers import BadPeerMixin, ReactorTestCase, settle, watchLost


class Take(amp.Command):
    arguments = [(b"fd", pyamp_fds.Descriptor()), (b"n", amp.Integer())]
    response = [(b"n", amp.Integer())]


class TakeThree(amp.Command):
    arguments = [
        (b"a", pyamp_fds.Descriptor()),
        (b"b", amp.Descriptor()),
        (b"c", pyamp_fds.Descriptor()),
    ]
    response = [(b"inodes", amp.ListOf(amp.Integer()))]


class Give(amp.Command):
    arguments = []
    response = [(b"fd", pyamp_fds.Descriptor()), (b"inode", amp.Integer())]


class GiveOwned(amp.Command):
    arguments = []
    response = [(b"fd", pyamp_fds.Descriptor(transfer=True)), (b"inode", amp.Integer())]


class HandOver(amp.Command):
    arguments = [(b"fd", pyamp_fds.Descriptor(transfer=True)), (b"n", amp.Integer())]
    response = [(b"n", amp.Integer())]


class TakeThenList(amp.Command):
    arguments = [(b"fd", pyamp_fds.Descriptor()), (b"more", pyamp_fds.DescriptorList(maxDescriptors=2))]
    response = []


class HandOverThenList(amp.Command):
    arguments = [
        (b"fd", pyamp_fds.Descriptor(transfer=True)),
        (b"more", pyamp_fds.DescriptorList(maxDescriptors=2)),
    ]
    response = []


class Hello(amp.Command):
    arguments = [(b"text", amp.Unicode())]
    response = [(b"text", amp.Unicode())]


class Switch(amp.ProtocolSwitchCommand):
    arguments = []
    response = []


class Collector(protocol.Protocol):
    def __init__(self):
        self.data = b""

    def dataReceived(self, data):
        self.data += data


def makeResponder(base):
    class Responder(base):
        """
        Records the inode of each descriptor taken, then closes it.
        """

        def __init__(self, *a, **kw):
            base.__init__(self, *a, **kw)
            self.taken = []
            self.switchedTo = None

        @Take.responder
        def take(self, fd, n):
            self.taken.append(identity(fd))
            os.close(fd)
            return {"n": n}

        @TakeThree.responder
        def takeThree(self, a, b, c):
            inodes = [identity(fd)[1] for fd in (a, b, c)]
            for fd in (a, b, c):
                os.close(fd)
            return {"inodes": inodes}

        @Give.responder
        def give(self):
            fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            inode = identity(fd)[1]
            self.giveAndClose = fd
            # The duplicate is what travels: ours may close at once.
            reactor.callLater(0, os.close, fd)
            return {"fd": fd, "inode": inode}

        @GiveOwned.responder
        def giveOwned(self):
            fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            self.handedOver = fd
            return {"fd": fd, "inode": identity(fd)[1]}

        @Hello.responder
        def hello(self, text):
            return {"text": text.upper()}

        @Switch.responder
        def switch(self):
            self.switchedTo = Collector()
            return self.switchedTo

    return Responder


class OopsError(Exception):
    pass


class Oops(amp.Command):
    arguments = []
    response = []
    errors = {OopsError: b"OOPS"}


class Unexpected(amp.Command):
    arguments = []
    response = []


class WrongAnswer(amp.Command):
    arguments = []
    response = [(b"n", amp.Integer())]


class WrongAnswerAsString(amp.Command):
    """
    L{WrongAnswer} as its responder declares it: the answer is a string, which
    the caller's integer cannot parse.
    """

    commandName = b"WrongAnswer"
    arguments = []
    response = [(b"n", amp.String())]


class Forget(amp.Command):
    arguments = []
    requiresAnswer = False


class ErrorResponder(amp.AMP):
    """
    Fails in each way a responder can, and answers what the caller's
    command cannot parse.
    """

    @Hello.responder
    def hello(self, text):
        return {"text": text}

    @Oops.responder
    def oops(self):
        raise OopsError("declared")

    @Unexpected.responder
    def unexpected(self):
        raise RuntimeError("not declared")

    @WrongAnswerAsString.responder
    def wrongAnswer(self):
        return {"n": b"not a number"}

    @Forget.responder
    def forget(self):
        return {}


FastResponder = makeResponder(pyamp_fds.AMP)
StockResponder = makeResponder(amp.AMP)


class DescriptorTests(ReactorTestCase):
    """
    Descriptors as command arguments and in responses.
    """

    @defer.inlineCallbacks
    def test_commandArgument(self):
        """
        A descriptor argument reaches the responder as the same file, and the
        caller may close its own copy as soon as C{callRemote} returns.
        """
        server, client = self.connect(FastResponder(), pyamp_fds.AMP())
        fd = os.open("/dev/null", os.O_RDONLY)
        expected = identity(fd)
        d = client.callRemote(Take, fd=fd, n=7)
        os.close(fd)
        result = yield d
        self.assertEqual(result, {"n": 7})
        self.assertEqual(server.taken, [expected])

    @defer.inlineCallbacks
    def test_fileObjects(self):
        """
        Objects with C{fileno()} are accepted as descriptor values.
        """
        server, client = self.connect(FastResponder(), pyamp_fds.AMP())
        with open(os.devnull, "rb") as f:
            yield client.callRemote(Take, fd=f, n=1)
            self.assertEqual(server.taken, [identity(f.fileno())])

    @defer.inlineCallbacks
    def test_severalPerBox(self):
        """
        Several descriptors in one box each reach their own argument,
        stock L{amp.Descriptor} arguments included.
        """
        server, client = self.connect(FastResponder(), pyamp_fds.AMP())
        fds = [os.open(p, os.O_RDONLY) for p in ("/dev/null", "/", "/proc")]
        try:
            result = yield client.callRemote(TakeThree, a=fds[0], b=fds[1], c=fds[2])
            self.assertEqual(result["inodes"], [identity(fd)[1] for fd in fds])
        finally:
            for fd in fds:
                os.close(fd)

    @defer.inlineCallbacks
    def test_pipelined(self):
        """
        Many calls in flight at once, each with a descriptor, all matched,
        in few system calls.
        """
        server, client = self.connect(FastResponder(), pyamp_fds.AMP())
        paths = ["/dev/null", "/", "/proc", "/tmp"]
        fds = [os.open(p, os.O_RDONLY) for p in paths]
        try:
            calls = [client.callRemote(Take, fd=fds[i % 4], n=i) for i in range(600)]
            results = yield defer.gatherResults(calls)
        finally:
            for fd in fds:
                os.close(fd)
        self.assertEqual([r["n"] for r in results], list(range(600)))
        self.assertEqual(
            server.taken,
            [(os.stat(paths[i % 4]).st_dev, os.stat(paths[i % 4]).st_ino) for i in range(600)],
        )
        self.assertLessEqual(client.transport.sendmsgCalls, 600 * 0.05)

    @defer.inlineCallbacks
    def test_response(self):
        """
        A descriptor in a response reaches the caller.
        """
        server, client = self.connect(FastResponder(), pyamp_fds.AMP())
        result = yield client.callRemote(Give)
        self.assertEqual(identity(result["fd"])[1], result["inode"])
        os.close(result["fd"])

    @defer.inlineCallbacks
    def test_transfer(self):
        """
        With C{transfer=True} the descriptor itself is sent, and closed by
        the library once it has gone.
        """
        server, client = self.connect(FastResponder(), pyamp_fds.AMP())
        result = yield client.callRemote(GiveOwned)
        os.close(result["fd"])
        yield settle()
        with self.assertRaises(OSError):
            os.fstat(server.handedOver)

    @defer.inlineCallbacks
    def test_transferLostConnection(self):
        """
        A descriptor handed over but not yet sent when the connection is lost
        is closed.
        """
        client = pyamp_fds.AMP()
        self.rawPeer(client)
        fd = os.open("/dev/null", os.O_RDONLY)
        client.callRemote(
            amp.Command.__class__(
                "Hand", (amp.Command,), {"arguments": [(b"fd", pyamp_fds.Descriptor(transfer=True))]}
            ),
            fd=fd,
        ).addErrback(lambda f: None)
        client.transport.abortConnection()
        yield settle()
        with self.assertRaises(OSError):
            os.fstat(fd)

    @defer.inlineCallbacks
    def test_sendAfterLoss(self):
        """
        A descriptor argument on a connection already lost (here from the
        errback of a call that the loss failed) raises C{ConnectionLost}
        and takes nothing: a handed-over descriptor is still the caller's,
        and no duplicate is left open.
        """
        client = pyamp_fds.AMP()
        peer = self.rawPeer(client)
        fd = os.open("/dev/null", os.O_RDONLY)
        self.addCleanup(os.close, fd)
        raised = []

        def callAgain(reason):
            for transfer in (True, False):
                try:
                    client.callRemote(HandOver if transfer else Take, fd=fd, n=1)
                except error.ConnectionLost as e:
                    raised.append(e)

        client.callRemote(Hello, text="x").addErrback(callAgain)
        peer.close()
        yield settle()
        self.assertEqual(len(raised), 2)
        os.fstat(fd)

    @defer.inlineCallbacks
    def test_withdrawnWhenALaterArgumentFails(self):
        """
        When an argument after a descriptor fails, the call raises and
        nothing of it is sent: the duplicate is closed, a handed-over
        descriptor is the caller's again, and the next call's descriptors
        get the ordinals the failed call would have used, so the peer holds
        nothing unclaimed.
        """
        server, client = self.connect(FastResponder(), pyamp_fds.AMP())
        fd = os.open("/dev/null", os.O_RDONLY)
        self.addCleanup(os.close, fd)
        for command in (TakeThenList, HandOverThenList):
            with self.assertRaises(pyamp_fds.DescriptorListTooLong):
                client.callRemote(command, fd=fd, more=[fd, fd, fd])
            os.fstat(fd)
        answer = yield client.callRemote(Take, fd=fd, n=5)
        self.assertEqual(answer, {"n": 5})
        self.assertEqual(server.taken, [identity(fd)])
        self.assertEqual(server._descriptors, {})

    @defer.inlineCallbacks
    def test_stockProtocolWithFastDescriptor(self):
        """
        L{pyamp_fds.Descriptor} works in a stock L{amp.AMP}, over a pyamp_fds
        transport and over Twisted's own.
        """
        for fast in (True, False):
            server, client = self.connect(
                StockResponder(), amp.AMP(), serverFast=fast, clientFast=fast
            )
            fd = os.open("/dev/null", os.O_RDONLY)
            try:
                yield client.callRemote(Take, fd=fd, n=1)
                self.assertEqual(server.taken, [identity(fd)])
            finally:
                os.close(fd)

    @defer.inlineCallbacks
    def test_fastProtocolOnStockTransport(self):
        """
        L{pyamp_fds.AMP} works over Twisted's own UNIX transport.
        """
        server, client = self.connect(
            FastResponder(), pyamp_fds.AMP(), serverFast=False, clientFast=False
        )
        fds = [os.open(p, os.O_RDONLY) for p in ("/dev/null", "/", "/proc")]
        try:
            result = yield client.callRemote(TakeThree, a=fds[0], b=fds[1], c=fds[2])
            self.assertEqual(result["inodes"], [identity(fd)[1] for fd in fds])
        finally:
            for fd in fds:
                os.close(fd)

    def test_transferRefusedOnStockTransport(self):
        """
        C{transfer=True} needs to know when a descriptor was sent: Twisted's
        own transport cannot say, so it is refused before anything is queued.
        """
        server, client = self.connect(
            FastResponder(), pyamp_fds.AMP(), serverFast=False, clientFast=False
        )
        Hand = type("Hand", (amp.Command,), {"arguments": [(b"fd", pyamp_fds.Descriptor(transfer=True))]})
        with self.assertRaises(DescriptorsUnsupported):
            client.callRemote(Hand, fd=0)

    def test_overTCP(self):
        """
        Over a transport that cannot carry descriptors, a descriptor argument
        fails with a clear error.
        """
        server, client, pump = connectedServerAndClient(
            FastResponder, pyamp_fds.AMP
        )
        with self.assertRaises(DescriptorsUnsupported):
            client.callRemote(Take, fd=0, n=1)


class BadPeerTests(BadPeerMixin, ReactorTestCase):
    """
    A peer that breaks the rules: the connection is closed, every descriptor
    it held is closed, and the calls waiting fail with a distinct error.
    """

    responderClass = FastResponder

    def test_unknownOrdinal(self):
        """
        A box naming a descriptor that never arrived.
        """

        def send(peer):
            fdio.send_with_fds(peer, self.box(_ask="1", _command="Take", fd=5, n=1), [0, 1])

        return self.assertProtocolError(UnknownDescriptor, send)

    def test_claimedTwice(self):
        """
        A box naming a descriptor another argument already claimed; the one
        claimed first in the same box is closed too.
        """

        def send(peer):
            box = self.box(_ask="1", _command="TakeThree", a=0, b=1, c=0)
            fdio.send_with_fds(peer, box, [0, 1])

        return self.assertProtocolError(UnknownDescriptor, send)

    def test_notAnInteger(self):
        """
        A descriptor argument whose value is not a decimal ordinal.
        """

        def send(peer):
            fdio.send_with_fds(peer, self.box(_ask="1", _command="Take", fd=b" 0", n=1), [0])

        return self.assertProtocolError(InvalidDescriptorOrdinal, send)

    def test_unknownOrdinalStockArgument(self):
        """
        Stock L{amp.Descriptor} arguments are checked the same way.
        """

        def send(peer):
            box = self.box(_ask="1", _command="TakeThree", a=0, b=9, c=1)
            fdio.send_with_fds(peer, box, [0, 1])

        return self.assertProtocolError(UnknownDescriptor, send)

    @defer.inlineCallbacks
    def test_argumentFailsAfterDescriptor(self):
        """
        A command whose descriptor arrived but whose next argument does not
        parse is answered with Twisted's error (an unknown one: the
        connection is then closed, as in Twisted), and the descriptor it
        claimed is closed at once: no responder will own it.
        """
        server = FastResponder()
        peer = self.rawPeer(server)
        fdio.send_with_fds(peer, self.box(_ask="1", _command="Take", fd=0, n="zz"), [0])
        yield settle()
        self.flushLoggedErrors(ValueError)
        self.assertEqual((server.taken, server._descriptors, server._claimedInBox), ([], {}, []))
        self.assertIn(b"UNKNOWN", peer.recv(1000))

    @defer.inlineCallbacks
    def test_argumentFailsAfterDescriptorOwnLocator(self):
        """
        The same through Twisted's own dispatch chain, which a protocol
        that finds its responders itself (an overridden C{locateResponder})
        goes through.
        """

        class Finder(FastResponder):
            def locateResponder(self, name):
                return super().locateResponder(name)

        server = Finder()
        peer = self.rawPeer(server)
        fdio.send_with_fds(peer, self.box(_ask="1", _command="Take", fd=0, n="zz"), [0])
        yield settle()
        self.flushLoggedErrors(ValueError)
        self.assertEqual((server.taken, server._descriptors, server._claimedInBox), ([], {}, []))
        self.assertIn(b"UNKNOWN", peer.recv(1000))
        # And a box that parses still reaches the responder, descriptor and all.
        server = Finder()
        client = pyamp_fds.AMP()
        self.connect(server, client)
        fd = os.open("/dev/null", os.O_RDONLY)
        self.addCleanup(os.close, fd)
        answer = yield client.callRemote(Take, fd=fd, n=3)
        self.assertEqual((answer, server.taken), ({"n": 3}, [identity(fd)]))

    @defer.inlineCallbacks
    def test_answerFailsAfterDescriptor(self):
        """
        An answer whose descriptor arrived but whose next value does not
        parse fails the call, as in Twisted, and the descriptor it claimed
        is closed.
        """
        client = pyamp_fds.AMP()
        peer = self.rawPeer(client)
        waiting = client.callRemote(Give)
        fdio.send_with_fds(peer, self.box(_answer="1", fd=0, inode="zz"), [0])
        yield self.assertFailure(waiting, ValueError)
        self.assertEqual((client._descriptors, client._claimedInBox), ({}, []))

    def test_tooManyUnclaimed(self):
        """
        A peer flooding descriptors that no box claims is cut off at the
        connection's limit.
        """
        proto = FastResponder()
        proto.maxUnclaimedDescriptors = 100

        def send(peer):
            # The start of a box that never completes.
            for piece in (b"\x00", b"\x05", b"k"):
                fdio.send_with_fds(peer, piece, [0] * 50)

        return self.assertProtocolError(TooManyUnclaimedDescriptors, send, proto)

    @defer.inlineCallbacks
    def test_unclaimedClosedWhenLost(self):
        """
        Descriptors received but never claimed are closed when the connection
        is lost.
        """
        proto = FastResponder()
        peer = self.rawPeer(proto)
        lost = watchLost(proto)
        fdio.send_with_fds(peer, b"\x00", [0, 1, 2])
        yield settle()
        self.assertEqual(len(proto._descriptors), 3)
        peer.close()
        yield lost

    @defer.inlineCallbacks
    def test_keyTooLong(self):
        """
        An oversized key closes the connection with Twisted's C{TooLong}.
        """
        proto = FastResponder()
        peer = self.rawPeer(proto)
        lost = watchLost(proto)
        waiting = proto.callRemote(Hello, text="waiting")
        peer.sendall(b"\x01\x00" + b"k" * 256)
        yield lost
        yield self.assertFailure(waiting, amp.TooLong)

    @defer.inlineCallbacks
    def test_garbageBeforeValidBoxes(self):
        """
        Boxes before a framing fault in the same read are dispatched; nothing
        after it is.
        """
        proto = FastResponder()
        peer = self.rawPeer(proto)
        lost = watchLost(proto)
        waiting = proto.callRemote(Hello, text="waiting")
        peer.sendall(self.box(_ask="1", _command="Hello", text="a") + b"\xff\xff")
        yield lost
        yield self.assertFailure(waiting, amp.TooLong)
        # The box before the fault was answered.
        answer = peer.recv(65536)
        self.assertIn(b"_answer", answer)

    @defer.inlineCallbacks
    def test_truncated(self):
        """
        A receiver at its descriptor limit loses the connection with
        L{DescriptorsTruncated}: nothing of that read is dispatched and
        nothing leaks.
        """
        proto = FastResponder()
        peer = self.rawPeer(proto)
        lost = watchLost(proto)
        fdio.send_with_fds(peer, self.box(_ask="1", _command="Take", fd=0, n=1), [0] * 20)
        open_ = sorted(openDescriptors())
        limit, free = 0, 0
        while free < 5:
            free += limit not in open_
            limit += 1
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        waiting = proto.callRemote(Hello, text="waiting")
        try:
            reason = yield lost
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        self.assertIsInstance(reason, DescriptorsTruncated)
        yield self.assertFailure(waiting, DescriptorsTruncated)
        self.assertEqual(proto.taken, [])

    @defer.inlineCallbacks
    def test_notAReceiver(self):
        """
        A protocol that is not an C{IFileDescriptorReceiver} gets no
        descriptors: they are closed.
        """
        proto = Collector()
        peer = self.rawPeer(proto)
        fdio.send_with_fds(peer, b"data", [0, 1, 2])
        yield settle()
        self.assertEqual(proto.data, b"data")

    def test_errorIsDistinct(self):
        """
        Every descriptor fault is a L{DescriptorProtocolError}.
        """
        for cls in (UnknownDescriptor, InvalidDescriptorOrdinal, TooManyUnclaimedDescriptors):
            self.assertTrue(issubclass(cls, DescriptorProtocolError))


class AMPBehaviourTests(ReactorTestCase):
    """
    Everything else Twisted's AMP does keeps working.
    """

    @defer.inlineCallbacks
    def test_plainCommand(self):
        """
        Commands without descriptors work, both ways and with stock peers.
        """
        for serverCls, clientCls in [
            (FastResponder, pyamp_fds.AMP),
            (StockResponder, pyamp_fds.AMP),
            (FastResponder, amp.AMP),
        ]:
            server, client = self.connect(serverCls(), clientCls())
            result = yield client.callRemote(Hello, text="hé")
            self.assertEqual(result, {"text": "HÉ"})

    @defer.inlineCallbacks
    def test_remoteError(self):
        """
        An unknown command comes back as Twisted's C{UnhandledCommand}.
        """
        server, client = self.connect(FastResponder(), pyamp_fds.AMP())
        Unknown = type("Unknown", (amp.Command,), {"arguments": [], "response": []})
        yield self.assertFailure(client.callRemote(Unknown), amp.UnhandledCommand)

    @defer.inlineCallbacks
    def test_answersAndErrorsAsStock(self):
        """
        Answers, declared and undeclared errors, answers that do not parse,
        and commands without answers reach a L{pyamp_fds.AMP} caller exactly
        as they reach a stock one.
        """

        def outcome(d):
            if d is None:
                return defer.succeed(None)
            return d.addCallbacks(
                lambda result: ("answer", result),
                lambda f: (f.type, str(f.value)),
            )

        seen = {}
        for clientCls in (amp.AMP, pyamp_fds.AMP):
            results = seen[clientCls] = []
            for command in (Hello, Oops, Unexpected, WrongAnswer, Forget):
                # An undeclared error ends the connection: one each.
                server, client = self.connect(ErrorResponder(), clientCls())
                kw = {"text": "x"} if command is Hello else {}
                results.append((yield outcome(client.callRemote(command, **kw))))
                results.append((yield outcome(client.callRemote(Hello, text="again"))))
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(seen[amp.AMP], seen[pyamp_fds.AMP])
        self.assertEqual(
            [r and r[0] for r in seen[pyamp_fds.AMP]],
            [
                "answer", "answer",
                OopsError, "answer",
                amp.UnknownRemoteError, error.ConnectionLost,
                ValueError, "answer",
                None, "answer",
            ],
        )

    def test_tooLongRaisedByCallRemote(self):
        """
        An oversized key or value raises C{TooLong} from C{callRemote}
        itself, as in Twisted.
        """
        server, client = self.connect(FastResponder(), pyamp_fds.AMP())
        with self.assertRaises(amp.TooLong):
            client.callRemoteString(b"Hello", text=b"x" * 65536)
        with self.assertRaises(amp.TooLong):
            client.callRemoteString(b"Hello", **{"k" * 256: b"v"})

    @defer.inlineCallbacks
    def test_outstandingCallsFailOnLoss(self):
        """
        Calls waiting for an answer fail when the connection is lost.
        """
        client = pyamp_fds.AMP()
        peer = self.rawPeer(client)
        waiting = client.callRemote(Hello, text="x")
        peer.close()
        yield self.assertFailure(waiting, error.ConnectionDone)

    @defer.inlineCallbacks
    def test_callAfterLoss(self):
        """
        A call made once the connection is gone fails with the reason it
        went, as in Twisted.
        """
        for clientCls, fast in ((amp.AMP, False), (pyamp_fds.AMP, True)):
            client = clientCls()
            peer = self.rawPeer(client, fast)
            peer.close()
            yield settle()
            self.assertIsNone(client.transport)
            yield self.assertFailure(client.callRemote(Hello, text="x"), error.ConnectionDone)

    @defer.inlineCallbacks
    def test_protocolSwitch(self):
        """
        After a protocol switch, the bytes behind the switching box reach
        the new protocol untouched, from either kind of peer.
        """
        for clientCls in (pyamp_fds.AMP, amp.AMP):
            server, client = self.connect(FastResponder(), clientCls())
            clientSide = Collector()
            factory = protocol.ClientFactory()
            factory.buildProtocol = lambda addr: clientSide
            yield client.callRemote(Switch, factory)
            client.transport.write(b"\x01\x00not AMP at all")
            yield settle()
            self.assertEqual(server.switchedTo.data, b"\x01\x00not AMP at all")
            server.transport.write(b"reply")
            yield settle()
            self.assertEqual(clientSide.data, b"reply")

    @defer.inlineCallbacks
    def test_protocolSwitchSameRead(self):
        """
        Bytes for the new protocol arriving in the same read as the
        switching box go to it, not to the AMP parser.
        """
        server = FastResponder()
        peer = self.rawPeer(server)
        peer.sendall(
            pyamp_fds.encode_box({b"_ask": b"1", b"_command": b"Switch"}) + b"\xff\xffraw"
        )
        yield settle()
        self.assertEqual(server.switchedTo.data, b"\xff\xffraw")

    @defer.inlineCallbacks
    def test_boxesAfterLoseConnection(self):
        """
        Boxes sent just before C{loseConnection} are still written.
        """
        server, client = self.connect(FastResponder(), pyamp_fds.AMP())
        got = []
        server.boxReceiver = type(
            "R", (), {"ampBoxReceived": lambda self, box: got.append(box), "stopReceivingBoxes": lambda self, r: None}
        )()
        client.sendBox(amp.AmpBox({b"last": b"words"}))
        client.transport.loseConnection()
        yield settle()
        self.assertEqual(got, [{b"last": b"words"}])

    @defer.inlineCallbacks
    def test_boxSnapshot(self):
        """
        Changing a box after sending it does not change what was sent.
        """
        server = FastResponder()
        client = pyamp_fds.AMP()
        self.connect(server, client)
        got = []
        server.boxReceiver = type(
            "R", (), {"ampBoxReceived": lambda self, box: got.append(box), "stopReceivingBoxes": lambda self, r: None}
        )()
        box = amp.AmpBox({b"k": b"before"})
        client.sendBox(box)
        box[b"k"] = b"after"
        yield settle()
        self.assertEqual(got, [{b"k": b"before"}])

    def test_binaryBoxProtocol(self):
        """
        L{pyamp_fds.BinaryBoxProtocol} delivers boxes to its receiver.
        """
        got = []

        class Receiver:
            def startReceivingBoxes(self, sender):
                pass

            def ampBoxReceived(self, box):
                got.append(box)

            def stopReceivingBoxes(self, reason):
                pass

        proto = pyamp_fds.BinaryBoxProtocol(Receiver())
        from twisted.internet.testing import StringTransport

        proto.makeConnection(StringTransport())
        data = pyamp_fds.encode_boxes([{b"a": b"1"}, {b"b": b"2"}])
        for i in range(len(data)):
            proto.dataReceived(data[i : i + 1])
        self.assertEqual(got, [{b"a": b"1"}, {b"b": b"2"}])
        self.assertIsInstance(got[0], amp.AmpBox)

    @defer.inlineCallbacks
    def test_flowControl(self):
        """
        Queued descriptors count toward a full send buffer: a producer is
        paused when more than C{maxQueuedDescriptors} wait, and resumed once
        they are sent.
        """
        server, client = self.connect(Collector(), pyamp_fds.AMP())
        events = []

        class Producer:
            def pauseProducing(self):
                events.append("pause")

            def resumeProducing(self):
                events.append("resume")

            def stopProducing(self):
                pass

        client.transport.registerProducer(Producer(), True)
        for _ in range(client.transport.maxQueuedDescriptors + 1):
            client.transport.sendFileDescriptor(0)
        self.assertEqual(events, ["pause"])
        client.transport.write(b"x")
        yield settle()
        # Twisted pauses again on each write while full; then one resume.
        self.assertEqual(set(events[:-1]), {"pause"})
        self.assertEqual(events[-1], "resume")
        client.transport.unregisterProducer()
