"""
Many descriptors per command between two processes, the responder closing
them: pyamp_fds's DescriptorList of 253 (a few calls in flight), sending
duplicates (the default: the caller may close its own at once) or the
descriptors themselves (duplicate=False, Twisted's rule), against stock
Twisted, which has only amp.Descriptor and so sends one per command
(pipelined, 256 in flight), and the plain C loop sending 253 per sendmsg.

Duplicating costs the sender a system call per descriptor (the dup) and
the kernel's work of closing each duplicate once sent (one close_range per
run of them), which neither the C loop nor Twisted's rule pays: on a
machine where a system call is dear, more than the C loop's whole cost per
descriptor.
"""

import json
import os
import subprocess
import sys

from benchmarks import harness
from benchmarks.harness import Scenario, Target

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_CALL = 253
TOTAL = PER_CALL * 1600
WINDOW = 8
SYSCALLS = "sendmsg+recvmsg per descriptor"


def _run(command):
    out = subprocess.run(command, capture_output=True, text=True, check=True,
                         timeout=harness.PEER_TIMEOUT).stdout
    result = json.loads(out)
    return (
        result["descriptors"],
        result["seconds"],
        {SYSCALLS: (result["sendmsg"] + result["recvmsg"]) / result["descriptors"]},
    )


def cLoop(param):
    return _run([os.path.join(HERE, "c_fdloop"), str(TOTAL), str(PER_CALL)])


def pyampFds(kind):
    def measure(param):
        return _run([sys.executable, os.path.join(HERE, "bulk_peer.py"), kind,
                     str(TOTAL), str(PER_CALL), str(WINDOW)])

    return measure


def twisted(param):
    return _run([sys.executable, os.path.join(HERE, "bulk_peer.py"), "stock",
                 str(TOTAL // 40), "1", "256"])


SCENARIOS = [
    Scenario(
        name="bulk",
        title="253 descriptors per AMP command between two processes, responder closing them",
        unit="descriptors/s",
        params=["253 per call"],
        implementations={
            "c-loop": cLoop,
            "pyamp_fds": pyampFds("pyamp_fds"),
            "pyamp_fds lent": pyampFds("pyamp_fds-lent"),
            "twisted": twisted,
        },
        anchor="c-loop",
        targets=[
            Target("pyamp_fds", "c-loop", 0.5),
            Target("pyamp_fds lent", "c-loop", 0.5),
            Target("pyamp_fds", "twisted", 10.0),
        ],
        extras=[SYSCALLS],
    ),
]
