"""
A process of a restartable echo server, for the handover tests::

    python -m tests.children.handover PATH serve [--die-after-take]
    python -m tests.children.handover PATH take-and-die

C{serve} takes the TCP port named C{echo} from the process at PATH's
handover socket (or opens one on 127.0.0.1), echoes on it, prints
C{serving PORT} and runs until drained; with C{--die-after-take} it exits
abruptly once it has lent its port, when the taker says it is ready.
C{take-and-die} takes the port from the process at PATH, prints C{took} and
exits abruptly without saying it is ready, holding what it took.
"""

import os
import sys

from twisted.internet import defer, protocol, task

from pyamp_fds import AMP
from pyamp_fds.endpoints import UNIXClientEndpoint
from pyamp_fds.handover import Handover, Take


class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


def say(*words):
    os.write(1, " ".join(str(w) for w in words).encode() + b"\n")


@defer.inlineCallbacks
def serve(reactor, path, dieAfterTake):
    handover = Handover(path, reactor=reactor)
    handover.listenTCP("echo", 0, protocol.Factory.forProtocol(Echo), interface="127.0.0.1")
    if dieAfterTake:
        # Dies when the process that took the ports says it is ready, before
        # answering: mid-handover, whatever the timing.
        handover._handOver = lambda taker: os._exit(0)
    ports = yield handover.start()
    say("serving", ports["echo"].getHost().port)
    yield handover.drained


@defer.inlineCallbacks
def takeAndDie(reactor, path):
    proto = yield UNIXClientEndpoint(reactor, path).connect(protocol.Factory.forProtocol(AMP))
    answer = yield proto.callRemote(Take, names=["echo"])
    say("took", len(answer["descriptors"]))
    os._exit(1)


def main(reactor, path, mode, *options):
    if mode == "serve":
        return serve(reactor, path, "--die-after-take" in options)
    return takeAndDie(reactor, path)


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
