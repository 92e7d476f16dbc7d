# -*- test-case-name: tests.test_broker -*-
"""
A connection broker: one process accepts TCP connections and hands each
accepted socket, as a descriptor, to the least busy of N worker processes
over pyamp_fds AMP; the workers serve a small HTTP/1.1 response on it.

    python -m pyamp_fds.examples.broker --port 8080 --workers 2
    python -m pyamp_fds.examples.broker --port 8080 --workers 2 --baseline

How it fits together:

  - The broker listens on 127.0.0.1 with a plain non-blocking socket that
    an L{Acceptor} registers with the reactor: each time it is readable it
    accepts every pending connection.  The broker never builds a transport
    for a connection it only passes on.
  - Each worker is started with one end of a C{socketpair} as its
    descriptor 3; both ends run L{pyamp_fds.AMP} over it
    (L{pyamp_fds.endpoints.adoptStreamConnection}).
  - The connections accepted in one turn of the reactor are shared out
    among the workers, and each worker's share goes in one L{Serve}
    command whose argument is a L{pyamp_fds.DescriptorList} with
    C{transfer=True}: the library closes the broker's copies once they have
    been sent, so the broker holds no descriptor after handing it over.
    Many commands are in flight on each channel at once, and pyamp_fds
    sends all those queued in one reactor turn, with their descriptors, in
    one C{sendmsg}.  (One L{pyamp_fds.Descriptor} argument per connection
    works the same way; one command for many connections costs both ends
    less Python per connection.)
  - L{Serve} asks for no answer: instead, every few milliseconds, a
    worker tells the broker how many connections it has closed since the
    last time (L{Finished}), one box for many connections.  Connections
    handed over and not yet reported finished are a worker's load: the
    broker picks the worker with the least, taking turns among equals.
  - A worker that dies takes its connections with it (the kernel closes the
    descriptors still queued for it, pyamp_fds those not yet sent); the
    broker stops choosing it and starts a replacement.
  - SIGTERM (or SIGINT) stops the broker: it stops accepting, asks every
    worker to stop, waits for them and exits 0.

With C{--baseline} there is no broker: N workers each listen on the same
port with C{SO_REUSEPORT} and the kernel spreads connections over them.
They serve the same response with the same code: the setup one would pick
without a broker, to compare against.

Each process writes one line to standard output per event, for whoever
supervises it::

    broker PID listening 127.0.0.1:PORT
    worker PID ready
    broker PID lost-worker PID
    broker PID stopped

and, with C{--report-fds}, the descriptors it has open when it starts and
when it ends (the two lists should be the same)::

    broker|worker PID fds start|end 0,1,2,4,5,6
"""

import argparse
import errno
import os
import socket
import sys

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.protocols import amp
from zope.interface import implementer

from pyamp_fds import AMP, DescriptorList
from pyamp_fds.endpoints import adoptStreamConnection

_log = Logger()

#: The descriptor a worker finds its channel to the broker on.
CHANNEL_FD = 3

#: A request head longer than this is refused (the connection is closed).
MAX_HEAD = 64 * 1024

#: While more bytes than this wait to be sent on a connection, its requests
#: are not read.
MAX_UNSENT = 1024 * 1024

#: How long the broker waits for its workers to stop before killing them.
STOP_TIMEOUT = 5.0


def say(role, *words):
    """
    Write one status line to standard output, in a single C{write} so that
    the lines of the broker and its workers, which share it, never mix.
    """
    line = " ".join([role, str(os.getpid())] + [str(w) for w in words]) + "\n"
    try:
        os.write(1, line.encode())
    except OSError:
        # Nobody reads them any more: that is no reason to stop serving.
        pass


def openDescriptors():
    """
    The descriptors this process has open, in order.
    """
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            os.readlink("/proc/self/fd/" + name)
        except FileNotFoundError:
            # The descriptor listdir itself used, closed by now.
            continue
        found.append(int(name))
    return sorted(found)


# Serving HTTP: the same in the workers of both modes.


def makeResponses(body):
    """
    The two answers a worker gives: one that keeps the connection open, and
    one that announces it is closing.
    """
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % (len(body),)
    return head + b"\r\n" + body, head + b"Connection: close\r\n\r\n" + body


def keepsAlive(head):
    """
    Whether the connection stays open after answering the request whose head
    (request line and headers, without the blank line) is C{head}.

    HTTP/1.1 keeps it unless the client says C{Connection: close}, HTTP/1.0
    closes it unless the client says C{Connection: keep-alive}.  This server
    reads no request bodies: a request announcing one is answered, then the
    connection is closed, so that the body is never taken for a request.
    """
    lines = head.split(b"\r\n")
    tokens = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"connection":
            tokens.extend(token.strip() for token in value.lower().split(b","))
        elif name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return False
    if lines[0].endswith(b"HTTP/1.1"):
        return b"close" not in tokens
    return b"keep-alive" in tokens


@implementer(IReadDescriptor, IWriteDescriptor)
class HTTPConnection:
    """
    Serves one accepted TCP socket: a fixed response to every request, until
    the client closes the connection or asks for it to be closed.

    Every C{recv} and C{send} passes C{MSG_DONTWAIT}, so the socket is used
    as it was accepted, with no C{fcntl} to make it non-blocking first.
    While more than L{MAX_UNSENT} bytes of answers wait for a client that
    does not read them, no more requests are read.

    @ivar whenClosed: called with no arguments once the socket is closed.
    """

    def __init__(self, reactor, sock, responses, whenClosed=lambda: None):
        self.reactor = reactor
        self.socket = sock
        self.whenClosed = whenClosed
        self._keepAlive, self._closing = responses
        self._received = b""
        self._unsent = bytearray()
        self._closeWhenSent = False
        self._reading = False
        self._writing = False

    def start(self):
        """
        Serve the requests that have arrived already, then wait for more.
        A client that sends its request at once and asks for the connection
        to be closed is served without the reactor.
        """
        self.doRead()
        if self.socket is not None:
            self._watch()

    def fileno(self):
        return self.socket.fileno() if self.socket is not None else -1

    def logPrefix(self):
        return "HTTPConnection"

    def doRead(self):
        try:
            data = self.socket.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            self.close()
            return None
        if self._closeWhenSent:
            # Whatever follows the request that asked us to close is ignored.
            return None
        received = self._received + data
        answers = []
        start = 0
        while True:
            end = received.find(b"\r\n\r\n", start)
            if end < 0:
                break
            head, start = received[start:end], end + 4
            if keepsAlive(head):
                answers.append(self._keepAlive)
            else:
                answers.append(self._closing)
                self._closeWhenSent = True
                start = len(received)
                break
        self._received = received[start:]
        if len(self._received) > MAX_HEAD:
            self.close()
            return None
        if answers:
            self._unsent += b"".join(answers)
            self._flush()
        return None

    def doWrite(self):
        self._flush()
        return None

    def _flush(self):
        try:
            sent = self.socket.send(self._unsent, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return
        del self._unsent[:sent]
        if self._closeWhenSent and not self._unsent:
            self.close()
        elif self._reading or self._writing or self._unsent:
            # Registered already, or must be: keep the registrations right.
            # (A connection served whole in start() is never registered.)
            self._watch()

    def _watch(self):
        """
        Read unless too much is waiting to be sent; write while anything is.
        """
        reading = len(self._unsent) <= MAX_UNSENT
        if reading != self._reading:
            self._reading = reading
            if reading:
                self.reactor.addReader(self)
            else:
                self.reactor.removeReader(self)
        writing = bool(self._unsent)
        if writing != self._writing:
            self._writing = writing
            if writing:
                self.reactor.addWriter(self)
            else:
                self.reactor.removeWriter(self)

    def connectionLost(self, reason):
        # The reactor ends every connection this way when it shuts down.
        self.close()

    def close(self):
        """
        Close the socket, once, and call L{whenClosed}.
        """
        if self.socket is None:
            return
        if self._reading:
            self.reactor.removeReader(self)
        if self._writing:
            self.reactor.removeWriter(self)
        self.socket.close()
        self.socket = None
        self.whenClosed()


# Accepting.


def listeningSocket(port, reusePort=False, reserveOnly=False):
    """
    A non-blocking TCP socket listening on 127.0.0.1:C{port}.

    @param reusePort: set C{SO_REUSEPORT}, so that other sockets may listen
        on the same port and share its connections.
    @param reserveOnly: bind but do not listen: the port is held, and, not
        listening, this socket is never given connections.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reusePort:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        if not reserveOnly:
            sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@implementer(IReadDescriptor)
class Acceptor:
    """
    Accepts every pending connection on a listening socket each time the
    reactor finds it readable, and gives them to C{onConnections} as a list
    of descriptors, close-on-exec (a worker started later never inherits a
    client's connection, which would keep it open after we close it).
    """

    #: Accept at most this many connections in one turn of the reactor, so
    #: that the other descriptors get their turn under a flood.
    maxPerTurn = 250
    #: After running out of descriptors, stop accepting for this long.
    pauseOnExhaustion = 0.1

    def __init__(self, reactor, sock, onConnections):
        self.reactor = reactor
        self.socket = sock
        self.onConnections = onConnections
        self._paused = None

    def startAccepting(self):
        self.reactor.addReader(self)

    def stopAccepting(self):
        """
        Stop accepting and close the listening socket.
        """
        if self._paused is not None and self._paused.active():
            self._paused.cancel()
        if self.socket is not None:
            self.reactor.removeReader(self)
            self.socket.close()
            self.socket = None

    def fileno(self):
        return self.socket.fileno() if self.socket is not None else -1

    def logPrefix(self):
        return "Acceptor"

    def doRead(self):
        # socket.accept() without the socket object it builds around each
        # descriptor (and the getsockname() that costs): the broker only
        # passes descriptors on.
        accept = self.socket._accept
        accepted = []
        try:
            for _ in range(self.maxPerTurn):
                try:
                    fd, address = accept()
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno == errno.ECONNABORTED:
                        continue
                    if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        # The listener stays readable: retrying at once would spin.
                        _log.warn("accept: {error}; pausing", error=e)
                        self.reactor.removeReader(self)
                        self._paused = self.reactor.callLater(
                            self.pauseOnExhaustion, self.startAccepting
                        )
                        break
                    raise
                accepted.append(fd)
        finally:
            if accepted:
                self.onConnections(accepted)
        return None

    def connectionLost(self, reason):
        self.stopAccepting()


# The command between the broker and its workers.


class Serve(amp.Command):
    """
    Broker to worker: serve these accepted connections.

    The broker's copies of the descriptors are closed by pyamp_fds once
    sent (C{transfer=True}); the worker owns those it receives.
    """

    arguments = [
        (b"connections", DescriptorList(transfer=True, maxDescriptors=Acceptor.maxPerTurn))
    ]
    requiresAnswer = False


class Finished(amp.Command):
    """
    Worker to broker: this many of the connections handed over have been
    closed since the last report.
    """

    arguments = [(b"count", amp.Integer())]
    requiresAnswer = False


# The worker.


class WorkerChannel(AMP):
    """
    A worker's end of its channel to the broker.  When the broker goes, so
    does the worker.

    @ivar reportDelay: how long after closing a connection the worker tells
        the broker, in seconds: every connection closed meanwhile goes in
        the same report.  Reports are a cost to both ends; a broker that
        learns of a closed connection a few milliseconds late still shares
        connections out evenly.
    """

    reportDelay = 0.005

    def __init__(self, reactor, responses):
        AMP.__init__(self)
        self.reactor = reactor
        self.responses = responses
        self._closed = 0

    @Serve.responder
    def serve(self, connections):
        for fd in connections:
            connection = HTTPConnection(
                self.reactor, tcpSocket(fd), self.responses, self._connectionClosed
            )
            connection.start()
        return {}

    def _connectionClosed(self):
        self._closed += 1
        if self._closed == 1:
            self.reactor.callLater(self.reportDelay, self._report)

    def _report(self):
        count, self._closed = self._closed, 0
        if self.transport is not None:
            self.callRemote(Finished, count=count)

    def connectionLost(self, reason):
        AMP.connectionLost(self, reason)
        if self.reactor.running:
            self.reactor.stop()


def tcpSocket(fd):
    """
    A socket object for the accepted TCP connection C{fd}.
    """
    # Naming family, type and protocol spares the getsockopt calls that
    # would ask the socket for them.
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, fd)


def responsesOfThisWorker():
    return makeResponses(b"Hello from worker %d\n" % (os.getpid(),))


def runWorker(reactor, channelFD):
    """
    Serve the connections the broker sends over C{channelFD}.
    """
    channel = WorkerChannel(reactor, responsesOfThisWorker())
    adoptStreamConnection(reactor, channelFD, _factoryFor(channel))
    # The transport has its own duplicate.
    os.close(channelFD)
    say("worker", "ready")


def runBaselineWorker(reactor, port):
    """
    Accept on a C{SO_REUSEPORT} socket of our own and serve what we accept.
    """
    responses = responsesOfThisWorker()

    def serve(connections):
        for fd in connections:
            HTTPConnection(reactor, tcpSocket(fd), responses).start()

    acceptor = Acceptor(reactor, listeningSocket(port, reusePort=True), serve)
    acceptor.startAccepting()
    say("worker", "ready")


def _factoryFor(proto):
    factory = protocol.Factory()
    factory.buildProtocol = lambda addr: proto
    return factory


# The broker.


class WorkerProcess(protocol.ProcessProtocol):
    """
    One worker process, as its parent sees it.

    @ivar ended: a L{defer.Deferred} that fires once the process has exited.
    """

    pid = None

    def __init__(self, pool):
        self.pool = pool
        self.ended = defer.Deferred()
        self.running = True

    def connectionMade(self):
        # transport.pid is gone once the process has been reaped.
        self.pid = self.transport.pid

    def signal(self, name):
        if self.running:
            try:
                self.transport.signalProcess(name)
            except OSError:
                pass

    def processEnded(self, reason):
        self.running = False
        self.pool.workerEnded(self)
        self.ended.callback(None)


class WorkerPool:
    """
    Keeps C{size} worker processes running, replacing any that dies, and
    stops them all at shutdown.

    @ivar restartInterval: a worker that dies is replaced at once if it ran
        this long, in seconds, and this long after it started otherwise:
        a worker that cannot start is not restarted in a tight loop.
    """

    restartInterval = 1.0

    def __init__(self, reactor, size, workerArguments):
        self.reactor = reactor
        self.size = size
        self.workerArguments = workerArguments
        self.processes = []
        self.stopping = False
        self._restarts = []

    def start(self):
        for _ in range(self.size):
            self.startWorker()
        self.reactor.addSystemEventTrigger("before", "shutdown", self.stop)

    def startWorker(self, childFDs=None):
        process = WorkerProcess(self)
        process.started = self.reactor.seconds()
        fds = {0: 0, 1: 1, 2: 2}
        fds.update(childFDs or {})
        self.reactor.spawnProcess(
            process,
            sys.executable,
            [sys.executable, "-m", __spec__.name] + self.workerArguments,
            env=os.environ,
            childFDs=fds,
        )
        self.processes.append(process)
        return process

    def workerEnded(self, process):
        self.processes.remove(process)
        if not self.stopping:
            say("broker", "lost-worker", process.pid)
            ranFor = self.reactor.seconds() - process.started
            self._restarts = [call for call in self._restarts if call.active()]
            self._restarts.append(
                self.reactor.callLater(max(0, self.restartInterval - ranFor), self.startWorker)
            )

    def stop(self):
        """
        Ask every worker to stop; kill those still running after
        L{STOP_TIMEOUT} seconds.

        @return: a L{defer.Deferred} that fires once all have exited.
        """
        self.stopping = True
        for call in self._restarts:
            if call.active():
                call.cancel()
        processes = list(self.processes)
        for process in processes:
            process.signal("TERM")
        kill = self.reactor.callLater(
            STOP_TIMEOUT, lambda: [process.signal("KILL") for process in processes]
        )
        done = defer.DeferredList([process.ended for process in processes])
        done.addCallback(lambda _: kill.cancel() if kill.active() else None)
        return done


class BrokerChannel(AMP):
    """
    The broker's end of one worker's channel.

    @ivar load: connections handed over that the worker has not reported
        closed.
    """

    def __init__(self, broker):
        AMP.__init__(self)
        self.broker = broker
        self.load = 0

    def handOver(self, fds):
        """
        Send the connections C{fds} to the worker, which owns them from now
        on.
        """
        self.load += len(fds)
        self.callRemote(Serve, connections=fds)

    @Finished.responder
    def finished(self, count):
        self.load -= count
        return {}

    def connectionLost(self, reason):
        self.broker.channelLost(self)
        AMP.connectionLost(self, reason)


class Broker(WorkerPool):
    """
    Accepts connections and hands each to the least busy worker.
    """

    def __init__(self, reactor, size, listener, reportFDs):
        WorkerPool.__init__(
            self,
            reactor,
            size,
            ["--worker", str(CHANNEL_FD)] + (["--report-fds"] if reportFDs else []),
        )
        self.channels = []
        self._turn = 0
        self.acceptor = Acceptor(reactor, listener, self.handOver)

    def start(self):
        WorkerPool.start(self)
        self.acceptor.startAccepting()

    def startWorker(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = WorkerPool.startWorker(self, {CHANNEL_FD: theirs.fileno()})
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        channel = process.channel = BrokerChannel(self)
        channel.process = process
        try:
            adoptStreamConnection(self.reactor, ours.fileno(), _factoryFor(channel))
        finally:
            ours.close()
        self.channels.append(channel)

    def channelLost(self, channel):
        if channel in self.channels:
            self.channels.remove(channel)
        # A worker that lost its channel stops by itself; one that does not
        # is of no use any more.
        channel.process.signal("KILL" if not self.stopping else "TERM")

    def workerEnded(self, process):
        # Its channel may not have seen the end of the stream yet: choose it
        # no more from now on.
        channel = process.channel
        if channel in self.channels:
            self.channels.remove(channel)
            channel.transport.loseConnection()
        WorkerPool.workerEnded(self, process)

    def handOver(self, fds):
        """
        Share the connections C{fds} out among the workers, each to the one
        with the fewest connections in hand at that moment (taking turns
        among equals), then send each worker its share in one command.
        """
        channels = self.channels
        if not channels:
            # No worker to serve them (all are restarting): refuse them.
            for fd in fds:
                os.close(fd)
            return
        loads = [channel.load for channel in channels]
        shares = [[] for _ in channels]
        count = len(channels)
        for fd in fds:
            self._turn = turn = (self._turn + 1) % count
            best = turn
            for i in range(turn + 1, turn + count):
                i %= count
                if loads[i] < loads[best]:
                    best = i
            loads[best] += 1
            shares[best].append(fd)
        for channel, share in zip(channels, shares):
            if share:
                channel.handOver(share)

    def stop(self):
        self.acceptor.stopAccepting()
        return WorkerPool.stop(self)


class Baseline(WorkerPool):
    """
    No broker: the workers share the port through C{SO_REUSEPORT}.  This
    process only holds the port (bound, not listening, so that it gets no
    connections) while it starts and replaces them.
    """

    def __init__(self, reactor, size, reservation, reportFDs):
        self.reservation = reservation
        port = reservation.getsockname()[1]
        WorkerPool.__init__(
            self,
            reactor,
            size,
            ["--baseline-worker", str(port)] + (["--report-fds"] if reportFDs else []),
        )

    def stop(self):
        self.reservation.close()
        return WorkerPool.stop(self)


# Running it.


def _logWarnings():
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])],
        redirectStandardIO=False,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m pyamp_fds.examples.broker",
        description="Accept TCP connections on 127.0.0.1 and hand them to worker "
        "processes over pyamp_fds AMP; the workers answer HTTP requests.",
    )
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="no broker: the workers share the port with SO_REUSEPORT",
    )
    parser.add_argument(
        "--report-fds",
        action="store_true",
        help="each process reports its open descriptors when it starts and ends",
    )
    parser.add_argument("--worker", type=int, metavar="FD", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-worker", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    _logWarnings()
    role = "worker" if args.worker is not None or args.baseline_worker is not None else "broker"
    start = [fd for fd in openDescriptors() if fd != args.worker]

    if args.worker is not None:
        runWorker(reactor, args.worker)
    elif args.baseline_worker is not None:
        runBaselineWorker(reactor, args.baseline_worker)
    elif args.baseline:
        reservation = listeningSocket(args.port, reusePort=True, reserveOnly=True)
        say("broker", "listening", "127.0.0.1:%d" % (reservation.getsockname()[1],))
        Baseline(reactor, args.workers, reservation, args.report_fds).start()
    else:
        listener = listeningSocket(args.port)
        say("broker", "listening", "127.0.0.1:%d" % (listener.getsockname()[1],))
        Broker(reactor, args.workers, listener, args.report_fds).start()

    reactor.run()
    if role == "broker":
        say("broker", "stopped")
    if args.report_fds:
        say(role, "fds", "start", ",".join(map(str, start)))
        say(role, "fds", "end", ",".join(map(str, openDescriptors())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
