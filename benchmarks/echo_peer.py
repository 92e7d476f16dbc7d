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


def echoProtocols():
    """
    The server's protocol (C{Echo}: answers every request, closes every
    descriptor received) and the client's (C{Caller(calls, fd, descriptors,
    done)}: C{send(count)} requests, each with a duplicate of C{fd} if
    C{descriptors}, one more per answer, and C{done(caller)} once all
    C{calls} are answered).  Imported late: the server is forked before any
    reactor exists.
    """
    from twisted.internet import protocol
    from zope.interface import implementer

    from pyamp_fds.fdio import close_all
    from pyamp_fds.interfaces import IFileDescriptorsReceiver

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

    class Caller(protocol.Protocol):
        sent = answered = pending = 0

        def __init__(self, calls, fd, descriptors, done):
            self.calls, self.fd, self.descriptors, self.done = calls, fd, descriptors, done

        def send(self, count):
            count = min(count, self.calls - self.sent)
            self.sent += count
            if self.descriptors:
                for _ in range(count):
                    self.transport.sendFileDescriptor(self.fd)
            self.transport.write(REQUEST * count)

        def dataReceived(self, data):
            self.pending += len(data)
            answers, self.pending = divmod(self.pending, len(ANSWER))
            self.answered += answers
            if self.answered == self.calls:
                self.done(self)
            else:
                self.send(answers)

    return Echo, Caller


def serve(sock, reportFd, descriptors):
    from twisted.internet import reactor

    Echo, _ = echoProtocols()
    report = {}

    class Server(Echo):
        def connectionLost(self, reason):
            report["cpu"] = cpuSeconds() - report["cpu"]
            if descriptors:
                report.update(counted(self.transport), received=self.received)
            reactor.stop()

    adopt(reactor, sock, Server(), descriptors)
    reactor.callWhenRunning(lambda: report.update(cpu=cpuSeconds()))
    reactor.run()
    os.write(reportFd, json.dumps(report).encode())


def drive(sock, calls, window, descriptors):
    from twisted.internet import reactor

    _, Caller = echoProtocols()
    outcome = {}
    fd = os.open(os.devnull, os.O_RDONLY)

    def done(caller):
        outcome["seconds"] = time.perf_counter() - outcome["started"]
        outcome["cpu"] = cpuSeconds() - outcome["cpuStarted"]
        if descriptors:
            outcome.update(counted(caller.transport))
        caller.transport.loseConnection()
        reactor.callLater(0.05, reactor.stop)

    caller = Caller(calls, fd, descriptors, done)
    adopt(reactor, sock, caller, descriptors)

    def start():
        outcome["started"] = time.perf_counter()
        outcome["cpuStarted"] = cpuSeconds()
        caller.send(window)

    reactor.callWhenRunning(start)
    reactor.run()
    os.close(fd)
    return outcome


def runPair(serve, drive):
    """
    Run C{serve(sock, reportFd)} in a forked child and C{drive(sock)} here,
    over a socket pair.

    @return: what C{drive} returned, and the JSON the child wrote to
        C{reportFd}, parsed.
    @raise SystemExit: the child left open a descriptor it received.
    """
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reportRead, reportWrite = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(reportRead)
        a.close()
        before = openDescriptors()
        serve(b, reportWrite)
        # Every descriptor received must have been closed.
        os._exit(3 if leaked(before) else 0)
    os.close(reportWrite)
    b.close()
    outcome = drive(a)
    with os.fdopen(reportRead) as report:
        served = json.loads(report.read())
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit("the server left descriptors it received open")
    return outcome, served


def main(calls, window, descriptors=False):
    outcome, server = runPair(lambda sock, reportFd: serve(sock, reportFd, descriptors),
                              lambda sock: drive(sock, calls, window, descriptors))
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
