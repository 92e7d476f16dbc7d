# -*- test-case-name: tests.test_broker -*-
"""
A connection broker, meant as a template: one process accepts TCP
connections and hands each one, as a descriptor, to one of N worker
processes over pyamp_fds AMP; the workers answer HTTP requests on them::

    python -m pyamp_fds.examples.broker --port 8080 --workers 2

Each worker gets one end of a C{socketpair} as its descriptor 3; both ends
run L{pyamp_fds.AMP} over it.  The connections accepted in one turn of the
reactor go to the workers in turn, each worker's share in one L{Serve}.  A
worker that dies is replaced.  On SIGTERM (or SIGINT) the broker stops
accepting, sends its workers SIGTERM, waits for them and exits 0.  Each
process reports on standard output (with C{--report-fds}, also the
descriptors it has open when it starts and ends, which should be the same)::

    broker PID listening 127.0.0.1:PORT
    worker PID ready
    broker PID lost-worker PID
    broker PID stopped
    broker|worker PID fds start|end 0,1,2,4,5
"""

import argparse
import os
import socket
import sys

from twisted.internet import abstract, defer, protocol
from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate, Logger
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.protocols import amp
from twisted.web import resource, server

from pyamp_fds import AMP, DescriptorList
from pyamp_fds.endpoints import adoptStreamConnection

CHANNEL_FD = 3  # Where a worker finds its channel to the broker.
STOP_TIMEOUT = 5.0  # Seconds the broker gives its workers to stop before killing them.


def say(role, *words):
    # In one write, so that the lines of processes sharing standard output never mix.
    try:
        os.write(1, " ".join([role, str(os.getpid())] + [str(w) for w in words]).encode() + b"\n")
    except OSError:
        pass  # Nobody reads them any more: no reason to stop serving.


def openDescriptors():
    # lexists: the descriptor listdir used is closed by the time it is checked.
    found = os.listdir("/proc/self/fd")
    return sorted(int(fd) for fd in found if os.path.lexists("/proc/self/fd/" + fd))


class Serve(amp.Command):
    """
    Broker to worker: serve these connections (at most what the L{Acceptor}
    takes in one turn).  With C{transfer=True}, pyamp_fds closes the
    broker's copies once sent; the worker owns its own.
    """

    arguments = [(b"connections", DescriptorList(transfer=True, maxDescriptors=250))]
    requiresAnswer = False


# The worker.


class Hello(resource.Resource):
    """A worker's answer to every request, through Twisted's own HTTP server."""

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/plain")
        return b"Hello from worker %d\n" % (os.getpid(),)


class WorkerChannel(AMP):
    """A worker's end of its channel.  When the broker goes, so does the worker."""

    def __init__(self, reactor):
        AMP.__init__(self)
        self.reactor = reactor
        self.site = server.Site(Hello(), reactor=reactor)

    @Serve.responder
    def serve(self, connections):
        for fd in connections:
            try:
                os.set_blocking(fd, False)  # As adoptStreamConnection requires.
                self.reactor.adoptStreamConnection(fd, socket.AF_INET, self.site)
            except OSError:
                pass  # The client has gone already: getpeername fails.
            finally:
                os.close(fd)  # The transport has its own duplicate.
        return {}

    def connectionLost(self, reason):
        AMP.connectionLost(self, reason)
        if self.reactor.running:
            self.reactor.stop()


# The broker.


class Acceptor(abstract.FileDescriptor):
    """
    Gives the connections accepted on a listening socket in one turn of the
    reactor to C{onConnections}, as descriptors (close-on-exec: a worker
    started later must not hold a client's connection open).  Not
    C{reactor.listenTCP}: a Twisted transport shuts its socket down when it
    closes, which would end the connection for the worker too.
    """

    _log = Logger()
    maxPerTurn = 250  # So that a flood of connections leaves time for the rest.

    def __init__(self, reactor, sock, onConnections):
        abstract.FileDescriptor.__init__(self, reactor)
        self.socket, self.onConnections = sock, onConnections

    def fileno(self):
        return self.socket.fileno()

    def doRead(self):
        accepted = []
        while len(accepted) < self.maxPerTurn:
            try:
                accepted.append(self.socket.accept()[0].detach())
            except (BlockingIOError, ConnectionAbortedError):
                break
            except OSError as e:  # Out of descriptors, say: try again next turn.
                self._log.warn("accept: {error}", error=e)
                break
        if accepted:
            self.onConnections(accepted)

    def connectionLost(self, reason):
        abstract.FileDescriptor.connectionLost(self, reason)
        self.socket.close()


class WorkerProcess(protocol.ProcessProtocol):
    """A worker process; C{ended} fires once it has exited."""

    def __init__(self, broker, started):
        self.broker, self.started, self.ended = broker, started, defer.Deferred()

    def signal(self, name):
        if not self.ended.called:
            self.transport.signalProcess(name)

    def processEnded(self, reason):
        self.broker.workerEnded(self)
        self.ended.callback(None)


class BrokerChannel(AMP):
    """The broker's end of a worker's channel."""

    def __init__(self, broker, process):
        AMP.__init__(self)
        self.broker, self.process = broker, process

    def connectionLost(self, reason):
        AMP.connectionLost(self, reason)
        self.broker.channelLost(self)


class Broker:
    """
    Keeps C{size} workers running and shares out among them the connections
    accepted on C{listener}, a non-blocking listening socket.

    @ivar restartInterval: a worker that dies is replaced at once if it ran
        this long, in seconds, otherwise this long after it started.
    """

    restartInterval = 1.0
    workerModule = __spec__.name
    acceptorClass, channelClass = Acceptor, BrokerChannel

    def __init__(self, reactor, size, listener, workerArguments=()):
        self.reactor, self.size, self.workerArguments = reactor, size, list(workerArguments)
        self.acceptor = self.acceptorClass(reactor, listener, self.handOver)
        self.processes, self.channels = [], []
        self.stopping, self.turn = False, 0

    def start(self):
        for _ in range(self.size):
            self.startWorker()
        self.reactor.addSystemEventTrigger("before", "shutdown", self.stop)
        self.acceptor.startReading()

    def startWorker(self):
        if self.stopping:  # A restart that was due when the broker began to stop.
            return
        process = WorkerProcess(self, self.reactor.seconds())
        process.channel = channel = self.channelClass(self, process)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with ours, theirs:  # The worker and the transport get their own copies.
            arguments = ["-m", self.workerModule, "--worker", str(CHANNEL_FD)]
            process.pid = self.reactor.spawnProcess(
                process, sys.executable, [sys.executable] + arguments + self.workerArguments,
                env=os.environ, childFDs={0: 0, 1: 1, 2: 2, CHANNEL_FD: theirs.fileno()},
            ).pid
            self.processes.append(process)
            adoptStreamConnection(self.reactor, ours, protocol.Factory.forProtocol(lambda: channel))
        self.channels.append(channel)

    def handOver(self, fds):
        """
        Share the connections C{fds} out among the workers in turn.
        """
        if not self.channels:  # All are restarting: refuse the connections.
            for fd in fds:
                os.close(fd)
            return
        shares = {}
        for fd in fds:
            self.turn = (self.turn + 1) % len(self.channels)
            shares.setdefault(self.channels[self.turn], []).append(fd)
        for channel, share in shares.items():
            channel.callRemote(Serve, connections=share)

    def channelLost(self, channel):
        if channel in self.channels:
            self.channels.remove(channel)
        if not self.stopping:  # A worker without its channel is of no use.
            channel.process.signal("KILL")

    def workerEnded(self, process):
        # Its channel may not have seen the end of the stream yet: choose it no more.
        if process.channel in self.channels:
            self.channels.remove(process.channel)
            process.channel.transport.loseConnection()
        self.processes.remove(process)
        if not self.stopping:
            say("broker", "lost-worker", process.pid)
            delay = self.restartInterval - (self.reactor.seconds() - process.started)
            self.reactor.callLater(max(0, delay), self.startWorker)

    def stop(self):
        """
        Stop accepting, ask the workers to stop, and kill any still running
        after L{STOP_TIMEOUT} seconds.  Fires once all have exited.
        """
        self.stopping = True
        self.acceptor.connectionLost(None)
        processes = list(self.processes)
        for process in processes:
            process.signal("TERM")
        kill = self.reactor.callLater(STOP_TIMEOUT, lambda: [p.signal("KILL") for p in processes])
        done = defer.DeferredList([process.ended for process in processes])
        return done.addCallback(lambda _: kill.cancel() if kill.active() else None)


def main(argv=None, brokerClass=Broker, workerChannelClass=WorkerChannel):
    parser = argparse.ArgumentParser(prog="python -m " + brokerClass.workerModule)
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--report-fds", action="store_true",
                        help="report the descriptors each process has open at its start and end")
    parser.add_argument("--worker", type=int, metavar="FD", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    role = "broker" if args.worker is None else "worker"
    start = [fd for fd in openDescriptors() if fd != args.worker]
    warnings = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [warnings])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    if args.worker is not None:
        channel = workerChannelClass(reactor)
        adoptStreamConnection(reactor, args.worker, protocol.Factory.forProtocol(lambda: channel))
        os.close(args.worker)  # The transport has its own duplicate.
        say("worker", "ready")
    else:
        listener = socket.create_server(("127.0.0.1", args.port), backlog=socket.SOMAXCONN)
        listener.setblocking(False)
        say("broker", "listening", "127.0.0.1:%d" % (listener.getsockname()[1],))
        workerArguments = ["--report-fds"] if args.report_fds else []
        brokerClass(reactor, args.workers, listener, workerArguments).start()
    reactor.run()  # Until SIGTERM or SIGINT, or in a worker until its channel goes.
    if role == "broker":
        say("broker", "stopped")
    if args.report_fds:
        say(role, "fds", "start", ",".join(map(str, start)))
        say(role, "fds", "end", ",".join(map(str, openDescriptors())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
