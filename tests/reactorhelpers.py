"""
Real sockets on the real reactor, for tests of the Twisted layer.
"""

import contextlib
import socket

from twisted.internet import defer, protocol, reactor, task, tcp
from twisted.logger import capturedLogs
from twisted.protocols import amp
from twisted.trial import unittest

from pyamp_fds.endpoints import adoptStreamConnection
import pyamp_fds
from pyamp_fds.errors import DescriptorProtocolError
from tests.fdcheck import assertNoNewDescriptors, openDescriptors


def capturedEvents(testCase):
    """
    The events logged from now until C{testCase} ends, in a list that
    grows as they are (Twisted's L{twisted.logger.capturedLogs}).
    """
    stack = contextlib.ExitStack()
    events = stack.enter_context(capturedLogs())
    testCase.addCleanup(stack.close)
    return events


def settle(seconds=0.05):
    """
    Let the reactor run for a moment.
    """
    return task.deferLater(reactor, seconds, lambda: None)


def watchLost(proto):
    """
    Return a L{Deferred} that fires with the exception that ended C{proto}'s
    connection, once it is lost.
    """
    lost = defer.Deferred()
    original = proto.connectionLost

    def connectionLost(reason):
        original(reason)
        if not lost.called:
            lost.callback(reason.value)

    proto.connectionLost = connectionLost
    return lost


def adopt(sock, proto, fast=True):
    """
    Run C{proto} over the connected socket C{sock} (which is then closed:
    the transport has its own duplicate).
    """
    factory = protocol.Factory()
    factory.buildProtocol = lambda addr: proto
    if not fast:
        # Over Twisted's own transport a pyamp_fds protocol refuses
        # descriptors unless told to accept that drops go unnoticed: these
        # tests use that transport on purpose.
        proto.allowUncheckedDescriptors = True
    if fast:
        adoptStreamConnection(reactor, sock.fileno(), factory)
    else:
        sock.setblocking(False)
        reactor.adoptStreamConnection(sock.fileno(), socket.AF_UNIX, factory)
    sock.close()
    return proto


class ReactorTestCase(unittest.TestCase):
    """
    A test on the real reactor that must end with exactly the descriptors it
    started with, every connection it made closed.
    """

    @defer.inlineCallbacks
    def setUp(self):
        # The reactor makes its own descriptors when it first runs (its
        # waker) and when it first listens (a spare kept for accept() at
        # EMFILE): both live as long as the process, so make them first.
        yield settle(0)
        tcp._reservedFD.reserve()
        before = openDescriptors()
        self._lost = []

        def check():
            # Both ends' connectionLost must have run before counting.
            d = defer.DeferredList(self._lost, consumeErrors=True)
            d.addCallback(lambda _: settle(0.01))
            d.addCallback(lambda _: assertNoNewDescriptors(before))
            return d

        self.addCleanup(check)

    def connect(self, serverProto, clientProto, serverFast=True, clientFast=True):
        """
        Connect two protocols over a socketpair; both are disconnected when
        the test ends.
        """
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for proto in (serverProto, clientProto):
            self._lost.append(watchLost(proto))
        adopt(a, serverProto, serverFast)
        adopt(b, clientProto, clientFast)
        self.addCleanup(self._disconnect, serverProto, clientProto)
        return serverProto, clientProto

    def rawPeer(self, proto, fast=True):
        """
        Connect C{proto} to a plain socket the test writes to directly.
        """
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._lost.append(watchLost(proto))
        adopt(a, proto, fast)
        self.addCleanup(self._disconnect, proto)
        self.addCleanup(b.close)
        return b

    def _disconnect(self, *protos):
        for proto in protos:
            if proto.transport is not None:
                proto.transport.loseConnection()
        return settle(0.01)


class _Waiting(amp.Command):
    arguments = [(b"text", amp.Unicode())]
    response = []


class BadPeerMixin:
    """
    For a L{ReactorTestCase} whose tests play a peer that breaks the rules
    on a plain socket.

    @ivar responderClass: the protocol under test, by default: a
        L{pyamp_fds.AMP} with a C{taken} list of what its responders took.
    """

    responderClass = None

    def box(self, **fields):
        """
        An encoded box of these fields (values as bytes, or anything whose
        C{str} is the value).
        """
        return pyamp_fds.encode_box(
            {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}
        )

    @defer.inlineCallbacks
    def assertProtocolError(self, errorType, send, proto=None, taken=0):
        """
        After C{send(peer)}, the connection is lost, a call that was waiting
        fails with C{errorType}, no descriptor is held, and C{taken} boxes
        (none by default) reached a responder.
        """
        proto = proto or self.responderClass()
        peer = self.rawPeer(proto)
        lost = watchLost(proto)
        waiting = proto.callRemote(_Waiting, text="waiting")
        send(peer)
        yield lost
        yield self.assertFailure(waiting, errorType)
        self.assertEqual(proto.receivedDescriptors.unclaimed, 0)
        self.assertEqual(proto.receivedDescriptors.claimedByBox, 0)
        self.assertEqual(len(proto.taken), taken)
        # Twisted's responder path logs the responder's failure too.
        self.flushLoggedErrors(DescriptorProtocolError)
