"""
Tests for peer credentials on L{pyamp_fds.transport} and the user and group
allow-lists of L{pyamp_fds.endpoints}.
"""

import errno
import os
import shutil
import socket
import struct
import tempfile

from twisted.internet import address, defer, error, protocol, reactor, task
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent
from twisted.protocols import amp

import pyamp_fds
from pyamp_fds.endpoints import UNIXClientEndpoint, UNIXServerEndpoint, listenUNIX
from pyamp_fds.credentials import (
    PeerCredentials,
    Port,
    describeCredentials,
    describePeer,
    readPeerCredentials,
)
from tests.reactorhelpers import ReactorTestCase, capturedEvents, watchLost


class Hello(amp.Command):
    arguments = [(b"text", amp.Unicode())]
    response = [(b"text", amp.Unicode())]


class Greeter(pyamp_fds.AMP):
    """
    Answers L{Hello}, recording every box it receives and the credentials
    of the peer that said hello.
    """

    def __init__(self):
        pyamp_fds.AMP.__init__(self)
        self.boxes = []
        self.greeted = None

    def ampBoxReceived(self, box):
        self.boxes.append(box)
        pyamp_fds.AMP.ampBoxReceived(self, box)

    @Hello.responder
    def hello(self, text):
        self.greeted = self.transport.getPeerCredentials()
        return {"text": text}


def ours():
    return (os.getpid(), os.getuid(), os.getgid())


def abstractAddress():
    """
    A new address in the abstract namespace (no file: it goes with its
    socket).
    """
    return "\0pyamp_fds-test-%d-%s" % (os.getpid(), os.urandom(6).hex())


def _peer(uid, gid, abstract):
    """
    In a forked child: become C{uid} and C{gid}, connect to C{abstract},
    send a L{Hello}, and say whether an answer came back or the connection
    was closed.
    """
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    box = amp.AmpBox(_command=b"Hello", _ask=b"1", text=b"hi").serialize()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(abstract.encode())
        data = b""
        try:
            s.sendall(box)
            while b"_answer" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, BrokenPipeError):
            # Closed by the listener before or while the box was sent.
            pass
    return b"answered" if b"_answer" in data else b"closed"


@defer.inlineCallbacks
def connectAs(uid, gid, abstract):
    """
    Connect to the abstract address C{abstract} from a forked child
    running as C{uid} and C{gid} (which needs root), and send a L{Hello}.
    The child touches nothing of the reactor, and its exit is polled for
    so that the reactor keeps serving meanwhile.

    @return: a L{Deferred} firing with C{"answered"} or C{"closed"}.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(r)
            os.write(w, _peer(uid, gid, abstract))
            status = 0
        except BaseException as e:
            os.write(w, repr(e).encode())
        finally:
            os._exit(status)
    os.close(w)
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        outcome = os.read(r, 4096).decode()
    finally:
        os.close(r)
    if status != 0:
        raise AssertionError("the peer failed: %s" % (outcome,))
    return outcome


class _Listening(ReactorTestCase):
    def listen(self, address=None, **kwargs):
        """
        Listen with L{UNIXServerEndpoint} on C{address}, or a new socket
        path.

        @return: a L{Deferred} firing with the port; the protocols it builds
            are appended to C{self.built}.
        """
        if address is None:
            directory = tempfile.mkdtemp()
            self.addCleanup(shutil.rmtree, directory)
            address = os.path.join(directory, "s")
        self.path = address
        self.built = []

        def build(addr):
            proto = Greeter()
            self.built.append(proto)
            self._lost.append(watchLost(proto))
            return proto

        factory = protocol.Factory()
        factory.buildProtocol = build
        d = UNIXServerEndpoint(reactor, address, **kwargs).listen(factory)
        d.addCallback(self._listening)
        return d

    def _listening(self, port):
        self.addCleanup(port.stopListening)
        return port

    @defer.inlineCallbacks
    def connectClient(self):
        proto = yield UNIXClientEndpoint(reactor, self.path).connect(
            protocol.Factory.forProtocol(Greeter)
        )
        self._lost.append(watchLost(proto))
        self.addCleanup(self._disconnect, proto)
        return proto


class PeerCredentialsTests(_Listening):
    """
    L{pyamp_fds.transport.Server.getPeerCredentials} and
    L{pyamp_fds.transport.Client.getPeerCredentials}.
    """

    def test_socketpair(self):
        """
        Both ends of an adopted socket pair see this process.
        """
        server, client = self.connect(Greeter(), Greeter())
        self.assertEqual(server.transport.getPeerCredentials(), ours())
        self.assertEqual(client.transport.getPeerCredentials(), ours())
        self.assertIsInstance(client.transport.getPeerCredentials(), PeerCredentials)

    @defer.inlineCallbacks
    def test_listenAndConnect(self):
        """
        Over a listening socket, the server sees the client and the client
        the server, by name as well as by position.
        """
        yield self.listen()
        client = yield self.connectClient()
        yield client.callRemote(Hello, text="hi")
        [server] = self.built
        for transport in (server.transport, client.transport):
            credentials = transport.getPeerCredentials()
            self.assertEqual(credentials, ours())
            self.assertEqual(
                (credentials.pid, credentials.uid, credentials.gid), ours()
            )

    @defer.inlineCallbacks
    def test_keptOnceRead(self):
        """
        The credentials are read once and kept, so they are still known
        after the connection is lost.
        """
        server, client = self.connect(Greeter(), Greeter())
        first = client.transport.getPeerCredentials()
        transport = client.transport
        lost = watchLost(client)
        transport.loseConnection()
        yield lost
        self.assertIs(transport.getPeerCredentials(), first)

    @defer.inlineCallbacks
    def test_notConnected(self):
        """
        Asked for the first time after the connection was lost, they are no
        longer available.
        """
        server, client = self.connect(Greeter(), Greeter())
        transport = client.transport
        lost = watchLost(client)
        transport.loseConnection()
        yield lost
        e = self.assertRaises(OSError, transport.getPeerCredentials)
        self.assertEqual(e.errno, errno.ENOTCONN)


class AdmitsTests(ReactorTestCase):
    """
    L{Port.admits}: who passes the allow-lists.
    """

    def port(self, **kwargs):
        return Port("/nonexistent", protocol.Factory(), allowedUIDs=kwargs.get("uids"),
                    allowedGIDs=kwargs.get("gids"))

    def test_noLists(self):
        """
        Without lists, everyone is admitted.
        """
        self.assertTrue(self.port().admits(PeerCredentials(1, 2, 3)))

    def test_uidsOnly(self):
        """
        With only user ids, the user must be one of them.
        """
        port = self.port(uids=[2, 5])
        self.assertTrue(port.admits(PeerCredentials(1, 2, 3)))
        self.assertFalse(port.admits(PeerCredentials(1, 3, 2)))

    def test_gidsOnly(self):
        """
        With only group ids, the group must be one of them.
        """
        port = self.port(gids=iter([3]))
        self.assertTrue(port.admits(PeerCredentials(1, 2, 3)))
        self.assertFalse(port.admits(PeerCredentials(1, 3, 2)))

    def test_both(self):
        """
        With both, the user or the group must be allowed.
        """
        port = self.port(uids=[2], gids=[3])
        self.assertTrue(port.admits(PeerCredentials(1, 2, 9)))
        self.assertTrue(port.admits(PeerCredentials(1, 9, 3)))
        self.assertFalse(port.admits(PeerCredentials(1, 9, 9)))

    def test_empty(self):
        """
        An empty list admits nobody.
        """
        self.assertFalse(self.port(uids=[]).admits(PeerCredentials(1, 2, 3)))


class AllowListTests(_Listening):
    """
    Connections to a listening socket with allow-lists, for real.
    """

    def setUp(self):
        self.events = capturedEvents(self)
        return super().setUp()

    @defer.inlineCallbacks
    def assertAdmitted(self, **kwargs):
        yield self.listen(**kwargs)
        client = yield self.connectClient()
        result = yield client.callRemote(Hello, text="let in")
        self.assertEqual(result, {"text": "let in"})
        [server] = self.built
        self.assertEqual(server.transport.getPeerCredentials(), ours())

    @defer.inlineCallbacks
    def assertRefused(self, **kwargs):
        yield self.listen(**kwargs)
        client = yield self.connectClient()
        lost = watchLost(client)
        call = client.callRemote(Hello, text="let me in")
        reason = yield lost
        self.assertIsInstance(reason, (error.ConnectionDone, error.ConnectionLost))
        yield self.assertFailure(call, error.ConnectionDone, error.ConnectionLost)
        # No protocol was built, so no box reached one.
        self.assertEqual(self.built, [])
        refusals = [e for e in self.events if e.get("credentials") is not None]
        self.assertEqual([e["credentials"] for e in refusals], [ours()])

    def test_uidAdmitted(self):
        """
        A list holding this process's user id lets it in.
        """
        return self.assertAdmitted(allowedUIDs=[os.getuid()])

    def test_uidRefused(self):
        """
        A list without this process's user id: the connection is closed
        before any protocol is built, and the refusal is logged with the
        peer's credentials.
        """
        return self.assertRefused(allowedUIDs=[os.getuid() + 1])

    def test_gidAdmitted(self):
        """
        A list holding this process's group id lets it in.
        """
        return self.assertAdmitted(allowedGIDs={os.getgid()})

    def test_gidRefused(self):
        """
        A group list without this process's group id keeps it out.
        """
        return self.assertRefused(allowedGIDs=[os.getgid() + 1])

    def test_eitherAdmits(self):
        """
        With both lists, the group alone is enough.
        """
        return self.assertAdmitted(allowedUIDs=[os.getuid() + 1], allowedGIDs=[os.getgid()])

    def test_neitherAdmits(self):
        """
        With both lists and neither matching, the peer is refused.
        """
        return self.assertRefused(allowedUIDs=[os.getuid() + 1], allowedGIDs=[os.getgid() + 1])

    @defer.inlineCallbacks
    def test_listenUNIX(self):
        """
        L{listenUNIX} takes the same lists.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        self.path = os.path.join(directory, "s")
        self.built = []
        factory = protocol.Factory()
        factory.buildProtocol = lambda addr: self.built.append(addr)
        port = listenUNIX(reactor, self.path, factory, allowedUIDs=[os.getuid() + 1])
        self.addCleanup(port.stopListening)
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        client = yield self.connectClient()
        yield watchLost(client)
        self.assertEqual(self.built, [])
        self.assertEqual(len([e for e in self.events if e.get("credentials")]), 1)


class ReadPeerCredentialsTests(ReactorTestCase):
    """
    L{readPeerCredentials} reads C{struct ucred}: C{pid_t}, C{uid_t},
    C{gid_t}, the last two unsigned.
    """

    def test_unsignedIDs(self):
        """
        A user or group id of 2**31 or more reads as itself, not as a
        negative number, and an allow-list naming it admits it.
        """
        high = 2**32 - 2
        ucred = struct.pack("iII", 1234, high, high - 1)
        calls = []

        class Socket:
            def getsockopt(self, level, option, size):
                calls.append((level, option, size))
                return ucred[:size]

        credentials = readPeerCredentials(Socket())
        self.assertEqual(calls, [(socket.SOL_SOCKET, socket.SO_PEERCRED, len(ucred))])
        self.assertEqual(credentials, (1234, high, high - 1))
        port = Port("/nonexistent", protocol.Factory(), allowedUIDs=[high])
        self.assertTrue(port.admits(credentials))
        port = Port("/nonexistent", protocol.Factory(), allowedGIDs=[high - 1])
        self.assertTrue(port.admits(credentials))


class DescribePeerTests(ReactorTestCase):
    """
    L{describePeer} and L{describeCredentials} name a peer for log lines.
    """

    def test_credentials(self):
        """
        Credentials read as process, user and group ids.
        """
        self.assertEqual(
            describeCredentials(PeerCredentials(123, 1000, 100)), "pid 123 uid 1000 gid 100"
        )
        self.assertEqual(
            describeCredentials(None), "a peer whose credentials could not be read"
        )

    def test_connected(self):
        """
        A pyamp_fds transport's peer is named by its credentials.
        """
        server, client = self.connect(Greeter(), Greeter())
        self.assertEqual(describePeer(server.transport), "pid %d uid %d gid %d" % ours())

    @defer.inlineCallbacks
    def test_lostBeforeRead(self):
        """
        When the credentials were never read and the connection is gone,
        the address is what is left: an unnamed UNIX peer says so.
        """
        server, client = self.connect(Greeter(), Greeter())
        transport = client.transport
        lost = watchLost(client)
        transport.loseConnection()
        yield lost
        self.assertEqual(describePeer(transport), "an unnamed UNIX socket peer")

    def test_otherTransports(self):
        """
        A transport without credentials is named by its address.
        """
        transport = StringTransport(peerAddress=address.UNIXAddress(b"/run/peer.sock"))
        self.assertEqual(describePeer(transport), "the socket at b'/run/peer.sock'")
        transport = StringTransport(peerAddress=address.IPv4Address("TCP", "192.0.2.1", 7))
        self.assertEqual(describePeer(transport), str(transport.getPeer()))


class ModeTests(ReactorTestCase):
    """
    L{Port} takes a socket file mode within C{0..0o777} only.
    """

    def test_outOfRange(self):
        """
        A negative mode, or one with bits above C{0o777}, is a
        C{ValueError}.
        """
        for mode in (-1, 0o1000, 0o4777, 0o7777):
            self.assertRaises(ValueError, Port, "/nonexistent", protocol.Factory(), mode=mode)
        for mode in (0, 0o600, 0o777):
            self.assertEqual(Port("/nonexistent", protocol.Factory(), mode=mode).mode, mode)


class AbstractNamespaceTests(_Listening):
    """
    An address in the abstract namespace has no file mode: without an
    allow-list, only the listening process's user is admitted.
    """

    def test_defaultAllowList(self):
        """
        With neither list, an abstract address admits this process's user
        only; a filesystem path still admits everyone its mode lets in.
        """
        for abstract in ("\0name", b"\0name"):
            port = Port(abstract, protocol.Factory())
            self.assertEqual(port.allowedUIDs, {os.getuid()})
            self.assertIsNone(port.allowedGIDs)
            self.assertTrue(port.admits(PeerCredentials(1, os.getuid(), os.getgid() + 1)))
            self.assertFalse(port.admits(PeerCredentials(1, os.getuid() + 1, os.getgid())))
        port = Port("/run/name", protocol.Factory())
        self.assertIsNone(port.allowedUIDs)
        self.assertTrue(port.admits(PeerCredentials(1, os.getuid() + 1, os.getgid() + 1)))

    def test_givenListsKept(self):
        """
        A list given is used as it is, even a group list alone.
        """
        port = Port("\0name", protocol.Factory(), allowedGIDs=[5])
        self.assertIsNone(port.allowedUIDs)
        self.assertEqual(port.allowedGIDs, {5})

    @defer.inlineCallbacks
    def test_ownUserAdmitted(self):
        """
        A process of the listener's own user connects to an abstract
        address listened on with no list.
        """
        port = yield self.listen(abstractAddress())
        self.assertEqual(port.allowedUIDs, {os.getuid()})
        client = yield self.connectClient()
        result = yield client.callRemote(Hello, text="same user")
        self.assertEqual(result, {"text": "same user"})
        self.assertEqual(len(self.built), 1)

    @defer.inlineCallbacks
    def test_otherUserRefused(self):
        """
        A process of another user (here C{nobody}, from a child that drops
        root) that connects to an abstract address listened on with no list
        is refused before any protocol is built, and logged by its
        credentials.
        """
        if os.getuid() != 0:
            raise self.skipTest("only root can run a peer as another user")
        events = capturedEvents(self)
        abstract = abstractAddress()
        yield self.listen(abstract)
        outcome = yield connectAs(65534, 65534, abstract)
        self.assertEqual(outcome, "closed")
        self.assertEqual(self.built, [])
        [refusal] = [e for e in events if e.get("credentials") is not None]
        self.assertEqual(refusal["credentials"][1:], (65534, 65534))
        self.assertIn(
            "pid %d uid 65534 gid 65534" % (refusal["credentials"].pid,), formatEvent(refusal)
        )

    @defer.inlineCallbacks
    def test_highUserAdmitted(self):
        """
        A peer whose user id is 2**31 or more (here 2**32 - 2, from a child
        that drops root) is admitted by a list naming that id, and seen
        with it.
        """
        if os.getuid() != 0:
            raise self.skipTest("only root can run a peer as another user")
        high = 2**32 - 2
        abstract = abstractAddress()
        yield self.listen(abstract, allowedUIDs=[high])
        outcome = yield connectAs(high, 65534, abstract)
        self.assertEqual(outcome, "answered")
        [server] = self.built
        self.assertEqual(server.greeted[1:], (high, 65534))


class _ClockedReactor:
    """
    The real reactor, but with a L{task.Clock}'s C{callLater}: sockets are
    real, time is the test's.
    """

    def __init__(self, clock):
        self.callLater = clock.callLater

    def __getattr__(self, name):
        return getattr(reactor, name)


class RefusalLogTests(_Listening):
    """
    Refused connections are logged at most once per interval per port; the
    others are summed up at the end of it.
    """

    def setUp(self):
        self.events = capturedEvents(self)
        self.clock = task.Clock()
        return super().setUp()

    def refusals(self):
        return [e for e in self.events if e.get("credentials") is not None]

    def summaries(self):
        return [e for e in self.events if "count" in e and "peers" in e]

    @defer.inlineCallbacks
    def refuse(self, times):
        for _ in range(times):
            client = yield self.connectClient()
            yield watchLost(client)

    @defer.inlineCallbacks
    def listenClocked(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        self.path = os.path.join(directory, "s")
        port = listenUNIX(
            _ClockedReactor(self.clock), self.path, protocol.Factory(),
            allowedUIDs=[os.getuid() + 1],
        )
        self.addCleanup(self.stopListening, port)
        yield None
        return port

    def stopListening(self, port):
        # A port stops in a call it schedules on its reactor: the clock.
        d = port.stopListening()
        self.clock.advance(0)
        return d

    @defer.inlineCallbacks
    def test_summary(self):
        """
        Of four refusals within a second, the first is logged with its
        peer's credentials; the other three are one line at the end of the
        second, naming the peer and the count.  A quiet second ends the
        interval: the next refusal is logged at once.
        """
        port = yield self.listenClocked()
        yield self.refuse(4)
        self.assertEqual(len(self.refusals()), 1)
        self.assertIn("pid %d uid %d gid %d" % ours(), formatEvent(self.refusals()[0]))
        self.assertEqual(self.summaries(), [])
        self.clock.advance(port.refusalLogInterval)
        [summary] = self.summaries()
        self.assertEqual(summary["count"], 3)
        self.assertIn("refused 3 more connections from pid %d uid %d gid %d (3)" % ours(),
                      formatEvent(summary))
        self.clock.advance(port.refusalLogInterval)
        self.assertEqual(len(self.summaries()), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        yield self.refuse(1)
        self.assertEqual(len(self.refusals()), 2)

    @defer.inlineCallbacks
    def test_flood(self):
        """
        Refusals that keep coming give one line per interval.
        """
        port = yield self.listenClocked()
        for second in range(3):
            yield self.refuse(2)
            self.clock.advance(port.refusalLogInterval)
        self.assertEqual(len(self.refusals()), 1)
        self.assertEqual([e["count"] for e in self.summaries()], [1, 2, 2])

    @defer.inlineCallbacks
    def test_stopListening(self):
        """
        Refusals not yet summed up are logged when the port stops
        listening, and nothing is left scheduled.
        """
        port = yield self.listenClocked()
        yield self.refuse(3)
        yield self.stopListening(port)
        self.assertEqual([e["count"] for e in self.summaries()], [2])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_manyPeers(self):
        """
        A summary names a bounded number of peers and counts the rest.
        """
        port = Port("/nonexistent", protocol.Factory(), reactor=self.clock, allowedUIDs=[])
        logged = []
        logger = type("Logger", (), {"warn": lambda self, *a, **kw: logged.append(kw)})()
        for pid in range(1, 21):
            port._refused(PeerCredentials(pid, 1000, 1000), logger)
        port._refused(PeerCredentials(2, 1000, 1000), logger)
        self.assertEqual(len(logged), 1)
        self.clock.advance(port.refusalLogInterval)
        [summary] = self.summaries()
        self.assertEqual(summary["count"], 20)
        text = formatEvent(summary)
        self.assertIn("pid 2 uid 1000 gid 1000 (2)", text)
        self.assertIn("and 14 from other peers", text)
        self.assertNotIn("pid 20 ", text)
