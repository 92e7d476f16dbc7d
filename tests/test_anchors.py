"""
Tests for the AMP benchmark's anchors: L{benchmarks.asyncio_peer} (the
conversation written by hand on asyncio or uvloop), C{c_rpcbatch} (the
batched C floor), C{echo_peer} with descriptors (Twisted's reactor and
pyamp_fds's transport without AMP) and C{apifloor_peer} (AMP's API at its
least cost), each run as the benchmark runs it, in its own two processes,
with few calls: each must answer every call, receive every descriptor, and
batch when calls are pipelined.  And C{counts.py}, which counts what a call
costs in one process.
"""

import json
import os
import shutil
import subprocess
import sys
import unittest

from benchmarks import asyncio_peer
from tests.fdcheck import assertNoNewDescriptors, openDescriptors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
TIMEOUT = 60


def run(command):
    """
    Run a benchmark peer and return what it printed, parsed.
    """
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    if done.returncode != 0:
        raise AssertionError("%r exited with %d: %s" % (command, done.returncode, done.stderr))
    return json.loads(done.stdout)


def uvloopMissing():
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return True
    return False


class AsyncioPeerTests(unittest.TestCase):
    """
    Tests for C{benchmarks/asyncio_peer.py}, run as a program.
    """

    def peer(self, loop, calls, window):
        return run([sys.executable, os.path.join(BENCHMARKS, "asyncio_peer.py"), loop, str(calls),
                    str(window)])

    def test_pipelined(self):
        """
        With 256 calls in flight every call is answered, and the calls of one
        loop turn leave together, as do the answers of one read: fewer
        sendmsg calls, both sides together, than calls (one at a time takes
        two per call).
        """
        result = self.peer("asyncio", 1000, 256)
        self.assertEqual(result["descriptors"], 1000)
        self.assertLess(result["sendmsg"], 1000)
        self.assertGreater(result["cpu"], 0)

    def test_oneAtATime(self):
        """
        One call at a time, each call is one sendmsg from the client and one
        answer from the server.
        """
        result = self.peer("asyncio", 200, 1)
        self.assertEqual(result["descriptors"], 200)
        self.assertEqual(result["sendmsg"], 400)

    @unittest.skipIf(uvloopMissing(), "uvloop is not installed (it comes with the bench extra)")
    def test_uvloop(self):
        """
        The same program runs on uvloop.
        """
        result = self.peer("uvloop", 1000, 256)
        self.assertEqual(result["descriptors"], 1000)
        self.assertLess(result["sendmsg"], 1000)


class LeakedTests(unittest.TestCase):
    """
    Tests for L{asyncio_peer.leaked}, the peer's check that every descriptor
    it received was closed.
    """

    def test_leaked(self):
        """
        A descriptor on C{os.devnull} opened since the snapshot is reported
        until it is closed.
        """
        before = openDescriptors()
        snapshot = asyncio_peer.openDescriptors()
        fd = os.open(os.devnull, os.O_RDONLY)
        try:
            self.assertEqual(asyncio_peer.leaked(snapshot), [fd])
        finally:
            os.close(fd)
        self.assertEqual(asyncio_peer.leaked(snapshot), [])
        assertNoNewDescriptors(before)


class BatchedFloorTests(unittest.TestCase):
    """
    Tests for C{benchmarks/c_rpcbatch.c}, built here with the warnings the
    Makefile uses.
    """

    def setUp(self):
        compiler = os.environ.get("CC", "cc")
        if shutil.which(compiler) is None:
            self.skipTest("no C compiler")
        build = os.path.join(ROOT, "build", "tests")
        os.makedirs(build, exist_ok=True)
        self.program = os.path.join(build, "c_rpcbatch")
        subprocess.run([compiler, "-O2", "-std=gnu99", "-Wall", "-Wextra", "-Werror", "-o",
                        self.program, os.path.join(BENCHMARKS, "c_rpcbatch.c")], check=True)

    def test_pipelined(self):
        """
        With 256 calls in flight every descriptor is received (the program
        fails otherwise), in sendmsg calls of up to 253: fewer sendmsg and
        write calls, both sides together, than calls.
        """
        result = run([self.program, "2000", "256"])
        self.assertEqual(result["descriptors"], 2000)
        self.assertLess(result["sendmsg"], 2000)

    def test_oneAtATime(self):
        """
        One call at a time, each call is one sendmsg and one answer.
        """
        result = run([self.program, "200", "1"])
        self.assertEqual(result["sendmsg"], 400)


class PeerProgramTests:
    """
    What a floor's program must do, as the benchmark runs it: mixed into a
    C{TestCase} whose C{peer(calls, window)} runs the program and returns
    what it printed.
    """

    def test_pipelined(self):
        """
        With 256 calls in flight every one is answered and every descriptor
        received and closed (the program fails otherwise), many to a
        C{sendmsg}.
        """
        result = self.peer(1000, 256)
        self.assertEqual(result["descriptors"], 1000)
        self.assertLess(result["sendmsg"], 100)
        self.assertGreater(result["cpu"], 0)

    def test_oneAtATime(self):
        """
        One call at a time, each is one C{sendmsg} from the client (the
        request and its descriptor together) and one answer from the
        server.
        """
        result = self.peer(200, 1)
        self.assertEqual(result["descriptors"], 200)
        self.assertEqual(result["sendmsg"], 400)


class EchoFloorTests(PeerProgramTests, unittest.TestCase):
    """
    Tests for C{benchmarks/echo_peer.py} with a descriptor per request.
    """

    def peer(self, calls, window):
        return run([sys.executable, os.path.join(BENCHMARKS, "echo_peer.py"), str(calls),
                    str(window), "descriptors"])


class APIFloorTests(PeerProgramTests, unittest.TestCase):
    """
    Tests for C{benchmarks/apifloor_peer.py}: AMP's API at its least cost.
    """

    def peer(self, calls, window, *sides):
        return run([sys.executable, os.path.join(BENCHMARKS, "apifloor_peer.py"), str(calls),
                    str(window), *sides])

    def test_answeredByAMP(self):
        """
        The floor's calls are AMP's: a L{pyamp_fds.AMP} server answers each
        one and receives and closes each descriptor.
        """
        result = self.peer(1000, 256, "floor", "pyamp_fds")
        self.assertEqual(result["descriptors"], 1000)

    def test_answersAMP(self):
        """
        The floor's server answers L{pyamp_fds.AMP}'s calls, pipelined and
        one at a time.
        """
        self.assertEqual(self.peer(1000, 256, "pyamp_fds", "floor")["descriptors"], 1000)
        self.assertEqual(self.peer(50, 1, "pyamp_fds", "floor")["descriptors"], 50)


class CountsTests(unittest.TestCase):
    """
    Tests for C{benchmarks/counts.py}, which counts what a call costs with
    client and server in one process.
    """

    def test_perCall(self):
        """
        Counted by difference of two runs, each call of pyamp_fds and of the
        floor fires one L{twisted.internet.defer.Deferred} and closes one
        descriptor in its responder; the echo fires none.
        """
        done = subprocess.run(
            [sys.executable, os.path.join(BENCHMARKS, "counts.py"), "--window", "256", "--calls",
             "1200", "pyamp_fds", "floor", "echo"],
            capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(done.returncode, 0, done.stderr)
        sections = {}
        for line in done.stdout.splitlines():
            if not line.startswith(" "):
                name = line.split()[0]
                sections[name] = {}
            else:
                # (A file name may hold a space: "<frozen abc>".)
                count, function = line.split(None, 1)
                sections[name][function] = float(count)
        self.assertEqual(sorted(sections), ["echo", "floor", "pyamp_fds"])
        for name in ("pyamp_fds", "floor"):
            self.assertEqual(sections[name].get("defer.py:callback"), 1.0, name)
            self.assertEqual(sections[name].get("counts.py:take", sections[name].get(
                "apifloor_peer.py:take")), 1.0, name)
        self.assertNotIn("defer.py:callback", sections["echo"])
