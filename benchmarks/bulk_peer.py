"""
Many descriptors per AMP command between two processes; the responder
closes them.

    python benchmarks/bulk_peer.py (stock|pyamp_fds|pyamp_fds-lent) DESCRIPTORS PER_CALL WINDOW

pyamp_fds sends PER_CALL descriptors in one L{pyamp_fds.DescriptorList}
argument: duplicates of them with the default ownership (the caller may
close its own at once), the descriptors themselves with C{duplicate=False}
(pyamp_fds-lent: Twisted's rule, kept open until answered).  Stock Twisted
has only C{amp.Descriptor}, so it sends one per command (PER_CALL must be
1), the descriptor itself.  The server is forked before the reactor exists;
the client keeps WINDOW calls in flight until DESCRIPTORS descriptors have
been answered for, sending the same PER_CALL open descriptors each time.
Prints {"descriptors", "seconds", "sendmsg", "recvmsg"}, system calls counted
in both processes.
"""

import json
import os
import socket
import sys
import time


def main(kind, descriptors, perCall, window):
    if kind == "stock" and perCall != 1:
        raise SystemExit("stock Twisted sends one descriptor per command")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reportRead, reportWrite = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(reportRead)
        a.close()
        serve(kind, b, reportWrite)
        os._exit(0)
    os.close(reportWrite)
    b.close()
    result = drive(kind, a, descriptors // perCall, perCall, window)
    with os.fdopen(reportRead) as report:
        server = json.loads(report.read())
    os.waitpid(pid, 0)
    for key in ("sendmsg", "recvmsg"):
        result[key] += server[key]
    print(json.dumps(result))


def setUp(kind):
    """
    The reactor, protocol class, command class, and a function returning the
    system calls a protocol's transport made so far.
    """
    from twisted.internet import reactor
    from twisted.protocols import amp

    if kind.startswith("pyamp_fds"):
        import pyamp_fds

        class Take(amp.Command):
            arguments = [(b"fds", pyamp_fds.DescriptorList(duplicate=kind == "pyamp_fds"))]
            response = []

        def counted(proto):
            return {
                "sendmsg": proto.transport.sendmsgCalls,
                "recvmsg": proto.transport.recvmsgCalls,
            }

        return reactor, pyamp_fds.AMP, Take, counted

    from stockcalls import countStockCalls

    counts = countStockCalls()

    class Take(amp.Command):
        arguments = [(b"fds", amp.Descriptor())]
        response = []

    return reactor, amp.AMP, Take, lambda proto: dict(counts)


def adopt(kind, reactor, sock, proto):
    from twisted.internet import protocol

    factory = protocol.Factory()
    factory.buildProtocol = lambda addr: proto
    sock.setblocking(False)
    if kind.startswith("pyamp_fds"):
        from pyamp_fds.endpoints import adoptStreamConnection

        adoptStreamConnection(reactor, sock.fileno(), factory)
    else:
        reactor.adoptStreamConnection(sock.fileno(), socket.AF_UNIX, factory)
    sock.close()


def serve(kind, sock, reportFd):
    reactor, base, Take, counted = setUp(kind)
    if kind.startswith("pyamp_fds"):
        from pyamp_fds.fdio import close_all
    final = {}

    class Server(base):
        @Take.responder
        def take(self, fds):
            if isinstance(fds, int):
                os.close(fds)
            else:
                # pyamp_fds's own way to close many at once, in C.
                close_all(fds)
            return {}

        def connectionLost(self, reason):
            final.update(counted(self))
            super().connectionLost(reason)
            reactor.stop()

    adopt(kind, reactor, sock, Server())
    reactor.run()
    os.write(reportFd, json.dumps(final).encode())


def drive(kind, sock, calls, perCall, window):
    reactor, base, Take, counted = setUp(kind)
    proto = base()
    adopt(kind, reactor, sock, proto)
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(perCall)]
    argument = fds if kind.startswith("pyamp_fds") else fds[0]
    state = {"sent": 0, "answered": 0}
    outcome = {}

    def send():
        state["sent"] += 1
        proto.callRemote(Take, fds=argument).addCallbacks(answered, failed)

    def answered(_):
        state["answered"] += 1
        if state["sent"] < calls:
            send()
        elif state["answered"] == calls:
            outcome["seconds"] = time.perf_counter() - outcome["started"]
            outcome.update(counted(proto))
            proto.transport.loseConnection()
            reactor.callLater(0.05, reactor.stop)

    def failed(failure):
        failure.printTraceback()
        reactor.stop()

    def start():
        outcome["started"] = time.perf_counter()
        for _ in range(min(window, calls)):
            send()

    reactor.callWhenRunning(start)
    reactor.run()
    for fd in fds:
        os.close(fd)
    return {
        "descriptors": calls * perCall,
        "seconds": outcome["seconds"],
        "sendmsg": outcome["sendmsg"],
        "recvmsg": outcome["recvmsg"],
    }


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))
