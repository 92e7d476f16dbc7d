"""
A pyamp_fds AMP server under attack, a well-behaved client of it, and the
peers that attack it: the processes of the hostile-load benchmark
(C{benchmarks/scenarios/hostile.py}).

    python benchmarks/hostile_peer.py serve PATH LIMIT RESERVE CONNECTIONS [UNCLAIMED_SECONDS]
    python benchmarks/hostile_peer.py client PATH WARMUP SECONDS WINDOW
    python benchmarks/hostile_peer.py attack PATH SHARE [ATTACK,...]

C{serve} listens on PATH (L{pyamp_fds.endpoints.listenUNIX}) with a
descriptor budget of LIMIT, at most CONNECTIONS server connections (whose
sockets count in the budget), and a soft C{RLIMIT_NOFILE} of LIMIT + RESERVE,
prints C{ready} and its budget as JSON, and answers two commands: C{Take}
(one descriptor, which it closes) and C{Open} (answered with a descriptor);
given UNCLAIMED_SECONDS, its connections have that C{maxUnclaimedSeconds}.
It tracks the most descriptors and connections its budget held exactly (whoever runs it
samples its open descriptors, C{/proc/PID/fd}, from outside: listing
thousands of them a hundred times a second would take a quarter of the
server's CPU, and its interpreter lock, only while it is attacked).  On
C{SIGUSR1} it waits for every connection to be gone and every descriptor it
let go of to be closed, and prints what it saw as JSON.

C{client} is the good client: WINDOW C{Take} calls in flight, each with a
descriptor, for WARMUP + SECONDS; it prints C{connected} once connected, and
C{start} and C{stop} when the last SECONDS begin and end, then the calls answered in them, the errors it
saw, and its longest wait for an answer.

C{attack} runs every attack below at once (or those named: C{flood},
C{share}, C{noread}, C{churn}, C{hog}), each in its own thread over plain
sockets and L{pyamp_fds.fdio.send_with_fds}, until C{SIGTERM}; each attack
starts again when the server closes its connection.  It prints what each
did as JSON.
"""

import json
import os
import pwd
import resource
import select
import signal
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

DRAIN_TIMEOUT = 10.0
#: Attackers pause this long before connecting again once the server has
#: closed them, so that what is measured is the library's defences rather
#: than how much CPU a loop of connect() takes from a two-core machine.
RECONNECT_PAUSE = 0.01
#: Connections the "share" attack keeps at once, each holding just under
#: the per-connection share: together, twice the budget.
SHARE_CONNECTIONS = 4
#: The "churn" attack's connections a second, at most.
CHURN_RATE = 200
#: The "never reads" attack's bursts of requests: what the server reads at once.
BURST = 65536
#: The most connections the "hog" attack holds at once: more than the
#: server may keep, and more than its listening backlog.
HOG_CONNECTIONS = 512
#: A box that never ends: key C{x}, and a value of 65535 bytes of which
#: far fewer are ever sent.
ENDLESS_BOX = b"\x00\x01x\xff\xff"


def commands():
    from twisted.protocols import amp

    from pyamp_fds import Descriptor

    class Take(amp.Command):
        arguments = [(b"fd", Descriptor())]
        response = []

    class Open(amp.Command):
        arguments = []
        response = [(b"fd", Descriptor())]

    return Take, Open


def openDescriptors():
    """
    How many descriptors this process has open, not counting the one that
    lists them.
    """
    return len(os.listdir("/proc/self/fd")) - 1


# The server


def serve(path, limit, reserve, connections, unclaimedSeconds=None):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The kernel enforces the same bound the budget keeps: were the library
    # to hold more than its budget and the reserve, it would be refused.
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, limit + reserve), hard))

    from twisted.internet import reactor
    from twisted.internet.protocol import Factory

    import pyamp_fds
    from pyamp_fds import closer
    from pyamp_fds.budget import DescriptorBudget, setProcessBudget
    from pyamp_fds.endpoints import listenUNIX

    class MeasuredBudget(DescriptorBudget):
        """
        A budget that remembers the most it held.
        """

        peak = 0
        connectionsPeak = 0

        def take(self, count):
            super().take(count)
            used = self.used
            if used > self.peak:
                self.peak = used

        def connectionOpened(self):
            # Counted in the budget's used without take().
            super().connectionOpened()
            self.connectionsPeak = max(self.connectionsPeak, self.connections)
            self.peak = max(self.peak, self.used)

    budget = MeasuredBudget(limit=limit, maxConnections=connections)
    setProcessBudget(budget)
    Take, Open = commands()
    devnull = os.open(os.devnull, os.O_RDONLY)
    live = set()
    lost = {}
    transports = []

    class Server(pyamp_fds.AMP):
        maxUnclaimedSeconds = unclaimedSeconds

        @Take.responder
        def take(self, fd):
            os.close(fd)
            return {}

        @Open.responder
        def open(self):
            return {"fd": devnull}

        def connectionMade(self):
            super().connectionMade()
            live.add(self)
            transports.append(self.transport)

        def connectionLost(self, reason):
            super().connectionLost(reason)
            live.discard(self)
            name = type(reason.value).__name__
            lost[name] = lost.get(name, 0) + 1

    factory = Factory.forProtocol(Server)
    # Open to every user: the connection hog runs as another.
    listenUNIX(reactor, path, factory, backlog=256, mode=0o666)

    baseline = {}

    def started():
        baseline["fds"] = openDescriptors()
        print("ready", json.dumps({"limit": budget.limit, "share": budget.share}), flush=True)

    def finish():
        # The port stays open: it was counted in the baseline.
        deadline = time.monotonic() + DRAIN_TIMEOUT

        def drained():
            if live and time.monotonic() < deadline:
                reactor.callLater(0.02, drained)
                return
            # What the connections held is closed in the background: wait
            # for it before counting.
            closer.waitUntilClosed()
            end = openDescriptors()
            print(
                json.dumps(
                    {
                        "baseline": baseline["fds"],
                        "limit": budget.limit,
                        "share": budget.share,
                        "maxConnections": budget.maxConnections,
                        "connectionsPeak": budget.connectionsPeak,
                        "budgetPeak": budget.peak,
                        "budgetEnd": budget.used,
                        "end": end,
                        "stillConnected": len(live),
                        "connections": len(transports),
                        "readPauses": sum(t.readPauses for t in transports),
                        "lost": lost,
                    }
                ),
                flush=True,
            )
            reactor.stop()

        drained()

    signal.signal(signal.SIGUSR1, lambda *args: reactor.callFromThread(finish))
    reactor.callWhenRunning(started)
    reactor.run()


# The good client


def client(path, warmup, seconds, window):
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    from twisted.internet import reactor
    from twisted.internet.protocol import ClientFactory

    import pyamp_fds
    from pyamp_fds.endpoints import connectUNIX

    Take, Open = commands()
    fd = os.open(os.devnull, os.O_RDONLY)
    proto = pyamp_fds.AMP()
    state = {
        "answered": 0,
        "errors": 0,
        "errorTypes": {},
        "stopping": False,
        "measuring": False,
        "last": None,
        "longestStall": 0.0,
    }
    outcome = {}

    def send():
        proto.callRemote(Take, fd=fd).addCallbacks(answered, failed)

    def answered(_):
        now = time.perf_counter()
        if state["measuring"]:
            state["longestStall"] = max(state["longestStall"], now - state["last"])
        state["last"] = now
        state["answered"] += 1
        if not state["stopping"]:
            send()

    def failed(failure):
        if state["stopping"]:
            # Calls still in flight when the client hangs up.
            return
        state["errors"] += 1
        name = failure.type.__name__
        state["errorTypes"][name] = state["errorTypes"].get(name, 0) + 1

    def startMeasuring():
        state["measuring"] = True
        state["last"] = outcome["started"] = time.perf_counter()
        outcome["before"] = state["answered"]
        # Whoever runs the client may sample every process's CPU time now,
        # and again at "stop".
        print("start", flush=True)

    def stopMeasuring():
        now = time.perf_counter()
        print("stop", flush=True)
        state["longestStall"] = max(state["longestStall"], now - state["last"])
        outcome["seconds"] = now - outcome["started"]
        outcome["descriptors"] = state["answered"] - outcome["before"]
        state["stopping"] = True
        if proto.transport is not None:
            proto.transport.loseConnection()
        reactor.callLater(0.05, reactor.stop)

    class Factory(ClientFactory):
        def buildProtocol(self, addr):
            return proto

        def clientConnectionFailed(self, connector, reason):
            state["errors"] += 1
            state["errorTypes"]["connect: " + reason.type.__name__] = 1
            reactor.stop()

    def connected():
        for _ in range(window):
            send()
        reactor.callLater(warmup, startMeasuring)
        reactor.callLater(warmup + seconds, stopMeasuring)

    original = proto.connectionMade

    def connectionMade():
        original()
        # Whoever runs the client may start the attackers now.
        print("connected", flush=True)
        connected()

    proto.connectionMade = connectionMade
    connectUNIX(reactor, path, Factory())
    reactor.run()
    os.close(fd)
    print(
        json.dumps(
            {
                "descriptors": outcome.get("descriptors", 0),
                "seconds": outcome.get("seconds", seconds),
                "errors": state["errors"],
                "errorTypes": state["errorTypes"],
                "longestStall": state["longestStall"],
            }
        )
    )


# The attackers


class Attack:
    """
    One attack, run in a thread until L{stop} is set: each connection is
    made, abused, and made again when the server closes it.

    @cvar pauseAfterEach: whether to pause L{RECONNECT_PAUSE} after each
        connection.
    """

    pauseAfterEach = True

    def __init__(self, name, path, stop):
        self.name = name
        self.path = path
        self.stop = stop
        self.connections = 0
        self.closedByServer = 0
        self.descriptors = 0
        self.requests = 0
        self.fd = os.open(os.devnull, os.O_RDONLY)

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.path)
        sock.setblocking(False)
        self.connections += 1
        return sock

    def send(self, sock, data, fds=()):
        """
        Send all of C{data} (C{fds} with its first byte), waiting while the
        server does not read.

        @return: whether it went (otherwise the server closed the
            connection, or the attack is over).
        """
        from pyamp_fds.fdio import send_with_fds

        view = memoryview(data)
        while view:
            if self.stop.is_set():
                return False
            try:
                sent, _ = send_with_fds(sock.fileno(), view, fds)
            except BlockingIOError:
                select.select([], [sock], [], 0.05)
                continue
            except OSError:
                self.closedByServer += 1
                return False
            self.descriptors += len(fds)
            fds = ()
            view = view[sent:]
        return True

    def hold(self, sock):
        """
        Keep C{sock} open without reading anything the server sends (its
        answers stay in the socket), until the server closes it or the
        attack is over.
        """
        while not self.stop.is_set():
            try:
                # MSG_PEEK: look for the end without taking what was sent.
                if sock.recv(1, socket.MSG_PEEK) == b"":
                    self.closedByServer += 1
                    return
                # Data waits unread: only a hang-up ends the wait now.
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    self.closedByServer += 1
                    return
                self.stop.wait(0.05)
            except BlockingIOError:
                select.select([sock], [], [], 0.05)
            except OSError:
                self.closedByServer += 1
                return

    def run(self):
        while not self.stop.is_set():
            try:
                sock = self.connect()
            except OSError:
                self.stop.wait(RECONNECT_PAUSE)
                continue
            try:
                self.once(sock)
            finally:
                sock.close()
            if self.pauseAfterEach:
                self.stop.wait(RECONNECT_PAUSE)

    def report(self):
        return {
            "connections": self.connections,
            "closedByServer": self.closedByServer,
            "descriptors": self.descriptors,
            "requests": self.requests,
        }


class UnclaimedFlood(Attack):
    """
    (a) One descriptor 253 times a C{sendmsg}, each on one byte of a box
    that never ends, until the server closes the connection.
    """

    def once(self, sock):
        from pyamp_fds import MAX_FDS_PER_MESSAGE

        if not self.send(sock, ENDLESS_BOX):
            return
        fds = [self.fd] * MAX_FDS_PER_MESSAGE
        for _ in range(65535):
            if not self.send(sock, b"a", fds):
                return


class UnderShare(Attack):
    """
    (b) Just under the per-connection share of descriptors, on a box that
    never ends, then hold the connection open.  Several of these run at
    once (L{SHARE_CONNECTIONS}).
    """

    def __init__(self, name, path, stop, share):
        super().__init__(name, path, stop)
        self.share = share

    def once(self, sock):
        from pyamp_fds import MAX_FDS_PER_MESSAGE

        if not self.send(sock, ENDLESS_BOX):
            return
        left = self.share - 1
        while left:
            group = min(left, MAX_FDS_PER_MESSAGE)
            if not self.send(sock, b"a", [self.fd] * group):
                return
            left -= group
        self.hold(sock)


class NeverReads(Attack):
    """
    (c) Many small C{Open} requests, each answered with a descriptor, and
    never a read: the answers and their descriptors pile up.  They go in
    bursts of L{BURST} bytes, as much as the server reads at once, so that
    each of its reads dispatches as many requests as it can hold.
    """

    def once(self, sock):
        from twisted.protocols import amp

        boxes, size = [], 0
        while size < BURST:
            box = amp.AmpBox({b"_ask": b"%x" % (len(boxes),), b"_command": b"Open"}).serialize()
            boxes.append(box)
            size += len(box)
        burst = b"".join(boxes)
        while not self.stop.is_set():
            if not self.send(sock, burst):
                return
            self.requests += len(boxes)


class Churn(Attack):
    """
    (d) Connect, send descriptors, hang up at once: a full message of
    descriptors on a box that never ends, or C{Take} commands whose answers
    are never read; at most L{CHURN_RATE} connections a second.
    """

    # Paced by once() itself.
    pauseAfterEach = False

    def once(self, sock):
        from twisted.protocols import amp

        from pyamp_fds import MAX_FDS_PER_MESSAGE

        started = time.monotonic()
        if self.connections % 2:
            self.send(sock, ENDLESS_BOX[:1], [self.fd] * MAX_FDS_PER_MESSAGE)
        else:
            boxes = b"".join(
                amp.AmpBox({b"_ask": b"%x" % (i,), b"_command": b"Take", b"fd": b"%d" % (i,)})
                .serialize()
                for i in range(16)
            )
            if self.send(sock, boxes[:1], [self.fd] * 16):
                self.send(sock, boxes[1:])
                self.requests += 16
        self.stop.wait(max(0.0, 1.0 / CHURN_RATE - (time.monotonic() - started)))


class ConnectionHog(Attack):
    """
    (e) Connection after connection, each held open and idle, up to
    L{HOG_CONNECTIONS} at once: more than the server may keep.  Those the
    server closes (or refuses) are made again after L{RECONNECT_PAUSE}.
    Run as another user than the good client's (the scenario does, when it
    can), as a peer that is not the server's own user would be.
    """

    def run(self):
        poller = select.poll()
        held = {}
        while not self.stop.is_set():
            if len(held) < HOG_CONNECTIONS:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
                try:
                    sock.connect(self.path)
                except OSError:
                    # EAGAIN: the server's backlog is full.
                    sock.close()
                    self.stop.wait(RECONNECT_PAUSE)
                else:
                    self.connections += 1
                    held[sock.fileno()] = sock
                    poller.register(sock, select.POLLIN)
            # The server sends nothing on these: readable means closed.
            closed = poller.poll(0 if len(held) < HOG_CONNECTIONS else 50)
            for fd, _ in closed:
                poller.unregister(fd)
                held.pop(fd).close()
                self.closedByServer += 1
            if closed:
                self.stop.wait(RECONNECT_PAUSE)
        for sock in held.values():
            sock.close()


ATTACKS = ("flood", "share", "noread", "churn", "hog")
#: The attacks run as another user (L{OTHER_USER_NAME}), in a child
#: process of their own, which needs root.
OTHER_USER = ("hog",)
OTHER_USER_NAME = "nobody"


def attack(path, share, kinds=ATTACKS):
    """
    Run C{kinds} of attack until C{SIGTERM}; print C{ready} with the
    attacking processes' ids, then what each attack did.
    """
    mine = [k for k in kinds if k not in OTHER_USER]
    theirs = [k for k in kinds if k in OTHER_USER]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *args: stop.set())
    child = None
    if theirs:
        if os.geteuid() != 0:
            sys.exit("the %s attack runs as %s: that needs root" % (theirs, OTHER_USER_NAME))
        reportRead, reportWrite = os.pipe()
        # Forked before any thread starts.
        child = os.fork()
        if child == 0:
            os.close(reportRead)
            user = pwd.getpwnam(OTHER_USER_NAME)
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            report = runAttacks(path, share, theirs, stop, parent=os.getppid())
            os.write(reportWrite, json.dumps(report).encode())
            os._exit(0)
        os.close(reportWrite)
    pids = [os.getpid()] + ([child] if child else [])
    print("ready", json.dumps({"pids": pids}), flush=True)
    report = runAttacks(path, share, mine, stop)
    if child:
        os.kill(child, signal.SIGTERM)
        with os.fdopen(reportRead) as theirReport:
            report.update(json.loads(theirReport.read()))
        os.waitpid(child, 0)
    print(json.dumps(report), flush=True)


def runAttacks(path, share, kinds, stop, parent=None):
    """
    Run C{kinds} of attack, each in its own thread, until C{stop} is set (or
    until process C{parent}, if given, is gone: a child must not outlive
    the attacking process that made it, however that one ended).

    @return: what each did.
    """
    attacks = []
    if "flood" in kinds:
        attacks.append(UnclaimedFlood("unclaimed flood", path, stop))
    if "share" in kinds:
        attacks += [
            UnderShare("under the share", path, stop, share) for _ in range(SHARE_CONNECTIONS)
        ]
    if "noread" in kinds:
        attacks.append(NeverReads("never reads", path, stop))
    if "churn" in kinds:
        attacks.append(Churn("churn", path, stop))
    if "hog" in kinds:
        attacks.append(ConnectionHog("connection hog", path, stop))
    threads = [threading.Thread(target=a.run, name=a.name, daemon=True) for a in attacks]
    for thread in threads:
        thread.start()
    while not stop.is_set():
        stop.wait(0.1)
        if parent is not None and os.getppid() != parent:
            stop.set()
    for thread in threads:
        thread.join()
    report = {}
    for a in attacks:
        mine = report.setdefault(a.name, {})
        for key, value in a.report().items():
            mine[key] = mine.get(key, 0) + value
    return report


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "serve":
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]),
              float(sys.argv[6]) if sys.argv[6:] else None)
    elif role == "client":
        client(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
    elif role == "attack":
        attack(sys.argv[2], int(sys.argv[3]), sys.argv[4].split(",") if sys.argv[4:] else ATTACKS)
    else:
        sys.exit("unknown role %r" % (role,))
