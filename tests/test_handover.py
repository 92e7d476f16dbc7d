"""
Tests for L{pyamp_fds.handover}: listening ports handed from a server's
process to the one replacing it, and every way that can go wrong.

Most tests run both processes' sides in this one (each L{Handover} holds
its own descriptors, as two processes would); those where a process dies
run it for real (C{tests/children/handover.py}).
"""

import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile

from twisted.internet import defer, endpoints, error, protocol, reactor, task, utils
from twisted.web import resource, server

from pyamp_fds import AMP
from pyamp_fds.endpoints import UNIXClientEndpoint
from pyamp_fds.handover import (
    Drain,
    Handover,
    HandoverBusy,
    HandoverError,
    List,
    NotTaking,
    Ready,
    Take,
    UnknownPort,
)
from pyamp_fds.handover.ports import PortSpec, adoptSocket, giveUp, openSocket
from pyamp_fds.handover.web import DrainingHTTPChannel
from tests.reactorhelpers import ReactorTestCase, capturedEvents, settle
from tests.test_credentials import connectAs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class UDPEcho(protocol.DatagramProtocol):
    def datagramReceived(self, data, addr):
        self.transport.write(data, addr)


class Collect(protocol.Protocol):
    """
    A client that keeps what it receives; C{lost} fires when its connection
    ends, with the reason.
    """

    def __init__(self):
        self.data = b""
        self.lost = defer.Deferred()
        self._waiting = None

    def dataReceived(self, data):
        self.data += data
        if self._waiting is not None and len(self.data) >= self._waiting[0]:
            d, self._waiting = self._waiting[1], None
            d.callback(self.data)

    def expect(self, size):
        d = defer.Deferred()
        self._waiting = (size, d)
        self.dataReceived(b"")
        return d.addTimeout(5, reactor)

    def connectionLost(self, reason):
        self.lost.callback(reason.value)


@defer.inlineCallbacks
def echoOnce(endpoint, payload=b"hello"):
    """
    Connect, send C{payload}, read it back, disconnect.
    """
    client = yield endpoint.connect(protocol.Factory.forProtocol(Collect))
    client.transport.write(payload)
    data = yield client.expect(len(payload))
    client.transport.loseConnection()
    yield client.lost
    return data


@defer.inlineCallbacks
def udpEcho(port, payload=b"ping"):
    got = defer.Deferred()

    class Client(protocol.DatagramProtocol):
        def datagramReceived(self, data, addr):
            if not got.called:
                got.callback(data)

    listening = reactor.listenUDP(0, Client(), interface="127.0.0.1")
    try:
        listening.write(payload, ("127.0.0.1", port))
        data = yield got.addTimeout(5, reactor)
    finally:
        yield listening.stopListening()
    return data


class _HandoverTestCase(ReactorTestCase):
    def setUp(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        self.path = os.path.join(directory, "handover")
        self.unixPath = os.path.join(directory, "echo")
        self.endedBy = []
        return super().setUp()

    def handover(self, udp=True, **kwargs):
        """
        A L{Handover} at C{self.path} with echo ports named C{tcp}, C{unix}
        and C{udp}; drained when the test ends.
        """
        kwargs.setdefault("drainTimeout", 5)
        kwargs.setdefault("onDrained", lambda: self.endedBy.append(handover))
        handover = Handover(self.path, **kwargs)
        handover.listenTCP("tcp", 0, protocol.Factory.forProtocol(Echo), interface="127.0.0.1")
        handover.listenUNIX("unix", self.unixPath, protocol.Factory.forProtocol(Echo))
        if udp:
            handover.listenUDP("udp", 0, UDPEcho(), interface="127.0.0.1")
        self.addCleanup(self.stop, handover)
        return handover

    @defer.inlineCallbacks
    def stop(self, handover):
        yield handover.stopService()
        if not handover.previous.called:
            # Started and failed: nothing else to wait for.
            return
        yield handover.previous
        yield settle(0.01)

    def tcp(self, handover):
        return endpoints.TCP4ClientEndpoint(
            reactor, "127.0.0.1", handover.ports["tcp"].getHost().port
        )

    def unix(self):
        return endpoints.UNIXClientEndpoint(reactor, self.unixPath)

    @defer.inlineCallbacks
    def client(self):
        """
        A plain AMP connection to the handover socket, closed at the end.
        """
        proto = yield UNIXClientEndpoint(reactor, self.path).connect(
            protocol.Factory.forProtocol(AMP)
        )
        lost = defer.Deferred()
        original = proto.connectionLost
        proto.connectionLost = lambda reason: (original(reason), lost.callback(None))
        self.addCleanup(lambda: proto.transport and proto.transport.loseConnection() or lost)
        proto.lost = lost
        return proto

    @defer.inlineCallbacks
    def assertServes(self, handover, udp=True):
        self.assertEqual((yield echoOnce(self.tcp(handover), b"tcp")), b"tcp")
        self.assertEqual((yield echoOnce(self.unix(), b"unix")), b"unix")
        if udp:
            port = handover.ports["udp"].getHost().port
            self.assertEqual((yield udpEcho(port)), b"ping")


class HappyPathTests(_HandoverTestCase):
    """
    A server replaced by a new process, with connections open and coming
    in throughout.
    """

    @defer.inlineCallbacks
    def test_handOver(self):
        """
        The new process takes the TCP, UNIX and UDP ports, serves them, and
        the old one, told so, stops accepting, finishes the connection it
        had (which goes on working, not reset), and calls C{onDrained}.
        Connections made before, during and after the switch are all
        answered; the sockets are the same ones throughout.
        """
        old = self.handover()
        yield old.start()
        self.assertIsNone((yield old.previous))
        yield self.assertServes(old)
        tcpPort = old.ports["tcp"].getHost().port
        kept = yield self.tcp(old).connect(protocol.Factory.forProtocol(Collect))
        kept.transport.write(b"before")
        yield kept.expect(6)

        new = self.handover()
        during = [echoOnce(self.tcp(old), b"%d" % i) for i in range(20)]
        ports = yield new.start()
        during += [echoOnce(self.tcp(new), b"%d" % i) for i in range(20, 40)]
        self.assertEqual(old.state, "draining")
        self.assertEqual(ports["tcp"].getHost().port, tcpPort)
        answers = yield defer.gatherResults(during)
        self.assertEqual(answers, [b"%d" % i for i in range(40)])

        # The old process's connection is still its own, and works.
        kept.transport.write(b"after")
        self.assertEqual((yield kept.expect(11)), b"beforeafter")
        self.assertEqual(self.endedBy, [])
        kept.transport.loseConnection()
        self.assertIsInstance((yield kept.lost), error.ConnectionDone)
        yield old.drained
        yield new.previous
        self.assertEqual(self.endedBy, [old])
        self.assertEqual(old.state, "drained")

        yield self.assertServes(new)
        client = yield self.client()
        listed = yield client.callRemote(List)
        self.assertEqual(listed["state"], "serving")
        self.assertEqual(
            sorted((p["name"], p["kind"]) for p in listed["ports"]),
            [("tcp", "tcp"), ("udp", "udp"), ("unix", "unix")],
        )
        self.assertIn({"name": "tcp", "kind": "tcp", "family": socket.AF_INET,
                       "type": socket.SOCK_STREAM, "address": "127.0.0.1:%d" % tcpPort},
                      listed["ports"])

    @defer.inlineCallbacks
    def test_severalRestarts(self):
        """
        Each process in turn serves the handover socket for the next: four
        processes, one after the other, on the same ports, each draining
        when replaced.
        """
        first = self.handover()
        yield first.start()
        tcpPort = first.ports["tcp"].getHost().port
        processes = [first]
        for _ in range(3):
            new = self.handover()
            yield new.start()
            yield processes[-1].drained
            yield new.previous
            self.assertEqual(new.ports["tcp"].getHost().port, tcpPort)
            yield self.assertServes(new)
            processes.append(new)
        self.assertEqual(self.endedBy, processes[:-1])

    @defer.inlineCallbacks
    def test_noPreviousProcess(self):
        """
        With no process at the handover socket, not even a file, or a file
        left by one that ended without removing it, the ports are opened
        here: what a server started for the first time, or after a crash,
        does.
        """
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(self.path)
        stale.close()
        first = self.handover()
        yield first.start()
        yield self.assertServes(first)
        client = yield self.client()
        self.assertEqual((yield client.callRemote(List))["pid"], os.getpid())

    @defer.inlineCallbacks
    def test_portAddedOrDropped(self):
        """
        A new process's configuration may add a port (opened here) or drop
        one (the old process closes it, and removes a UNIX socket's file).
        """
        old = Handover(self.path, onDrained=lambda: None)
        old.listenUNIX("unix", self.unixPath, protocol.Factory.forProtocol(Echo))
        self.addCleanup(self.stop, old)
        yield old.start()
        new = Handover(self.path, onDrained=lambda: None)
        new.listenTCP("tcp", 0, protocol.Factory.forProtocol(Echo), interface="127.0.0.1")
        self.addCleanup(self.stop, new)
        yield new.start()
        yield old.drained
        self.assertFalse(os.path.exists(self.unixPath))
        self.assertEqual((yield echoOnce(self.tcp(new))), b"hello")

    @defer.inlineCallbacks
    def test_drain(self):
        """
        L{Drain} stops a process without a successor: its ports are closed,
        its handover socket's file removed, and C{onDrained} called.
        """
        old = self.handover()
        yield old.start()
        client = yield self.client()
        self.assertEqual((yield client.callRemote(Drain)), {"connections": 0})
        yield client.lost
        yield old.drained
        self.assertEqual(self.endedBy, [old])
        self.assertFalse(os.path.exists(self.path))
        self.assertFalse(os.path.exists(self.unixPath))

    @defer.inlineCallbacks
    def test_asService(self):
        """
        As a service (in a C{.tac} file under C{twistd}), a L{Handover}
        starts when its parent does, and stopping it drains: the ports are
        closed once the connections are done, without calling
        C{onDrained} (the process is stopping already).
        """
        first = self.handover()
        first.startService()
        yield settle(0.02)
        self.assertEqual(first.state, "serving")
        kept = yield self.tcp(first).connect(protocol.Factory.forProtocol(Collect))
        kept.transport.write(b"one")
        yield kept.expect(3)
        stopped = first.stopService()
        yield settle(0.05)
        self.assertFalse(stopped.called)
        kept.transport.write(b"two")
        self.assertEqual((yield kept.expect(6)), b"onetwo")
        kept.transport.loseConnection()
        yield stopped
        self.assertEqual(self.endedBy, [])
        self.assertFalse(os.path.exists(self.path))

    @defer.inlineCallbacks
    def test_commandLine(self):
        """
        C{python -m pyamp_fds.handover PATH list} prints what a server
        serves; C{drain} stops it.
        """
        old = self.handover(udp=False)
        yield old.start()
        run = lambda command: utils.getProcessOutputAndValue(
            sys.executable, ["-m", "pyamp_fds.handover", self.path, command],
            env=os.environ, path=ROOT)
        out, err, code = yield run("list")
        self.assertEqual((code, err), (0, b""))
        self.assertEqual(out.decode().splitlines(), [
            "pid %d serving" % (os.getpid(),),
            "tcp tcp 127.0.0.1:%d" % (old.ports["tcp"].getHost().port,),
            "unix unix %s" % (self.unixPath,),
        ])
        out, err, code = yield run("drain")
        self.assertEqual((code, out), (0, b"draining 0 connections\n"))
        yield old.drained
        self.assertEqual(self.endedBy, [old])

    @defer.inlineCallbacks
    def test_drainTimeout(self):
        """
        A connection still open when the drain timeout passes is closed.
        """
        old = self.handover(drainTimeout=0.1)
        yield old.start()
        kept = yield self.tcp(old).connect(protocol.Factory.forProtocol(Collect))
        new = self.handover()
        yield new.start()
        self.assertIsInstance((yield kept.lost), error.ConnectionDone)
        yield old.drained


class FailureTests(_HandoverTestCase):
    """
    The ways a handover can fail: each leaves every process with what it
    should have.
    """

    @defer.inlineCallbacks
    def test_unknownPort(self):
        """
        L{Take} of a name the process does not serve fails with
        L{UnknownPort}, naming it and the ports there are, and lends
        nothing.
        """
        old = self.handover()
        yield old.start()
        client = yield self.client()
        failure = yield self.assertFailure(
            client.callRemote(Take, names=["tcp", "nope"]), UnknownPort
        )
        self.assertIn("'nope'", str(failure))
        self.assertIn("tcp, udp, unix", str(failure))
        self.assertEqual(old.state, "serving")

    @defer.inlineCallbacks
    def test_twoAtOnce(self):
        """
        While one process takes over, another's L{Take} (and a L{Handover}
        starting) fails with L{HandoverBusy}, naming the first; L{Ready} from
        a connection that took nothing fails with L{NotTaking}.  Once the
        first has gone, the second may take over.
        """
        old = self.handover()
        yield old.start()
        first = yield self.client()
        answer = yield first.callRemote(Take, names=["tcp"])
        for fd in answer["descriptors"] + [answer["handover"]]:
            os.close(fd)
        second = yield self.client()
        failure = yield self.assertFailure(second.callRemote(Take, names=["tcp"]), HandoverBusy)
        self.assertIn("lending to pid %d" % (os.getpid(),), str(failure))
        yield self.assertFailure(second.callRemote(Ready), NotTaking)
        yield self.assertFailure(self.handover().start(), HandoverBusy)
        first.transport.loseConnection()
        yield first.lost
        yield settle(0.02)
        self.assertEqual(old.state, "serving")
        answer = yield second.callRemote(Take, names=["tcp"])
        for fd in answer["descriptors"] + [answer["handover"]]:
            os.close(fd)

    @defer.inlineCallbacks
    def test_newGoesBeforeReady(self):
        """
        A process that took the ports and goes without saying it is ready
        (its copies closed) leaves the old one serving, its sockets
        untouched, ready to lend them again.
        """
        old = self.handover()
        yield old.start()
        client = yield self.client()
        answer = yield client.callRemote(Take, names=["tcp", "unix", "udp"])
        for fd in answer["descriptors"] + [answer["handover"]]:
            os.close(fd)
        client.transport.loseConnection()
        yield client.lost
        yield settle(0.02)
        self.assertEqual(old.state, "serving")
        yield self.assertServes(old)
        new = self.handover()
        yield new.start()
        yield old.drained

    @defer.inlineCallbacks
    def test_newProcessDiesBeforeReady(self):
        """
        A real process that takes the ports and dies abruptly: the old one
        serves on, and connections queued meanwhile are answered.
        """
        old = Handover(self.path, onDrained=lambda: None)
        old.listenTCP("echo", 0, protocol.Factory.forProtocol(Echo), interface="127.0.0.1")
        self.addCleanup(self.stop, old)
        yield old.start()
        port = old.ports["echo"].getHost().port
        child = yield self.runChild("take-and-die")
        self.assertEqual((yield self.readLine(child)), "took 1")
        pending = echoOnce(endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        yield self.waitExit(child)
        self.assertEqual((yield pending), b"hello")
        yield settle(0.05)
        self.assertEqual(old.state, "serving")

    @defer.inlineCallbacks
    def test_oldProcessDiesMidHandover(self):
        """
        The old process (a real one) dies right after lending its ports: the
        new one keeps what it took, serves it, and serves the handover
        socket.
        """
        child = yield self.runChild("serve", "--die-after-take")
        port = int((yield self.readLine(child)).split()[1])
        events = capturedEvents(self)
        new = Handover(self.path, onDrained=lambda: None)
        new.listenTCP("echo", 0, protocol.Factory.forProtocol(Echo), interface="127.0.0.1")
        self.addCleanup(self.stop, new)
        yield new.start()
        yield self.waitExit(child)
        self.assertEqual(new.ports["echo"].getHost().port, port)
        self.assertEqual(
            (yield echoOnce(endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port))), b"hello"
        )
        self.assertTrue(any("went before it was told" in e.get("log_format", "") for e in events))
        client = yield self.client()
        self.assertEqual((yield client.callRemote(List))["pid"], os.getpid())

    @defer.inlineCallbacks
    def test_otherUserRefused(self):
        """
        A peer that is not on the handover socket's allow-list (by default,
        this process's user only) is refused before any command, and
        logged: a L{Handover} starting as that user fails with a
        L{HandoverError} that says why it may be.
        """
        events = capturedEvents(self)
        old = self.handover(allowedUIDs=[os.getuid() + 1])
        yield old.start()
        failure = yield self.assertFailure(self.handover().start(), HandoverError)
        self.assertIn("is this user allowed", str(failure))
        [refusal] = [e for e in events if e.get("credentials") is not None]
        self.assertEqual(refusal["credentials"].uid, os.getuid())
        self.assertEqual(old.state, "serving")

    @defer.inlineCallbacks
    def test_otherUserByDefault(self):
        """
        With no allow-list given, another user (C{nobody}, from a child
        that drops root) is refused even when the socket's mode lets it
        connect, and logged by its credentials.
        """
        if os.getuid() != 0:
            raise self.skipTest("only root can run a peer as another user")
        events = capturedEvents(self)
        old = self.handover(mode=0o666)
        yield old.start()
        os.chmod(os.path.dirname(self.path), 0o755)
        self.assertEqual((yield connectAs(65534, 65534, self.path)), "closed")
        [refusal] = [e for e in events if e.get("credentials") is not None]
        self.assertEqual(refusal["credentials"][1:], (65534, 65534))

    @defer.inlineCallbacks
    def runChild(self, *arguments):
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.children.handover", self.path] + list(arguments),
            cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )
        self.addCleanup(self.waitExit, child)
        yield None
        return child

    @defer.inlineCallbacks
    def readLine(self, child, timeout=20):
        for _ in range(int(timeout / 0.02)):
            if select.select([child.stdout], [], [], 0)[0]:
                return child.stdout.readline().decode().strip()
            yield task.deferLater(reactor, 0.02, lambda: None)
        raise AssertionError("the child said nothing")

    @defer.inlineCallbacks
    def waitExit(self, child):
        for _ in range(500):
            if child.poll() is not None:
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        else:
            child.kill()
            child.wait()
        child.stdout.close()


class SharedSocketTests(ReactorTestCase):
    """
    What a process that handed a socket over does with its own copy.
    """

    @defer.inlineCallbacks
    def test_givenUpKeepsListening(self):
        """
        A TCP or UNIX port given up as handed over closes this process's
        descriptor only: the other copy still accepts connections, and the
        UNIX socket's file stays.  (A Twisted port stopped the usual way
        shuts the socket down, which would refuse them.)
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        for spec in [
            PortSpec("t", "tcp", ("127.0.0.1", 0), protocol.Factory.forProtocol(Echo)),
            PortSpec("u", "unix", os.path.join(directory, "s"), protocol.Factory.forProtocol(Echo)),
        ]:
            skt = openSocket(spec)
            other = skt.dup()
            port = adoptSocket(reactor, spec, skt)
            yield giveUp(port, handedOver=True)
            address = other.getsockname()
            with socket.socket(other.family) as c:
                c.connect(address)
                accepted, _ = other.accept()
                accepted.close()
            if spec.kind == "unix":
                self.assertTrue(os.path.exists(address))
            other.close()


class Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello"


class DrainingHTTPChannelTests(ReactorTestCase):
    """
    L{DrainingHTTPChannel} closes keep-alive connections at the end of a
    response that says so.
    """

    @defer.inlineCallbacks
    def test_nextResponseCloses(self):
        """
        After C{drain()}, the next response on a keep-alive connection says
        C{Connection: close}, and the connection is closed after it; an idle
        one is closed after C{idleGrace}.
        """
        site = server.Site(Hello())
        site.protocol = DrainingHTTPChannel
        built = []
        buildProtocol = site.buildProtocol
        site.buildProtocol = lambda addr: built.append(buildProtocol(addr)) or built[-1]
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        busy = yield endpoint.connect(protocol.Factory.forProtocol(Collect))
        idle = yield endpoint.connect(protocol.Factory.forProtocol(Collect))
        busy.transport.write(request)
        first = yield busy.expect(1)
        yield settle(0.01)
        self.assertNotIn(b"close", first.lower())
        for channel in built:
            channel.idleGrace = 0.2
            channel.drain()
        busy.transport.write(request)
        yield busy.lost
        self.assertIn(b"Connection: close", busy.data[len(first):])
        self.assertTrue(busy.data.endswith(b"hello"))
        yield idle.lost
        self.assertEqual(idle.data, b"")
