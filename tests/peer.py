"""
AMP commands and a peer program for the interoperability tests.

Run as a program, it is one end of a connection, stock Twisted or
pyamp_fds, serving or connecting on a UNIX socket path::

    python -m tests.peer (stock|fast) (serve|connect|flood) PATH [REACTOR]

REACTOR (C{poll} or C{select}) runs it on that reactor instead of the
default (epoll).

Every descriptor it receives is checked against the file identity sent
beside it, then closed.  It prints its open descriptor count when the
connection is made and once it is lost, as JSON lines.  C{flood} connects
and sends L{Check} calls until it is killed.
"""

import json
import os
import sys

if __name__ == "__main__" and len(sys.argv) > 4:
    # Before anything imports the default reactor.
    if sys.argv[4] == "poll":
        from twisted.internet import pollreactor as chosen
    else:
        from twisted.internet import selectreactor as chosen
    chosen.install()

from twisted.internet import defer, endpoints, protocol, reactor  # noqa: E402
from twisted.protocols import amp

import pyamp_fds
from pyamp_fds.closer import waitUntilClosed
from pyamp_fds import endpoints as fastEndpoints


def identity(fd):
    st = os.fstat(fd)
    return b"%d:%d" % (st.st_dev, st.st_ino)


class Check(amp.Command):
    """
    Three descriptors and their identities; the answer says whether they
    matched and carries two descriptors of the responder's with theirs.
    """

    arguments = [
        (b"a", amp.Descriptor()),
        (b"b", amp.Descriptor()),
        (b"c", amp.Descriptor()),
        (b"ids", amp.ListOf(amp.String())),
    ]
    response = [
        (b"ok", amp.Boolean()),
        (b"x", amp.Descriptor()),
        (b"y", amp.Descriptor()),
        (b"xyids", amp.ListOf(amp.String())),
    ]


class CallMeBack(amp.Command):
    """
    Ask the responder to send C{count} L{Check} calls back, and answer how
    many of them, and of their answers, matched.
    """

    arguments = [(b"count", amp.Integer())]
    response = [(b"matched", amp.Integer())]


class Peer(amp.CommandLocator):
    """
    The behaviour both kinds of peer share; mixed into C{amp.AMP} or
    C{pyamp_fds.AMP}.
    """

    def openFiles(self, count):
        """
        Fresh descriptors of C{count} distinct files, to send.
        """
        # Anonymous files: a peer that is killed leaves nothing on disk.
        return [os.memfd_create("peer-file-%d" % i, os.MFD_CLOEXEC) for i in range(count)]

    @Check.responder
    def check(self, a, b, c, ids):
        ok = [identity(a), identity(b), identity(c)] == ids
        for fd in (a, b, c):
            os.close(fd)
        x, y = self.openFiles(2)
        # Stock Twisted sends later: keep them open until the connection
        # ends (pyamp_fds would let us close them now).
        self.keep.extend((x, y))
        return {"ok": ok, "x": x, "y": y, "xyids": [identity(x), identity(y)]}

    @CallMeBack.responder
    def callMeBack(self, count):
        return sendChecks(self, count).addCallback(lambda matched: {"matched": matched})

    def connectionMade(self):
        super().connectionMade()
        report("made")

    def connectionLost(self, reason):
        for fd in self.keep:
            os.close(fd)
        self.keep = []
        super().connectionLost(reason)
        report("lost")


def report(event):
    # What pyamp_fds closes in the background must be closed before counting.
    waitUntilClosed()
    count = len([fd for fd in os.listdir("/proc/self/fd") if os.path.exists("/proc/self/fd/" + fd)])
    print(json.dumps({"event": event, "fds": count}), flush=True)


@defer.inlineCallbacks
def flood(proto):
    while True:
        yield sendChecks(proto, 20)


@defer.inlineCallbacks
def sendChecks(proto, count):
    """
    Make C{count} L{Check} calls, pipelined; return how many matched both
    ways.
    """
    calls = []
    sent = []
    for _ in range(count):
        fds = proto.openFiles(3)
        sent.extend(fds)
        calls.append(proto.callRemote(Check, a=fds[0], b=fds[1], c=fds[2], ids=[identity(fd) for fd in fds]))
    answers = yield defer.gatherResults(calls)
    matched = 0
    for answer in answers:
        if answer["ok"] and [identity(answer["x"]), identity(answer["y"])] == answer["xyids"]:
            matched += 1
        os.close(answer["x"])
        os.close(answer["y"])
    for fd in sent:
        os.close(fd)
    return matched


class StockPeer(Peer, amp.AMP):
    def __init__(self, *args, **kwargs):
        amp.AMP.__init__(self, *args, **kwargs)
        self.keep = []


class FastPeer(Peer, pyamp_fds.AMP):
    def __init__(self, *args, **kwargs):
        pyamp_fds.AMP.__init__(self, *args, **kwargs)
        self.keep = []


KINDS = {
    "stock": (StockPeer, endpoints.UNIXServerEndpoint, endpoints.UNIXClientEndpoint),
    "fast": (FastPeer, fastEndpoints.UNIXServerEndpoint, fastEndpoints.UNIXClientEndpoint),
}


def main(kind, role, path, reactorName=None):
    peerClass, serverEndpoint, clientEndpoint = KINDS[kind]
    factory = protocol.Factory.forProtocol(peerClass)

    def lost(proto):
        # One connection: stop when it ends.
        original = proto.connectionLost

        def connectionLost(reason):
            original(reason)
            reactor.callLater(0, reactor.stop)

        proto.connectionLost = connectionLost
        return proto

    factory.buildProtocol = lambda addr, build=factory.buildProtocol: lost(build(addr))
    if role == "serve":
        d = serverEndpoint(reactor, path).listen(factory)
    else:
        d = clientEndpoint(reactor, path).connect(factory)
        if role == "flood":
            d.addCallback(flood)
    d.addErrback(lambda f: (f.printTraceback(), reactor.stop()))
    print(json.dumps({"event": "reactor", "name": type(reactor).__name__}), flush=True)
    reactor.run()


if __name__ == "__main__":
    main(*sys.argv[1:])
