"""
The reactor's own floor for the end-to-end AMP scenario: the same
conversation (64-byte requests, 16-byte answers, WINDOW in flight) between
two Twisted protocols that only count bytes and echo, over Twisted's own
UNIX transport, with no AMP and no descriptors.

    python benchmarks/echo_peer.py CALLS WINDOW

Prints {"descriptors": CALLS, "seconds": S, "cpu": C} (one call stands for
one descriptor of the AMP scenario; C, the CPU seconds of both processes,
each counted from its reactor's start, the client's from its first call, to
its last answer).
"""

import json
import os
import resource
import socket
import sys
import time

REQUEST = b"q" * 64
ANSWER = b"a" * 16


def cpuSeconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def adopt(reactor, sock, proto):
    from twisted.internet import protocol

    factory = protocol.Factory()
    factory.buildProtocol = lambda addr: proto
    sock.setblocking(False)
    reactor.adoptStreamConnection(sock.fileno(), socket.AF_UNIX, factory)
    sock.close()


def serve(sock, reportFd):
    from twisted.internet import protocol, reactor

    cpu = []

    class Echo(protocol.Protocol):
        pending = 0

        def dataReceived(self, data):
            self.pending += len(data)
            answers, self.pending = divmod(self.pending, len(REQUEST))
            self.transport.write(ANSWER * answers)

        def connectionLost(self, reason):
            cpu.append(cpuSeconds())
            reactor.stop()

    adopt(reactor, sock, Echo())
    reactor.callWhenRunning(lambda: cpu.append(cpuSeconds()))
    reactor.run()
    os.write(reportFd, json.dumps(cpu[1] - cpu[0]).encode())


def drive(sock, calls, window):
    from twisted.internet import protocol, reactor

    outcome = {}

    class Caller(protocol.Protocol):
        sent = answered = pending = 0

        def send(self, count):
            count = min(count, calls - self.sent)
            self.sent += count
            self.transport.write(REQUEST * count)

        def dataReceived(self, data):
            self.pending += len(data)
            answers, self.pending = divmod(self.pending, len(ANSWER))
            self.answered += answers
            if self.answered == calls:
                outcome["seconds"] = time.perf_counter() - outcome["started"]
                outcome["cpu"] = cpuSeconds() - outcome["cpuStarted"]
                self.transport.loseConnection()
                reactor.callLater(0.05, reactor.stop)
            else:
                self.send(answers)

    caller = Caller()
    adopt(reactor, sock, caller)

    def start():
        outcome["started"] = time.perf_counter()
        outcome["cpuStarted"] = cpuSeconds()
        caller.send(window)

    reactor.callWhenRunning(start)
    reactor.run()
    return outcome["seconds"], outcome["cpu"]


def main(calls, window):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reportRead, reportWrite = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(reportRead)
        a.close()
        serve(b, reportWrite)
        os._exit(0)
    os.close(reportWrite)
    b.close()
    seconds, cpu = drive(a, calls, window)
    with os.fdopen(reportRead) as report:
        cpu += json.loads(report.read())
    os.waitpid(pid, 0)
    print(json.dumps({"descriptors": calls, "seconds": seconds, "cpu": cpu}))


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
