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
one it replaced drained and exited 0 (the time that takes, from starting
the new process, is reported).  So wrk's latency percentiles are those of
the restarts.  A run without restarts lasts five and a half
seconds.

Reported for each run: failed requests (wrk's socket errors of every kind,
connect, read, write and timeout, and responses other than 2xx or 3xx);
the TCP resets the server sent, and those wrk sent, until just before wrk
stops (L{ResetWatch}); requests/s; and wrk's latency percentiles.  The last
process must exit 0 on SIGTERM.  Root only: each run has a network
namespace of its own (C{unshare}), and resets are seen on a packet socket.
"""

import ctypes
import json
import os
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks.harness import Scenario, Target, progress
from benchmarks.scenarios.broker import MODES, PERCENTILES, parseWrk

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

FAILED = "failed requests"
RESETS = "resets by the server"
CLIENT_RESETS = "resets by wrk"
DONE = "restarts done"
TAKES = "s per restart"
EXTRAS = ["p%s ms" % p for p in PERCENTILES] + [FAILED, RESETS, CLIENT_RESETS, DONE, TAKES]

SO_ATTACH_FILTER = 26
ETH_P_IP = 0x0800


class ResetWatch:
    """
    Counts the TCP resets sent on the loopback to and from one port, from a
    packet socket (root only) whose filter passes resets alone: those the
    server sent (from its port) and those clients sent (to it).  Unlike the
    kernel's counters, this tells the server's resets from wrk's: a client
    whose new connection meets a closing one of the same ports in
    C{TIME_WAIT} (wrk, making thousands a second, reuses its ports) sends
    a reset and tries again a second later, which costs latency but no
    request, whatever the server does.
    """

    # Classic BPF over an IPv4 packet: TCP, not a fragment, RST set.
    FILTER = [
        (0x30, 0, 0, 9),  # ldb [9]: the protocol
        (0x15, 0, 6, 6),  # jeq #6 (TCP), or drop
        (0x28, 0, 0, 6),  # ldh [6]: flags and fragment offset
        (0x45, 4, 0, 0x1FFF),  # jset: a fragment, drop
        (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf): the IP header's length
        (0x50, 0, 0, 13),  # ldb [x+13]: the TCP flags
        (0x45, 0, 1, 0x04),  # jset RST: keep, or drop
        (0x06, 0, 0, 0x40000),  # ret: keep
        (0x06, 0, 0, 0),  # ret: drop
    ]

    def __init__(self, port):
        self.port, self.server, self.client = port, 0, 0
        self._done = threading.Event()
        # Protocol 0 receives nothing until bound, once filtered.
        self._socket = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
        program = ctypes.create_string_buffer(
            b"".join(struct.pack("HBBI", *op) for op in self.FILTER))
        self._socket.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                                struct.pack("HL", len(self.FILTER), ctypes.addressof(program)))
        self._socket.bind(("lo", ETH_P_IP))
        self._socket.settimeout(0.05)
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self):
        while not self._done.is_set():
            try:
                packet, address = self._socket.recvfrom(65535)
            except socket.timeout:
                continue
            # Bound to one protocol, a packet socket sees the loopback's
            # packets once, coming in; never count one twice.
            if address[2] == socket.PACKET_OUTGOING:
                continue
            start = (packet[0] & 0x0F) * 4
            source, destination = struct.unpack("!HH", packet[start:start + 4])
            if source == self.port:
                self.server += 1
            elif destination == self.port:
                self.client += 1

    def stop(self):
        """
        Stop counting.

        @return: the resets the server sent, and those clients sent.
        """
        self._done.set()
        self._thread.join()
        self._socket.close()
        return self.server, self.client


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


def load(restarts):
    def measure(param):
        # Each run in a network namespace of its own: wrk's thousands of
        # connections a second, and their ports in TIME_WAIT, disturb
        # nothing else on the machine, nor does anything else disturb them.
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
        # Resets are counted until just before wrk stops: as it stops it
        # closes connections with responses on their way, which the kernel
        # answers with resets that are not the server's doing.
        resets = ResetWatch(port)
        time.sleep(BEFORE)
        restarting = time.monotonic()
        if restarts:
            for _ in range(restarts):
                server, _ = _start(path)
                servers.append(server)
                _ended(servers[-2])
        else:
            time.sleep(UNRESTARTED)
        restarting = time.monotonic() - restarting
        time.sleep(AFTER)
        serverResets, clientResets = resets.stop()
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
    extras[RESETS] = serverResets
    extras[CLIENT_RESETS] = clientResets
    extras[DONE] = len(servers) - 1
    if restarts:
        extras[TAKES] = restarting / restarts
    return requests, seconds, extras


if shutil.which("wrk") is None or os.getuid() != 0 or not shutil.which("unshare"):
    progress(
        "restart scenario skipped: it needs wrk (make bench installs it with apt-get when "
        "run as root; or: apt-get install wrk), and root, for a network namespace of its "
        "own (unshare, ip) and a packet socket to count resets"
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
                       text="restarted: no reset by the server"),
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
