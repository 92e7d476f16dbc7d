"""
Where the time goes in the AMP scenario's pyamp_fds peers: C{make profile}.

    python benchmarks/profiles.py [--rate HZ] [--out DIR] [--only NAME]

Runs benchmarks/amp_peer.py with pyamp_fds, pipelined (256 calls in
flight) and one call at a time, under py-spy's sampling profiler (which
reads the processes' stacks with ptrace: root, or a kernel that allows
it), client and server together.  Writes, for each shape and side,
C{DIR/amp-<shape>-<side>.txt}: the functions that spent the most time
themselves, the functions with the most time under them, and the modules,
each as a share of that process's samples; and beside it the collapsed
stacks (C{.folded}, not kept in the repository: for flamegraph.pl or
speedscope).  Only samples taken while the reactor runs count (not the
imports or the set-up), and only those not waiting in a blocking call (py-spy
leaves out idle stacks, such as the reactor waiting in epoll; a process ready
to run but waiting for a CPU still counts, so on a busy machine a system call
that wakes the peer, such as a sendmsg one call at a time, looks dearer than
its CPU time).  Python frames only: time in a system call or in the C core
shows in the Python function that called it.
"""

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.harness import machine, progress  # noqa: E402

# name: (calls, window): each run long enough for a few thousand samples.
SHAPES = {
    "amp-window-256": (200000, 256),
    "amp-window-1": (20000, 1),
}
# A sample counts once the reactor is running.
RUNNING = "ReactorBase.mainLoop ("
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
TOP = 25


def record(pyspy, calls, window, rate, raw):
    """
    Run the pyamp_fds peers under py-spy, its collapsed stacks to C{raw}.

    @return: what amp_peer.py printed (its rate under the profiler).
    """
    command = [
        pyspy, "record", "--format", "raw", "--rate", str(rate), "--subprocesses",
        "--output", raw, "--",
        sys.executable, os.path.join(HERE, "amp_peer.py"), "pyamp_fds", str(calls), str(window), "1",
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit("py-spy failed (it needs ptrace: run as root, or set "
                 "kernel.yama.ptrace_scope=0):\n" + done.stderr)
    # py-spy's own messages share the standard output.
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def split(raw):
    """
    The samples of the client (the process py-spy started) and of the server
    (its child), each a list of (frames, count) with the process frames
    removed and only samples taken while the reactor runs.
    """
    sides = {"client": [], "server": []}
    skipped = 0
    with open(raw) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            processes = 0
            while processes < len(frames) and frames[processes].startswith("process "):
                processes += 1
            frames = frames[processes:]
            if not any(frame.startswith(RUNNING) for frame in frames):
                skipped += int(count)
                continue
            sides["client" if processes == 1 else "server"].append((frames, int(count)))
    return sides, skipped


def function(frame):
    """
    C{"name (path)"} without the line number, and the module it is in.
    """
    match = FRAME.match(frame)
    if match is None:
        return frame, "?"
    path = match.group("file")
    module = path[:-3] if path.endswith(".py") else path
    return "%s (%s)" % (match.group("function"), path), module.replace("/", ".")


def summarize(samples):
    own, total, modules = collections.Counter(), collections.Counter(), collections.Counter()
    for frames, count in samples:
        names = [function(frame) for frame in frames]
        name, module = names[-1]
        own[name] += count
        modules[module] += count
        # Every sample is under the reactor's loop: its callers say nothing.
        below = next(i for i, frame in enumerate(frames) if frame.startswith(RUNNING)) + 1
        for seen in {n for n, _ in names[below:]}:
            total[seen] += count
    return own, total, modules


def table(title, counter, samples, limit):
    lines = ["", title, "%7s  %s" % ("share", "where")]
    for name, count in counter.most_common(limit):
        lines.append("%6.1f%%  %s" % (100.0 * count / samples, name))
    return lines


def report(name, side, calls, window, rate, result, samples, skipped):
    count = sum(c for _, c in samples)
    own, total, modules = summarize(samples)
    about = machine()
    lines = [
        "%s, %s: pyamp_fds, %d calls, %d in flight, one descriptor each (benchmarks/amp_peer.py)"
        % (name, side, calls, window),
        "py-spy record --rate %d --subprocesses (Python frames only; idle samples left out)" % rate,
        "%s; %s, %s CPUs; Python %s, Twisted %s"
        % (about["date"], about["cpu"], about["cpus"], about["python"], about["twisted"]),
        "under the profiler: %.0f descriptors/s, %.1f us CPU per descriptor (both processes)"
        % (result["descriptors"] / result["seconds"], result["cpu"] / result["descriptors"] * 1e6),
        "%d samples of this process while its reactor ran (%d of both processes before or after)"
        % (count, skipped),
    ]
    if count:
        lines += table("Own time by function (top %d)" % TOP, own, count, TOP)
        lines += table("Own time by module", modules, count, TOP)
        lines += table("Total time by function under the reactor's loop, callees included (top %d)" % TOP, total, count, TOP)
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=500, help="samples per second")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "profiles"))
    parser.add_argument("--only", action="append", choices=list(SHAPES))
    args = parser.parse_args(argv)
    pyspy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
    if pyspy is None:
        sys.exit("py-spy is not installed (pip install py-spy, or the bench extra)")
    os.makedirs(args.out, exist_ok=True)
    started = time.time()
    for name in args.only or list(SHAPES):
        calls, window = SHAPES[name]
        progress("profiling %s (%d calls, %d in flight)" % (name, calls, window))
        with tempfile.TemporaryDirectory() as scratch:
            raw = os.path.join(scratch, "stacks.raw")
            result = record(pyspy, calls, window, args.rate, raw)
            sides, skipped = split(raw)
        for side, samples in sides.items():
            base = os.path.join(args.out, "%s-%s" % (name, side))
            with open(base + ".folded", "w") as f:
                for frames, count in samples:
                    f.write("%s %d\n" % (";".join(frames), count))
            with open(base + ".txt", "w") as f:
                f.write(report(name, side, calls, window, args.rate, result, samples, skipped))
            progress("  wrote %s.txt and .folded" % (base,))
    progress("done in %.0f s" % (time.time() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
