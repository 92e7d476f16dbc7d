"""
Zero-downtime restarts: a twisted.web server (C{python -m
benchmarks.restart_server}) under load from wrk, replaced three times
during the run through L{pyamp_fds.handover}, against the same server left
alone.  Both with a new connection per request (wrk sends C{Connection:
close}) and with keep-alive connections (which the old process closes after
a response that says C{Connection: close}).

Reported for each run: failed requests (wrk's socket errors of every kind,
connect, read, write and timeout, and responses other than 2xx or 3xx),
connection resets (the TCP resets sent from a tenth of the run to nine
tenths, around the restarts, from C{/proc/net/snmp}: run as root, each run
has a network namespace of its own, so these are the run's; otherwise a
reset anywhere on the machine counts), requests/s, and
wrk's latency percentiles over the whole run, restarts included.  Each
replaced process must exit 0 by itself once drained, and the last one on
SIGTERM.
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
SECONDS = 8
RESTARTS = 3
STARTUP_TIMEOUT = 20
#: The part of the run (as fractions of it) whose resets are counted; the
#: last restart begins at RESTARTED_BY, the others evenly before it.
WINDOW = (0.1, 0.9)
RESTARTED_BY = 0.55

MODES = {
    "new connection": ["-H", "Connection: close"],
    "keep-alive": [],
}

FAILED = "failed requests"
RESETS = "resets"
DONE = "restarts done"
EXTRAS = ["p%s ms" % p for p in PERCENTILES] + [FAILED, RESETS, DONE]


def _outRsts():
    """
    The TCP resets this machine has sent (C{OutRsts} of C{/proc/net/snmp}).
    """
    with open("/proc/net/snmp") as f:
        lines = [line.split() for line in f if line.startswith("Tcp:")]
    return int(lines[1][lines[0].index("OutRsts")])


def _sleepUntil(moment):
    time.sleep(max(0, moment - time.monotonic()))


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
                              timeout=SECONDS + 120)
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
            ["wrk", "-t%d" % THREADS, "-c%d" % CONNECTIONS, "-d%ds" % SECONDS, "--latency"]
            + MODES[param] + ["http://127.0.0.1:%d/" % (port,)],
            stdout=subprocess.PIPE, text=True,
        )
        began = time.monotonic()
        # Resets are counted from a tenth of the run to nine tenths:
        # wrk's own, as it starts and as it closes its connections with
        # responses in flight at the end, are not the server's doing.
        _sleepUntil(began + SECONDS * WINDOW[0])
        resets = _outRsts()
        for i in range(restarts):
            _sleepUntil(began + SECONDS * RESTARTED_BY * (i + 1) / restarts)
            server, _ = _start(path)
            servers.append(server)
        for old in servers[:-1]:
            _ended(old)
        _sleepUntil(began + SECONDS * WINDOW[1])
        resets = _outRsts() - resets
        output, _ = wrk.communicate(timeout=SECONDS + 30)
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
            quickRepetitions=2,
            extras=EXTRAS,
        ),
    ]


if __name__ == "__main__":
    # One measurement, in the network namespace load() made for it.
    print(json.dumps(_measureHere(sys.argv[1], int(sys.argv[2]))))
