"""
A good client pipelining descriptors to a pyamp_fds AMP server while hostile
peers attack that server, against the same client and server with nobody
attacking, in the same run.

The server (C{benchmarks/hostile_peer.py serve}) runs in its own process with
an explicit descriptor budget of L{LIMIT}, at most L{CONNECTIONS} server
connections (their sockets counted in the budget; half of them for any one
user) and a soft C{RLIMIT_NOFILE} of L{LIMIT} + L{RESERVE}, listening with
L{pyamp_fds.endpoints.listenUNIX}.  The
good client keeps L{WINDOW} one-descriptor commands in flight, as the C{amp}
scenario does, and is measured for L{SECONDS} after a warm-up.  Under attack,
once the good client is connected, one process (and a child of it, for the
last) runs every attack at once for the whole of that time:

  - an unclaimed flood: one descriptor 253 times a C{sendmsg}, on single
    bytes of a box that never ends;
  - four connections each holding just under the per-connection share on a
    box that never ends (together, twice the budget);
  - a peer sending many small requests answered with a descriptor, and
    never reading;
  - a peer connecting and hanging up with descriptors in flight;
  - a peer opening idle connections, more than the server may keep (run as
    the user C{nobody}, in a child process, when the benchmark runs as
    root; left out otherwise, and said so: as the good client's own user it
    would only lock that user out, which is what a per-user bound does).

Each attack is also measured alone, to tell which one hurts; the targets
are the attacked run's.  Reported beside the good client's descriptors/s: the errors it saw, its
longest wait for an answer, the server's peak open descriptors (sampled
from C{/proc/PID/fd}) less its baseline and budget (never above: at most
0), the most its budget held (exactly, connections' sockets included: at
most its limit), the most server connections it kept (at most
L{CONNECTIONS}), the descriptors
left open once every peer has gone (0), how many attacker connections the
server closed, and how often it logged C{EMFILE}.  The bounds are checked on
every repetition, not on the median.

And the CPU time each process used while the good client was measured
(user and system, from C{/proc/PID/stat}), in seconds a second: on a small
machine the attackers' and the sampler's take CPU from the server and the
client, which is the machine's cost, not the library's.  What the library
controls is the server's CPU time per descriptor of the good client
("server CPU us/descriptor"), with and without attackers.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks.harness import Scenario, Target, processCPUSeconds, progress
from benchmarks.hostile_peer import ATTACKS, OTHER_USER, OTHER_USER_NAME

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(HERE, "hostile_peer.py")

LIMIT = 2048
RESERVE = 512
#: Room for the attackers of the good client's own user (which share its
#: bound: half of this) and for the connection hog's user.
CONNECTIONS = 256
WINDOW = 256
WARMUP = 0.5
SECONDS = 2.0
STARTUP_TIMEOUT = 20

ERRORS = "errors"
OVER = "peak fds over budget"
LEFT = "fds left open"
STALL = "longest stall ms"
BUDGET_PEAK = "budget peak"
CONNECTIONS_PEAK = "server connections peak"
KICKED = "attackers closed by server"
EXHAUSTED = "server EMFILE logged"
SERVER_CPU = "server CPU us/descriptor"
SERVER_BUSY = "server CPU s/s"
ATTACKERS_BUSY = "attackers CPU s/s"
CLIENT_BUSY = "good client CPU s/s"
SAMPLER_BUSY = "sampler CPU s/s"
EXTRAS = [ERRORS, OVER, LEFT, STALL, BUDGET_PEAK, CONNECTIONS_PEAK, KICKED, EXHAUSTED, SERVER_CPU, SERVER_BUSY,
          ATTACKERS_BUSY, CLIENT_BUSY, SAMPLER_BUSY]
#: How often the server's open descriptors are counted.
SAMPLE_SECONDS = 0.01


class _Sampler(threading.Thread):
    """
    Counts a process's open descriptors (C{/proc/PID/fd}) every
    L{SAMPLE_SECONDS} until told to stop, from this process: in the server's
    own, listing thousands of them would take a quarter of its CPU, and its
    interpreter lock, only while it is attacked.

    @ivar peak: the most it counted.
    @ivar busy: the CPU time it used, in seconds a second of its life.
    """

    def __init__(self, pid):
        super().__init__(name="descriptor sampler", daemon=True)
        self.path = "/proc/%d/fd" % (pid,)
        self.done = threading.Event()
        self.peak = 0
        self.samples = 0
        self.busy = 0.0

    def run(self):
        started = time.monotonic()
        try:
            self.sample()
        finally:
            self.busy = time.thread_time() / max(1e-9, time.monotonic() - started)

    def sample(self):
        while not self.done.wait(SAMPLE_SECONDS):
            try:
                count = len(os.listdir(self.path))
            except OSError:
                # The server has gone.
                return
            self.samples += 1
            self.peak = max(self.peak, count)

    def stop(self):
        self.done.set()
        self.join()


def _canRunAsAnotherUser():
    return os.geteuid() == 0


def _readyLine(process, what):
    line = process.stdout.readline()
    if not line.startswith("ready"):
        process.kill()
        raise RuntimeError("%s did not start: %r" % (what, line))
    return line[len("ready"):].strip()


def _measure(attacks, unclaimedSeconds=None):
    with tempfile.TemporaryDirectory() as directory, tempfile.TemporaryFile("w+") as log:
        path = os.path.join(directory, "server.sock")
        # What the server logs (every fault of a peer's, and its own) is
        # read afterwards, not shown.
        # The other user's attackers must reach the socket.
        os.chmod(directory, 0o755)
        server = subprocess.Popen(
            [sys.executable, PEER, "serve", path, str(LIMIT), str(RESERVE), str(CONNECTIONS)]
            + ([] if unclaimedSeconds is None else [str(unclaimedSeconds)]),
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        attackers = goodClient = sampler = None
        try:
            budget = json.loads(_readyLine(server, "the server"))
            sampler = _Sampler(server.pid)
            sampler.start()
            # The good client is connected before the attacks start: a peer
            # connecting in a loop keeps the listening socket's backlog full,
            # and a connect() then finds it so (EAGAIN) whatever the server
            # does; what is measured is a connected client's service.
            goodClient = subprocess.Popen(
                [sys.executable, PEER, "client", path, str(WARMUP), str(SECONDS), str(WINDOW)],
                stdout=subprocess.PIPE,
                text=True,
            )
            line = goodClient.stdout.readline().strip()
            if line != "connected":
                goodClient.kill()
                raise RuntimeError("the good client said %r, not 'connected'" % (line,))
            attackerPids = []
            if attacks:
                attackers = subprocess.Popen(
                    [sys.executable, PEER, "attack", path, str(budget["share"]), attacks],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                attackerPids = json.loads(_readyLine(attackers, "the attackers"))["pids"]
            processes = {
                "server": [server.pid], "client": [goodClient.pid], "attackers": attackerPids,
            }
            cpu = {}
            for mark in ("start", "stop"):
                line = goodClient.stdout.readline().strip()
                if line != mark:
                    goodClient.kill()
                    raise RuntimeError("the good client said %r, not %r" % (line, mark))
                cpu[mark] = {
                    name: sum(processCPUSeconds(pid) for pid in pids)
                    for name, pids in processes.items()
                }
            out, _ = goodClient.communicate(timeout=STARTUP_TIMEOUT)
            if goodClient.returncode:
                raise RuntimeError("the good client failed: %r" % (goodClient.returncode,))
            good = json.loads(out)
            used = {name: cpu["stop"][name] - cpu["start"][name] for name in cpu["stop"]}
            attacked = {}
            if attackers is not None:
                attackers.send_signal(signal.SIGTERM)
                attacked = json.loads(attackers.communicate(timeout=STARTUP_TIMEOUT)[0])
                attackers = None
            server.send_signal(signal.SIGUSR1)
            report = json.loads(server.communicate(timeout=STARTUP_TIMEOUT)[0])
        finally:
            if sampler is not None:
                sampler.stop()
            for process in (goodClient, attackers, server):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
        log.seek(0)
        exhausted = log.read().count("Too many open files")
    kicked = sum(counts["closedByServer"] for counts in attacked.values())
    return (
        good["descriptors"],
        good["seconds"],
        {
            ERRORS: good["errors"],
            OVER: max(sampler.peak, report["end"]) - (report["baseline"] + report["limit"]),
            LEFT: report["end"] - report["baseline"],
            STALL: good["longestStall"] * 1000,
            BUDGET_PEAK: report["budgetPeak"],
            CONNECTIONS_PEAK: report["connectionsPeak"],
            KICKED: kicked,
            EXHAUSTED: exhausted,
            SERVER_CPU: used["server"] / max(1, good["descriptors"]) * 1e6,
            SERVER_BUSY: used["server"] / good["seconds"],
            ATTACKERS_BUSY: used["attackers"] / good["seconds"],
            CLIENT_BUSY: used["client"] / good["seconds"],
            SAMPLER_BUSY: sampler.busy,
        },
        attacked,
        report,
        good,
    )


def _runnable(attacks):
    """
    C{attacks} less those that must run as another user when this process
    cannot switch users (it is not root), saying so.
    """
    if _canRunAsAnotherUser():
        return attacks
    left = [a for a in attacks if a in OTHER_USER]
    if left:
        progress(
            "hostile scenario: %s left out: it runs as the user %s, which needs root"
            % (", ".join(left), OTHER_USER_NAME)
        )
    return [a for a in attacks if a not in OTHER_USER]


def attackedBy(*attacks):
    def measure(param):
        return _measure(",".join(_runnable(attacks)))[:3]

    return measure


SCENARIOS = [
    Scenario(
        name="hostile",
        title="A good client pipelining descriptors while hostile peers attack the server",
        unit="descriptors/s",
        params=["window 256"],
        implementations={
            "no attackers": attackedBy(),
            "attacked": attackedBy(*ATTACKS),
            # Each attack alone, to tell which one hurts.
            **{"%s only" % (name,): attackedBy(name) for name in ATTACKS},
        },
        anchor="no attackers",
        targets=[
            Target("attacked", "no attackers", 0.8,
                   text="attacked >= 0.8x no attackers"),
            Target("attacked", None, 0, figure=ERRORS, worst=True,
                   text="attacked: good client errors == 0 (every run)"),
            Target("attacked", None, 0, figure=OVER, worst=True,
                   text="attacked: server peak fds <= baseline + budget (every run)"),
            Target("attacked", None, LIMIT, figure=BUDGET_PEAK, worst=True,
                   text="attacked: server budget peak <= its limit (every run)"),
            Target("attacked", None, CONNECTIONS, figure=CONNECTIONS_PEAK, worst=True,
                   text="attacked: server connections <= its bound (every run)"),
            Target("attacked", None, 0, figure=LEFT, worst=True,
                   text="attacked: server fds left open == 0 (every run)"),
        ],
        extras=EXTRAS,
    ),
]
