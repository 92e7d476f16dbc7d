"""
The reactor's own floor for the end-to-end AMP scenario: the same
conversation (64-byte requests, 16-byte answers, WINDOW in flight) between
two Twisted protocols that only count bytes and echo, over Twisted's own
UNIX transport, with no AMP and no descriptors.

    python benchmarks/echo_peer.py CALLS WINDOW

Prints {"descriptors": CALLS, "seconds": S} (one call stands for one
descriptor of the AMP scenario).
"""

import json
import os
import socket
import sys
import time

REQUEST = b"q" * 64
ANSWER = b"a" * 16


def adopt(reactor, sock, proto):
    from twisted.internet import protocol

    factory = protocol.Factory()
    factory.buildProtocol = lambda addr: proto
    sock.setblocking(False)
    reactor.adoptStreamConnection(sock.fileno(), socket.AF_UNIX, factory)
    sock.close()


def serve(sock):
    from twisted.internet import protocol, reactor

    class Echo(protocol.Protocol):
        pending = 0

        def dataReceived(self, data):
            self.pending += len(data)
            answers, self.pending = divmod(self.pending, len(REQUEST))
            self.transport.write(ANSWER * answers)

        def connectionLost(self, reason):
            reactor.stop()

    adopt(reactor, sock, Echo())
    reactor.run()


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
                self.transport.loseConnection()
                reactor.callLater(0.05, reactor.stop)
            else:
                self.send(answers)

    caller = Caller()
    adopt(reactor, sock, caller)

    def start():
        outcome["started"] = time.perf_counter()
        caller.send(window)

    reactor.callWhenRunning(start)
    reactor.run()
    return outcome["seconds"]


def main(calls, window):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        a.close()
        serve(b)
        os._exit(0)
    b.close()
    seconds = drive(a, calls, window)
    os.waitpid(pid, 0)
    print(json.dumps({"descriptors": calls, "seconds": seconds}))


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
