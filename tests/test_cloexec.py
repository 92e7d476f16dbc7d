"""
Every descriptor pyamp_fds holds is close-on-exec: a child started without
closing descriptors (C{close_fds=False}) inherits none of them.
"""

import json
import os
import socket
import subprocess
import sys

from twisted.internet import defer
from twisted.protocols import amp

import pyamp_fds
from tests.reactorhelpers import ReactorTestCase, adopt, settle, watchLost

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def target(fd):
    """
    What descriptor C{fd} refers to (C{pipe:[inode]} for a pipe): the same
    in a child that inherited it, whatever its number there.
    """
    return os.readlink("/proc/self/fd/%d" % (fd,))


def freshPipe():
    r, w = os.pipe()
    os.close(w)
    return r


class Keep(amp.Command):
    arguments = [(b"a", pyamp_fds.Descriptor()), (b"b", amp.Descriptor())]
    response = [(b"c", pyamp_fds.Descriptor()), (b"d", amp.Descriptor())]


class Keeper(pyamp_fds.AMP):
    """
    Keeps every descriptor it receives open, and answers with two pipes of
    its own.
    """

    def __init__(self):
        pyamp_fds.AMP.__init__(self)
        self.kept = []
        self.sent = []

    @Keep.responder
    def keep(self, a, b):
        self.kept.extend((a, b))
        c, d = freshPipe(), freshPipe()
        self.sent.extend((c, d))
        return {"c": c, "d": d}


class CloseOnExecTests(ReactorTestCase):
    """
    Descriptors received through the AMP layer and duplicates waiting in a
    send queue are not inherited across C{exec}.
    """

    def inheritedTargets(self):
        """
        What the descriptors of a child started with C{close_fds=False}
        refer to (L{tests.children.inherited}).
        """
        output = subprocess.run(
            [sys.executable, "-m", "tests.children.inherited"],
            cwd=ROOT,
            close_fds=False,
            stdout=subprocess.PIPE,
            check=True,
        ).stdout
        return set(json.loads(output).values())

    @defer.inlineCallbacks
    def test_noneInherited(self):
        """
        Descriptors received as L{pyamp_fds.Descriptor} and L{amp.Descriptor}
        arguments and in answers, duplicates queued for a peer that does not
        read, and the connections' sockets: a child inherits none of them,
        while it does inherit a descriptor made inheritable on purpose.
        """
        server, client = self.connect(Keeper(), Keeper())
        answers = []
        sentPipes = []
        received = []
        # Closed whatever the outcome, before the leak check.
        self.addCleanup(
            lambda: [os.close(fd) for fd in received + sentPipes + server.sent + client.sent]
        )
        for _ in range(5):
            a, b = freshPipe(), freshPipe()
            sentPipes.extend((a, b))
            answers.append((yield client.callRemote(Keep, a=a, b=b)))
        received.extend(server.kept + [fd for answer in answers for fd in (answer["c"], answer["d"])])
        self.assertEqual(len(received), 20)

        # A sender whose peer does not read keeps duplicates in its queue.
        stalled = Keeper()
        s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        s1.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self._lost.append(watchLost(stalled))
        adopt(s1, stalled)
        self.addCleanup(self._disconnect, stalled)
        self.addCleanup(s2.close)
        stalledCalls = []
        for _ in range(100):
            for _ in range(10):
                a, b = freshPipe(), freshPipe()
                # They fail when the test disconnects: never answered.
                stalledCalls.append(stalled.callRemote(Keep, a=a, b=b).addErrback(lambda f: None))
                os.close(a)
                os.close(b)
            yield settle(0)
            if stalled.transport.queuedDescriptors:
                break
        queued = list(stalled.transport.queuedDescriptors)
        self.assertTrue(queued, "the peer's socket never filled")

        library = received + queued + [
            server.transport.fileno(),
            client.transport.fileno(),
            stalled.transport.fileno(),
        ]
        libraryTargets = {target(fd): fd for fd in library}
        self.assertEqual(len(libraryTargets), len(library))

        control = freshPipe()
        os.set_inheritable(control, True)
        controlTarget = target(control)
        try:
            inherited = self.inheritedTargets()
        finally:
            os.close(control)
        # The check can see inheritance when there is some.
        self.assertIn(controlTarget, inherited)
        self.assertEqual(sorted(set(libraryTargets) & inherited), [])

    @defer.inlineCallbacks
    def test_noneInheritedOverStockTransport(self):
        """
        L{pyamp_fds.AMP} over Twisted's own UNIX transport: descriptors it
        receives, as arguments and in answers, are not inherited either.
        """
        server, client = self.connect(Keeper(), Keeper(), serverFast=False, clientFast=False)
        received = []
        self.addCleanup(lambda: [os.close(fd) for fd in received + server.sent])
        a, b = freshPipe(), freshPipe()
        try:
            answer = yield client.callRemote(Keep, a=a, b=b)
        finally:
            os.close(a)
            os.close(b)
        received.extend(server.kept + [answer["c"], answer["d"]])
        libraryTargets = {target(fd) for fd in received}
        self.assertEqual(len(libraryTargets), 4)
        self.assertEqual(sorted(libraryTargets & self.inheritedTargets()), [])
