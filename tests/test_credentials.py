"""
Tests for peer credentials on L{pyamp_fds.transport} and the user and group
allow-lists of L{pyamp_fds.endpoints}.
"""

import errno
import os
import shutil
import tempfile

from twisted.internet import defer, error, protocol, reactor
from twisted.logger import globalLogPublisher
from twisted.protocols import amp

import pyamp_fds
from pyamp_fds.endpoints import UNIXClientEndpoint, UNIXServerEndpoint, listenUNIX
from pyamp_fds.credentials import PeerCredentials, Port
from tests.reactorhelpers import ReactorTestCase, watchLost


class Hello(amp.Command):
    arguments = [(b"text", amp.Unicode())]
    response = [(b"text", amp.Unicode())]


class Greeter(pyamp_fds.AMP):
    """
    Answers L{Hello}, recording every box it receives.
    """

    def __init__(self):
        pyamp_fds.AMP.__init__(self)
        self.boxes = []

    def ampBoxReceived(self, box):
        self.boxes.append(box)
        pyamp_fds.AMP.ampBoxReceived(self, box)

    @Hello.responder
    def hello(self, text):
        return {"text": text}


def ours():
    return (os.getpid(), os.getuid(), os.getgid())


class _Listening(ReactorTestCase):
    def listen(self, **kwargs):
        """
        Listen with L{UNIXServerEndpoint} on a new socket path.

        @return: a L{Deferred} firing with the port; the protocols it builds
            are appended to C{self.built}.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        self.path = os.path.join(directory, "s")
        self.built = []

        def build(addr):
            proto = Greeter()
            self.built.append(proto)
            self._lost.append(watchLost(proto))
            return proto

        factory = protocol.Factory()
        factory.buildProtocol = build
        d = UNIXServerEndpoint(reactor, self.path, **kwargs).listen(factory)
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
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
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
