"""
Tests for L{pyamp_fds.protocol}.

Framing, dispatch, ordinals, argument parsing and errors run over in-memory
connections (L{tests.unixsim}, built on L{twisted.test.iosim}), pumped by
hand: no reactor, no waiting.  What depends on the kernel or on the
transport over a socket (a receiver at its descriptor limit, flow control,
the flush on C{loseConnection}) runs over a real socket on a reactor run by
hand (L{tests.socketdriver}).  Descriptors passed end to end between two
protocols, and how a peer that closed looks to the caller, run over real
UNIX sockets on the reactor.
"""

import os
import resource

from twisted.internet import defer, error, protocol, reactor
from twisted.internet.testing import StringTransport
from twisted.protocols import amp
from twisted.python.failure import Failure
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
from tests import unixsim
from tests.fdcheck import identity, openDescriptors
from tests.reactorhelpers import ReactorTestCase, settle
from tests.socketdriver import DrivenTestCase
from tests.unixsim import FakeConnectionTestCase


class BoxCollector:
    """
    A box receiver that collects the boxes it is given.
    """

    def __init__(self, got):
        self.got = got

    def startReceivingBoxes(self, sender):
        pass

    def ampBoxReceived(self, box):
        self.got.append(box)

    def stopReceivingBoxes(self, reason):
        pass


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


class WrongAnswerServed(amp.Command):
    """
    L{WrongAnswer} as its responder declares it: the same command, whose
    answer is a string its caller cannot parse as an integer.
    """

    commandName = WrongAnswer.commandName
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

    @WrongAnswerServed.responder
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
        self.assertEqual(server.receivedDescriptors.unclaimed, 0)

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

class DescriptorLogicTests(FakeConnectionTestCase):
    """
    Descriptor arguments where the transport refuses them, over in-memory
    connections.
    """

    def test_sendAfterLoss(self):
        """
        A descriptor argument on a connection already lost (here from the
        errback of a call that the loss failed) raises C{ConnectionLost}
        and takes nothing: a handed-over descriptor is still the caller's,
        and no duplicate is left open.
        """
        client = pyamp_fds.AMP()
        peer, pump = self.connectRaw(client)
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
        peer.transport.loseConnection()
        pump.flush()
        self.assertEqual(len(raised), 2)
        os.fstat(fd)

    def test_transferRefusedOnStockTransport(self):
        """
        C{transfer=True} needs to know when a descriptor was sent: Twisted's
        own transport cannot say, so it is refused before anything is queued.
        """
        server, client = FastResponder(), pyamp_fds.AMP()
        self.connect(server, client, serverBatching=False, clientBatching=False)
        Hand = type("Hand", (amp.Command,), {"arguments": [(b"fd", pyamp_fds.Descriptor(transfer=True))]})
        with self.assertRaises(DescriptorsUnsupported):
            client.callRemote(Hand, fd=0)
        self.assertEqual(client.descriptorsSent, 0)

    def test_overTCP(self):
        """
        Over a transport that cannot carry descriptors, a descriptor argument
        fails with a clear error.
        """
        client, server, pump = connectedServerAndClient(FastResponder, pyamp_fds.AMP)
        with self.assertRaises(DescriptorsUnsupported):
            client.callRemote(Take, fd=0, n=1)


class BadPeerTests(unixsim.BadPeerMixin, FakeConnectionTestCase):
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
            peer.send(self.box(_ask="1", _command="Take", fd=5, n=1), [0, 1])

        self.assertProtocolError(UnknownDescriptor, send)

    def test_claimedTwice(self):
        """
        A box naming a descriptor another argument already claimed; the one
        claimed first in the same box is closed too.
        """

        def send(peer):
            peer.send(self.box(_ask="1", _command="TakeThree", a=0, b=1, c=0), [0, 1])

        self.assertProtocolError(UnknownDescriptor, send)

    def test_notAnInteger(self):
        """
        A descriptor argument whose value is not a decimal ordinal.
        """

        def send(peer):
            peer.send(self.box(_ask="1", _command="Take", fd=b" 0", n=1), [0])

        self.assertProtocolError(InvalidDescriptorOrdinal, send)

    def test_unknownOrdinalStockArgument(self):
        """
        Stock L{amp.Descriptor} arguments are checked the same way.
        """

        def send(peer):
            peer.send(self.box(_ask="1", _command="TakeThree", a=0, b=9, c=1), [0, 1])

        self.assertProtocolError(UnknownDescriptor, send)

    def test_overStockTransport(self):
        """
        The same over Twisted's own transport, which hands descriptors over
        one by one.
        """
        proto = FastResponder()
        peer, pump = self.connectRaw(proto, batching=False)
        lost = unixsim.watchLost(proto)
        waiting = proto.callRemote(Hello, text="waiting")
        peer.send(self.box(_ask="1", _command="Take", fd=5, n=1), [0, 1])
        pump.flush()
        self.assertTrue(lost, "the connection is still open")
        self.failureResultOf(waiting, UnknownDescriptor)
        self.assertEqual(proto.receivedDescriptors.unclaimed, 0)
        self.assertEqual(proto.taken, [])
        self.flushLoggedErrors(DescriptorProtocolError)

    def test_argumentFailsAfterDescriptor(self):
        """
        A command whose descriptor arrived but whose next argument does not
        parse is answered with Twisted's error (an unknown one: the
        connection is then closed, as in Twisted), and the descriptor it
        claimed is closed at once: no responder will own it.
        """
        server = FastResponder()
        peer, pump = self.connectRaw(server)
        table = server.receivedDescriptors
        peer.send(self.box(_ask="1", _command="Take", fd=0, n="zz"), [0])
        pump.flush()
        self.flushLoggedErrors(ValueError)
        self.assertEqual((server.taken, table.unclaimed, table.claimedByBox), ([], 0, 0))
        self.assertIn(b"UNKNOWN", peer.received)

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
        peer, pump = self.connectRaw(server)
        table = server.receivedDescriptors
        peer.send(self.box(_ask="1", _command="Take", fd=0, n="zz"), [0])
        pump.flush()
        self.flushLoggedErrors(ValueError)
        self.assertEqual((server.taken, table.unclaimed, table.claimedByBox), ([], 0, 0))
        self.assertIn(b"UNKNOWN", peer.received)
        # And a box that parses still reaches the responder, descriptor and all.
        server = Finder()
        client = pyamp_fds.AMP()
        pump = self.connect(server, client)
        fd = os.open("/dev/null", os.O_RDONLY)
        self.addCleanup(os.close, fd)
        answered = client.callRemote(Take, fd=fd, n=3)
        pump.flush()
        self.assertEqual((self.successResultOf(answered), server.taken), ({"n": 3}, [identity(fd)]))

    def test_answerFailsAfterDescriptor(self):
        """
        An answer whose descriptor arrived but whose next value does not
        parse fails the call, as in Twisted, and the descriptor it claimed
        is closed.
        """
        client = pyamp_fds.AMP()
        peer, pump = self.connectRaw(client)
        waiting = self.caught(client.callRemote(Give))
        pump.flush()
        peer.send(self.box(_answer="1", fd=0, inode="zz"), [0])
        pump.flush()
        self.failureResultOf(waiting, ValueError)
        self.assertEqual(
            (client.receivedDescriptors.unclaimed, client.receivedDescriptors.claimedByBox), (0, 0)
        )

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
                peer.send(piece, [0] * 50)

        self.assertProtocolError(TooManyUnclaimedDescriptors, send, proto)

    def test_unclaimedClosedWhenLost(self):
        """
        Descriptors received but never claimed are closed when the connection
        is lost.
        """
        proto = FastResponder()
        peer, pump = self.connectRaw(proto)
        lost = unixsim.watchLost(proto)
        peer.send(b"\x00", [0, 1, 2])
        pump.flush()
        self.assertEqual(proto.receivedDescriptors.unclaimed, 3)
        peer.transport.loseConnection()
        pump.flush()
        self.assertTrue(lost, "the connection is still open")
        self.assertEqual(proto.receivedDescriptors.unclaimed, 0)

    def test_keyTooLong(self):
        """
        An oversized key closes the connection with Twisted's C{TooLong}.
        """
        proto = FastResponder()
        peer, pump = self.connectRaw(proto)
        lost = unixsim.watchLost(proto)
        waiting = proto.callRemote(Hello, text="waiting")
        peer.send(b"\x01\x00" + b"k" * 256)
        pump.flush()
        self.assertTrue(lost, "the connection is still open")
        self.failureResultOf(waiting, amp.TooLong)

    def test_garbageBeforeValidBoxes(self):
        """
        Boxes before a framing fault in the same read are dispatched; nothing
        after it is.
        """
        proto = FastResponder()
        peer, pump = self.connectRaw(proto)
        lost = unixsim.watchLost(proto)
        waiting = proto.callRemote(Hello, text="waiting")
        pump.flush()
        peer.received = b""
        peer.send(self.box(_ask="1", _command="Hello", text="a") + b"\xff\xff")
        pump.flush()
        self.assertTrue(lost, "the connection is still open")
        self.failureResultOf(waiting, amp.TooLong)
        # The box before the fault was answered.
        self.assertIn(b"_answer", peer.received)

    def test_errorIsDistinct(self):
        """
        Every descriptor fault is a L{DescriptorProtocolError}.
        """
        for cls in (UnknownDescriptor, InvalidDescriptorOrdinal, TooManyUnclaimedDescriptors):
            self.assertTrue(issubclass(cls, DescriptorProtocolError))


class AMPBehaviourTests(FakeConnectionTestCase):
    """
    Everything else Twisted's AMP does keeps working.
    """

    def test_plainCommand(self):
        """
        Commands without descriptors work, both ways and with stock peers,
        over either kind of transport.
        """
        for serverCls, clientCls in [
            (FastResponder, pyamp_fds.AMP),
            (StockResponder, pyamp_fds.AMP),
            (FastResponder, amp.AMP),
        ]:
            for batching in (True, False):
                server, client = serverCls(), clientCls()
                pump = self.connect(server, client, batching, batching)
                result = client.callRemote(Hello, text="hé")
                pump.flush()
                self.assertEqual(self.successResultOf(result), {"text": "HÉ"})

    def test_remoteError(self):
        """
        An unknown command comes back as Twisted's C{UnhandledCommand}.
        """
        client = pyamp_fds.AMP()
        pump = self.connect(FastResponder(), client)
        Unknown = type("Unknown", (amp.Command,), {"arguments": [], "response": []})
        result = self.caught(client.callRemote(Unknown))
        pump.flush()
        self.failureResultOf(result, amp.UnhandledCommand)

    def test_tooLongRaisedByCallRemote(self):
        """
        An oversized key or value raises C{TooLong} from C{callRemote}
        itself, as in Twisted.
        """
        client = pyamp_fds.AMP()
        self.connect(FastResponder(), client)
        with self.assertRaises(amp.TooLong):
            client.callRemoteString(b"Hello", text=b"x" * 65536)
        with self.assertRaises(amp.TooLong):
            client.callRemoteString(b"Hello", **{"k" * 256: b"v"})

    def test_outstandingCallsFailOnLoss(self):
        """
        Calls waiting for an answer fail when the connection is lost.
        """
        client = pyamp_fds.AMP()
        peer, pump = self.connectRaw(client)
        waiting = client.callRemote(Hello, text="x")
        peer.transport.loseConnection()
        pump.flush()
        self.failureResultOf(waiting, error.ConnectionDone)

    def test_callAfterLoss(self):
        """
        A call made once the connection is gone fails with the reason it
        went, as in Twisted.
        """
        for clientCls, batching in ((amp.AMP, False), (pyamp_fds.AMP, True)):
            client = clientCls()
            peer, pump = self.connectRaw(client, batching)
            peer.transport.loseConnection()
            pump.flush()
            self.assertIsNone(client.transport)
            self.failureResultOf(client.callRemote(Hello, text="x"), error.ConnectionDone)

    def test_protocolSwitch(self):
        """
        After a protocol switch, the bytes behind the switching box reach
        the new protocol untouched, from either kind of peer.
        """
        for clientCls in (pyamp_fds.AMP, amp.AMP):
            server, client = FastResponder(), clientCls()
            pump = self.connect(server, client)
            clientSide = Collector()
            factory = protocol.ClientFactory()
            factory.buildProtocol = lambda addr: clientSide
            switched = client.callRemote(Switch, factory)
            pump.flush()
            self.successResultOf(switched)
            client.transport.write(b"\x01\x00not AMP at all")
            pump.flush()
            self.assertEqual(server.switchedTo.data, b"\x01\x00not AMP at all")
            server.transport.write(b"reply")
            pump.flush()
            self.assertEqual(clientSide.data, b"reply")

    def test_protocolSwitchSameRead(self):
        """
        Bytes for the new protocol arriving in the same read as the
        switching box go to it, not to the AMP parser.
        """
        server = FastResponder()
        peer, pump = self.connectRaw(server)
        peer.send(
            pyamp_fds.encode_box({b"_ask": b"1", b"_command": b"Switch"}) + b"\xff\xffraw"
        )
        pump.flush()
        self.assertEqual(server.switchedTo.data, b"\xff\xffraw")

    def test_boxSnapshot(self):
        """
        Changing a box after sending it does not change what was sent,
        though a batching transport encodes it only when it writes.
        """
        server = FastResponder()
        client = pyamp_fds.AMP()
        pump = self.connect(server, client)
        got = []
        server.boxReceiver = type(
            "R", (), {"ampBoxReceived": lambda self, box: got.append(box), "stopReceivingBoxes": lambda self, r: None}
        )()
        box = amp.AmpBox({b"k": b"before"})
        client.sendBox(box)
        box[b"k"] = b"after"
        pump.flush()
        self.assertEqual(got, [{b"k": b"before"}])

    def test_binaryBoxProtocol(self):
        """
        L{pyamp_fds.BinaryBoxProtocol} delivers boxes to its receiver.
        """
        got = []
        proto = pyamp_fds.BinaryBoxProtocol(BoxCollector(got))
        proto.makeConnection(StringTransport())
        data = pyamp_fds.encode_boxes([{b"a": b"1"}, {b"b": b"2"}])
        for i in range(len(data)):
            proto.dataReceived(data[i : i + 1])
        self.assertEqual(got, [{b"a": b"1"}, {b"b": b"2"}])
        self.assertIsInstance(got[0], amp.AmpBox)

    def test_pendingBytes(self):
        """
        C{pendingBytes} is how many bytes are held for a box not yet
        complete: none between boxes, and none once the connection is lost.
        """
        proto = pyamp_fds.AMP()
        proto.makeConnection(StringTransport())
        data = pyamp_fds.encode_box({b"_command": b"Hello", b"_ask": b"1", b"text": b"x"})
        self.assertEqual(proto.pendingBytes, 0)
        proto.dataReceived(data[:-3])
        self.assertEqual(proto.pendingBytes, len(data) - 3)
        proto.dataReceived(data[-3:] + data[:5])
        self.assertEqual(proto.pendingBytes, 5)
        proto.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(proto.pendingBytes, 0)


class OverDrivenSocketTests(DrivenTestCase):
    """
    What the protocol relies on the kernel and its transport for, over a
    real socket on a reactor run by hand: a receiver at its descriptor
    limit, descriptors for a protocol that takes none, and what the
    transport still holds when the connection goes.
    """

    def test_transferLostConnection(self):
        """
        A descriptor handed over but not yet sent when the connection is lost
        is closed.
        """
        client = pyamp_fds.AMP()
        connection = self.connect(client)
        fd = os.open("/dev/null", os.O_RDONLY)
        client.callRemote(
            amp.Command.__class__(
                "Hand", (amp.Command,), {"arguments": [(b"fd", pyamp_fds.Descriptor(transfer=True))]}
            ),
            fd=fd,
        ).addErrback(lambda f: None)
        client.transport.abortConnection()
        connection.run()
        self.assertFalse(connection.open())
        with self.assertRaises(OSError):
            os.fstat(fd)

    def test_truncated(self):
        """
        A receiver at its descriptor limit loses the connection with
        L{DescriptorsTruncated}: nothing of that read is dispatched and
        nothing leaks.
        """
        proto = FastResponder()
        connection = self.connect(proto)
        lost = unixsim.watchLost(proto)
        box = pyamp_fds.encode_box({b"_ask": b"1", b"_command": b"Take", b"fd": b"0", b"n": b"1"})
        fdio.send_with_fds(connection.peer, box, [0] * 20)
        waiting = proto.callRemote(Hello, text="waiting")
        open_ = sorted(openDescriptors())
        limit, free = 0, 0
        while free < 5:
            free += limit not in open_
            limit += 1
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        try:
            connection.turn()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        self.assertEqual(len(lost), 1, "the connection is still open")
        self.assertIsInstance(lost[0], DescriptorsTruncated)
        self.failureResultOf(waiting, DescriptorsTruncated)
        self.assertEqual(proto.taken, [])

    def test_notAReceiver(self):
        """
        A protocol that is not an C{IFileDescriptorReceiver} gets no
        descriptors: they are closed.
        """
        proto = Collector()
        connection = self.connect(proto)
        fdio.send_with_fds(connection.peer, b"data", [0, 1, 2])
        connection.turn()
        self.assertEqual(proto.data, b"data")

    def test_boxesAfterLoseConnection(self):
        """
        Boxes sent just before C{loseConnection} are still written.
        """
        client = pyamp_fds.AMP()
        connection = self.connect(client)
        client.sendBox(amp.AmpBox({b"last": b"words"}))
        client.transport.loseConnection()
        connection.run()
        self.assertFalse(connection.open())
        peer = connection.peer
        peer.settimeout(10)
        data = b""
        while True:
            chunk = peer.recv(65536)
            if not chunk:
                break
            data += chunk
        self.assertEqual(amp.parseString(data), [{b"last": b"words"}])

    def test_flowControl(self):
        """
        Queued descriptors count toward a full send buffer: a producer is
        paused when more than C{maxQueuedDescriptors} wait, and resumed once
        they are sent.
        """
        client = pyamp_fds.AMP()
        connection = self.connect(client)
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
        connection.run()
        # Twisted pauses again on each write while full; then one resume.
        self.assertEqual(set(events[:-1]), {"pause"})
        self.assertEqual(events[-1], "resume")
        client.transport.unregisterProducer()


class AMPOverSocketTests(ReactorTestCase):
    """
    Outcomes that depend on the kernel under the transport, on real sockets
    on the reactor: after an undeclared error the responder closes the
    connection, and the caller's next call meets the closed socket
    (C{ConnectionLost}), which an in-memory connection does not give.
    """

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

class TwistedParityTests(FakeConnectionTestCase):
    """
    What Twisted's own suite (C{twisted.test.test_amp}) expects of
    L{amp.BinaryBoxProtocol} and L{amp.AMP}, which ours do too.
    """

    def test_dataReceivedBeforeMakeConnection(self):
        """
        A L{pyamp_fds.BinaryBoxProtocol} parses what it is given before it
        is connected (as Twisted's own C{amp.parse} does with its), and what
        it held of an unfinished box is still there once it is connected.
        """
        got = []
        proto = pyamp_fds.BinaryBoxProtocol(BoxCollector(got))
        data = pyamp_fds.encode_boxes([{b"a": b"1"}, {b"b": b"2"}])
        proto.dataReceived(data[:-3])
        self.assertEqual(got, [{b"a": b"1"}])
        proto.makeConnection(StringTransport())
        proto.dataReceived(data[-3:])
        self.assertEqual(got, [{b"a": b"1"}, {b"b": b"2"}])

    def test_fileDescriptorReceivedNotOpen(self):
        """
        A number given to C{fileDescriptorReceived} that is not an open
        descriptor here (as a fake transport gives, in Twisted's own tests)
        is recorded and claimed like any other; an open one is still made
        close-on-exec.
        """
        proto = pyamp_fds.AMP()
        # No transport here to report drops: accept that knowingly.
        proto.allowUncheckedDescriptors = True
        r, w = os.pipe()
        os.close(w)
        notOpen = w
        os.set_inheritable(r, True)
        proto.fileDescriptorReceived(notOpen)
        proto.fileDescriptorReceived(r)
        argument = pyamp_fds.Descriptor()
        self.assertEqual(argument.fromStringProto(b"0", proto), notOpen)
        self.assertEqual(argument.fromStringProto(b"1", proto), r)
        self.assertFalse(os.get_inheritable(r))
        os.close(r)

    def test_responseBoxThatCannotBeMade(self):
        """
        A command whose response box cannot be made (C{StartTLS}'s, where
        TLS is not installed, raises C{RemoteAmpError("TLS_ERROR")}) is
        answered with that error, as Twisted answers it, not as a responder
        result that did not serialize.
        """
        self.patch(amp, "ssl", None)
        answers = {}
        for base in (amp.AMP, pyamp_fds.AMP):

            class Secure(base):
                @amp.StartTLS.responder
                def startTLS(self):
                    return {}

            proto = Secure()
            transport = StringTransport()
            proto.makeConnection(transport)
            proto.ampBoxReceived(amp.AmpBox({b"_command": b"StartTLS", b"_ask": b"1"}))
            proto.transport.write(b"")
            answers[base] = amp.parseString(transport.value())
        self.assertEqual(
            answers[pyamp_fds.AMP],
            [
                {
                    b"_error": b"1",
                    b"_error_code": b"TLS_ERROR",
                    b"_error_description": b"TLS not available",
                }
            ],
        )
        self.assertEqual(answers[pyamp_fds.AMP], answers[amp.AMP])
        self.assertEqual(self.flushLoggedErrors(), [])
