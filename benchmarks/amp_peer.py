"""
End-to-end AMP between two processes: one descriptor per command, the
responder closes it.

    python benchmarks/amp_peer.py (stock|pyamp_fds) CALLS WINDOW CONNECTIONS

The server is forked before the reactor exists; the client keeps WINDOW
calls in flight on each of CONNECTIONS connections until CALLS calls have
been answered.  Prints {"descriptors", "seconds", "sendmsg", "recvmsg",
"send", "cpu"}: system calls counted in both processes (Twisted's stock
transport writes plain data with send(); everything pyamp_fds does is
sendmsg/recvmsg), and the CPU seconds of both, each counted from its reactor's
start (the client: from its first call) to its last answer, so that neither
process's imports count.
"""

import json
import os
import resource
import socket
import sys
import time


def main(kind, calls, window, connections):
    # Every call in flight holds a descriptor in the client until sent, and
    # 64 connections with 256 calls each is more than a default soft limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(connections)]
    reportRead, reportWrite = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(reportRead)
        for a, b in pairs:
            a.close()
        serve(kind, [b for a, b in pairs], reportWrite)
        os._exit(0)
    os.close(reportWrite)
    for a, b in pairs:
        b.close()
    result = drive(kind, [a for a, b in pairs], calls, window)
    with os.fdopen(reportRead) as report:
        server = json.loads(report.read())
    os.waitpid(pid, 0)
    for key in ("sendmsg", "recvmsg", "send", "cpu"):
        result[key] += server[key]
    print(json.dumps(result))


def cpuSeconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def setUp(kind):
    """
    The reactor, protocol and argument classes for C{kind}, and a function
    returning the system calls counted so far.
    """
    from twisted.internet import reactor
    from twisted.protocols import amp

    if kind == "pyamp_fds":
        import pyamp_fds

        return reactor, pyamp_fds.AMP, pyamp_fds.Descriptor, None
    from stockcalls import countStockCalls

    return reactor, amp.AMP, amp.Descriptor, countStockCalls()


def commandFor(descriptorType):
    from twisted.protocols import amp

    class Take(amp.Command):
        arguments = [(b"fd", descriptorType())]
        response = []

    return Take


def adopt(kind, reactor, sock, proto):
    from twisted.internet import protocol

    factory = protocol.Factory()
    factory.buildProtocol = lambda addr: proto
    sock.setblocking(False)
    if kind == "pyamp_fds":
        from pyamp_fds.endpoints import adoptStreamConnection

        adoptStreamConnection(reactor, sock.fileno(), factory)
    else:
        reactor.adoptStreamConnection(sock.fileno(), socket.AF_UNIX, factory)
    sock.close()


def counted(kind, protos, counts):
    if counts is not None:
        return dict(counts)
    return {
        "sendmsg": sum(p.transport.sendmsgCalls for p in protos),
        "recvmsg": sum(p.transport.recvmsgCalls for p in protos),
        "send": 0,
    }


def serve(kind, socks, reportFd):
    reactor, base, descriptorType, counts = setUp(kind)
    Take = commandFor(descriptorType)

    class Server(base):
        @Take.responder
        def take(self, fd):
            os.close(fd)
            return {}

        def connectionLost(self, reason):
            if self.transport is not None:
                final.append(counted(kind, [self], counts))
            super().connectionLost(reason)
            open_.remove(self)
            if not open_:
                cpu.append(cpuSeconds())
                reactor.stop()

    final = []
    open_ = [Server() for _ in socks]
    for sock, proto in zip(socks, list(open_)):
        adopt(kind, reactor, sock, proto)
    cpu = []
    reactor.callWhenRunning(lambda: cpu.append(cpuSeconds()))
    reactor.run()
    if counts is not None:
        total = dict(counts)
    else:
        total = {k: sum(f[k] for f in final) for k in ("sendmsg", "recvmsg", "send")}
    total["cpu"] = cpu[1] - cpu[0]
    os.write(reportFd, json.dumps(total).encode())


def drive(kind, socks, calls, window):
    reactor, base, descriptorType, counts = setUp(kind)
    Take = commandFor(descriptorType)
    protos = [base() for _ in socks]
    for sock, proto in zip(socks, protos):
        adopt(kind, reactor, sock, proto)
    fd = os.open(os.devnull, os.O_RDONLY)
    state = {"sent": 0, "answered": 0}
    outcome = {}

    def send(proto):
        state["sent"] += 1
        proto.callRemote(Take, fd=fd).addCallback(answered, proto).addErrback(failed)

    def answered(_, proto):
        state["answered"] += 1
        if state["sent"] < calls:
            send(proto)
        elif state["answered"] == calls:
            outcome["seconds"] = time.perf_counter() - outcome["started"]
            outcome["cpu"] = cpuSeconds() - outcome["cpuStarted"]
            outcome.update(counted(kind, protos, counts))
            for p in protos:
                p.transport.loseConnection()
            reactor.callLater(0.05, reactor.stop)

    def failed(failure):
        failure.printTraceback()
        reactor.stop()

    def start():
        outcome["started"] = time.perf_counter()
        outcome["cpuStarted"] = cpuSeconds()
        for proto in protos:
            for _ in range(window):
                if state["sent"] < calls:
                    send(proto)

    reactor.callWhenRunning(start)
    reactor.run()
    os.close(fd)
    return {
        "descriptors": calls,
        "seconds": outcome["seconds"],
        "sendmsg": outcome["sendmsg"],
        "recvmsg": outcome["recvmsg"],
        "send": outcome["send"],
        "cpu": outcome["cpu"],
    }


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))
