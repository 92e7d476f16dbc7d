"""
Zero-downtime restarts: a twisted.web server (C{python -m
benchmarks.restart_server}) under load from wrk, replaced three times
through L{pyamp_fds.handover}, against the same server left alone.  Both
with a new connection per request (wrk sends C{Connection: close}) and with
keep-alive connections (which a process replaced closes after a response
that says C{Connection: close}).

wrk runs from a second before the first restart until half a second after
the last replaced process has exited (it stops early on SIGINT), the
restarts one after the other: each new process started and serving, the
one it replaced drained and exited 0.  So wrk's latency percentiles are
those of the restarts.  A run without restarts lasts five and a half
seconds.

Reported for each run: failed requests (wrk's socket errors of every kind,
connect, read, write and timeout, and responses other than 2xx or 3xx);
connection resets (the TCP resets sent until just before wrk stops, from
C{/proc/net/snmp}: run as root, each run has a network namespace of its
own, so these are the run's; otherwise a reset anywhere on the machine
counts); requests/s; and wrk's latency percentiles.  The last process must
exit 0 on SIGTERM.
"""

import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from benchmarks.harness import Scenario, Target, progress
from benchmarks.scenarios.broker import PERCENTILES, parseWrk

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(HERE)

CONNECTIONS = 32
THREADS = 2
RESTARTS = 3
STARTUP_TIMEOUT = 20
#: Seconds of load before the first restart and after the last process
#: replaced has exited; between them, the restarts one after the other.  A
#: run without restarts lasts BEFORE + UNRESTARTED + AFTER.
BEFORE = 1.0
AFTER = 0.5
UNRESTARTED = 4.0
WRK_LIMIT = 120

MODES = {
    "new connection": ["-H", "Connection: close"],
    "keep-alive": [],
}

FAILED = "failed requests"
RESETS = "resets"
DONE = "restarts done"
EXTRAS = ["p%s ms" % p for p in PERCENTILES] + [FAILED, RESETS, DONE]


def _tcpCounters():
    """
    The kernel's TCP counters (C{/proc/net/snmp} and C{/proc/net/netstat}).
    """
    counters = {}
    for name in ("/proc/net/snmp", "/proc/net/netstat"):
        with open(name) as f:
            lines = [line.split() for line in f if line.startswith(("Tcp:", "TcpExt:"))]
        for keys, values in zip(lines[::2], lines[1::2]):
            counters.update((keys[0] + k, int(v)) for k, v in zip(keys[1:], values[1:]))
    return counters


def _resetsSince(before):
    """
    The TCP resets sent since the counters were C{before}; when there are
    any, the counters that say why are shown.
    """
    after = _tcpCounters()
    changed = {k: after[k] - v for k, v in before.items()
               if after[k] != v and any(w in k for w in ("Rst", "Abort", "Reset", "PAWS"))}
    if changed.get("Tcp:OutRsts"):
        progress("  resets: " + ", ".join("%s %d" % item for item in sorted(changed.items())))
    return after["Tcp:OutRsts"] - before["Tcp:OutRsts"]


def _start(path, port=0):
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.restart_server", path, str(port)],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
    )
    if not select.select([server.stdout], [], [], STARTUP_TIMEOUT)[0]:
        server.kill()
        raise RuntimeError("the server did not start within %ds" % (STARTUP_TIMEOUT,))
    line = server.stdout.readline().decode().split()
    if line[:1] != ["serving"]:
        raise RuntimeError("the server exited with %r while starting" % (server.wait(),))
    return server, int(line[1])


def _ended(server, timeout=15):
    try:
        server.wait(timeout)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
        raise RuntimeError("server %d did not exit within %ds" % (server.pid, timeout))
    server.stdout.close()
    if server.returncode != 0:
        raise RuntimeError("server %d exited with %r" % (server.pid, server.returncode))


def _isolated():
    """
    Whether runs can have a network namespace of their own (root, with
    unshare and ip): then the resets counted are the run's own, not those
    of whatever else runs on the machine.
    """
    return os.getuid() == 0 and shutil.which("unshare") and shutil.which("ip")


def load(restarts):
    def measure(param):
        if not _isolated():
            return _measureHere(param, restarts)
        # A namespace's loopback starts down.
        command = "ip link set lo up && exec %s -m benchmarks.scenarios.restart %s %d" % (
            sys.executable, shlex.quote(param), restarts)
        done = subprocess.run(["unshare", "--net", "sh", "-c", command], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True, check=True,
                              timeout=WRK_LIMIT + 60)
        requests, seconds, extras = json.loads(done.stdout)
        return requests, seconds, extras

    return measure


def _measureHere(param, restarts):
    """
    One run: C{(requests, seconds, extras)}.
    """
    directory = tempfile.mkdtemp()
    path = os.path.join(directory, "handover")
    servers = []
    try:
        server, port = _start(path)
        servers.append(server)
        wrk = subprocess.Popen(
            ["wrk", "-t%d" % THREADS, "-c%d" % CONNECTIONS, "-d%ds" % WRK_LIMIT, "--latency"]
            + MODES[param] + ["http://127.0.0.1:%d/" % (port,)],
            stdout=subprocess.PIPE, text=True,
        )
        time.sleep(BEFORE)
        # Resets are counted from here until just before wrk stops: as it
        # stops it closes connections with responses on their way, which
        # the kernel answers with resets that are not the server's doing.
        resets = _tcpCounters()
        if restarts:
            for _ in range(restarts):
                server, _ = _start(path)
                servers.append(server)
                _ended(servers[-2])
        else:
            time.sleep(UNRESTARTED)
        time.sleep(AFTER)
        resets = _resetsSince(resets)
        # wrk stops early on SIGINT, and reports as at the end of its time.
        wrk.send_signal(signal.SIGINT)
        output, _ = wrk.communicate(timeout=30)
        if wrk.returncode != 0:
            raise RuntimeError("wrk failed:\n" + output)
        servers[-1].send_signal(signal.SIGTERM)
        _ended(servers[-1])
    finally:
        for server in servers:
            if server.poll() is None:
                server.kill()
                server.wait()
        shutil.rmtree(directory)
    requests, seconds, extras = parseWrk(output)
    extras[FAILED] = extras.pop("errors")
    extras[RESETS] = resets
    extras[DONE] = len(servers) - 1
    return requests, seconds, extras


if shutil.which("wrk") is None:
    progress(
        "restart scenario skipped: wrk is not installed (make bench installs it with "
        "apt-get when run as root; or: apt-get install wrk)"
    )
    SCENARIOS = []
else:
    SCENARIOS = [
        Scenario(
            name="restart",
            title="twisted.web under wrk (%d connections), restarted %d times through the"
            " handover, against no restart" % (CONNECTIONS, RESTARTS),
            unit="requests/s",
            params=list(MODES),
            implementations={"restarted": load(RESTARTS), "no restart": load(0)},
            anchor="no restart",
            targets=[
                Target("restarted", None, 0, figure=FAILED, worst=True,
                       text="restarted: no failed request"),
                Target("restarted", None, 0, figure=RESETS, worst=True,
                       text="restarted: no connection reset"),
                Target("restarted", "no restart", 0.8,
                       text="restarted >= 0.8x no restart"),
            ],
            quickRepetitions=3,
            extras=EXTRAS,
        ),
    ]


if __name__ == "__main__":
    # One measurement, in the network namespace load() made for it.
    print(json.dumps(_measureHere(sys.argv[1], int(sys.argv[2]))))
