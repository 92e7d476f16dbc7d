"""
Property tests for L{pyamp_fds.protocol}: random mixes of commands carrying
descriptors, both ways, over a fake socket that cuts the byte stream and
hands descriptors over as adversarially as the kernel may; and a seeded
variant of the same over real sockets on the reactor.

Every descriptor sent is a pipe of its own, so each one received can be
checked against the file it was meant to be (C{st_dev}, C{st_ino}).
"""

import fcntl
import os
import random
import socket
from collections import deque

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.address import UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IUNIXTransport
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

import pyamp_fds
from pyamp_fds.interfaces import IBatchingTransport
from pyamp_fds.outgoing import Ownership
from tests.fdcheck import assertNoNewDescriptors, openDescriptors
from tests.reactorhelpers import ReactorTestCase, adopt, settle, watchLost

#: Descriptor arguments are named C{fd...}: the fake socket finds, in each box
#: written, the ordinals it names by that prefix.
DESCRIPTOR_PREFIX = b"fd"


class Pass(amp.Command):
    """
    Send the descriptors named in the call (any of them may be left out),
    with their identities; the answer says which identities the responder
    found, and carries the descriptors it was asked for with theirs.
    """

    arguments = [
        (b"fdA", pyamp_fds.Descriptor(optional=True)),
        (b"fdB", amp.Descriptor(optional=True)),
        (b"fdC", pyamp_fds.Descriptor(optional=True)),
        (b"fdD", amp.Descriptor(optional=True)),
        (b"fdH", pyamp_fds.Descriptor(optional=True, transfer=True)),
        (b"fdL", pyamp_fds.DescriptorList(optional=True)),
        (b"ids", amp.ListOf(amp.String())),
        (b"want", amp.ListOf(amp.Unicode())),
        (b"wantList", amp.Integer(optional=True)),
        (b"later", amp.Boolean()),
    ]
    response = [
        (b"fdX", pyamp_fds.Descriptor(optional=True)),
        (b"fdY", amp.Descriptor(optional=True)),
        (b"fdZ", pyamp_fds.Descriptor(optional=True, transfer=True)),
        (b"fdM", pyamp_fds.DescriptorList(optional=True)),
        (b"ids", amp.ListOf(amp.String())),
        (b"got", amp.ListOf(amp.String())),
    ]


#: Arguments handed over (C{transfer=True}) need a pyamp_fds transport, as
#: lists (C{fdL}, C{fdM}) do.
TRANSFERRED = {"fdH", "fdZ"}
ARGUMENTS = ["fdA", "fdB", "fdC", "fdD", "fdH"]
RESULTS = ["fdX", "fdY", "fdZ"]


def identity(name, fd):
    st = os.fstat(fd)
    return b"%s=%d:%d" % (name.encode(), st.st_dev, st.st_ino)


def freshPipe():
    """
    The read end of a new pipe: a file no other descriptor in the test
    shares.
    """
    r, w = os.pipe()
    os.close(w)
    return r


class Exchanger(amp.CommandLocator):
    """
    Both ends of every exchange; mixed into L{pyamp_fds.AMP} or L{amp.AMP}.

    @ivar keep: descriptors this side sent without handing them over, to be
        closed when the test ends (Twisted's own rule: keep them open until
        they have been sent).
    @ivar later: answers held back, fired by the test when it chooses.
    """

    def setUpExchanger(self, batching):
        self.batching = batching
        if not batching:
            # The fake stock transport cannot report drops: accepted here
            # knowingly, as these tests compare both kinds of transport.
            self.allowUncheckedDescriptors = True
        self.keep = []
        self.later = []

    def sendables(self, names, listName, listLength):
        """
        Open a fresh pipe for each name, and a list of C{listLength} under
        C{listName} unless it is L{None}; return the argument values and
        their identities.
        """
        values = {}
        ids = []
        for name in names:
            fd = freshPipe()
            values[name] = fd
            ids.append(identity(name, fd))
            if name not in TRANSFERRED:
                self.keep.append(fd)
        if listLength is not None:
            values[listName] = [freshPipe() for _ in range(listLength)]
            ids.extend(identity("%s%d" % (listName, i), fd) for i, fd in enumerate(values[listName]))
            self.keep.extend(values[listName])
        return values, ids

    def call(self, names, want, later, listLength=None, wantList=None):
        """
        Call L{Pass} on the peer; the L{Deferred} fires with a list of
        mismatches (empty when every descriptor both ways was the right
        file).
        """
        values, ids = self.sendables(names, "fdL", listLength)
        d = self.callRemote(Pass, ids=ids, want=want, wantList=wantList, later=later, **values)
        if self.batching:
            # pyamp_fds sent duplicates: ours may go at once.
            for name, value in values.items():
                if name not in TRANSFERRED:
                    for fd in value if name == "fdL" else [value]:
                        self.keep.remove(fd)
                        os.close(fd)

        def check(answer):
            mismatches = []
            if sorted(answer["got"]) != sorted(ids):
                mismatches.append(("sent", sorted(ids), sorted(answer["got"])))
            received = receivedIdentities(answer, RESULTS, "fdM")
            if sorted(received) != sorted(answer["ids"]):
                mismatches.append(("answered", sorted(answer["ids"]), sorted(received)))
            return mismatches

        return d.addCallback(check)

    @Pass.responder
    def passed(self, ids, want, wantList, later, **fds):
        got = receivedIdentities(fds, ARGUMENTS, "fdL")

        def answer():
            values, answerIds = self.sendables(want, "fdM", wantList)
            return dict(values, ids=answerIds, got=got)

        if later:
            d = defer.Deferred()
            d.addCallback(lambda _: answer())
            self.later.append(d)
            return d
        return answer()


def receivedIdentities(values, names, listName):
    """
    The identities of the descriptors received in C{values} under C{names}
    and in the list under C{listName}; close them.
    """
    found = []
    for name in names:
        if values[name] is not None:
            found.append(identity(name, values[name]))
            os.close(values[name])
    for i, fd in enumerate(values[listName] or ()):
        found.append(identity("%s%d" % (listName, i), fd))
        os.close(fd)
    return found


class FastExchanger(Exchanger, pyamp_fds.AMP):
    pass


class StockExchanger(Exchanger, amp.AMP):
    pass


def unclaimed(proto):
    """
    How many descriptors C{proto} received that no box claimed.
    """
    table = getattr(proto, "receivedDescriptors", None)
    if table is not None:
        return table.unclaimed
    # Stock Twisted keeps them in this private dict.
    return len(proto._descriptors)


class FakeStream:
    """
    One direction of an C{AF_UNIX} stream socket, as the kernel keeps it:
    the bytes written, and each descriptor attached to one of them.

    Where a descriptor is attached is chosen by C{choose}, anywhere from the
    point in the stream where it was queued to the last byte of the box that
    names it: the sender may let it go with any byte in that range, and the
    kernel hands it over with that byte.

    @ivar data: every byte written so far.
    @ivar delivered: how many of them have been read.
    """

    def __init__(self, choose):
        self.choose = choose
        self.data = bytearray()
        self.delivered = 0
        # [ordinal, queued-at position, descriptor]: waiting for the box
        # that names them to be written.
        self.unattached = deque()
        self.attached = deque()
        self.queuedCount = 0
        self.lastPosition = 0
        self._parsed = 0
        self._named = []

    def queue(self, fd):
        self.unattached.append([self.queuedCount, len(self.data), fd])
        self.queuedCount += 1

    def write(self, data):
        self.data += data
        self._parse()

    def _parse(self):
        data = self.data
        while True:
            offset = self._parsed
            if offset + 2 > len(data):
                return
            keyLength = int.from_bytes(data[offset : offset + 2], "big")
            if keyLength == 0:
                self._parsed = offset + 2
                self._attach(offset + 1)
                continue
            keyEnd = offset + 2 + keyLength
            if keyEnd + 2 > len(data):
                return
            valueLength = int.from_bytes(data[keyEnd : keyEnd + 2], "big")
            valueEnd = keyEnd + 2 + valueLength
            if valueEnd > len(data):
                return
            if bytes(data[offset + 2 : keyEnd]).startswith(DESCRIPTOR_PREFIX):
                value = bytes(data[keyEnd + 2 : valueEnd])
                if b":" in value:
                    # A DescriptorList: START:COUNT.
                    start, count = map(int, value.split(b":"))
                    self._named.extend(range(start, start + count))
                else:
                    self._named.append(int(value))
            self._parsed = valueEnd

    def _attach(self, boxEnd):
        """
        A box ending at byte C{boxEnd} was written: attach the descriptors it
        names, in order, each no later than C{boxEnd}.
        """
        named, self._named = sorted(self._named), []
        for ordinal in named:
            expected, queuedAt, fd = self.unattached.popleft()
            # Boxes name descriptors in the order they were queued: anything
            # else is a fault of the fake, not of the code under test.
            assert ordinal == expected, (ordinal, expected)
            low = max(queuedAt, self.lastPosition, self.delivered)
            self.lastPosition = self.choose(low, boxEnd)
            self.attached.append((self.lastPosition, fd))

    def pending(self):
        return len(self.data) - self.delivered

    def read(self, size):
        """
        One read of up to C{size} bytes: the descriptors attached to them and
        the bytes.
        """
        end = min(self.delivered + size, len(self.data))
        fds = []
        while self.attached and self.attached[0][0] < end:
            fds.append(self.attached.popleft()[1])
        chunk = bytes(self.data[self.delivered : end])
        self.delivered = end
        return fds, chunk

    def close(self):
        """
        Close every descriptor still in the stream, as the kernel does when
        the socket goes; return how many there were.
        """
        fds = [fd for _, _, fd in self.unattached] + [fd for _, fd in self.attached]
        for fd in fds:
            os.close(fd)
        self.unattached.clear()
        self.attached.clear()
        return len(fds)


@implementer(IUNIXTransport)
class FakeUNIXTransport:
    """
    Twisted's own UNIX transport, as a protocol sees it: bytes and
    descriptors go into a L{FakeStream} as soon as they are written.  Like
    Twisted's, it takes the caller's descriptor number and sends it with the
    next bytes written; the caller keeps it open until then.
    """

    disconnecting = False

    def __init__(self, stream):
        self.stream = stream
        self.notYetSent = []
        self.lost = None

    def write(self, data):
        for fd in self.notYetSent:
            # The kernel takes its own reference when the descriptor is sent.
            self.stream.queue(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0))
        self.notYetSent = []
        self.stream.write(data)

    def writeSequence(self, data):
        self.write(b"".join(data))

    def sendFileDescriptor(self, fd):
        self.notYetSent.append(fd if isinstance(fd, int) else fd.fileno())

    def flush(self):
        pass

    def loseConnection(self):
        self.disconnecting = True

    abortConnection = loseConnection

    def getPeer(self):
        return UNIXAddress(None)

    getHost = getPeer

    def registerProducer(self, producer, streaming):
        pass

    def unregisterProducer(self):
        pass


@implementer(IBatchingTransport)
class FakeBatchingTransport(FakeUNIXTransport):
    """
    A pyamp_fds transport, as a protocol sees it: descriptors queued (a
    duplicate, or the descriptor itself when handed over), boxes encoded by
    write hooks when the transport gets round to writing.
    """

    sendmsgCalls = recvmsgCalls = 0

    def __init__(self, stream):
        FakeUNIXTransport.__init__(self, stream)
        self.hooks = []

    def write(self, data):
        self.flush()
        self.stream.write(data)

    def sendFileDescriptor(self, fd, transfer=False):
        fd = fd if isinstance(fd, int) else fd.fileno()
        if not transfer:
            fd = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0)
        self.stream.queue(fd)

    def sendFileDescriptors(self, fds, ownership=Ownership.DUPLICATE):
        # As the real transport does: the boxes already sent go first.
        self.flush()
        for fd in fds:
            if ownership is Ownership.LENT:
                # The kernel takes its own reference when it is sent.
                self.stream.queue(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0))
            else:
                self.sendFileDescriptor(fd, ownership is Ownership.HANDED_OVER)

    def addWriteHook(self, hook):
        self.hooks.append(hook)

    def descriptorMark(self):
        return self.stream.queuedCount

    def withdrawDescriptors(self, mark):
        raise AssertionError("every box these tests send serializes")

    def flush(self):
        """
        Run the write hooks: what the real transport does when the reactor
        finds the socket writable, or at the end of a read.
        """
        hooks, self.hooks = self.hooks, []
        for hook in hooks:
            data = hook()
            if data:
                self.stream.write(data)

    flushNow = flush


class Connection:
    """
    Two protocols joined by two L{FakeStream}s, driven step by step.
    """

    def __init__(self, rng, protocols, batching, oneByOne):
        # Choices made while the protocols run (inside their callbacks)
        # come from a generator seeded by the example: a draw there could
        # end the example half way, in a Deferred that would swallow it.
        self.rng = rng
        self.batching = batching
        self.oneByOne = oneByOne
        self.protocols = protocols
        choose = rng.randint
        # streams[i] carries what protocols[i] writes.
        self.streams = [FakeStream(choose), FakeStream(choose)]
        transportType = FakeBatchingTransport if batching else FakeUNIXTransport
        self.transports = [transportType(stream) for stream in self.streams]
        for proto, transport in zip(protocols, self.transports):
            proto.setUpExchanger(batching)
            proto.makeConnection(transport)

    def read(self, side, size):
        """
        C{protocols[side]} reads up to C{size} bytes of what its peer wrote;
        the descriptors that came with them are handed over first.
        """
        fds, chunk = self.streams[1 - side].read(size)
        proto = self.protocols[side]
        if fds:
            batch = getattr(proto, "fileDescriptorsReceived", None)
            if batch is None or self.oneByOne:
                for fd in fds:
                    proto.fileDescriptorReceived(fd)
            else:
                batch(fds)
        if chunk:
            proto.dataReceived(chunk)

    def flush(self, side):
        self.transports[side].flush()

    def answerOne(self, side, index):
        later = self.protocols[side].later
        if later:
            later.pop(index % len(later)).callback(None)

    def settled(self):
        if any(getattr(transport, "hooks", None) for transport in self.transports):
            return False
        return not any(
            stream.pending() or stream.unattached or stream.attached for stream in self.streams
        ) and not any(proto.later for proto in self.protocols)

    def drain(self):
        """
        Run until nothing is left in flight: every held answer fired, every
        byte and descriptor read, in reads of random sizes.
        """
        while not self.settled():
            progress = sum(stream.delivered + len(stream.data) for stream in self.streams)
            for side in (0, 1):
                self.flush(side)
                while self.protocols[side].later:
                    self.answerOne(side, 0)
                self.flush(side)
            for side in (0, 1):
                while self.streams[1 - side].pending():
                    self.read(side, self.rng.randint(1, 300))
            if progress == sum(stream.delivered + len(stream.data) for stream in self.streams):
                # Nothing more will move: the test's checks say what is wrong.
                return

    def close(self):
        """
        Lose the connection at both ends; return how many descriptors were
        still in flight.
        """
        leftover = sum(stream.close() for stream in self.streams)
        for proto in self.protocols:
            proto.connectionLost(Failure(ConnectionDone()))
        for proto in self.protocols:
            for fd in proto.keep:
                os.close(fd)
            proto.keep = []
        return leftover


def callStep(batching):
    names = ARGUMENTS if batching else [n for n in ARGUMENTS if n not in TRANSFERRED]
    results = RESULTS if batching else [n for n in RESULTS if n not in TRANSFERRED]
    lists = st.none() | st.integers(0, 8) if batching else st.none()
    return st.tuples(
        st.just("call"),
        st.integers(0, 1),
        st.lists(st.sampled_from(names), unique=True),
        st.lists(st.sampled_from(results), unique=True),
        st.booleans(),
        lists,
        lists,
    )


def steps(batching):
    return st.lists(
        st.one_of(
            callStep(batching),
            st.tuples(st.just("read"), st.integers(0, 1), st.integers(1, 400)),
            st.tuples(st.just("flush"), st.integers(0, 1)),
            st.tuples(st.just("answer"), st.integers(0, 1), st.integers(0, 20)),
        ),
        max_size=60,
    )


class FakeSocketProperties:
    """
    Random commands both ways over a L{FakeStream} pair: every call is
    answered, every descriptor reaches the argument it was sent for, both
    ways, and none is left open.
    """

    def exchange(self, data, batching):
        before = openDescriptors()
        kinds = data.draw(
            st.sampled_from([(FastExchanger, FastExchanger), (FastExchanger, StockExchanger)]),
            label="protocols",
        )
        if data.draw(st.booleans(), label="swap sides"):
            kinds = kinds[::-1]
        oneByOne = data.draw(st.booleans(), label="descriptors one by one")
        rng = random.Random(data.draw(st.integers(0, 2**32 - 1), label="seed"))
        connection = Connection(rng, [k() for k in kinds], batching, oneByOne)
        outcomes = []
        for step in data.draw(steps(batching), label="steps"):
            kind, side = step[0], step[1]
            if kind == "call":
                d = connection.protocols[side].call(*step[2:])
                d.addBoth(outcomes.append)
            elif kind == "read":
                connection.read(side, step[2])
            elif kind == "flush":
                connection.flush(side)
            else:
                connection.answerOne(side, step[2])
        connection.drain()
        closed = [t.disconnecting for t in connection.transports]
        leftover = connection.close()
        self.assertEqual(closed, [False, False])
        self.assertEqual(leftover, 0, "descriptors were never read")
        for outcome in outcomes:
            if isinstance(outcome, Failure):
                outcome.raiseException()
        self.assertEqual([o for o in outcomes if o], [])
        assertNoNewDescriptors(before)


propertySettings = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class BatchingTransportPropertyTests(FakeSocketProperties, SynchronousTestCase):
    """
    Over a transport like pyamp_fds's own: boxes encoded in batches, and
    descriptors sent as duplicates or handed over.
    """

    @propertySettings
    @given(st.data())
    def test_everyDescriptorMatched(self, data):
        """
        Random calls both ways with zero to five descriptors in each command
        and zero to three in each answer, and lists of zero to eight in
        either, answered at once or later, with
        the stream read in random pieces and each descriptor arriving with
        any byte the kernel allows: every call is answered, every descriptor
        is the file it was sent as, and none is left open.
        """
        self.exchange(data, batching=True)


class StockTransportPropertyTests(FakeSocketProperties, SynchronousTestCase):
    """
    Over a transport like Twisted's own: each box written as it is made.
    """

    @propertySettings
    @given(st.data())
    def test_everyDescriptorMatched(self, data):
        """
        As over a batching transport, without handing descriptors over
        (Twisted's transport cannot say when one was sent) and without lists
        (it cannot send them).
        """
        self.exchange(data, batching=False)


class FakeStreamTests(SynchronousTestCase):
    """
    The fake socket itself keeps the kernel's promises, so that the
    properties above test the protocol and not the fake.
    """

    def test_descriptorsNeverAfterTheirBox(self):
        """
        A descriptor is never attached after the last byte of the box that
        names it, nor before the point where it was queued.
        """
        stream = FakeStream(lambda low, high: high)
        r = freshPipe()
        try:
            stream.write(pyamp_fds.encode_box({b"k": b"v"}))
            queuedAt = len(stream.data)
            stream.queue(r)
            box = pyamp_fds.encode_box({b"fdA": b"0", b"k": b"v"})
            stream.write(box)
            [(position, fd)] = stream.attached
            self.assertEqual(fd, r)
            self.assertEqual(position, len(stream.data) - 1)
            self.assertGreaterEqual(position, queuedAt)
        finally:
            os.close(r)

    def test_descriptorsBeforeBytes(self):
        """
        A read hands over the descriptors attached to the bytes it returns,
        and no others.
        """
        stream = FakeStream(lambda low, high: low)
        r = freshPipe()
        try:
            stream.queue(r)
            box = pyamp_fds.encode_box({b"fdA": b"0"})
            stream.write(box)
            self.assertEqual(stream.read(0), ([], b""))
            self.assertEqual(stream.read(1), ([r], box[:1]))
            self.assertEqual(stream.read(100), ([], box[1:]))
        finally:
            os.close(r)


class RealSocketMixTests(ReactorTestCase):
    """
    Seeded random mixes of the same commands over real sockets on the
    reactor, with small socket buffers so that the kernel cuts the stream
    where it likes and sends block.
    """

    @defer.inlineCallbacks
    def mix(self, seed, stockClient=False):
        rng = random.Random(seed)
        server, client = FastExchanger(), (StockExchanger if stockClient else FastExchanger)()
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for sock in (a, b):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rng.choice([4096, 16384, 212992]))
        for proto in (server, client):
            self._lost.append(watchLost(proto))
        adopt(a, server)
        adopt(b, client)
        self.addCleanup(self._disconnect, server, client)
        for proto in (server, client):
            proto.setUpExchanger(batching=True)
        calls = []
        for burst in range(rng.randint(3, 8)):
            for _ in range(rng.randint(1, 120)):
                caller = rng.choice((server, client))
                names = rng.sample(ARGUMENTS, rng.randint(0, len(ARGUMENTS)))
                want = rng.sample(RESULTS, rng.randint(0, len(RESULTS)))
                lists = [randomListLength(rng), randomListLength(rng)]
                calls.append(caller.call(names, want, rng.random() < 0.2, *lists))
            for proto in (server, client):
                # Answers held back go out in the next burst's reads.
                for d in proto.later[: rng.randint(0, len(proto.later))]:
                    proto.later.remove(d)
                    d.callback(None)
            yield settle(rng.choice([0, 0.001, 0.01]))
        # Calls still on their way may yet be held back: answer until every
        # call has its answer.
        for _ in range(3000):
            if all(d.called for d in calls):
                break
            for proto in (server, client):
                while proto.later:
                    proto.later.pop().callback(None)
            yield settle(0.01)
        else:
            self.fail("seed %d: calls never answered" % (seed,))
        mismatches = yield defer.gatherResults(calls)
        self.assertEqual([m for m in mismatches if m], [], "seed %d" % (seed,))
        self.assertEqual(unclaimed(server), 0)
        self.assertEqual(unclaimed(client), 0)
        for proto in (server, client):
            for fd in proto.keep:
                os.close(fd)
            proto.keep = []

    @defer.inlineCallbacks
    def test_randomMixes(self):
        """
        Several seeded mixes of calls both ways, bursts of up to 120 calls
        with up to five descriptors each and now and then lists of hundreds
        (so that queued descriptors exceed one C{sendmsg}'s 253), answers
        now or later, against a pyamp_fds or a stock AMP client: every
        descriptor is matched to its file and none leaks.
        """
        for seed in range(6):
            yield self.mix(seed, stockClient=seed % 2 == 1)


def randomListLength(rng):
    """
    No list, a short one, or now and then one longer than a C{sendmsg} takes.
    """
    roll = rng.random()
    if roll < 0.6:
        return None
    if roll < 0.97:
        return rng.randint(0, 5)
    return rng.randint(200, 600)
