"""
A pyamp_fds transport over a real UNIX socket, on a reactor the test runs by
hand: the kernel's part (what each C{sendmsg} and C{recvmsg} carries) is
real, and when the transport reads and writes is the test's choice, with no
global reactor and no waiting.
"""

import select
import socket

from twisted.internet import protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from pyamp_fds.endpoints import adoptStreamConnection
from tests.fdcheck import assertNoNewDescriptors, openDescriptors


class DrivenConnection:
    """
    A protocol over one end of a socketpair, with a batching transport on a
    L{MemoryReactorClock}; the test holds the other end, a plain socket.

    @ivar transport: the transport under test.
    @ivar peer: the other end.
    @ivar reactor: the L{MemoryReactorClock} the transport registers with.
    @ivar lost: the reason the transport gave to disconnect, once it has
        (an abort's connection loss is scheduled, and not seen here).
    """

    def __init__(self, proto):
        self.reactor = MemoryReactorClock()
        ours, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        factory = protocol.Factory()
        factory.buildProtocol = lambda addr: proto
        # The transport has its own duplicate.
        self.transport = adoptStreamConnection(self.reactor, ours.fileno(), factory)
        ours.close()
        self.proto = proto
        self.lost = None

    def open(self):
        """
        Whether the transport is still connected.
        """
        return not self.transport.disconnected

    def wantsToWrite(self):
        return self.transport in self.reactor.getWriters()

    def wantsToRead(self):
        return self.transport in self.reactor.getReaders()

    def turn(self):
        """
        One pass of the reactor over this connection: the transport writes
        if it asked to, and reads if it asked to and the socket is readable.

        @return: whether it did either.
        """
        # Calls the transport scheduled to run at once (an abort's
        # connectionLost) run first, as on the reactor's next pass.
        self.reactor.advance(0)
        acted = False
        if self.open() and self.wantsToWrite():
            acted = True
            self._run(self.transport.doWrite)
        if self.open() and self.wantsToRead():
            readable, _, _ = select.select([self.transport.fileno()], [], [], 0)
            if readable:
                acted = True
                self._run(self.transport.doRead)
        return acted

    def run(self, turns=100):
        """
        Turn until the transport has nothing left to do that it can do now.
        """
        for _ in range(turns):
            if not self.turn():
                return

    def _run(self, method):
        why = method()
        if why is not None:
            # What the reactor does with a reason to disconnect.
            self.reactor.removeReader(self.transport)
            self.reactor.removeWriter(self.transport)
            self.lost = why
            self.transport.connectionLost(Failure(why))

    def close(self):
        """
        Close both ends, whatever state they are in.
        """
        if self.open():
            self.transport.loseConnection()
            self.run()
        if self.open():
            self._run(lambda: ConnectionAbandoned())
        self.peer.close()


class ConnectionAbandoned(Exception):
    """
    The test ended with the connection still open.
    """


class DrivenTestCase(SynchronousTestCase):
    """
    A test of a transport over real sockets on a reactor run by hand, which
    must end with exactly the descriptors it started with.
    """

    def setUp(self):
        before = openDescriptors()
        # Cleanups run last first: this one after every connection closed.
        self.addCleanup(lambda: assertNoNewDescriptors(before))

    def connect(self, proto):
        """
        A L{DrivenConnection} for C{proto}, closed when the test ends.
        """
        connection = DrivenConnection(proto)
        self.addCleanup(connection.close)
        return connection
