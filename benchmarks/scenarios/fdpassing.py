"""
Raw descriptor passing between two processes: pyamp_fds.fdio against the
standard library and a plain C loop (the physical ceiling).
"""

import json
import os
import subprocess
import sys

from benchmarks import harness
from benchmarks.harness import Scenario, Target

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 200000


def _run(command):
    out = subprocess.run(command, capture_output=True, text=True, check=True,
                         timeout=harness.PEER_TIMEOUT).stdout
    result = json.loads(out)
    return result["descriptors"], result["seconds"]


def cLoop(batch):
    return _run([os.path.join(HERE, "c_fdloop"), str(TOTAL), str(batch)])


def python(kind):
    def measure(batch):
        total = TOTAL if batch > 1 else TOTAL // 4
        return _run([sys.executable, os.path.join(HERE, "fdpass_peer.py"), kind, str(total), str(batch)])

    return measure


SCENARIOS = [
    Scenario(
        name="fd-passing",
        title="Descriptors between two processes over a socketpair, receiver closing each",
        unit="descriptors/s",
        params=[1, 16, 64, 253],
        implementations={
            "c-loop": cLoop,
            "pyamp_fds.fdio": python("pyamp_fds"),
            "stdlib": python("stdlib"),
        },
        anchor="c-loop",
        targets=[Target("pyamp_fds.fdio", "c-loop", 0.9, param=253)],
        quickRepetitions=3,
        fullRepetitions=9,
    ),
]
