"""
The reactor's own floor for the end-to-end AMP scenario: the same
conversation (64-byte requests, 16-byte answers, WINDOW in flight) between
two Twisted protocols that only count bytes and echo, over Twisted's own
UNIX transport, with no AMP and no descriptors.

    python benchmarks/echo_peer.py CALLS WINDOW [descriptors]

With C{descriptors}, each request also carries a descriptor, as each AMP
call does, over pyamp_fds's transport (L{pyamp_fds.endpoints}): the client
queues a duplicate of the same open descriptor with each request (the
transport closes it once sent), and the server closes each one it receives.
That is everything of a call but AMP itself: the floor for what pyamp_fds's
protocol and dispatch can reach on Twisted's reactor.

Prints {"descriptors": CALLS, "seconds": S, "cpu": C} (one call stands for
one descriptor of the AMP scenario; C, the CPU seconds of both processes,
each counted from its reactor's start, the client's from its first call, to
its last answer), and with descriptors the C{sendmsg} and C{recvmsg} calls
of both.
"""

import json
import os
import resource
import socket
import sys
import time

from asyncio_peer import leaked, openDescriptors

REQUEST = b"q" * 64
ANSWER = b"a" * 16


def cpuSeconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def adopt(reactor, sock, proto, descriptors):
    from twisted.internet import protocol

    factory = protocol.Factory()
    factory.buildProtocol = lambda addr: proto
    sock.setblocking(False)
    if descriptors:
        from pyamp_fds.endpoints import adoptStreamConnection

        adoptStreamConnection(reactor, sock.fileno(), factory)
    else:
        reactor.adoptStreamConnection(sock.fileno(), socket.AF_UNIX, factory)
    sock.close()


def counted(transport):
    return {"sendmsg": transport.sendmsgCalls, "recvmsg": transport.recvmsgCalls}


def serve(sock, reportFd, descriptors):
    from twisted.internet import protocol, reactor
    from zope.interface import implementer

    from pyamp_fds.fdio import close_all
    from pyamp_fds.interfaces import IFileDescriptorsReceiver

    report = {}

    @implementer(IFileDescriptorsReceiver)
    class Echo(protocol.Protocol):
        pending = 0
        received = 0

        def fileDescriptorsReceived(self, fds):
            self.received += len(fds)
            close_all(fds)

        def dataReceived(self, data):
            self.pending += len(data)
            answers, self.pending = divmod(self.pending, len(REQUEST))
            self.transport.write(ANSWER * answers)

        def connectionLost(self, reason):
            report["cpu"] = cpuSeconds() - report["cpu"]
            if descriptors:
                report.update(counted(self.transport), received=self.received)
            reactor.stop()

    adopt(reactor, sock, Echo(), descriptors)
    reactor.callWhenRunning(lambda: report.update(cpu=cpuSeconds()))
    reactor.run()
    os.write(reportFd, json.dumps(report).encode())


def drive(sock, calls, window, descriptors):
    from twisted.internet import protocol, reactor

    outcome = {}
    fd = os.open(os.devnull, os.O_RDONLY)

    class Caller(protocol.Protocol):
        sent = answered = pending = 0

        def send(self, count):
            count = min(count, calls - self.sent)
            self.sent += count
            if descriptors:
                for _ in range(count):
                    self.transport.sendFileDescriptor(fd)
            self.transport.write(REQUEST * count)

        def dataReceived(self, data):
            self.pending += len(data)
            answers, self.pending = divmod(self.pending, len(ANSWER))
            self.answered += answers
            if self.answered == calls:
                outcome["seconds"] = time.perf_counter() - outcome["started"]
                outcome["cpu"] = cpuSeconds() - outcome["cpuStarted"]
                if descriptors:
                    outcome.update(counted(self.transport))
                self.transport.loseConnection()
                reactor.callLater(0.05, reactor.stop)
            else:
                self.send(answers)

    caller = Caller()
    adopt(reactor, sock, caller, descriptors)

    def start():
        outcome["started"] = time.perf_counter()
        outcome["cpuStarted"] = cpuSeconds()
        caller.send(window)

    reactor.callWhenRunning(start)
    reactor.run()
    os.close(fd)
    return outcome


def main(calls, window, descriptors=False):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reportRead, reportWrite = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(reportRead)
        a.close()
        before = openDescriptors()
        serve(b, reportWrite, descriptors)
        # Every descriptor received must have been closed.
        os._exit(3 if leaked(before) else 0)
    os.close(reportWrite)
    b.close()
    outcome = drive(a, calls, window, descriptors)
    with os.fdopen(reportRead) as report:
        server = json.loads(report.read())
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit("the server left descriptors it received open")
    result = {"descriptors": calls, "seconds": outcome["seconds"],
              "cpu": outcome["cpu"] + server["cpu"]}
    if descriptors:
        if server["received"] != calls:
            raise SystemExit("the server received %d descriptors of %d" % (server["received"], calls))
        for key in ("sendmsg", "recvmsg"):
            result[key] = outcome[key] + server[key]
    print(json.dumps(result))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:] == ["descriptors"])
