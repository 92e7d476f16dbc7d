"""
Soak run: memory and descriptors of both ends of pyamp_fds AMP over a long run.

    python benchmarks/soak.py [--descriptors N] [--cycles N] [--out DIR]

Two phases, each between a client (the process running this script's reactor)
and a server forked from it before any reactor exists:

 - C{stream}: N descriptors (1,000,000 by default) through one connection, one
   per command, pipelined with L{WINDOW} calls in flight; the responder closes
   each one.
 - C{cycles}: N connections (10,000 by default) to a listening UNIX socket,
   each dropped while descriptors are in flight, without waiting for answers:
   sent then closed, still queued then aborted, flushed then aborted, or sent
   with a box that never completes so the server is left holding descriptors
   nobody claims.

Both processes' VmRSS and VmHWM (from C{/proc/PID/status}) are sampled as the
phase goes, and their open descriptors are counted at its start and its end.
Prints a table, writes C{soak.json} and C{soak.png} to DIR
(C{benchmarks/results} by default), and exits 1 if a descriptor leaked or if
the resident set of either process grew by more than L{FLAT} after the
warm-up (the first L{WARMUP} of the phase).
"""

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time

WINDOW = 256
DESCRIPTORS_PER_CYCLE = 4
CONCURRENT_CYCLES = 4
BACKLOG = 1024
SAMPLE_SECONDS = 0.1
WARMUP = 0.1
FLAT = 0.10
SETTLE_SECONDS = 10.0


def memory(pid):
    """
    C{VmRSS} and C{VmHWM} of process C{pid}, in KiB.
    """
    found = {}
    with open("/proc/%d/status" % (pid,)) as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0])
    return found["VmRSS"], found["VmHWM"]


def openDescriptors(pid):
    """
    How many descriptors process C{pid} has open (for this process, not
    counting the one that lists them).
    """
    count = len(os.listdir("/proc/%d/fd" % (pid,)))
    return count - 1 if pid == os.getpid() else count


class Sampler:
    """
    Samples the memory of this process and its peer, by how far the phase
    has got, every L{SAMPLE_SECONDS} and whenever asked.
    """

    def __init__(self, reactor, peer, progress):
        from twisted.internet import task

        self.peer = peer
        self.progress = progress
        self.samples = []
        self.started = time.monotonic()
        self._loop = task.LoopingCall(self.sample)
        self._loop.clock = reactor

    def start(self):
        self._loop.start(SAMPLE_SECONDS, now=True)

    def stop(self):
        if self._loop.running:
            self._loop.stop()
        self.sample()

    def sample(self):
        clientRSS, clientHWM = memory(os.getpid())
        serverRSS, serverHWM = memory(self.peer)
        self.samples.append(
            {
                "seconds": round(time.monotonic() - self.started, 3),
                "done": self.progress(),
                "client": {"rss": clientRSS, "hwm": clientHWM},
                "server": {"rss": serverRSS, "hwm": serverHWM},
            }
        )


def takeCommand():
    from twisted.protocols import amp

    import pyamp_fds

    class Take(amp.Command):
        arguments = [(b"fd", pyamp_fds.Descriptor())]
        response = []

    return Take


def serverProtocol(reactor, counts, stopWhenLost):
    """
    The server's protocol: closes each descriptor it is given, and counts
    in C{counts} the descriptors received and those its responder closed
    (the rest were closed for it, unclaimed, when their connection went).
    """
    import pyamp_fds

    Take = takeCommand()

    class Server(pyamp_fds.AMP):
        @Take.responder
        def take(self, fd):
            os.close(fd)
            counts["answered"] += 1
            return {}

        def fileDescriptorsReceived(self, descriptors):
            counts["received"] += len(descriptors)
            super().fileDescriptorsReceived(descriptors)

        def connectionLost(self, reason):
            super().connectionLost(reason)
            counts["connections"] += 1
            if stopWhenLost:
                reactor.stop()

    return Server


def forkServer(serve):
    """
    Fork a server running C{serve(counts)}, wait until its reactor runs, and
    return its process id and a function that waits for it to exit and
    returns the C{counts} it left.
    """
    readyRead, readyWrite = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(readyRead)
            counts = {"received": 0, "answered": 0, "connections": 0}
            from twisted.internet import reactor

            reactor.callWhenRunning(os.write, readyWrite, b"!")
            serve(counts)
            os.write(readyWrite, json.dumps(counts).encode())
        finally:
            os._exit(0)
    os.close(readyWrite)
    if os.read(readyRead, 1) != b"!":
        raise RuntimeError("the soak server failed to start")

    def wait():
        with os.fdopen(readyRead, "rb") as report:
            counts = json.loads(report.read() or b"{}")
        os.waitpid(pid, 0)
        return counts

    return pid, wait


def runStream(count):
    """
    The client of the C{stream} phase: C{count} descriptors, one per
    command, through one connection.
    """
    clientSock, serverSock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def serve(counts):
        clientSock.close()
        from twisted.internet import protocol, reactor

        from pyamp_fds.endpoints import adoptStreamConnection

        server = serverProtocol(reactor, counts, stopWhenLost=True)
        adoptStreamConnection(reactor, serverSock.fileno(), protocol.Factory.forProtocol(server))
        serverSock.close()
        reactor.run()

    pid, waitForServer = forkServer(serve)
    serverSock.close()

    from twisted.internet import protocol, reactor

    import pyamp_fds
    from pyamp_fds.endpoints import adoptStreamConnection

    Take = takeCommand()
    client = pyamp_fds.AMP()
    factory = protocol.Factory()
    factory.buildProtocol = lambda addr: client
    adoptStreamConnection(reactor, clientSock.fileno(), factory)
    clientSock.close()

    fd = os.open(os.devnull, os.O_RDONLY)
    state = {"sent": 0, "answered": 0}
    result = {"fds": {}}
    sampler = Sampler(reactor, pid, lambda: state["answered"])

    def send():
        state["sent"] += 1
        client.callRemote(Take, fd=fd).addCallbacks(answered, failed)

    def answered(_):
        state["answered"] += 1
        if state["sent"] < count:
            send()
        elif state["answered"] == count:
            finish()

    def failed(failure):
        result["error"] = failure.getErrorMessage()
        finish()

    def finish():
        result["seconds"] = time.monotonic() - sampler.started
        sampler.stop()
        result["fds"]["client"].append(openDescriptors(os.getpid()))
        result["fds"]["server"].append(openDescriptors(pid))
        client.transport.loseConnection()
        reactor.callLater(0, reactor.stop)

    def start():
        # Both reactors are running and the connection is up on both sides:
        # what is open now must be what is open at the end.  (Not later: in
        # the middle of the stream the server may be holding a read's worth.)
        result["fds"]["client"] = [openDescriptors(os.getpid())]
        result["fds"]["server"] = [openDescriptors(pid)]
        sampler.start()
        for _ in range(min(WINDOW, count)):
            send()

    reactor.callWhenRunning(start)
    reactor.run()
    os.close(fd)
    result["serverCounts"] = waitForServer()
    result.update(units="descriptors", count=count, samples=sampler.samples)
    return result


def runCycles(count):
    """
    The client of the C{cycles} phase: C{count} connections, each dropped
    with descriptors in flight.
    """
    directory = tempfile.mkdtemp(prefix="pyamp_fds-soak-")
    path = os.path.join(directory, "soak.sock")

    def serve(counts):
        from twisted.internet import protocol, reactor

        from pyamp_fds.endpoints import listenUNIX

        server = serverProtocol(reactor, counts, stopWhenLost=False)
        listenUNIX(reactor, path, protocol.Factory.forProtocol(server), backlog=BACKLOG)
        reactor.run()

    pid, waitForServer = forkServer(serve)

    from twisted.internet import endpoints, error, reactor

    import pyamp_fds
    from pyamp_fds.endpoints import UNIXClientEndpoint

    Take = takeCommand()
    endpoint = UNIXClientEndpoint(reactor, path)
    fd = os.open(os.devnull, os.O_RDONLY)
    state = {"started": 0, "done": 0}
    result = {"fds": {}, "ways": {}, "connectRetries": 0}
    sampler = Sampler(reactor, pid, lambda: state["done"])

    class Client(pyamp_fds.AMP):
        def connectionLost(self, reason):
            super().connectionLost(reason)
            state["done"] += 1
            if state["started"] < count:
                cycle()
            elif state["done"] == count:
                finish()

    def ignore(failure):
        return None

    def sent(proto):
        for _ in range(DESCRIPTORS_PER_CYCLE):
            proto.callRemote(Take, fd=fd).addErrback(ignore)

    def dropAfterSending(proto):
        # Everything goes out before the close; the answers meet a closed
        # socket.
        sent(proto)
        proto.transport.loseConnection()

    def abortQueued(proto):
        # The descriptors never leave: the transport must close its
        # duplicates.
        sent(proto)
        proto.transport.abortConnection()

    def abortFlushed(proto):
        # The descriptors are in the server's receive queue when the
        # connection goes.
        sent(proto)
        proto.transport.flushNow()
        proto.transport.abortConnection()

    def leaveUnclaimed(proto):
        # Descriptors with the start of a box that never ends: nothing
        # claims them, so the server must close them when the connection
        # goes.
        for _ in range(DESCRIPTORS_PER_CYCLE):
            proto.transport.sendFileDescriptor(fd)
        proto.transport.write(b"\x00\x04take")
        proto.transport.loseConnection()

    ways = [dropAfterSending, abortQueued, abortFlushed, leaveUnclaimed]

    def cycle():
        way = ways[state["started"] % len(ways)]
        state["started"] += 1
        result["ways"][way.__name__] = result["ways"].get(way.__name__, 0) + 1
        connect(way)

    def connect(way):
        connecting = endpoints.connectProtocol(endpoint, Client())
        connecting.addCallbacks(way, retry, errbackArgs=(way,)).addErrback(failed)

    def retry(failure, way):
        # The client can open connections faster than the server accepts
        # them, and Twisted reports a full backlog (EAGAIN from connect on a
        # UNIX socket) as a failed connection: try again shortly.
        failure.trap(error.ConnectError)
        result["connectRetries"] += 1
        if result["connectRetries"] > count:
            return failure
        reactor.callLater(0.01, connect, way)

    def failed(failure):
        result.setdefault("error", failure.getErrorMessage())
        finish()

    def finish():
        if "seconds" in result:
            return
        result["seconds"] = time.monotonic() - sampler.started
        result["fds"]["client"].append(openDescriptors(os.getpid()))
        settle()

    def settle(deadline=None):
        # The server may still be reading the last connections it accepted.
        if deadline is None:
            deadline = time.monotonic() + SETTLE_SECONDS
        now = openDescriptors(pid)
        if now != result["fds"]["server"][0] and time.monotonic() < deadline:
            reactor.callLater(0.05, settle, deadline)
            return
        result["fds"]["server"].append(now)
        result["settleSeconds"] = round(SETTLE_SECONDS - (deadline - time.monotonic()), 3)
        # The last sample, once the server is done with the backlog too.
        sampler.stop()
        reactor.stop()

    def start():
        result["fds"]["client"] = [openDescriptors(os.getpid())]
        result["fds"]["server"] = [openDescriptors(pid)]
        sampler.start()
        for _ in range(min(CONCURRENT_CYCLES, count)):
            cycle()

    reactor.callWhenRunning(start)
    reactor.run()
    os.close(fd)
    os.kill(pid, signal.SIGTERM)
    result["serverCounts"] = waitForServer()
    # The server's port removed the socket when it stopped.
    os.rmdir(directory)
    result.update(units="cycles", count=count, samples=sampler.samples)
    return result


def summarize(phase):
    """
    Resident set at the start, after the warm-up and at the end, the peak,
    and whether it stayed flat, for each process of a phase.
    """
    samples = phase["samples"]
    warm = next(s for s in samples if s["done"] >= WARMUP * phase["count"])
    after = [s for s in samples if s["done"] >= warm["done"]]
    summary = {}
    for who in ("client", "server"):
        warmRSS = warm[who]["rss"]
        highest = max(s[who]["rss"] for s in after)
        start, end = phase["fds"][who]
        summary[who] = {
            "rssStart": samples[0][who]["rss"],
            "rssWarm": warmRSS,
            "rssEnd": samples[-1][who]["rss"],
            "rssHighestAfterWarmup": highest,
            "peak": samples[-1][who]["hwm"],
            "growth": (highest - warmRSS) / warmRSS,
            "fdsStart": start,
            "fdsEnd": end,
        }
        summary[who]["flat"] = summary[who]["growth"] <= FLAT
    return summary


def formatTable(phases):
    header = (
        "%-8s %-7s %10s %10s %10s %10s %10s %8s %6s %6s  %s"
        % ("phase", "process", "RSS start", "warm", "end", "max warm+", "VmHWM",
           "growth", "fds<", "fds>", "verdict")
    )
    lines = [header, "-" * len(header)]
    for name, phase in phases.items():
        for who, s in phase["summary"].items():
            fine = s["flat"] and s["fdsStart"] == s["fdsEnd"]
            lines.append(
                "%-8s %-7s %7.1f MiB %6.1f MiB %6.1f MiB %6.1f MiB %6.1f MiB %+7.1f%% %6d %6d  %s"
                % (name, who, s["rssStart"] / 1024, s["rssWarm"] / 1024, s["rssEnd"] / 1024,
                   s["rssHighestAfterWarmup"] / 1024, s["peak"] / 1024, 100 * s["growth"],
                   s["fdsStart"], s["fdsEnd"], "ok" if fine else "FAIL")
            )
    for name, phase in phases.items():
        rate = phase["count"] / phase["seconds"]
        counts = phase["serverCounts"]
        lines.append(
            "%s: %d %s in %.1f s (%.0f/s); the server received %d descriptors on %d connections"
            " and its responder closed %d (the rest were closed unclaimed)"
            % (name, phase["count"], phase["units"], phase["seconds"], rate, counts["received"],
               counts["connections"], counts["answered"])
        )
        if phase.get("connectRetries"):
            lines.append("%s: %d connection attempts met a full backlog and were retried"
                         % (name, phase["connectRetries"]))
    return "\n".join(lines)


def chart(phases, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(phases), figsize=(6 * len(phases), 4.5), squeeze=False)
    for ax, (name, phase) in zip(axes[0], phases.items()):
        done = [s["done"] for s in phase["samples"]]
        for who, colour in (("client", "tab:blue"), ("server", "tab:orange")):
            ax.plot(done, [s[who]["rss"] / 1024 for s in phase["samples"]], color=colour,
                    label="%s VmRSS" % (who,))
            ax.plot(done, [s[who]["hwm"] / 1024 for s in phase["samples"]], color=colour,
                    linestyle="--", linewidth=0.8, label="%s VmHWM" % (who,))
        ax.axvline(WARMUP * phase["count"], color="grey", linestyle=":", label="end of warm-up")
        ax.set_title("%s: %d %s" % (name, phase["count"], phase["units"]))
        ax.set_xlabel(phase["units"])
        ax.set_ylabel("MiB")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def runPhase(name, count):
    """
    Run a phase in a fresh process, so that each starts from the same state
    and gets its own reactor.
    """
    output = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--phase", name, str(count)],
        check=True,
        stdout=subprocess.PIPE,
    ).stdout
    return json.loads(output)


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--descriptors", type=int, default=1_000_000)
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--phase", nargs=2, metavar=("NAME", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:
        name, count = args.phase[0], int(args.phase[1])
        run = {"stream": runStream, "cycles": runCycles}[name]
        json.dump(run(count), sys.stdout)
        return 0

    phases = {}
    for name, count in (("stream", args.descriptors), ("cycles", args.cycles)):
        print("%s: %d ..." % (name, count), flush=True)
        phases[name] = runPhase(name, count)
        if "error" in phases[name]:
            print("%s failed: %s" % (name, phases[name]["error"]), file=sys.stderr)
            return 1
        phases[name]["summary"] = summarize(phases[name])

    print(formatTable(phases))
    os.makedirs(args.out, exist_ok=True)
    report = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "warmup": WARMUP,
        "flat": FLAT,
        "phases": phases,
    }
    with open(os.path.join(args.out, "soak.json"), "w") as f:
        json.dump(report, f, indent=1)
    chart(phases, os.path.join(args.out, "soak.png"))
    print("wrote %s and %s" % (os.path.join(args.out, "soak.json"),
                               os.path.join(args.out, "soak.png")))
    fine = all(
        s["flat"] and s["fdsStart"] == s["fdsEnd"]
        for phase in phases.values()
        for s in phase["summary"].values()
    )
    return 0 if fine else 1


if __name__ == "__main__":
    sys.exit(main())
