"""
Tests for server connections counted in the process's descriptor budget
(L{pyamp_fds.budget.DescriptorBudget.maxConnections}) and the listening
port's bounds on them (L{pyamp_fds.credentials.Port}).
"""

import os
import resource
import shutil
import socket
import tempfile
import threading

from twisted.internet import defer, protocol, reactor, threads
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

import pyamp_fds
from pyamp_fds import fdio
from pyamp_fds.budget import DescriptorBudget, processBudget, setProcessBudget
from pyamp_fds.closer import waitUntilClosed
from pyamp_fds.fdio import MAX_FDS_PER_MESSAGE
from pyamp_fds.credentials import Port
from pyamp_fds.endpoints import UNIXClientEndpoint, UNIXServerEndpoint
from tests.fdcheck import openDescriptors
from tests.test_hostile import lingeringSocket
from tests.reactorhelpers import ReactorTestCase, adopt, capturedEvents, settle, watchLost


def waitFor(condition, timeout=5.0):
    """
    Let the reactor run until C{condition()} is true, or C{timeout}
    seconds have passed.

    @return: a L{Deferred} firing with whether it became true.
    """

    @defer.inlineCallbacks
    def wait():
        for _ in range(int(timeout / 0.01)):
            if condition():
                return True
            yield settle(0.01)
        return condition()

    return wait()


def closedByPeer(sock):
    """
    Let the reactor run until C{sock}'s peer has closed the connection.

    @return: a L{Deferred} firing with whether it did within a few seconds.
    """

    def closed():
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True

    return waitFor(closed)


class ConnectionBudgetTests(SynchronousTestCase):
    """
    L{DescriptorBudget}'s count of server connections, without sockets.
    """

    def test_derivedSplit(self):
        """
        A budget derived from the soft C{RLIMIT_NOFILE} bounds connections
        to a quarter of its limit, unless told otherwise.
        """
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        budget = DescriptorBudget(reserve=100)
        self.assertEqual(budget.limit, soft - 100)
        self.assertEqual(budget.maxConnections, (soft - 100) // 4)
        given = DescriptorBudget(reserve=100, maxConnections=10)
        self.assertEqual((given.limit, given.maxConnections), (soft - 100, 10))

    def test_givenLimitUnbounded(self):
        """
        A budget given its limit bounds connections only when told to;
        unbounded, they are counted but not against the limit.
        """
        budget = DescriptorBudget(limit=1000)
        self.assertIsNone(budget.maxConnections)
        budget.connectionOpened()
        self.assertEqual((budget.connections, budget.connectionRoom()), (1, None))
        self.assertEqual((budget.used, budget.headroom, budget.fullReceive), (0, 1000, 253))
        budget.connectionClosed()
        self.assertEqual(budget.connections, 0)

    def test_room(self):
        """
        The room for connections is what the bound leaves, never below
        zero; bounded, connections count in the budget, and a full receive
        is what they leave of it.
        """
        budget = DescriptorBudget(limit=300, maxConnections=2)
        self.assertEqual(budget.connectionRoom(), 2)
        for _ in range(3):
            budget.connectionOpened()
        self.assertEqual(budget.connectionRoom(), 0)
        self.assertEqual((budget.used, budget.headroom), (3, 297))
        self.assertEqual(budget.fullReceive, MAX_FDS_PER_MESSAGE)
        for _ in range(100):
            budget.connectionOpened()
        # Adopted connections past the bound: readers read with what is
        # left rather than wait for room that cannot come.
        self.assertEqual(budget.fullReceive, 300 - 103)
        budget.connectionClosed(103)
        self.assertEqual((budget.used, budget.connections), (0, 0))

    def test_waitingPorts(self):
        """
        A port waiting for room is resumed once a connection closes and
        leaves room, once however often it asked; one asking while there
        is room is resumed at once.
        """
        budget = DescriptorBudget(limit=1000, maxConnections=2)
        budget.connectionOpened()
        budget.connectionOpened()
        resumed = []
        first, second = (lambda: resumed.append(1)), (lambda: resumed.append(2))
        budget.waitForConnectionRoom(first)
        budget.waitForConnectionRoom(first)
        budget.waitForConnectionRoom(second)
        self.assertEqual(resumed, [])
        budget.connectionClosed()
        self.assertEqual(sorted(resumed), [1, 2])
        budget.connectionOpened()
        budget.connectionClosed()
        self.assertEqual(sorted(resumed), [1, 2])
        budget.waitForConnectionRoom(first)
        self.assertEqual(sorted(resumed), [1, 1, 2])


    def test_closedByTheCloser(self):
        """
        Sockets the closer closes (from its own thread) stop counting once
        closed, folded in when the count is next read.
        """
        budget = DescriptorBudget(limit=1000, maxConnections=1)
        budget.connectionOpened()
        sockets = budget.connectionSockets
        sockets.closing(1)
        self.assertEqual((budget.connectionRoom(), budget.used), (0, 1))
        closer = threading.Thread(target=sockets.closed, args=(1,))
        closer.start()
        closer.join()
        self.assertEqual((budget.connections, budget.connectionRoom()), (0, 1))
        self.assertEqual(budget.used, 0)


class _Connections(ReactorTestCase):
    """
    A listening port on a process budget of the test's, and plain sockets
    connecting to it.
    """

    def useBudget(self, budget):
        old = processBudget()
        setProcessBudget(budget)
        self.addCleanup(setProcessBudget, old)
        return budget

    @defer.inlineCallbacks
    def listen(self, **kwargs):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        self.path = os.path.join(directory, "s")
        self.built = []

        def build(addr):
            proto = pyamp_fds.AMP()
            self.built.append(proto)
            self._lost.append(watchLost(proto))
            self.addCleanup(self._disconnect, proto)
            return proto

        factory = protocol.Factory()
        factory.buildProtocol = build
        port = yield UNIXServerEndpoint(reactor, self.path, **kwargs).listen(factory)
        self.addCleanup(port.stopListening)
        return port

    def plainClient(self):
        """
        A plain socket connected to the port (the kernel completes the
        connection while the listening socket's backlog has room, whether
        or not the port accepts it).
        """
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(client.close)
        client.connect(self.path)
        return client

    def openConnections(self):
        return [proto for proto in self.built if proto.transport is not None]


class PortBoundTests(_Connections):
    """
    A listening port accepts no more connections than the process budget's
    L{maxConnections<DescriptorBudget.maxConnections>}: the others wait, and
    are accepted as connections close.
    """

    @defer.inlineCallbacks
    def test_acceptsUpToTheBound(self):
        """
        Of five peers connecting to a process that may keep three server
        connections, three are accepted and the process holds no more
        descriptors than those three and the peers' own; when one of them
        closes, the next waiting peer is accepted; when all close, none is
        counted.
        """
        budget = self.useBudget(DescriptorBudget(limit=1000, maxConnections=3))
        port = yield self.listen()
        # All the peers are this test's user: no bound of the user's own.
        port.connectionsPerUser = 5
        baseline = len(openDescriptors())
        clients = [self.plainClient() for _ in range(5)]
        self.assertTrue((yield waitFor(lambda: len(self.built) == 3)))
        # Long enough for the port to have accepted more, were it going to.
        yield settle(0.2)
        self.assertEqual((len(self.built), budget.connections), (3, 3))
        self.assertEqual(len(openDescriptors()) - baseline, 5 + 3)

        clients[0].close()
        self.assertTrue((yield waitFor(lambda: len(self.built) == 4)))
        self.assertEqual(len(self.openConnections()), 3)
        self.assertEqual(budget.connections, 3)

        for client in clients:
            client.close()
        self.assertTrue((yield waitFor(lambda: len(self.built) == 5)))
        self.assertTrue((yield waitFor(lambda: budget.connections == 0)))
        self.assertEqual(self.openConnections(), [])

    @defer.inlineCallbacks
    def test_noRoomInTheBudget(self):
        """
        A connection's socket counts in the budget: while the budget is
        full of descriptors the port accepts nothing, though connections
        are far from their bound, and it accepts once they are released.
        """
        budget = self.useBudget(DescriptorBudget(limit=10, maxConnections=5))
        yield self.listen()
        budget.take(10)
        self.plainClient()
        yield settle(0.2)
        self.assertEqual((self.built, budget.connections), ([], 0))
        budget.give(10)
        self.assertTrue((yield waitFor(lambda: len(self.built) == 1)))
        self.assertEqual((budget.connections, budget.used), (1, 1))

    @defer.inlineCallbacks
    def test_clientsNotCounted(self):
        """
        Only the server's end of a connection counts: the application's
        own client connections are neither counted nor refused.
        """
        budget = self.useBudget(DescriptorBudget(limit=1000, maxConnections=1))
        port = yield self.listen()
        port.connectionsPerUser = 1
        client = yield UNIXClientEndpoint(reactor, self.path).connect(
            protocol.Factory.forProtocol(pyamp_fds.AMP)
        )
        self._lost.append(watchLost(client))
        self.addCleanup(self._disconnect, client)
        self.assertTrue((yield waitFor(lambda: len(self.built) == 1)))
        self.assertEqual(budget.connections, 1)
        client.transport.loseConnection()
        self.assertTrue((yield waitFor(lambda: budget.connections == 0)))

    @defer.inlineCallbacks
    def test_closedInTheBackground(self):
        """
        A server connection closed with bytes left unread in its socket is
        closed in the background, and counts as a connection until it is
        (here for a second: what is queued in it is the last reference to a
        socket whose close lingers), in the budget's connections and in what
        it holds.
        """
        budget = self.useBudget(DescriptorBudget(limit=1000, maxConnections=4))
        server, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(peer.close)
        proto = pyamp_fds.AMP()
        self._lost.append(watchLost(proto))
        adopt(server, proto)
        self.assertEqual(budget.connections, 1)
        proto.transport.stopReading()
        lingering, _ = lingeringSocket(self, 1)
        fdio.send_with_fds(peer, b"\x00", [lingering.fileno()])
        lingering.close()
        lost = watchLost(proto)
        proto.transport.loseConnection()
        yield lost
        self.assertEqual((budget.connections, budget.used), (1, 1))
        yield threads.deferToThread(waitUntilClosed)
        self.assertEqual((budget.connections, budget.used), (0, 0))
        self.assertTrue((yield closedByPeer(peer)))


class PerUserTests(_Connections):
    """
    One user may hold at most C{connectionsPerUser} of a port's
    connections: by default half of what the process may keep.
    """

    def setUp(self):
        self.events = capturedEvents(self)
        return super().setUp()

    @defer.inlineCallbacks
    def test_defaultShare(self):
        """
        With room for four connections, a user's third is refused (closed
        at once, and logged with the reason) while the process still has
        room; once one of the user's connections closes, it may connect
        again.
        """
        budget = self.useBudget(DescriptorBudget(limit=1000, maxConnections=4))
        yield self.listen()
        first = self.plainClient()
        self.plainClient()
        self.assertTrue((yield waitFor(lambda: len(self.built) == 2)))
        third = self.plainClient()
        self.assertTrue((yield closedByPeer(third)))
        self.assertEqual((len(self.built), budget.connections), (2, 2))
        [refusal] = [e for e in self.events if e.get("credentials") is not None]
        self.assertIn(
            "its user holds as many connections as one user may (2)", formatEvent(refusal)
        )

        first.close()
        self.assertTrue((yield waitFor(lambda: budget.connections == 1)))
        self.plainClient()
        self.assertTrue((yield waitFor(lambda: len(self.built) == 3)))
        self.assertEqual(budget.connections, 2)

    @defer.inlineCallbacks
    def test_givenShare(self):
        """
        A port's own C{connectionsPerUser} (given to its endpoint) applies,
        with or without a bound on the process's connections.
        """
        budget = self.useBudget(DescriptorBudget(limit=1000))
        port = yield self.listen(connectionsPerUser=1)
        self.assertEqual(port.connectionsPerUser, 1)
        self.plainClient()
        self.assertTrue((yield waitFor(lambda: len(self.built) == 1)))
        refused = self.plainClient()
        self.assertTrue((yield closedByPeer(refused)))
        self.assertEqual((len(self.built), budget.connections), (1, 1))

    def test_atLeastOne(self):
        """
        A bound below one connection would refuse everyone: it is a
        C{ValueError}, from the port and from the endpoint.
        """
        for bad in (0, -1):
            self.assertRaises(
                ValueError, Port, "/nonexistent", protocol.Factory(), connectionsPerUser=bad
            )
            self.assertRaises(
                ValueError, UNIXServerEndpoint, reactor, "/nonexistent", connectionsPerUser=bad
            )
