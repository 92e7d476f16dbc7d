"""
Tests for L{pyamp_fds.DescriptorList}: lists of descriptors as AMP
arguments.

Lists passed end to end run over real UNIX sockets on the reactor; what the
transport sends in each C{sendmsg}, and closes when the connection is lost,
over a real socket on a reactor run by hand (L{tests.socketdriver}); bad
lists from a peer over in-memory connections (L{tests.unixsim}).
"""

import os
import resource

from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.protocols import amp
from twisted.trial.unittest import SkipTest

import pyamp_fds
from pyamp_fds import fdio, writing
from pyamp_fds.codec import BoxDecoder
from pyamp_fds.errors import (
    DescriptorListTooLong,
    DescriptorsUnsupported,
    InvalidDescriptorOrdinal,
    UnknownDescriptor,
)
from tests.fdcheck import identity, openDescriptors
from tests import unixsim
from tests.reactorhelpers import ReactorTestCase, settle
from tests.socketdriver import DrivenTestCase
from tests.unixsim import FakeConnectionTestCase


def newFiles(count):
    """
    C{count} descriptors, each for a file of its own (so each has its own
    identity, and the order they arrive in can be checked).
    """
    return [os.memfd_create("descriptorlist", os.MFD_CLOEXEC) for _ in range(count)]


def closeAll(fds):
    for fd in fds:
        os.close(fd)


class TakeList(amp.Command):
    arguments = [(b"fds", pyamp_fds.DescriptorList()), (b"n", amp.Integer())]
    response = [(b"n", amp.Integer())]


class TakeHandedOver(amp.Command):
    commandName = b"TakeList"
    arguments = [(b"fds", pyamp_fds.DescriptorList(transfer=True)), (b"n", amp.Integer())]
    response = [(b"n", amp.Integer())]


class TakeFew(amp.Command):
    commandName = b"TakeList"
    arguments = [(b"fds", pyamp_fds.DescriptorList(maxDescriptors=3)), (b"n", amp.Integer())]
    response = [(b"n", amp.Integer())]


class TakeMixed(amp.Command):
    arguments = [
        (b"one", pyamp_fds.Descriptor()),
        (b"fds", pyamp_fds.DescriptorList()),
        (b"more", pyamp_fds.DescriptorList(optional=True)),
    ]
    response = [(b"n", amp.Integer())]


class TakeLent(amp.Command):
    commandName = b"TakeList"
    arguments = [(b"fds", pyamp_fds.DescriptorList(duplicate=False)), (b"n", amp.Integer())]
    response = [(b"n", amp.Integer())]


class GiveList(amp.Command):
    arguments = [(b"n", amp.Integer())]
    response = [(b"fds", pyamp_fds.DescriptorList())]


class GiveListOwned(amp.Command):
    arguments = [(b"n", amp.Integer())]
    response = [(b"fds", pyamp_fds.DescriptorList(transfer=True))]


class Hello(amp.Command):
    arguments = [(b"text", amp.Unicode())]
    response = [(b"text", amp.Unicode())]


def makeResponder(base):
    class Responder(base):
        """
        Records the identity of each descriptor taken, then closes it; gives
        new files on request, recording theirs.
        """

        def __init__(self, *a, **kw):
            base.__init__(self, *a, **kw)
            self.taken = []
            self.given = []

        @TakeList.responder
        def takeList(self, fds, n):
            self.taken.append([identity(fd) for fd in fds])
            closeAll(fds)
            return {"n": n}

        @TakeMixed.responder
        def takeMixed(self, one, fds, more):
            taken = [one] + fds + (more or [])
            self.taken.append([identity(fd) for fd in taken])
            closeAll(taken)
            return {"n": len(taken)}

        @GiveList.responder
        def giveList(self, n):
            fds = newFiles(n)
            self.given.append([identity(fd) for fd in fds])
            # Duplicates travel: ours may be closed as soon as the answer
            # is serialized.
            reactor.callLater(0, closeAll, fds)
            return {"fds": fds}

        @GiveListOwned.responder
        def giveListOwned(self, n):
            fds = newFiles(n)
            self.given.append([identity(fd) for fd in fds])
            return {"fds": fds}

        @Hello.responder
        def hello(self, text):
            return {"text": text}

    return Responder


FastResponder = makeResponder(pyamp_fds.AMP)
StockResponder = makeResponder(amp.AMP)

SIZES = (0, 1, 253, 254, 4096)


class _Room:
    def roomFor(self, count):
        """
        Make sure this process may hold C{count} more descriptors (every list
        is held by the sender, its duplicates and the receiver at once),
        raising the soft C{RLIMIT_NOFILE} up to the hard limit for the test.
        """
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        needed = len(openDescriptors()) + count + 256
        if soft != resource.RLIM_INFINITY and soft < needed:
            if hard != resource.RLIM_INFINITY and hard < needed:
                raise SkipTest("RLIMIT_NOFILE hard limit %d is below the %d this test needs" % (hard, needed))
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))


class _Base(_Room, ReactorTestCase):
    pass


class RoundTripTests(_Base):
    """
    Lists of descriptors as command arguments and in responses.
    """

    @defer.inlineCallbacks
    def test_commandArgument(self):
        """
        Lists of 0, 1, 253, 254 and 4096 descriptors reach the responder as
        the same files in the same order; the caller may close its own as
        soon as C{callRemote} returns.
        """
        self.roomFor(3 * max(SIZES))
        server, client = self.connect(FastResponder(), pyamp_fds.AMP())
        for n in SIZES:
            fds = newFiles(n)
            expected = [identity(fd) for fd in fds]
            d = client.callRemote(TakeList, fds=fds, n=n)
            closeAll(fds)
            result = yield d
            self.assertEqual(result, {"n": n})
            self.assertEqual(server.taken[-1], expected)
        self.assertEqual(len(server.taken), len(SIZES))
        self.assertEqual(server.receivedDescriptors.unclaimed, 0)

    @defer.inlineCallbacks
    def test_response(self):
        """
        Lists of 0, 1, 253, 254 and 4096 descriptors in a response reach the
        caller as the same files in the same order.
        """
        self.roomFor(3 * max(SIZES))
        server, client = self.connect(FastResponder(), pyamp_fds.AMP())
        for n in SIZES:
            result = yield client.callRemote(GiveList, n=n)
            try:
                self.assertEqual([identity(fd) for fd in result["fds"]], server.given[-1])
            finally:
                closeAll(result["fds"])
        self.assertEqual(client.receivedDescriptors.unclaimed, 0)

    @defer.inlineCallbacks
    def test_fileObjects(self):
        """
        Objects with C{fileno()} are accepted in the list, mixed with ints.
        """
        server, client = self.connect(FastResponder(), pyamp_fds.AMP())
        with open(os.devnull, "rb") as f:
            fd = os.open("/", os.O_RDONLY)
            try:
                yield client.callRemote(TakeList, fds=[f, fd, f], n=3)
                self.assertEqual(server.taken, [[identity(f.fileno()), identity(fd), identity(f.fileno())]])
            finally:
                os.close(fd)

    @defer.inlineCallbacks
    def test_mixedWithDescriptor(self):
        """
        A box with a L{pyamp_fds.Descriptor} and two lists, one of them
        optional and left out, then given: every descriptor reaches its own
        argument.
        """
        server, client = self.connect(FastResponder(), pyamp_fds.AMP())
        fds = newFiles(7)
        try:
            result = yield client.callRemote(TakeMixed, one=fds[0], fds=fds[1:4])
            self.assertEqual(result, {"n": 4})
            result = yield client.callRemote(TakeMixed, one=fds[4], fds=[], more=fds[5:])
            self.assertEqual(result, {"n": 3})
            self.assertEqual(server.taken, [[identity(fd) for fd in fds[:4]], [identity(fd) for fd in fds[4:]]])
        finally:
            closeAll(fds)

    @defer.inlineCallbacks
    def test_pipelined(self):
        """
        Several lists in flight at once, between boxes carrying none, are
        each matched to their own box, and go in few C{sendmsg} calls.
        """
        self.roomFor(3 * 20 * 253)
        server, client = self.connect(FastResponder(), pyamp_fds.AMP())
        batches = [newFiles(253) for _ in range(20)]
        try:
            calls = []
            for i, fds in enumerate(batches):
                calls.append(client.callRemote(TakeList, fds=fds, n=i))
                calls.append(client.callRemote(Hello, text="between"))
            yield defer.gatherResults(calls)
            self.assertEqual(server.taken, [[identity(fd) for fd in fds] for fds in batches])
            # 20 * 253 descriptors: 20 groups of 253, each a sendmsg.
            self.assertLessEqual(client.transport.sendmsgCalls, 21)
        finally:
            for fds in batches:
                closeAll(fds)

    @defer.inlineCallbacks
    def test_stockProtocol(self):
        """
        L{pyamp_fds.DescriptorList} works in a stock L{amp.AMP} over
        pyamp_fds transports, as argument and response.
        """
        self.roomFor(3 * 254)
        server, client = self.connect(StockResponder(), amp.AMP())
        fds = newFiles(254)
        try:
            yield client.callRemote(TakeList, fds=fds, n=1)
            self.assertEqual(server.taken, [[identity(fd) for fd in fds]])
        finally:
            closeAll(fds)
        result = yield client.callRemote(GiveList, n=254)
        try:
            self.assertEqual([identity(fd) for fd in result["fds"]], server.given[-1])
        finally:
            closeAll(result["fds"])

    @defer.inlineCallbacks
    def test_receivedOverStockTransport(self):
        """
        Twisted's own transport receives lists: it hands the descriptors
        over one by one, in order.
        """
        self.roomFor(3 * 300)
        server, client = self.connect(FastResponder(), pyamp_fds.AMP(), serverFast=False)
        fds = newFiles(300)
        try:
            yield client.callRemote(TakeList, fds=fds, n=1)
            self.assertEqual(server.taken, [[identity(fd) for fd in fds]])
        finally:
            closeAll(fds)

    @defer.inlineCallbacks
    def test_refusedOverStockTransport(self):
        """
        Sending a list over Twisted's own transport is refused before
        anything is queued: it would lose the connection as soon as a box
        had fewer bytes than descriptors.
        """
        server, client = self.connect(
            FastResponder(), pyamp_fds.AMP(), serverFast=False, clientFast=False
        )
        fds = newFiles(2)
        try:
            before = openDescriptors()
            with self.assertRaises(DescriptorsUnsupported):
                client.callRemote(TakeList, fds=fds, n=1)
            self.assertEqual(openDescriptors(), before)
            self.assertEqual(client.transport._sendmsgQueue, [])
            # The connection goes on.
            result = yield client.callRemote(Hello, text="still here")
            self.assertEqual(result, {"text": "still here"})
        finally:
            closeAll(fds)


class OwnershipTests(_Base):
    """
    Who closes what: duplicates by default, the descriptors themselves with
    C{transfer=True}.
    """

    @defer.inlineCallbacks
    def test_transferArgument(self):
        """
        With C{transfer=True}, the descriptors themselves are sent and closed
        once they have gone: the caller's count of open descriptors drops by
        as many as it handed over.
        """
        self.roomFor(3 * 300)
        server, client = self.connect(FastResponder(), pyamp_fds.AMP())
        before = len(openDescriptors())
        fds = newFiles(300)
        expected = [identity(fd) for fd in fds]
        yield client.callRemote(TakeHandedOver, fds=fds, n=1)
        self.assertEqual(server.taken, [expected])
        self.assertEqual(len(openDescriptors()), before)

    @defer.inlineCallbacks
    def test_transferResponse(self):
        """
        A responder's list handed over with C{transfer=True} is closed once
        sent: what stays open is what the caller received.
        """
        self.roomFor(3 * 300)
        server, client = self.connect(FastResponder(), pyamp_fds.AMP())
        before = len(openDescriptors())
        result = yield client.callRemote(GiveListOwned, n=300)
        try:
            yield settle(0.01)
            self.assertEqual([identity(fd) for fd in result["fds"]], server.given[-1])
            self.assertEqual(len(openDescriptors()), before + 300)
        finally:
            closeAll(result["fds"])

    @defer.inlineCallbacks
    def test_lent(self):
        """
        With C{duplicate=False}, the descriptors themselves are sent and
        left open: no duplicate is made, and the caller's stay open and
        usable once the call is answered.
        """
        self.roomFor(3 * 300)
        server, client = self.connect(FastResponder(), pyamp_fds.AMP())
        fds = newFiles(300)
        try:
            expected = [identity(fd) for fd in fds]
            before = openDescriptors()
            d = client.callRemote(TakeLent, fds=fds, n=1)
            # Nothing was duplicated to queue them.
            self.assertEqual(openDescriptors(), before)
            yield d
            self.assertEqual(server.taken, [expected])
            self.assertEqual([identity(fd) for fd in fds], expected)
            self.assertEqual(openDescriptors(), before)
        finally:
            closeAll(fds)

    @defer.inlineCallbacks
    def test_lentAmongDuplicates(self):
        """
        Lent and duplicated descriptors queued together: only the
        duplicates are closed once sent.
        """
        self.roomFor(3 * 600)
        server, client = self.connect(FastResponder(), pyamp_fds.AMP())
        lent, duplicated = newFiles(300), newFiles(300)
        try:
            before = openDescriptors()
            calls = [
                client.callRemote(TakeLent, fds=lent, n=1),
                client.callRemote(TakeList, fds=duplicated, n=2),
                client.callRemote(TakeLent, fds=lent[:3], n=3),
            ]
            yield defer.gatherResults(calls)
            self.assertEqual(openDescriptors(), before)
            self.assertEqual(
                server.taken,
                [[identity(fd) for fd in fds] for fds in (lent, duplicated, lent[:3])],
            )
        finally:
            closeAll(lent + duplicated)

class OwnershipOnLossTests(DrivenTestCase):
    """
    Who closes what the transport still holds when the connection is lost.
    """

    def test_lentLostConnection(self):
        """
        Lent descriptors still queued when the connection is lost stay open:
        they are the caller's.
        """
        client = pyamp_fds.AMP()
        connection = self.connect(client)
        fds = newFiles(5)
        try:
            client.callRemote(TakeLent, fds=fds, n=1).addErrback(lambda f: None)
            self.assertEqual(len(client.transport.queuedDescriptors), 5)
            client.transport.abortConnection()
            connection.run()
            self.assertFalse(connection.open())
            for fd in fds:
                os.fstat(fd)
        finally:
            closeAll(fds)

    def test_transferLostConnection(self):
        """
        Descriptors handed over but not yet sent when the connection is lost
        are closed.
        """
        client = pyamp_fds.AMP()
        connection = self.connect(client)
        fds = newFiles(5)
        client.callRemote(TakeHandedOver, fds=fds, n=1).addErrback(lambda f: None)
        client.transport.abortConnection()
        connection.run()
        self.assertFalse(connection.open())
        for fd in fds:
            with self.assertRaises(OSError):
                os.fstat(fd)


class LimitTests(_Base):
    """
    A list longer than its argument's C{maxDescriptors}.
    """

    @defer.inlineCallbacks
    def assertRefusedBeforeSending(self, command, fds):
        server, client = self.connect(FastResponder(), pyamp_fds.AMP())
        before = openDescriptors()
        sent = client.descriptorsSent
        with self.assertRaises(DescriptorListTooLong):
            client.callRemote(command, fds=fds, n=1)
        # Nothing duplicated, nothing queued, no ordinal spent.
        self.assertEqual(openDescriptors(), before)
        self.assertEqual(len(client.transport.queuedDescriptors), 0)
        self.assertEqual(client.descriptorsSent, sent)
        result = yield client.callRemote(Hello, text="still here")
        self.assertEqual(result, {"text": "still here"})
        self.assertEqual(server.taken, [])

    def test_defaultLimit(self):
        """
        By default a list holds at most 4096 descriptors: 4097 are refused
        before anything is duplicated or queued.
        """
        fd = os.open(os.devnull, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        return self.assertRefusedBeforeSending(TakeList, [fd] * 4097)

    def test_configuredLimit(self):
        """
        C{maxDescriptors} sets the limit.
        """
        fds = newFiles(4)
        self.addCleanup(closeAll, fds)
        return self.assertRefusedBeforeSending(TakeFew, fds)

    @defer.inlineCallbacks
    def test_withinConfiguredLimit(self):
        """
        A list at the limit is sent.
        """
        server, client = self.connect(FastResponder(), pyamp_fds.AMP())
        fds = newFiles(3)
        try:
            yield client.callRemote(TakeFew, fds=fds, n=1)
            self.assertEqual(server.taken, [[identity(fd) for fd in fds]])
        finally:
            closeAll(fds)

    @defer.inlineCallbacks
    def test_duplicationFails(self):
        """
        If one descriptor of the list cannot be duplicated, the duplicates
        already made are closed and nothing is queued.
        """
        server, client = self.connect(FastResponder(), pyamp_fds.AMP())
        fds = newFiles(2)
        try:
            before = openDescriptors()
            # Duplicates take the lowest free numbers: this one stays free.
            notOpen = max(before) + 100
            with self.assertRaises(OSError):
                client.callRemote(TakeList, fds=fds + [notOpen], n=1)
            self.assertEqual(openDescriptors(), before)
            self.assertEqual(len(client.transport.queuedDescriptors), 0)
            yield client.callRemote(TakeList, fds=fds, n=1)
            self.assertEqual(server.taken, [[identity(fd) for fd in fds]])
        finally:
            closeAll(fds)

    def test_badLimit(self):
        """
        A negative limit, or one no value could carry, is refused.
        """
        self.assertRaises(ValueError, pyamp_fds.DescriptorList, maxDescriptors=-1)
        self.assertRaises(ValueError, pyamp_fds.DescriptorList, maxDescriptors=253 * 65535 + 1)


class BadPeerTests(unixsim.BadPeerMixin, FakeConnectionTestCase):
    """
    A peer sending bad lists: the connection is closed, every descriptor it
    held is closed, and the calls waiting fail with a distinct error.
    """

    responderClass = FastResponder

    def sendList(self, value, count=2):
        def send(peer):
            box = self.box(_ask="1", _command="TakeList", fds=value, n=1)
            peer.send(box, [0] * count)

        return send

    def test_notReceived(self):
        """
        A list naming more descriptors than arrived.
        """
        self.assertProtocolError(UnknownDescriptor, self.sendList(b"0:3"))

    def test_startNotReceived(self):
        """
        A list starting past the descriptors that arrived.
        """
        self.assertProtocolError(UnknownDescriptor, self.sendList(b"1:2"))

    def test_hugeStart(self):
        """
        A start far beyond anything received.
        """
        self.assertProtocolError(UnknownDescriptor, self.sendList(b"99999999999999999999:1"))

    def test_claimedTwice(self):
        """
        A list naming a descriptor an earlier box claimed.
        """

        def send(peer):
            first = self.box(_ask="1", _command="TakeList", fds=b"0:2", n=1)
            second = self.box(_ask="2", _command="TakeList", fds=b"1:2", n=1)
            peer.send(first + second, [0, 1, 2])

        # The first box is answered and its descriptors closed; only the
        # second is at fault.
        self.assertProtocolError(UnknownDescriptor, send, taken=1)

    def test_claimedInSameBox(self):
        """
        A list overlapping a descriptor another argument of the same box
        claimed: the one claimed first is closed too.
        """

        def send(peer):
            box = self.box(_ask="1", _command="TakeMixed", one=0, fds=b"0:2")
            peer.send(box, [0, 1])

        self.assertProtocolError(UnknownDescriptor, send)

    def test_secondListFails(self):
        """
        A fault in a later list of a box closes the descriptors an earlier
        list of that box claimed.
        """

        def send(peer):
            box = self.box(_ask="1", _command="TakeMixed", one=0, fds=b"1:2", more=b"3:5")
            peer.send(box, [0, 1, 2, 3])

        self.assertProtocolError(UnknownDescriptor, send)

    def test_malformed(self):
        """
        Values that are not exactly what L{pyamp_fds.DescriptorList} writes.
        """
        values = [
            b"", b":", b"0", b"0:", b":2", b"a:2", b"0:b", b"-1:2", b"0:-2", b"+0:2",
            b" 0:2", b"0: 2", b"0:2 ", b"00:2", b"0:02", b"0:2:3", b"0;2", b"0:2\x00",
            b"\xd9\xa1:2", b"0:" + b"9" * 11, b"0:254 ",
        ]
        for value in values:
            self.assertProtocolError(InvalidDescriptorOrdinal, self.sendList(value))

    def test_paddingChecked(self):
        """
        A long list's value must carry exactly its padding: one byte for
        every 253 descriptors.
        """
        self.assertProtocolError(
            InvalidDescriptorOrdinal, self.sendList(b"0:4096", count=1)
        )

    def test_overReceiversLimit(self):
        """
        A list longer than the receiver's C{maxDescriptors} is refused, even
        if every descriptor it names arrived.
        """

        class Limited(FastResponder):
            @TakeFew.responder
            def takeFew(self, fds, n):
                self.taken.append(fds)
                closeAll(fds)
                return {"n": n}

        self.assertProtocolError(
            DescriptorListTooLong, self.sendList(b"0:4", count=4), Limited()
        )


class TransportGroupingTests(_Room, DrivenTestCase):
    """
    The batching transport with one box naming many descriptors: each group
    of up to 253 goes in its own C{sendmsg}, with a byte no later than the
    last byte of the box, so all of them arrive before the box is complete.
    """

    def assertGrouped(self, proto, sendBoxes, count):
        """
        Run C{sendBoxes(proto, fds)} with C{count} new files, the first box
        naming them all; check where each group of descriptors went.

        @return: the boxes received.
        """
        self.roomFor(3 * count)
        connection = self.connect(proto)
        peer = connection.peer
        # Where in the stream each sendmsg carrying descriptors began.
        sent = {"bytes": 0}
        groups = []
        real = writing.send_with_fds

        def recording(sockfd, data, fds=()):
            result = real(sockfd, data, fds)
            if fds:
                groups.append((sent["bytes"], len(fds)))
            sent["bytes"] += result[0]
            return result

        self.patch(writing, "send_with_fds", recording)
        fds = newFiles(count)
        expected = [identity(fd) for fd in fds]
        try:
            sendBoxes(proto, fds)
        finally:
            closeAll(fds)
        peer.setblocking(False)
        data = b""
        received = []
        try:
            while True:
                try:
                    chunk, fds, flags = fdio.recv_with_fds(peer, 65536)
                except BlockingIOError:
                    # Read all there was: the transport's turn, if it has
                    # more to send.
                    if connection.turn():
                        continue
                    break
                data += chunk
                received.extend(fds)
            self.assertEqual([identity(fd) for fd in received], expected)
        finally:
            fdio.close_all(received)
        boxes = BoxDecoder().feed(data)
        firstBoxEnd = len(pyamp_fds.encode_box(boxes[0]))
        self.assertEqual(len(groups), -(-count // 253))
        self.assertEqual(sum(n for offset, n in groups), count)
        for offset, n in groups:
            self.assertLess(offset, firstBoxEnd)
        return boxes

    def test_command(self):
        """
        One command naming 4096 descriptors, then another command: 17
        C{sendmsg} calls carry the descriptors, each beginning within the
        first box.
        """

        def sendBoxes(proto, fds):
            # Never answered: the peer only reads.
            for d in (
                proto.callRemote(TakeList, fds=fds, n=1),
                proto.callRemote(Hello, text="after"),
            ):
                d.addErrback(lambda f: f.trap(ConnectionDone, ConnectionLost))

        boxes = self.assertGrouped(pyamp_fds.AMP(), sendBoxes, 4096)
        self.assertEqual(boxes[0][b"fds"], b"0:4096" + b" " * 11)
        self.assertEqual(boxes[1][b"text"], b"after")

    def test_smallestBox(self):
        """
        A box holding nothing but a list of 4096 under a one-byte key, then
        another box: the value's padding gives each of the 17 groups a byte
        of the first box.
        """

        def sendBoxes(proto, fds):
            strings = amp.AmpBox()
            pyamp_fds.DescriptorList().toBox(b"f", strings, {"f": fds}, proto)
            proto.sendBox(strings)
            proto.sendBox(amp.AmpBox(after=b"x"))

        proto = pyamp_fds.BinaryBoxProtocol(amp.BoxDispatcher(amp.CommandLocator()))
        boxes = self.assertGrouped(proto, sendBoxes, 4096)
        self.assertEqual(boxes, [{b"f": b"0:4096" + b" " * 11}, {b"after": b"x"}])
