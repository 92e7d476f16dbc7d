"""
A good client pipelining descriptors to a pyamp_fds AMP server while hostile
peers attack that server, against the same client and server with nobody
attacking, in the same run.

The server (C{benchmarks/hostile_peer.py serve}) runs in its own process with
an explicit descriptor budget of L{LIMIT} and a soft C{RLIMIT_NOFILE} of
L{LIMIT} + L{RESERVE}, listening with L{pyamp_fds.endpoints.listenUNIX}.  The
good client keeps L{WINDOW} one-descriptor commands in flight, as the C{amp}
scenario does, and is measured for L{SECONDS} after a warm-up.  Under attack,
one process runs every attack at once for the whole of that time:

  - an unclaimed flood: one descriptor 253 times a C{sendmsg}, on single
    bytes of a box that never ends;
  - four connections each holding just under the per-connection share on a
    box that never ends (together, twice the budget);
  - a peer sending many small requests answered with a descriptor, and
    never reading;
  - a peer connecting and hanging up with descriptors in flight.

Each attack is also measured alone, to tell which one hurts; the targets
are the attacked run's.  Reported beside the good client's descriptors/s: the errors it saw, its
longest wait for an answer, the server's peak open descriptors (sampled
from C{/proc/self/fd}) less its baseline and budget (never above: at most
0), the most its budget held (exactly, at most its limit), the descriptors
left open once every peer has gone (0), how many attacker connections the
server closed, and how often it logged C{EMFILE}.  The bounds are checked on
every repetition, not on the median.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile

from benchmarks.harness import Scenario, Target

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(HERE, "hostile_peer.py")

LIMIT = 2048
RESERVE = 512
WINDOW = 256
WARMUP = 0.5
SECONDS = 2.0
STARTUP_TIMEOUT = 20

ERRORS = "errors"
OVER = "peak fds over budget"
LEFT = "fds left open"
STALL = "longest stall ms"
BUDGET_PEAK = "budget peak"
KICKED = "attackers closed by server"
EXHAUSTED = "server EMFILE logged"
EXTRAS = [ERRORS, OVER, LEFT, STALL, BUDGET_PEAK, KICKED, EXHAUSTED]
ATTACKS = ("flood", "share", "noread", "churn")


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
        server = subprocess.Popen(
            [sys.executable, PEER, "serve", path, str(LIMIT), str(RESERVE)]
            + ([] if unclaimedSeconds is None else [str(unclaimedSeconds)]),
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        attackers = None
        try:
            budget = json.loads(_readyLine(server, "the server"))
            if attacks:
                attackers = subprocess.Popen(
                    [sys.executable, PEER, "attack", path, str(budget["share"]), attacks],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                _readyLine(attackers, "the attackers")
            good = json.loads(
                subprocess.run(
                    [sys.executable, PEER, "client", path, str(WARMUP), str(SECONDS),
                     str(WINDOW)],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )
            attacked = {}
            if attackers is not None:
                attackers.send_signal(signal.SIGTERM)
                attacked = json.loads(attackers.communicate(timeout=STARTUP_TIMEOUT)[0])
                attackers = None
            server.send_signal(signal.SIGUSR1)
            report = json.loads(server.communicate(timeout=STARTUP_TIMEOUT)[0])
        finally:
            for process in (attackers, server):
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
            OVER: report["peak"] - (report["baseline"] + report["limit"]),
            LEFT: report["end"] - report["baseline"],
            STALL: good["longestStall"] * 1000,
            BUDGET_PEAK: report["budgetPeak"],
            KICKED: kicked,
            EXHAUSTED: exhausted,
        },
        attacked,
        report,
        good,
    )


def attackedBy(attacks):
    def measure(param):
        return _measure(attacks)[:3]

    return measure


SCENARIOS = [
    Scenario(
        name="hostile",
        title="A good client pipelining descriptors while hostile peers attack the server",
        unit="descriptors/s",
        params=["window 256"],
        implementations={
            "no attackers": attackedBy(None),
            "attacked": attackedBy(",".join(ATTACKS)),
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
            Target("attacked", None, 0, figure=LEFT, worst=True,
                   text="attacked: server fds left open == 0 (every run)"),
        ],
        extras=EXTRAS,
    ),
]
