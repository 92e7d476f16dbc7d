# -*- test-case-name: tests.test_broker -*-
"""
The baseline of the broker benchmark: no broker.  N workers each listen on
the same port with C{SO_REUSEPORT} and the kernel spreads connections over
them; they accept with L{FastAcceptor} and serve with L{HTTPConnection},
the same code as the workers of L{benchmarks.broker_tuned}: the setup one
would pick without a broker, to compare against.

    python -m benchmarks.reuseport --port 8080 --workers 2

The parent process only holds the port (bound, not listening, so that it is
given no connections) while it starts the workers and replaces those that
die; SIGTERM stops it and them.  It writes the example broker's status
lines (L{pyamp_fds.examples.broker}).
"""

import argparse
import os
import socket
import sys

from twisted.internet import defer
from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate
from twisted.logger import globalLogBeginner, textFileLogObserver

from benchmarks.broker_tuned import FastAcceptor, HTTPConnection, responsesOfThisWorker, tcpSocket
from pyamp_fds.examples.broker import STOP_TIMEOUT, WorkerProcess, openDescriptors, say


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


def runWorker(reactor, port):
    """
    Accept on a C{SO_REUSEPORT} socket of our own and serve what we accept.
    """
    responses = responsesOfThisWorker()

    def serve(connections):
        for fd in connections:
            HTTPConnection(reactor, tcpSocket(fd), responses).start()

    FastAcceptor(reactor, listeningSocket(port, reusePort=True), serve).startReading()
    say("worker", "ready")


class Baseline:
    """
    Keeps C{size} workers sharing the port of C{reservation} running,
    replacing any that dies, and stops them all at shutdown.

    @ivar restartInterval: as the example broker's.
    """

    restartInterval = 1.0

    def __init__(self, reactor, size, reservation, workerArguments=()):
        self.reactor, self.size, self.reservation = reactor, size, reservation
        port = reservation.getsockname()[1]
        self.workerArguments = ["--baseline-worker", str(port)] + list(workerArguments)
        self.processes = []
        self.stopping = False

    def start(self):
        for _ in range(self.size):
            self.startWorker()
        self.reactor.addSystemEventTrigger("before", "shutdown", self.stop)

    def startWorker(self):
        if self.stopping:
            return
        process = WorkerProcess(self, self.reactor.seconds())
        self.reactor.spawnProcess(
            process,
            sys.executable,
            [sys.executable, "-m", __spec__.name] + self.workerArguments,
            env=os.environ,
            childFDs={0: 0, 1: 1, 2: 2},
        )
        self.processes.append(process)

    def workerEnded(self, process):
        self.processes.remove(process)
        if not self.stopping:
            say("broker", "lost-worker", process.pid)
            delay = self.restartInterval - (self.reactor.seconds() - process.started)
            self.reactor.callLater(max(0, delay), self.startWorker)

    def stop(self):
        """
        Release the port, ask every worker to stop, and kill those still
        running after L{STOP_TIMEOUT} seconds.

        @return: a L{defer.Deferred} that fires once all have exited.
        """
        self.stopping = True
        self.reservation.close()
        processes = list(self.processes)
        for process in processes:
            process.signal("TERM")
        kill = self.reactor.callLater(STOP_TIMEOUT, lambda: [p.signal("KILL") for p in processes])
        done = defer.DeferredList([process.ended for process in processes])
        return done.addCallback(lambda _: kill.cancel() if kill.active() else None)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.reuseport",
        description="N workers serving HTTP on one port of 127.0.0.1 with SO_REUSEPORT.",
    )
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--report-fds",
        action="store_true",
        help="each process reports its open descriptors when it starts and ends",
    )
    parser.add_argument("--baseline-worker", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    warnings = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [warnings])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    role = "worker" if args.baseline_worker is not None else "broker"
    start = openDescriptors()
    if args.baseline_worker is not None:
        runWorker(reactor, args.baseline_worker)
    else:
        reservation = listeningSocket(args.port, reusePort=True, reserveOnly=True)
        say("broker", "listening", "127.0.0.1:%d" % (reservation.getsockname()[1],))
        workerArguments = ["--report-fds"] if args.report_fds else []
        Baseline(reactor, args.workers, reservation, workerArguments).start()

    reactor.run()
    if role == "broker":
        say("broker", "stopped")
    if args.report_fds:
        say(role, "fds", "start", ",".join(map(str, start)))
        say(role, "fds", "end", ",".join(map(str, openDescriptors())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
