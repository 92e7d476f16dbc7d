"""
The example broker tuned for speed (C{python -m benchmarks.broker_tuned}:
the example's processes, channels and C{Serve} commands, with a faster
acceptor and HTTP server) under load from wrk, against the setup one would
pick without it (C{python -m benchmarks.reuseport}): the same number of
workers sharing the port with C{SO_REUSEPORT}, serving the same response
with the same code.  Both with a new connection per request (wrk sends
C{Connection: close} and reconnects) and with keep-alive connections.

Each measurement starts the server afresh on a free port of 127.0.0.1,
waits until every worker is ready, runs wrk for a few seconds, then stops
the server with SIGTERM, which must exit 0.  wrk comes from the system's
packages (C{make bench} installs it when it can); without it this scenario
is skipped, and says so.
"""

import os
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import time

from benchmarks.harness import Scenario, Target, processCPUSeconds, progress

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(HERE)

WORKERS = 2
CONNECTIONS = 64
THREADS = 2
SECONDS = 2
STARTUP_TIMEOUT = 20

#: wrk's extra arguments for each parameter.
MODES = {
    "new connection": ["-H", "Connection: close"],
    "keep-alive": [],
}

PERCENTILES = ("50", "75", "90", "99")
ERRORS = "errors"
SERVER_CPU = "server CPU us/request"
FRONT_CPU = "front process CPU us/request"
WRK_CPU = "wrk CPU us/request"
EXTRAS = ["p%s ms" % p for p in PERCENTILES] + [ERRORS, SERVER_CPU, FRONT_CPU, WRK_CPU]


def _startServer(baseline):
    """
    Start the server and wait for its port and its workers.

    @return: the process, its port, and its workers' process ids.
    """
    module = "benchmarks.reuseport" if baseline else "benchmarks.broker_tuned"
    command = [sys.executable, "-m", module, "--port", "0", "--workers", str(WORKERS)]
    server = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE)
    port, workers, pending = None, [], b""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    try:
        while port is None or len(workers) < WORKERS:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([server.stdout], [], [], left)[0]:
                raise RuntimeError("the server did not start within %ds" % (STARTUP_TIMEOUT,))
            data = os.read(server.stdout.fileno(), 4096)
            if not data:
                raise RuntimeError("the server exited with %r while starting" % (server.wait(),))
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                words = line.decode().split()
                if words[2:3] == ["listening"]:
                    port = int(words[3].rpartition(":")[2])
                elif words[2:3] == ["ready"]:
                    workers.append(int(words[1]))
    except BaseException:
        _stopServer(server)
        raise
    return server, port, workers


def _stopServer(server):
    """
    SIGTERM the server: it must exit 0 within a few seconds.
    """
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
    try:
        # Its workers write here too until they stop: keep reading.
        server.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.communicate()
        raise RuntimeError("the server did not stop within 10s of SIGTERM")
    if server.returncode != 0:
        raise RuntimeError("the server exited with %r after SIGTERM" % (server.returncode,))


def _milliseconds(text):
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parseWrk(output):
    """
    The requests made, the seconds they took, and the extras (latency
    percentiles in milliseconds, and errors: socket errors of any kind and
    responses other than 2xx or 3xx) from wrk's C{--latency} output.
    """
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    if done is None:
        raise RuntimeError("wrk's output has no result:\n" + output)
    requests = int(done.group(1))
    seconds = float(done.group(2)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[done.group(3)]
    extras = {}
    for percentile in PERCENTILES:
        found = re.search(r"^\s+%s%%\s+(\S+)" % (percentile,), output, re.M)
        extras["p%s ms" % (percentile,)] = _milliseconds(found.group(1))
    errors = 0
    socketErrors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socketErrors:
        errors += sum(int(n) for n in socketErrors.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    extras[ERRORS] = errors
    return requests, seconds, extras


def load(baseline):
    def measure(param):
        server, port, workers = _startServer(baseline)
        processes = [server.pid] + workers
        try:
            before = [processCPUSeconds(pid) for pid in processes]
            wrkBefore = resource.getrusage(resource.RUSAGE_CHILDREN)
            output = subprocess.run(
                ["wrk", "-t%d" % THREADS, "-c%d" % CONNECTIONS, "-d%ds" % SECONDS, "--latency"]
                + MODES[param]
                + ["http://127.0.0.1:%d/" % (port,)],
                capture_output=True,
                text=True,
                check=True,
                timeout=SECONDS + 30,
            ).stdout
            wrkAfter = resource.getrusage(resource.RUSAGE_CHILDREN)
            used = [processCPUSeconds(pid) - then for pid, then in zip(processes, before)]
        finally:
            _stopServer(server)
        requests, seconds, extras = parseWrk(output)
        # CPU per request, over wrk's run: every process of the server (the
        # broker's acceptor, or the baseline's parent, which only holds the
        # port; and the workers), the front process alone, and wrk.
        perRequest = 1e6 / max(1, requests)
        extras[SERVER_CPU] = sum(used) * perRequest
        extras[FRONT_CPU] = used[0] * perRequest
        extras[WRK_CPU] = (
            wrkAfter.ru_utime + wrkAfter.ru_stime - wrkBefore.ru_utime - wrkBefore.ru_stime
        ) * perRequest
        return requests, seconds, extras

    return measure


if shutil.which("wrk") is None:
    progress(
        "broker scenario skipped: wrk is not installed (make bench installs it with "
        "apt-get when run as root; or: apt-get install wrk)"
    )
    SCENARIOS = []
else:
    SCENARIOS = [
        Scenario(
            name="broker",
            title="HTTP through the example broker, tuned (%d workers, wrk, %d connections)"
            % (WORKERS, CONNECTIONS),
            unit="requests/s",
            params=list(MODES),
            implementations={"broker": load(False), "baseline": load(True)},
            anchor="baseline",
            targets=[
                Target("broker", "baseline", 0.75, param="new connection",
                       text="broker >= 0.75x SO_REUSEPORT, new connection per request"),
                Target("broker", None, 0, figure=ERRORS, text="broker: no errors"),
                Target("baseline", None, 0, figure=ERRORS, text="baseline: no errors"),
            ],
            extras=EXTRAS,
        ),
    ]
