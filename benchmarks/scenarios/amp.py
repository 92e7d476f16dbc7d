"""
End to end through AMP between two processes, one descriptor per command,
the responder closing it: stock Twisted against pyamp_fds, pipelined and one
call at a time, beside what a Python programmer without Twisted would write
for the same conversation with the same ownership (asyncio_peer, on asyncio
and on uvloop), and five floors: Twisted protocols that only echo bytes
(echo_peer: the reactor's own cost, no AMP, no descriptors), the same with a
descriptor per request over pyamp_fds's transport (echo_peer descriptors:
everything of a call but AMP itself, so what pyamp_fds's protocol, dispatch
and codec could reach on Twisted's reactor), AMP's API at its least cost on
the same transport (apifloor_peer: a Deferred per call, the responder called
with keyword arguments, AMP's boxes on the wire, and none of what makes a
protocol safe or general) and plain C, one
descriptor per sendmsg (c_rpcloop) or up to 253 (c_rpcbatch: no Python,
blocking calls); and pyamp_fds over 64 connections at once.

Every implementation also reports the CPU time of both its processes per
descriptor, each process counted over its own part of the conversation (not
its start-up).
"""

import json
import os
import subprocess
import sys

from benchmarks import harness
from benchmarks.harness import Scenario, Target, progress

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (calls, window per connection, connections) for each parameter.
SHAPES = {
    "window 256": (20000, 256, 1),
    "window 1": (4000, 1, 1),
}
# Each connection as busy as the single one (256 calls in flight): does the
# aggregate hold up when the same traffic comes over 64 connections at once?
# Enough calls that filling and draining the pipelines (16,384 calls in
# flight over 64 connections) weigh little against the steady state.
SPREAD = {
    "1 connection": (64000, 256, 1),
    "64 connections": (256000, 256, 64),
}


# The batched C floor and the echo floor pipeline a call in well under a
# microsecond: ten times the calls, so that a run lasts longer than a few
# scheduler time slices.
FAST_SCALE = {"window 256": 10, "window 1": 1}

SYSCALLS = "sendmsg+recvmsg per descriptor"
CPU = "CPU us per descriptor, both processes"


def _measure(command):
    """
    Run one peer program and turn the JSON it prints into what the harness
    takes: descriptors, seconds, and the extra figures it reported.
    """
    result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True,
                                       timeout=harness.PEER_TIMEOUT).stdout)
    descriptors = result["descriptors"]
    extras = {CPU: result["cpu"] / descriptors * 1e6}
    if "sendmsg" in result:
        extras[SYSCALLS] = (result["sendmsg"] + result["recvmsg"]) / descriptors
    return descriptors, result["seconds"], extras


def _run(kind, calls, window, connections):
    return _measure([sys.executable, os.path.join(HERE, "amp_peer.py"), kind, str(calls),
                     str(window), str(connections)])


def shape(kind):
    def measure(param):
        return _run(kind, *SHAPES[param])

    return measure


def byHand(loop):
    """
    The same conversation written by hand on C{loop} ("asyncio" or
    "uvloop"), without Twisted.
    """

    def measure(param):
        calls, window, connections = SHAPES[param]
        return _measure([sys.executable, os.path.join(HERE, "asyncio_peer.py"), loop, str(calls),
                         str(window)])

    return measure


def cLoop(param):
    calls, window, connections = SHAPES[param]
    return _measure([os.path.join(HERE, "c_rpcloop"), str(calls), str(window)])


def cBatch(param):
    calls, window, connections = SHAPES[param]
    return _measure([os.path.join(HERE, "c_rpcbatch"), str(calls * FAST_SCALE[param]),
                     str(window)])


def twistedEcho(param):
    calls, window, connections = SHAPES[param]
    return _measure([sys.executable, os.path.join(HERE, "echo_peer.py"),
                     str(calls * FAST_SCALE[param]), str(window)])


def twistedEchoDescriptors(param):
    calls, window, connections = SHAPES[param]
    return _measure([sys.executable, os.path.join(HERE, "echo_peer.py"),
                     str(calls * FAST_SCALE[param]), str(window), "descriptors"])


def apiFloor(param):
    calls, window, connections = SHAPES[param]
    return _measure([sys.executable, os.path.join(HERE, "apifloor_peer.py"), str(calls),
                     str(window)])


def spread(name):
    def measure(param):
        return _run("pyamp_fds", *SPREAD[name])

    return measure


IMPLEMENTATIONS = {
    "twisted": shape("stock"),
    "pyamp_fds": shape("pyamp_fds"),
    "asyncio": byHand("asyncio"),
    "uvloop": byHand("uvloop"),
    "twisted-echo": twistedEcho,
    "twisted-echo-fds": twistedEchoDescriptors,
    "amp-api-floor": apiFloor,
    "c-loop": cLoop,
    "c-batch": cBatch,
}
TARGETS = [
    Target("pyamp_fds", "twisted", 5.0, param="window 256"),
    Target("pyamp_fds", "twisted", 2.0, param="window 1",
           text="pyamp_fds >= 2x twisted, one call at a time"),
    Target("pyamp_fds", "asyncio", 1.0, text="pyamp_fds >= 1x asyncio by hand"),
    Target("pyamp_fds", "uvloop", 1.0, param="window 256",
           text="pyamp_fds >= 1x uvloop by hand (stretch)"),
    Target("pyamp_fds", None, 0.05, param="window 256", figure=SYSCALLS,
           text="pyamp_fds <= 0.05 sendmsg+recvmsg per descriptor"),
    # Pipelined only: one call at a time, every call is two wake-ups of each
    # process, and even the C loop spends some 15 us of CPU on them.
    Target("pyamp_fds", None, 5.0, param="window 256", figure=CPU,
           text="pyamp_fds <= 5 us CPU per descriptor, both processes"),
]


def _uvloopMissing():
    """
    Why uvloop cannot be used here (the peers run on this same Python), or
    L{None}.
    """
    try:
        import uvloop  # noqa: F401
    except ImportError as e:
        return str(e)
    return None


# uvloop comes with make bench (the bench extra); where it cannot be imported
# that anchor is left out, and said so, rather than failing the scenario.
_missing = _uvloopMissing()
if _missing is not None:
    progress("amp scenario: the uvloop anchor is skipped: %s (pip install uvloop, or the "
             "bench extra)" % (_missing,))
    del IMPLEMENTATIONS["uvloop"]
    TARGETS = [t for t in TARGETS if t.anchor != "uvloop"]

SCENARIOS = [
    Scenario(
        name="amp",
        title="AMP commands carrying one descriptor each, between two processes",
        unit="descriptors/s",
        params=list(SHAPES),
        implementations=IMPLEMENTATIONS,
        anchor="twisted",
        targets=TARGETS,
        extras=[SYSCALLS, CPU],
    ),
    Scenario(
        name="amp-connections",
        title="pyamp_fds AMP, 256 calls in flight on each of 1 or 64 connections",
        unit="descriptors/s",
        params=["pipelined"],
        implementations={"1 connection": spread("1 connection"),
                         "64 connections": spread("64 connections")},
        anchor="1 connection",
        targets=[Target("64 connections", "1 connection", 0.8,
                        text="64 connections >= 0.8x one connection")],
    ),
]
