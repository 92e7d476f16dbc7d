"""
End to end through AMP between two processes, one descriptor per command,
the responder closing it: stock Twisted against pyamp_fds, pipelined and one
call at a time, with two floors for the same conversation: Twisted protocols
that only echo bytes (echo_peer: the reactor's own cost, no AMP, no
descriptors) and plain C (c_rpcloop: no Python, blocking calls); and pyamp_fds
over 64 connections at once.
"""

import json
import os
import subprocess
import sys

from benchmarks.harness import Scenario, Target

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


def _run(kind, calls, window, connections):
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "amp_peer.py"), kind, str(calls), str(window),
         str(connections)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(out)
    syscalls = result["sendmsg"] + result["recvmsg"]
    return (
        result["descriptors"],
        result["seconds"],
        {"sendmsg+recvmsg per descriptor": syscalls / result["descriptors"]},
    )


def shape(kind):
    def measure(param):
        return _run(kind, *SHAPES[param])

    return measure


def _floor(command):
    result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    return result["descriptors"], result["seconds"]


def cLoop(param):
    calls, window, connections = SHAPES[param]
    return _floor([os.path.join(HERE, "c_rpcloop"), str(calls), str(window)])


def twistedEcho(param):
    calls, window, connections = SHAPES[param]
    return _floor([sys.executable, os.path.join(HERE, "echo_peer.py"), str(calls), str(window)])


def spread(name):
    def measure(param):
        return _run("pyamp_fds", *SPREAD[name])

    return measure


SYSCALLS = "sendmsg+recvmsg per descriptor"

SCENARIOS = [
    Scenario(
        name="amp",
        title="AMP commands carrying one descriptor each, between two processes",
        unit="descriptors/s",
        params=list(SHAPES),
        implementations={
            "twisted": shape("stock"),
            "pyamp_fds": shape("pyamp_fds"),
            "twisted-echo": twistedEcho,
            "c-loop": cLoop,
        },
        anchor="twisted",
        targets=[
            Target("pyamp_fds", "twisted", 5.0, param="window 256"),
            Target("pyamp_fds", "twisted", 2.0, param="window 1",
                   text="pyamp_fds >= 2x twisted, one call at a time"),
            Target("pyamp_fds", None, 0.05, param="window 256", figure=SYSCALLS,
                   text="pyamp_fds <= 0.05 sendmsg+recvmsg per descriptor"),
        ],
        extras=[SYSCALLS],
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
