"""
AMP commands and the child programs for the fault tests
(L{tests.test_faults}): faults that need a process of their own, a lowered
C{RLIMIT_NOFILE} or a user without privileges.  Each runs one end of a
connection over an inherited socket and reports JSON lines (an C{event}
and the process's open descriptor count, C{fds})::

    python -m tests.children.faults (truncate|inflight|inflightLists) SOCKET_FD

C{truncate} serves L{Take} with only five descriptor numbers to spare;
C{inflight} and C{inflightLists}, as a user without privileges, call the
peer (which does not read at first) until the transport has had to back
off, then wait for every answer.
"""

import json
import os
import resource
import sys

from twisted.internet import defer, protocol, reactor, task
from twisted.protocols import amp

import pyamp_fds
from pyamp_fds.closer import waitUntilClosed
from pyamp_fds.endpoints import adoptStreamConnection
from tests.fdcheck import openDescriptors

NOBODY = 65534


def identity(fd):
    st = os.fstat(fd)
    return "%d:%d" % (st.st_dev, st.st_ino)


def freshPipe():
    """
    The read end of a new pipe (a file of its own) and its identity.
    """
    r, w = os.pipe()
    os.close(w)
    return r, identity(r)


def countDescriptors():
    """
    How many descriptors this process has open, not counting the one used
    to list them, once what pyamp_fds closes in the background is closed.
    """
    waitUntilClosed()
    return len(openDescriptors())


class Take(amp.Command):
    arguments = [(b"fd", pyamp_fds.Descriptor()), (b"n", amp.Integer())]
    response = [(b"n", amp.Integer()), (b"id", amp.Unicode())]


class TakeList(amp.Command):
    arguments = [(b"fds", pyamp_fds.DescriptorList(transfer=True))]
    response = [(b"ids", amp.ListOf(amp.Unicode()))]


class Hello(amp.Command):
    arguments = []
    response = []


class Taker(pyamp_fds.AMP):
    """
    Answers L{Take} with the identity of the descriptor it got, and closes it.
    """

    def __init__(self):
        pyamp_fds.AMP.__init__(self)
        self.taken = 0

    @Take.responder
    def take(self, fd, n):
        self.taken += 1
        found = identity(fd)
        os.close(fd)
        return {"n": n, "id": found}

    @TakeList.responder
    def takeList(self, fds):
        self.taken += len(fds)
        found = [identity(fd) for fd in fds]
        for fd in fds:
            os.close(fd)
        return {"ids": found}

    @Hello.responder
    def hello(self):
        return {}


def report(event, **details):
    print(json.dumps(dict(details, event=event, fds=countDescriptors())), flush=True)


def runChild(proto, sockfd, made):
    """
    Run C{proto} over the inherited socket C{sockfd} until its connection
    is lost, calling C{made()} once it is connected.
    """
    original = proto.connectionLost

    def connectionLost(reason):
        original(reason)
        report("lost", reason=type(reason.value).__name__, taken=getattr(proto, "taken", 0))
        reactor.callLater(0, reactor.stop)

    proto.connectionLost = connectionLost
    factory = protocol.Factory()
    factory.buildProtocol = lambda addr: proto
    adoptStreamConnection(reactor, sockfd, factory)
    os.close(sockfd)
    reactor.callWhenRunning(made)
    reactor.run()


def limitDescriptors(free):
    """
    Lower C{RLIMIT_NOFILE} so that exactly C{free} descriptor numbers are
    left; return the limit.
    """
    taken = set(openDescriptors())
    limit = 0
    while free:
        free -= limit not in taken
        limit += 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return limit


def truncateChild(sockfd):
    """
    Serve L{Take} with only five descriptor numbers to spare.
    """
    proto = Taker()

    def made():
        report("made", limit=limitDescriptors(5))

    runChild(proto, sockfd, made)


CAP_SYS_ADMIN = 21
CAP_SYS_RESOURCE = 24


def dropPrivileges():
    """
    Become a user without privileges, so that the kernel's limit on
    descriptors in flight applies (C{CAP_SYS_RESOURCE} or C{CAP_SYS_ADMIN}
    bypass it).

    @return: L{None}, or why that could not be done.
    """
    if os.geteuid() == 0:
        import ctypes

        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        except OSError as e:
            return "cannot become user %d: %s" % (NOBODY, e)
        # Changing user made the process undumpable, which makes
        # /proc/self/fd unreadable to itself.
        PR_SET_DUMPABLE = 4
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                effective = int(line.split()[1], 16)
                if effective & (1 << CAP_SYS_RESOURCE | 1 << CAP_SYS_ADMIN):
                    return "user %d keeps CAP_SYS_RESOURCE or CAP_SYS_ADMIN" % (os.getuid(),)
    return None


#: Descriptors in each list that L{inflightChild} hands over: more than one
#: C{sendmsg} takes, so the limit may strike between groups of one box.
LIST_LENGTH = 260


def callSingles(proto, calls, expected):
    for _ in range(10):
        fd, found = freshPipe()
        expected.append(found)
        calls.append(
            proto.callRemote(Take, fd=fd, n=len(calls)).addCallback(lambda a: [a["id"]])
        )
        os.close(fd)


def callList(proto, calls, expected):
    fds = []
    for _ in range(LIST_LENGTH):
        fd, found = freshPipe()
        fds.append(fd)
        expected.append(found)
    # Handed over: the transport closes them once sent.
    calls.append(proto.callRemote(TakeList, fds=fds).addCallback(lambda a: a["ids"]))


@defer.inlineCallbacks
def inflightChild(proto, makeCalls):
    """
    Call in rounds until the transport has had to back off, then wait for
    every answer.
    """
    transport = proto.transport
    calls = []
    expected = []
    rounds = 0
    while not transport.backOffs and rounds < 100:
        rounds += 1
        makeCalls(proto, calls, expected)
        yield task.deferLater(reactor, 0.01, lambda: None)
    report("backedOff", backOffs=transport.backOffs, sent=len(expected))
    answers = yield defer.gatherResults(calls)
    received = [found for answer in answers for found in answer]
    matched = sum(a == e for a, e in zip(received, expected))
    report("answered", matched=matched, sent=len(expected), backOffs=transport.backOffs)
    proto.transport.loseConnection()


def inflightMain(sockfd, makeCalls):
    # Room for what one round holds at once, which is also how many
    # descriptors may be in flight before the kernel refuses more.
    room = 40 if makeCalls is callSingles else LIST_LENGTH + 40
    resource.setrlimit(resource.RLIMIT_NOFILE, (countDescriptors() + room,) * 2)
    why = dropPrivileges()
    if why is not None:
        report("privileged", why=why)
        return
    proto = pyamp_fds.AMP()

    def made():
        report("made", uid=os.getuid())
        inflightChild(proto, makeCalls).addErrback(lambda f: (report("failed", why=str(f.value)), proto.transport.loseConnection()))

    runChild(proto, sockfd, made)


def main(argv):
    role, fd = argv[1], int(argv[2])
    if role == "truncate":
        truncateChild(fd)
    elif role == "inflight":
        inflightMain(fd, callSingles)
    elif role == "inflightLists":
        inflightMain(fd, callList)
    else:
        raise SystemExit("unknown role %r" % (role,))


if __name__ == "__main__":
    main(sys.argv)
