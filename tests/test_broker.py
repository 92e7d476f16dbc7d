"""
Tests for L{pyamp_fds.examples.broker}, and for the two servers the broker
benchmark runs: L{benchmarks.broker_tuned} (the example with a faster
acceptor and HTTP server, and connections shared out by load) and
L{benchmarks.reuseport} (its C{SO_REUSEPORT} baseline).  Each is run as its
users run it, in its own processes on a free port of 127.0.0.1, loaded with
requests, losing a worker, and stopped with SIGTERM; every process must end
with the descriptors it started with.
"""

import errno
import http.client
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

import pytest
from twisted.internet.testing import MemoryReactor

from benchmarks.broker_tuned import keepsAlive, makeResponses
from pyamp_fds.examples.broker import Broker, Serve, WorkerChannel
from tests.fdcheck import assertNoNewDescriptors, openDescriptors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 15

BODY = re.compile(rb"Hello from worker (\d+)\n")


class Server:
    """
    A broker (or the baseline), run with C{python -m module}, in a child
    process, with its status lines.
    """

    def __init__(self, module, *arguments):
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "--port", "0", "--report-fds"] + list(arguments),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        self.lines = []
        self._pending = b""
        self.port = int(self.waitFor("listening")[3].rpartition(":")[2])

    def waitFor(self, event, role=None, pid=None, after=0):
        """
        Read status lines until one (from line C{after} on) reports C{event}.

        @return: that line's words.
        """
        deadline = time.monotonic() + TIMEOUT
        index = after
        while True:
            for index in range(index, len(self.lines)):
                words = self.lines[index]
                if (
                    words[2:3] == [event]
                    and role in (None, words[0])
                    and pid in (None, int(words[1]))
                ):
                    return words
            index = len(self.lines)
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.process.stdout], [], [], left)[0]:
                raise AssertionError("no %r line within %ds: %r" % (event, TIMEOUT, self.lines))
            if not self._read():
                raise AssertionError(
                    "the server exited before any %r line: %r" % (event, self.lines)
                )

    def _read(self):
        data = os.read(self.process.stdout.fileno(), 65536)
        self._pending += data
        *complete, self._pending = self._pending.split(b"\n")
        self.lines.extend(line.decode().split() for line in complete)
        return bool(data)

    def readyWorkers(self):
        return [int(words[1]) for words in self.lines if words[2:3] == ["ready"]]

    def waitForWorkers(self, count):
        while len(self.readyWorkers()) < count:
            self.waitFor("ready", after=len(self.lines))
        return self.readyWorkers()

    def stop(self):
        """
        SIGTERM the server and read everything it says until it exits.

        @return: its exit status.
        """
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if select.select([self.process.stdout], [], [], deadline - time.monotonic())[0]:
                if not self._read():
                    break
        status = self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        self.process.stdout.close()
        return status

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()

    def descriptorReports(self):
        """
        C{{pid: {"start": [...], "end": [...]}}} from the C{--report-fds} lines.
        """
        reports = {}
        for words in self.lines:
            if words[2:3] == ["fds"]:
                listed = words[4] if len(words) > 4 else ""
                reports.setdefault(int(words[1]), {})[words[3]] = listed
        return reports


def requestOnNewConnection(port):
    """
    One request asking the server to close the connection after it.

    @return: the status line, headers and body, once the server has closed
        the connection.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


def servedBy(body):
    """
    The worker that answered with C{body}.
    """
    match = BODY.fullmatch(body)
    assert match is not None, body
    return int(match.group(1))


def checkClosingResponse(port):
    """
    Make a request on a new connection, check its answer, and return the
    worker that gave it.
    """
    lines, body = requestOnNewConnection(port)
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert b"Connection: close" in lines
    assert b"Content-Length: %d" % (len(body),) in lines
    return servedBy(body)


def openDescriptorsOf(pid):
    return len(os.listdir("/proc/%d/fd" % (pid,)))


def gone(pid):
    deadline = time.monotonic() + TIMEOUT
    while os.path.exists("/proc/%d" % (pid,)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class KeepsAliveTests(unittest.TestCase):
    """
    Tests for L{benchmarks.broker_tuned.keepsAlive}: when a connection stays
    open after a request.
    """

    def test_http11(self):
        """
        HTTP/1.1 keeps the connection unless the client says it closes.
        """
        assert keepsAlive(b"GET / HTTP/1.1\r\nHost: x")
        assert not keepsAlive(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close")
        assert not keepsAlive(b"GET / HTTP/1.1\r\nconnection:  Upgrade, CLOSE ")

    def test_http10(self):
        """
        HTTP/1.0 closes the connection unless the client asks to keep it.
        """
        assert not keepsAlive(b"GET / HTTP/1.0\r\nHost: x")
        assert keepsAlive(b"GET / HTTP/1.0\r\nConnection: Keep-Alive")

    def test_body(self):
        """
        A request with a body is answered with the connection closing: the
        server reads no bodies, and must not take one for a request.
        """
        assert not keepsAlive(b"POST / HTTP/1.1\r\nContent-Length: 5")
        assert not keepsAlive(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked")
        assert keepsAlive(b"POST / HTTP/1.1\r\nContent-Length: 0")

    def test_responses(self):
        """
        Both responses carry the body with its length; the closing one says
        so.
        """
        keepAlive, closing = makeResponses(b"hello\n")
        assert keepAlive == (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nhello\n"
        )
        assert closing == (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n"
            b"Connection: close\r\n\r\nhello\n"
        )


class RecordingChannel:
    """
    Stands for the broker's end of a worker's channel: records the commands
    sent on it.
    """

    def __init__(self):
        self.sent = []

    def callRemote(self, command, **arguments):
        self.sent.append((command, arguments))


class HandOverTests(unittest.TestCase):
    """
    Tests for L{Broker.handOver}: how the example broker shares accepted
    connections out among its workers.
    """

    def setUp(self):
        before = openDescriptors()
        self.addCleanup(assertNoNewDescriptors, before)
        listener = socket.socket()
        self.addCleanup(listener.close)
        self.broker = Broker(MemoryReactor(), 2, listener)

    def test_inTurn(self):
        """
        The connections accepted in one turn go to the workers in turn, each
        worker's share in one L{Serve} command.
        """
        first, second = self.broker.channels = [RecordingChannel(), RecordingChannel()]
        self.broker.handOver([10, 11, 12])
        self.broker.handOver([13])
        assert second.sent == [(Serve, {"connections": [10, 12]})]
        assert first.sent == [(Serve, {"connections": [11]}), (Serve, {"connections": [13]})]

    def test_noWorker(self):
        """
        While no worker is there to take them (all restarting), the
        connections are closed at once: the broker keeps none.
        """
        before = openDescriptors()
        pairs = [socket.socketpair() for _ in range(3)]
        fds = [ours.detach() for ours, _ in pairs]
        peers = [peer for _, peer in pairs]
        for peer in peers:
            self.addCleanup(peer.close)
            peer.settimeout(TIMEOUT)
        self.broker.handOver(fds)
        assert set(openDescriptors()) == set(before) | {peer.fileno() for peer in peers}
        for peer in peers:
            assert peer.recv(1) == b""


class AdoptingReactor(MemoryReactor):
    """
    Records the connections adopted, whether each was non-blocking then,
    and fails to adopt those in C{gone}, as when the client has reset the
    connection already.
    """

    def __init__(self, gone=()):
        MemoryReactor.__init__(self)
        self.gone = gone
        self.blocking = []

    def adoptStreamConnection(self, fileDescriptor, addressFamily, factory):
        if fileDescriptor in self.gone:
            raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))
        self.blocking.append(os.get_blocking(fileDescriptor))
        MemoryReactor.adoptStreamConnection(self, fileDescriptor, addressFamily, factory)


class WorkerChannelTests(unittest.TestCase):
    """
    Tests for L{WorkerChannel.serve}: a worker taking the connections the
    example broker hands it.
    """

    def setUp(self):
        before = openDescriptors()
        self.addCleanup(assertNoNewDescriptors, before)
        pairs = [socket.socketpair() for _ in range(3)]
        self.peers = [peer for _, peer in pairs]
        for peer in self.peers:
            self.addCleanup(peer.close)
        self.fds = [ours.detach() for ours, _ in pairs]

    def assertAllClosed(self):
        for fd in self.fds:
            with pytest.raises(OSError) as raised:
                os.fstat(fd)
            assert raised.value.errno == errno.EBADF

    def test_adopts(self):
        """
        Every connection is adopted, non-blocking, as a TCP connection served
        by the worker's site, and the descriptor handed over is closed: the
        transport has its own.
        """
        reactor = AdoptingReactor()
        channel = WorkerChannel(reactor)
        assert channel.serve(connections=list(self.fds)) == {}
        assert reactor.adoptedStreamConnections == [
            (fd, socket.AF_INET, channel.site) for fd in self.fds
        ]
        assert reactor.blocking == [False] * len(self.fds)
        self.assertAllClosed()

    def test_clientGone(self):
        """
        A connection whose client has gone before the worker adopts it is
        closed, and the others are served all the same.
        """
        first, gone, last = self.fds
        reactor = AdoptingReactor(gone={gone})
        channel = WorkerChannel(reactor)
        assert channel.serve(connections=list(self.fds)) == {}
        assert [fd for fd, _, _ in reactor.adoptedStreamConnections] == [first, last]
        self.assertAllClosed()


class ServerTestsMixin:
    """
    Servers in their own processes, for a L{unittest.TestCase}: this process
    must end each test with the descriptors it started it with.

    @ivar module: the server's module, run with C{python -m}.
    """

    module = None

    def setUp(self):
        before = openDescriptors()
        self.addCleanup(assertNoNewDescriptors, before)

    def server(self, *arguments):
        """
        Start the server with C{arguments}; it is killed when the test ends
        if the test has not stopped it.
        """
        started = Server(self.module, *arguments)

        def cleanUp():
            if not started.process.stdout.closed:
                started.kill()

        self.addCleanup(cleanUp)
        return started


class BrokerTestsMixin(ServerTestsMixin):
    """
    A broker and its workers, in their own processes.
    """

    def checkClosingLast(self, received):
        """
        Check that the last of the responses C{received} on one connection
        announced that the connection was closing.
        """
        last = received[received.rindex(b"HTTP/1.1 200 OK\r\n"):]
        head, _, body = last.partition(b"\r\n\r\n")
        assert b"Connection: close" in head.split(b"\r\n")
        assert b"Content-Length: %d" % (len(body),) in head.split(b"\r\n")
        servedBy(body)

    def test_serveLoseAWorkerAndStop(self):
        """
        The broker serves requests on new and kept-alive connections through
        both workers without holding any connection itself; when a worker is
        killed, requests go to the other and to a replacement; on SIGTERM it
        stops accepting, stops its workers and exits 0, and every process
        ends with the descriptors it started with.
        """
        broker = self.server("--workers", "2")
        first, second = workers = broker.waitForWorkers(2)
        brokerPid = broker.process.pid
        atRest = openDescriptorsOf(brokerPid)

        served = [checkClosingResponse(broker.port) for _ in range(100)]
        assert set(served) == set(workers)

        connections = [http.client.HTTPConnection("127.0.0.1", broker.port, timeout=TIMEOUT)
                       for _ in range(4)]
        try:
            for _ in range(25):
                for connection in connections:
                    connection.request("GET", "/")
                    response = connection.getresponse()
                    assert response.status == 200
                    assert response.getheader("Connection") is None
                    served.append(servedBy(response.read()))
        finally:
            for connection in connections:
                connection.close()
        assert len(served) == 200
        assert set(served) == set(workers)

        # Pipelined requests on one connection, twice as many answers as the
        # largest send buffer holds, sent before the client reads any, so
        # that the worker must wait for writability and stop reading for a
        # while; the last request asks for the connection to be closed.
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            largestSendBuffer = int(f.read().split()[2])
        count = 2 * largestSendBuffer // len(makeResponses(b"Hello from worker 1\n")[0])
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(TIMEOUT)
            sock.connect(("127.0.0.1", broker.port))
            requests = b"GET / HTTP/1.1\r\n\r\n" * count
            sender = threading.Thread(
                target=sock.sendall,
                args=(requests + b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",),
            )
            sender.start()
            time.sleep(0.2)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            sender.join()
        received = b"".join(chunks)
        assert received.count(b"HTTP/1.1 200 OK\r\n") == count + 1
        self.checkClosingLast(received)

        # Every connection was handed over: the broker holds none of them.
        deadline = time.monotonic() + TIMEOUT
        while openDescriptorsOf(brokerPid) != atRest and time.monotonic() < deadline:
            time.sleep(0.01)
        assert openDescriptorsOf(brokerPid) == atRest

        # Connections open on each worker when the first is killed: its own
        # go with it, the other's are untouched.
        held = {}
        self.addCleanup(lambda: [c.close() for cs in held.values() for c in cs])
        for _ in range(10):
            connection = http.client.HTTPConnection("127.0.0.1", broker.port, timeout=TIMEOUT)
            connection.request("GET", "/")
            held.setdefault(servedBy(connection.getresponse().read()), []).append(connection)
            if set(held) == set(workers):
                break
        assert set(held) == set(workers)

        os.kill(first, signal.SIGKILL)
        lost = broker.waitFor("lost-worker", role="broker")
        assert int(lost[3]) == first
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            held[first][0].request("GET", "/")
            held[first][0].getresponse()
        held[second][0].request("GET", "/")
        assert servedBy(held[second][0].getresponse().read()) == second
        for connection in held[first] + held[second]:
            connection.close()
        for _ in range(30):
            checkClosingResponse(broker.port)

        replacement = broker.waitForWorkers(3)[2]
        assert replacement not in workers
        served = [checkClosingResponse(broker.port) for _ in range(30)]
        assert set(served) == {second, replacement}

        assert broker.stop() == 0
        assert broker.waitFor("stopped", role="broker")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", broker.port), timeout=TIMEOUT).close()

        reports = broker.descriptorReports()
        assert set(reports) == {brokerPid, second, replacement}
        for pid, report in reports.items():
            assert report["start"] == report["end"], (pid, report)
        for pid in (second, replacement):
            assert gone(pid)



class ExampleBrokerTests(BrokerTestsMixin, unittest.TestCase):
    """
    The example broker, L{pyamp_fds.examples.broker}: its workers answer
    through C{twisted.web}.
    """

    module = "pyamp_fds.examples.broker"


class TunedBrokerTests(BrokerTestsMixin, unittest.TestCase):
    """
    The broker the benchmark runs, L{benchmarks.broker_tuned}: its workers
    answer with L{benchmarks.broker_tuned.HTTPConnection}, whose responses
    are exactly L{makeResponses}'s.
    """

    module = "benchmarks.broker_tuned"

    def checkClosingLast(self, received):
        BrokerTestsMixin.checkClosingLast(self, received)
        assert received.endswith(b"Connection: close\r\n\r\n" + BODY.search(received).group(0))


class ReusePortTests(ServerTestsMixin, unittest.TestCase):
    """
    The benchmark's baseline, L{benchmarks.reuseport}: no broker.
    """

    module = "benchmarks.reuseport"

    def test_baseline(self):
        """
        The workers share the port with C{SO_REUSEPORT} and serve the same
        responses as the tuned broker's; SIGTERM stops them all, cleanly.
        """
        baseline = self.server("--workers", "2")
        workers = baseline.waitForWorkers(2)
        served = [checkClosingResponse(baseline.port) for _ in range(40)]
        assert set(served) <= set(workers)

        connection = http.client.HTTPConnection("127.0.0.1", baseline.port, timeout=TIMEOUT)
        try:
            for _ in range(20):
                connection.request("GET", "/")
                response = connection.getresponse()
                assert response.status == 200
                served.append(servedBy(response.read()))
        finally:
            connection.close()

        assert baseline.stop() == 0
        reports = baseline.descriptorReports()
        assert set(reports) == {baseline.process.pid} | set(workers)
        for pid, report in reports.items():
            assert report["start"] == report["end"], (pid, report)
        for pid in workers:
            assert gone(pid)
