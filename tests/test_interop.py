"""
Interoperability with unmodified Twisted, across processes: descriptors
both ways, as command arguments, several per box, and in responses, each
checked against the file it was meant to be.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from twisted.internet import defer, endpoints, error, protocol, reactor

from pyamp_fds import endpoints as fastEndpoints
from tests import peer
from tests.reactorhelpers import ReactorTestCase, settle, watchLost

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PARENT = {
    "stock": (peer.StockPeer, endpoints.UNIXServerEndpoint, endpoints.UNIXClientEndpoint),
    "fast": (peer.FastPeer, fastEndpoints.UNIXServerEndpoint, fastEndpoints.UNIXClientEndpoint),
}


class InteropTests(ReactorTestCase):
    def setUp(self):
        # The reactor each child reported running on.
        self.childReactors = []
        return super().setUp()

    def spawn(self, kind, role, path, reactorName=None):
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.peer", kind, role, path]
            + ([reactorName] if reactorName else []),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(self.reap, child)
        return child

    def reap(self, child):
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        child.stdout.close()

    def childReports(self, child):
        child.wait(timeout=30)
        return [json.loads(line) for line in child.stdout.read().splitlines()]

    def assertChildBalanced(self, child):
        """
        The child's descriptors once the connection was lost are the ones it
        had before the connection was made.
        """
        reports = self.childReports(child)
        self.childReactors.extend(r["name"] for r in reports if r["event"] == "reactor")
        events = {e["event"]: e.get("fds") for e in reports}
        self.assertEqual(child.returncode, 0)
        # "made" counts the connection's socket, closed by "lost".
        self.assertEqual(events["lost"], events["made"] - 1)

    @defer.inlineCallbacks
    def exchange(self, parentKind, childKind, parentServes, childReactor=None):
        proto, serverEndpoint, clientEndpoint = PARENT[parentKind]
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "sock")
        connected = defer.Deferred()
        factory = protocol.Factory.forProtocol(proto)
        build = factory.buildProtocol

        def buildProtocol(addr):
            p = build(addr)
            self._lost.append(watchLost(p))
            reactor.callLater(0, connected.callback, p)
            return p

        factory.buildProtocol = buildProtocol
        if parentServes:
            port = yield serverEndpoint(reactor, path).listen(factory)
            self.addCleanup(port.stopListening)
            child = self.spawn(childKind, "connect", path, childReactor)
            p = yield connected
        else:
            child = self.spawn(childKind, "serve", path, childReactor)
            deadline = reactor.seconds() + 30
            while not os.path.exists(path):
                yield settle(0.02)
            while True:
                try:
                    p = yield clientEndpoint(reactor, path).connect(factory)
                    break
                except error.ConnectionRefusedError:
                    # The child binds the path before it listens on it:
                    # in between, connections are refused.
                    if child.poll() is not None or reactor.seconds() > deadline:
                        raise
                    yield settle(0.02)
        # Child to parent: arguments from the child, responses from us.
        answer = yield p.callRemote(peer.CallMeBack, count=40)
        self.assertEqual(answer["matched"], 40)
        # Parent to child.
        matched = yield peer.sendChecks(p, 40)
        self.assertEqual(matched, 40)
        p.transport.loseConnection()
        yield settle(0.05)
        self.assertChildBalanced(child)

    def test_fastServerStockClient(self):
        """
        A pyamp_fds server and a stock Twisted client.
        """
        return self.exchange("fast", "stock", parentServes=True)

    def test_stockServerFastClient(self):
        """
        A stock Twisted server and a pyamp_fds client.
        """
        return self.exchange("stock", "fast", parentServes=True)

    def test_fastClientStockServer(self):
        """
        A pyamp_fds client of a stock Twisted server.
        """
        return self.exchange("fast", "stock", parentServes=False)

    def test_stockClientFastServer(self):
        """
        A stock Twisted client of a pyamp_fds server.
        """
        return self.exchange("stock", "fast", parentServes=False)

    def test_fastBothEnds(self):
        """
        pyamp_fds at both ends.
        """
        return self.exchange("fast", "fast", parentServes=True)

    @defer.inlineCallbacks
    def test_otherReactors(self):
        """
        pyamp_fds on the poll and select reactors, serving and connecting,
        against pyamp_fds on epoll.
        """
        for reactorName, reactorClass in [("poll", "PollReactor"), ("select", "SelectReactor")]:
            for parentServes in (True, False):
                yield self.exchange("fast", "fast", parentServes, childReactor=reactorName)
                self.assertEqual(self.childReactors[-1], reactorClass)

    @defer.inlineCallbacks
    def test_peerKilledMidStream(self):
        """
        A peer killed with descriptors in flight both ways: this side ends
        with the descriptors it started with.
        """
        for childKind in ("fast", "stock"):
            directory = tempfile.mkdtemp()
            self.addCleanup(shutil.rmtree, directory)
            path = os.path.join(directory, "sock")
            connected = defer.Deferred()
            factory = protocol.Factory.forProtocol(peer.FastPeer)
            build = factory.buildProtocol

            def buildProtocol(addr, build=build, connected=connected):
                p = build(addr)
                self._lost.append(watchLost(p))
                connected.callback(p)
                return p

            factory.buildProtocol = buildProtocol
            port = yield fastEndpoints.UNIXServerEndpoint(reactor, path).listen(factory)
            child = self.spawn(childKind, "flood", path)
            p = yield connected
            lost = watchLost(p)
            while p.receivedDescriptors.received < 300:
                yield settle(0.01)
            os.kill(child.pid, signal.SIGKILL)
            yield lost
            yield port.stopListening()
            self.assertEqual(p.receivedDescriptors.unclaimed, 0)
