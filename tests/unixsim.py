"""
In-memory UNIX stream connections for tests of protocol logic: Twisted's
L{twisted.test.iosim} transports, carrying descriptors as the kernel does.

L{FakeUNIXTransport} is Twisted's own UNIX transport as its protocol sees it
(an C{IUNIXTransport}); L{FakeBatchingTransport} is pyamp_fds's (an
L{IBatchingTransport}): descriptors queued, boxes encoded by write hooks
when the transport gets round to writing.  Either end may be either kind,
and L{connect} joins two protocols with an L{iosim.IOPump} that moves bytes
and descriptors when pumped, on its own L{task.Clock}.

Descriptors travel with the bytes written after they were queued, each pump
delivering them to the receiving protocol before those bytes: in one batch
to an L{IFileDescriptorsReceiver} over a batching transport, one by one as
Twisted's transport hands them over otherwise, closed if the protocol takes
none.  Descriptors still in flight when the connection is lost are closed,
as the kernel closes those of a socket that goes.
"""

import inspect
import os

from twisted.internet import defer, protocol
from twisted.internet.address import UNIXAddress
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IFileDescriptorReceiver, IUNIXTransport
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

import pyamp_fds
from pyamp_fds.errors import DescriptorProtocolError
from pyamp_fds.fdio import close_all
from pyamp_fds.interfaces import IBatchingTransport, IFileDescriptorsReceiver
from pyamp_fds.outgoing import Ownership
from tests.fdcheck import assertNoNewDescriptors, openDescriptors


def _fileno(descriptor):
    return descriptor if isinstance(descriptor, int) else descriptor.fileno()


class Chunk(bytes):
    """
    Bytes moved by one pump, with the descriptors that travel with them.

    @ivar descriptors: descriptors this process holds for the receiver.
    """

    descriptors = ()


@implementer(IUNIXTransport)
class FakeUNIXTransport(iosim.FakeTransport):
    """
    Twisted's own UNIX transport, as a protocol sees it: it takes the
    caller's descriptor number, which the caller keeps open until the next
    write; the kernel's reference (here a duplicate) is taken then.

    @ivar inFlight: duplicates sent and not yet delivered, in order.
    """

    def __init__(self, protocol, isServer):
        iosim.FakeTransport.__init__(
            self, protocol, isServer, UNIXAddress(None), UNIXAddress(None)
        )
        self._notYetSent = []
        self.inFlight = []

    def sendFileDescriptor(self, descriptor):
        self._notYetSent.append(_fileno(descriptor))

    def write(self, data):
        if self.disconnecting:
            return
        if data and self._notYetSent:
            # Twisted's rule: descriptors go with the next byte written.
            for fd in self._notYetSent:
                self.inFlight.append(os.dup(fd))
            self._notYetSent = []
        iosim.FakeTransport.write(self, data)

    def getOutBuffer(self):
        data = iosim.FakeTransport.getOutBuffer(self)
        if data is None or not self.inFlight or not isinstance(data, bytes):
            return data
        chunk = Chunk(data)
        chunk.descriptors, self.inFlight = self.inFlight, []
        return chunk

    def bufferReceived(self, buf):
        descriptors = getattr(buf, "descriptors", ())
        if descriptors:
            self.descriptorsReceived(list(descriptors))
        if isinstance(buf, Chunk):
            buf = bytes(buf)
        iosim.FakeTransport.bufferReceived(self, buf)

    def descriptorsReceived(self, descriptors):
        """
        Hand descriptors that arrived to the protocol, one by one as
        Twisted's transport does, or close them if it takes none.
        """
        if IFileDescriptorReceiver.providedBy(self.protocol):
            for fd in descriptors:
                self.protocol.fileDescriptorReceived(fd)
        else:
            close_all(descriptors)

    def reportDisconnect(self):
        self.dropInFlight()
        iosim.FakeTransport.reportDisconnect(self)

    def dropInFlight(self):
        """
        Close what this end had sent that never arrived.
        """
        inFlight, self.inFlight = self.inFlight, []
        close_all(inFlight)


@implementer(IBatchingTransport)
class FakeBatchingTransport(FakeUNIXTransport):
    """
    A pyamp_fds transport, as a protocol sees it: descriptors queued (a
    duplicate, the descriptor itself when handed over, or the caller's own
    when lent), write hooks run before bytes are written and when the
    transport writes (each pump), and on C{loseConnection}.
    """

    sendmsgCalls = recvmsgCalls = 0

    def __init__(self, protocol, isServer):
        FakeUNIXTransport.__init__(self, protocol, isServer)
        # (descriptor, Ownership), in order.
        self._queue = []
        self._hooks = []

    @property
    def queuedDescriptors(self):
        """
        The descriptors queued and not yet sent, in order (a copy).
        """
        return [fd for fd, _ in self._queue]

    def sendFileDescriptor(self, descriptor, transfer=False):
        if self.disconnecting:
            raise ConnectionLost()
        fd = _fileno(descriptor)
        if transfer:
            self._queue.append((fd, Ownership.HANDED_OVER))
        else:
            self._queue.append((os.dup(fd), Ownership.DUPLICATE))

    def sendFileDescriptors(self, descriptors, ownership=Ownership.DUPLICATE):
        if self.disconnecting:
            raise ConnectionLost()
        # As the real transport does: the boxes already sent go first.
        self._runHooks()
        for fd in descriptors:
            if ownership is Ownership.DUPLICATE:
                fd = os.dup(fd)
            self._queue.append((fd, ownership))

    def descriptorMark(self):
        return len(self._queue)

    def withdrawDescriptors(self, mark):
        withdrawn, self._queue[mark:] = self._queue[mark:], []
        # Handed-over and lent descriptors are the caller's again.
        close_all([fd for fd, ownership in withdrawn if ownership is Ownership.DUPLICATE])

    def addWriteHook(self, hook):
        self._hooks.append(hook)

    def flushNow(self):
        self._runHooks()

    def _runHooks(self):
        hooks, self._hooks = self._hooks, []
        for hook in hooks:
            data = hook()
            if data:
                self._writeBytes(data)

    def write(self, data):
        self._runHooks()
        self._writeBytes(data)

    def _writeBytes(self, data):
        if self.disconnecting or not data:
            return
        for fd, ownership in self._queue:
            # Queued before these bytes: they go with them; the kernel
            # takes its own reference to a lent one.
            self.inFlight.append(os.dup(fd) if ownership is Ownership.LENT else fd)
        self._queue = []
        iosim.FakeTransport.write(self, data)

    def writeSequence(self, iovec):
        self.write(b"".join(iovec))

    def getOutBuffer(self):
        self._runHooks()
        return FakeUNIXTransport.getOutBuffer(self)

    def loseConnection(self):
        self._runHooks()
        FakeUNIXTransport.loseConnection(self)

    abortConnection = loseConnection

    def descriptorsReceived(self, descriptors):
        if IFileDescriptorsReceiver.providedBy(self.protocol):
            self.protocol.fileDescriptorsReceived(descriptors)
        else:
            FakeUNIXTransport.descriptorsReceived(self, descriptors)

    def dropInFlight(self):
        queue, self._queue = self._queue, []
        close_all([fd for fd, ownership in queue if ownership is not Ownership.LENT])
        FakeUNIXTransport.dropInFlight(self)


def connect(server, client, serverBatching=True, clientBatching=True, clock=None):
    """
    Connect two protocols in memory, each over a fake UNIX transport of the
    kind asked for.

    @return: an L{iosim.IOPump}, already flushed once; where Twisted's pump
        advances a clock as it flushes (newer releases than 23.8), its C{clock}
        is the L{task.Clock} it advances.
    """
    serverType = FakeBatchingTransport if serverBatching else FakeUNIXTransport
    clientType = FakeBatchingTransport if clientBatching else FakeUNIXTransport
    for proto, batching in ((server, serverBatching), (client, clientBatching)):
        if not batching:
            # Twisted's kind of transport cannot report dropped descriptors;
            # a pyamp_fds protocol refuses descriptors over it unless told to
            # accept that, which these tests do on purpose.
            proto.allowUncheckedDescriptors = True
    options = {}
    if "clock" in inspect.signature(iosim.connect).parameters:
        options["clock"] = Clock() if clock is None else clock
    return iosim.connect(
        server,
        serverType(server, isServer=True),
        client,
        clientType(client, isServer=False),
        **options,
    )


class RawPeer(protocol.Protocol):
    """
    The far end of a connection, played by the test: it writes raw bytes
    and descriptors, and keeps what it received.

    @ivar received: every byte received.
    """

    def __init__(self):
        self.received = b""

    def send(self, data, descriptors=()):
        """
        Write C{data} with C{descriptors} (ours stay ours), as one write.
        """
        for fd in descriptors:
            self.transport.sendFileDescriptor(fd)
        self.transport.write(data)

    def dataReceived(self, data):
        self.received += data


def connectRaw(proto, batching=True):
    """
    Connect C{proto} to a L{RawPeer}, over a batching transport unless
    C{batching} is false (the peer's is Twisted's kind).

    @return: the peer and the L{iosim.IOPump}.
    """
    peer = RawPeer()
    pump = connect(proto, peer, serverBatching=batching, clientBatching=False)
    return peer, pump


def watchLost(proto):
    """
    Return a list that gets the exception that ended C{proto}'s connection,
    once it is lost.
    """
    lost = []
    original = proto.connectionLost

    def connectionLost(reason):
        original(reason)
        lost.append(reason.value)

    proto.connectionLost = connectionLost
    return lost


class FakeConnectionTestCase(SynchronousTestCase):
    """
    A test of protocol logic over in-memory connections, which must end
    with exactly the descriptors it started with, every connection it made
    closed.
    """

    def setUp(self):
        before = openDescriptors()
        # Cleanups run last first: this one after every disconnect.
        self.addCleanup(lambda: assertNoNewDescriptors(before))

    def connect(self, server, client, serverBatching=True, clientBatching=True):
        """
        L{connect}, both ends disconnected when the test ends.
        """
        pump = connect(server, client, serverBatching, clientBatching)
        self.addCleanup(self._disconnect, pump)
        return pump

    def connectRaw(self, proto, batching=True):
        """
        L{connectRaw}, disconnected when the test ends.
        """
        peer, pump = connectRaw(proto, batching)
        self.addCleanup(self._disconnect, pump)
        return peer, pump

    def caught(self, d):
        """
        Handle C{d}'s outcome from now on, as a caller's errback would
        before the answer arrives: AMP drops the connection over an error
        answer that reaches it unhandled.  Once pumped, check the outcome
        on the L{Deferred} returned (C{failureResultOf}, C{successResultOf}).
        """
        outcome = defer.Deferred()

        def handled(result):
            if isinstance(result, Failure):
                outcome.errback(result)
            else:
                outcome.callback(result)

        d.addBoth(handled)
        return outcome

    def _disconnect(self, pump):
        pump.clientIO.loseConnection()
        pump.flush()


class _Waiting(amp.Command):
    arguments = [(b"text", amp.Unicode())]
    response = []


class BadPeerMixin:
    """
    For a L{FakeConnectionTestCase} whose tests play a peer that breaks the
    rules.

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

    def assertProtocolError(self, errorType, send, proto=None, taken=0):
        """
        After C{send(peer)}, the connection is lost, a call that was waiting
        fails with C{errorType}, no descriptor is held, and C{taken} boxes
        (none by default) reached a responder.
        """
        proto = proto or self.responderClass()
        peer, pump = self.connectRaw(proto)
        lost = watchLost(proto)
        waiting = proto.callRemote(_Waiting, text="waiting")
        send(peer)
        pump.flush()
        self.assertTrue(lost, "the connection is still open")
        self.failureResultOf(waiting, errorType)
        self.assertEqual(proto.receivedDescriptors.unclaimed, 0)
        self.assertEqual(proto.receivedDescriptors.claimedByBox, 0)
        self.assertEqual(len(proto.taken), taken)
        # Twisted's responder path logs the responder's failure too.
        self.flushLoggedErrors(DescriptorProtocolError)
