"""
Tests for L{pyamp_fds.endpoints}: listening, connecting and adopting
sockets give batching transports.
"""

import os
import socket
import stat
import tempfile

from twisted.internet import defer, protocol, reactor

import pyamp_fds
from pyamp_fds.endpoints import (
    UNIXClientEndpoint,
    UNIXServerEndpoint,
    adoptStreamConnection,
    listenUNIX,
)
from pyamp_fds.interfaces import IBatchingTransport
from tests.reactorhelpers import ReactorTestCase, watchLost


class EndpointTests(ReactorTestCase):
    """
    The endpoints are used as Twisted's are, with a safer default mode.
    """

    @defer.inlineCallbacks
    def test_listenAndConnect(self):
        """
        A client endpoint connects to a server endpoint; both ends get
        batching transports, and the socket file is only for its owner.
        (Descriptors through these endpoints: L{tests.test_interop}.)
        """
        path = os.path.join(tempfile.mkdtemp(), "sock")
        self.addCleanup(os.rmdir, os.path.dirname(path))
        served = defer.Deferred()

        def buildProtocol(addr):
            p = pyamp_fds.AMP()
            self._lost.append(watchLost(p))
            reactor.callLater(0, served.callback, p)
            return p

        factory = protocol.Factory()
        factory.buildProtocol = buildProtocol
        port = yield UNIXServerEndpoint(reactor, path).listen(factory)
        self.addCleanup(port.stopListening)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        client = yield UNIXClientEndpoint(reactor, path).connect(
            protocol.Factory.forProtocol(pyamp_fds.AMP)
        )
        self._lost.append(watchLost(client))
        server = yield served
        self.addCleanup(client.transport.loseConnection)
        self.assertTrue(IBatchingTransport.providedBy(client.transport))
        self.assertTrue(IBatchingTransport.providedBy(server.transport))

    def test_adoptRefusesOtherSockets(self):
        """
        Only a connected C{AF_UNIX} stream socket can be adopted; anything
        else is refused with C{ValueError}, and the caller keeps its socket.
        """
        for family, kind in [
            (socket.AF_INET, socket.SOCK_STREAM),
            (socket.AF_UNIX, socket.SOCK_DGRAM),
        ]:
            with socket.socket(family, kind) as sock:
                with self.assertRaises(ValueError):
                    adoptStreamConnection(reactor, sock.fileno(), protocol.Factory())
                self.assertEqual(sock.family, family)


class ModeTests(ReactorTestCase):
    """
    A listening socket's mode must be within C{0..0o777}: C{chmod()} would
    otherwise set the set-user-id, set-group-id and sticky bits, or all of
    them for a negative mode.
    """

    def test_endpoint(self):
        """
        L{UNIXServerEndpoint} refuses such a mode when it is made, before
        anything listens.
        """
        for mode in (-1, 0o1000, 0o7777):
            self.assertRaises(ValueError, UNIXServerEndpoint, reactor, "/nonexistent", mode=mode)
        self.assertEqual(UNIXServerEndpoint(reactor, "/nonexistent", mode=0o777).mode, 0o777)

    def test_listenUNIX(self):
        """
        L{listenUNIX} refuses such a mode, and makes no socket file.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, directory)
        path = os.path.join(directory, "sock")
        for mode in (-1, 0o1000):
            self.assertRaises(
                ValueError, listenUNIX, reactor, path, protocol.Factory(), mode=mode
            )
            self.assertFalse(os.path.lexists(path))

    @defer.inlineCallbacks
    def test_largestMode(self):
        """
        C{0o777} is allowed and is the socket file's mode.
        """
        path = os.path.join(tempfile.mkdtemp(), "sock")
        self.addCleanup(os.rmdir, os.path.dirname(path))
        port = yield UNIXServerEndpoint(reactor, path, mode=0o777).listen(protocol.Factory())
        self.addCleanup(port.stopListening)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o777)
