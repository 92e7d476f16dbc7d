"""
The AMP scenario counted rather than timed: client and server in one
process over a socket pair, one descriptor per call, the responder closing
it, so that what a call costs both ends can be counted exactly, whatever
else the machine runs.

    python benchmarks/counts.py [--window N] [--what calls|lines|instructions] [NAME ...]

NAME is C{pyamp_fds} (L{pyamp_fds.AMP} on both ends), C{floor} (AMP's API
at its least cost: C{apifloor_peer.py}'s protocol on both ends) or C{echo}
(Twisted protocols echoing a request with a descriptor each over pyamp_fds's
transport, no AMP); all three by default.

C{--what calls} counts the Python functions run per call
(C{sys.setprofile}) and lists those run at least once a call; C{--what
lines}, the lines of Python run per call, by file (C{sys.settrace}); C{--what
instructions} counts the instructions per call under C{valgrind
--tool=callgrind} (with C{PYTHONHASHSEED=0} unless it is set: dict layouts
move the count by a few percent).  Either is the difference between a run
of C{--calls} calls and a run of a sixth as many, divided by the
difference, so that start-up and warm-up cancel out.
"""

import argparse
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import apifloor_peer  # noqa: E402
from apifloor_peer import adopt  # noqa: E402
from echo_peer import echoProtocols  # noqa: E402

NAMES = ("pyamp_fds", "floor", "echo")


def ampPair(name):
    """
    The client, the server and the command of C{name}'s AMP.
    """
    from twisted.protocols import amp

    import pyamp_fds

    class Take(amp.Command):
        arguments = [(b"fd", pyamp_fds.Descriptor())]
        response = []

    if name == "pyamp_fds":
        class Server(pyamp_fds.AMP):
            @Take.responder
            def take(self, fd):
                os.close(fd)
                return {}

        return pyamp_fds.AMP(), Server(), Take
    base = apifloor_peer.floorProtocol()

    class FloorServer(base):
        responders = {Take.commandName: (Take, apifloor_peer.take)}

    return base(), FloorServer(), Take


def echoPair(fd, calls, window, done):
    """
    The echo's client and server (C{echo_peer}'s protocols), and how to
    start the conversation.
    """
    Echo, Caller = echoProtocols()
    caller = Caller(calls, fd, True, lambda caller: done())
    return caller, Echo(), lambda: caller.send(window)


def converse(name, calls, window, what=None):
    """
    Run C{calls} calls of C{name}, C{window} in flight, and return the
    Python functions run, by name, if C{what} is C{"calls"}, or the lines
    of Python run, by file, if it is C{"lines"}.
    """
    from twisted.internet import reactor

    counts = collections.Counter()

    def count(frame, event, arg):
        if event == "call":
            code = frame.f_code
            counts["%s:%s" % (os.path.basename(code.co_filename), code.co_name)] += 1

    def line(frame, event, arg):
        if event == "line":
            counts[os.path.basename(frame.f_code.co_filename)] += 1
        return line

    def done():
        sys.setprofile(None)
        sys.settrace(None)
        reactor.stop()

    fd = os.open(os.devnull, os.O_RDONLY)
    if name == "echo":
        client, server, start = echoPair(fd, calls, window, done)
    else:
        client, server, Take = ampPair(name)
        state = {"sent": 0, "answered": 0}

        def send():
            state["sent"] += 1
            client.callRemote(Take, fd=fd).addCallback(answered).addErrback(failed)

        def answered(_):
            state["answered"] += 1
            if state["answered"] == calls:
                done()
            elif state["sent"] < calls:
                send()

        def failed(failure):
            done()
            failure.printTraceback()

        def start():
            for _ in range(min(window, calls)):
                send()

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    adopt(reactor, a, server)
    adopt(reactor, b, client)

    def begin():
        if what == "calls":
            sys.setprofile(count)
        elif what == "lines":
            sys.settrace(lambda frame, event, arg: line)
        start()

    reactor.callWhenRunning(begin)
    reactor.run()
    os.close(fd)
    return counts


def child(name, calls, window, what):
    counts = converse(name, calls, window, what)
    print(json.dumps(counts))


def runChild(name, calls, window, what):
    command = [sys.executable, os.path.abspath(__file__), "--child", name, str(calls), str(window),
               what]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return collections.Counter(json.loads(done.stdout.strip().splitlines()[-1]))


def perCall(name, calls, window, what):
    """
    Python functions (C{what} C{"calls"}) or lines (C{"lines"}) run per
    call, by name or file, by difference of two runs.
    """
    short = calls // 6
    few = runChild(name, short, window, what)
    many = runChild(name, calls, window, what)
    return {key: (many[key] - few[key]) / (calls - short) for key in many}


def instructions(name, calls, window):
    """
    Instructions per call under callgrind, by difference of two runs.
    """
    env = dict(os.environ)
    env.setdefault("PYTHONHASHSEED", "0")
    short = calls // 6
    totals = []
    with tempfile.TemporaryDirectory() as scratch:
        for n in (short, calls):
            out = os.path.join(scratch, "callgrind.%d" % (n,))
            command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
                       sys.executable, os.path.abspath(__file__), "--child", name, str(n),
                       str(window), "none"]
            subprocess.run(command, capture_output=True, check=True, env=env)
            with open(out) as f:
                for line in f:
                    if line.startswith("summary:") or line.startswith("totals:"):
                        totals.append(int(line.split()[1]))
                        break
    return (totals[1] - totals[0]) / (calls - short)


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(NAMES), metavar="NAME")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--calls", type=int, default=None,
                        help="calls in the longer run (default: 24,000 for instructions, "
                        "6,000 for calls)")
    parser.add_argument("--what", choices=("calls", "lines", "instructions"), default="calls")
    options = parser.parse_args()
    for name in options.names:
        if name not in NAMES:
            parser.error("unknown NAME %r (one of %s)" % (name, ", ".join(NAMES)))
    if options.what == "instructions":
        if shutil.which("valgrind") is None:
            parser.error("--what instructions needs valgrind")
        calls = options.calls or 24000
        for name in options.names:
            print("%-10s window %d: %.0f instructions per call" % (
                name, options.window, instructions(name, calls, options.window)))
        return
    calls = options.calls or 6000
    unit, least = {"calls": ("Python functions", 0.995), "lines": ("lines of Python", 0.05)}[
        options.what]
    for name in options.names:
        counted = perCall(name, calls, options.window, options.what)
        print("%-10s window %d: %.1f %s per call" % (
            name, options.window, sum(counted.values()), unit))
        for key, value in sorted(counted.items(), key=lambda kv: (-kv[1], kv[0])):
            if value >= least:
                print("    %5.2f %s" % (value, key))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        main()
