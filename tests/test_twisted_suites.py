# -*- test-case-name: tests.test_twisted_suites -*-
"""
Drop-in, by Twisted's own measure: Twisted's suites for AMP and for UNIX
transports (C{twisted.test.test_amp}, C{twisted.internet.test.test_unix}, on
every reactor they build) pass with pyamp_fds's C{AMP}, C{BinaryBoxProtocol},
C{Descriptor} and transports in place of Twisted's.

The suites run once, in a process of their own (L{tests.twisted_substitute}
does the substituting there, so nothing leaks into the other tests); the
tests here read what that run reported.
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.twisted_substitute import SUITES

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Where pyamp_fds differs from Twisted on purpose, or cannot do as Twisted
# does: the test (a test id, or for a suite built per reactor
# "module.Builder.test_name", meaning that test on every reactor built),
# and why.  Every test listed here must still fail; when one passes, take
# it off the list.  None today: the five that differed (FileDescriptorOverrun,
# the log event for a protocol that takes no descriptors, dataReceived before
# makeConnection, fileDescriptorReceived of a number not open here, StartTLS's
# error where TLS is not installed) now behave as Twisted's.
EXPECTED_FAILURES = {}

_FAILED = frozenset(["failure", "error", "unexpectedSuccess"])


def _listedAs(testId):
    """
    The key of L{EXPECTED_FAILURES} that lists C{testId}, or L{None}.
    """
    if testId in EXPECTED_FAILURES:
        return testId
    # A ReactorBuilder's test: module.Builder_SomeReactorTests.test_name.
    module, _, rest = testId.rpartition(".")
    module, _, builder = module.rpartition(".")
    builder, underscore, reactor = builder.rpartition("_")
    if underscore and reactor.endswith("ReactorTests"):
        key = "%s.%s.%s" % (module, builder, rest)
        if key in EXPECTED_FAILURES:
            return key
    return None


def runSuites(stock=False):
    """
    Run Twisted's suites with pyamp_fds substituted (or, if C{stock}, with
    Twisted's own classes), in a process of their own.

    @return: the results the run wrote (see L{tests.twisted_substitute}),
        with C{"output"} (its report) and C{"seconds"} added.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    with tempfile.TemporaryDirectory(prefix="twisted-suites-") as where:
        resultsPath = os.path.join(where, "results.json")
        started = time.monotonic()
        process = subprocess.run(
            [sys.executable, "-m", "tests.twisted_substitute"]
            + (["--stock"] if stock else [])
            + [resultsPath, *SUITES],
            cwd=where,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
        seconds = time.monotonic() - started
        output = process.stdout.decode("utf-8", "replace")
        if process.returncode != 0 or not os.path.exists(resultsPath):
            raise AssertionError(
                "the suites' process exited with %d:\n%s" % (process.returncode, output)
            )
        with open(resultsPath) as f:
            results = json.load(f)
    results["output"] = output
    results["seconds"] = seconds
    return results


class TwistedSuitesTests(SynchronousTestCase):
    """
    Twisted's own AMP and UNIX transport suites, run with pyamp_fds's
    classes substituted for Twisted's.
    """

    results = stockResults = None

    @classmethod
    def setUpClass(cls):
        if importlib.util.find_spec("hamcrest") is None:
            # Not a reason to skip: the suites are the measure of drop-in.
            raise AssertionError(
                "twisted.internet.test.test_unix needs PyHamcrest (it imports "
                "twisted.test.test_tcp), which Twisted's [test] extra installs: "
                "install pyhamcrest"
            )
        cls.results = runSuites()
        cls.stockResults = runSuites(stock=True)

    def outcomes(self):
        """
        Each test run: C{("failed", report)} if it failed (a failure, an
        error, or an unexpected success), C{("skipped", reason)} if the suite
        skipped it, C{("passed", None)} otherwise.
        """
        found = {}
        for testId, reports in self.results["outcomes"].items():
            bad = [detail or kind for kind, detail in reports if kind in _FAILED]
            skips = [detail for kind, detail in reports if kind == "skip"]
            if bad:
                found[testId] = ("failed", "\n".join(bad))
            elif skips:
                found[testId] = ("skipped", skips[0])
            else:
                found[testId] = ("passed", None)
        return found

    def test_substitutionTook(self):
        """
        The suites' modules see pyamp_fds's classes where Twisted's were:
        C{amp.AMP}, C{amp.BinaryBoxProtocol} and C{amp.Descriptor} in
        C{test_amp} (and its protocols derive from ours), and
        C{unix.Server}, C{Client}, C{Port} and C{Connector} in the reactors.
        """
        self.assertEqual(self.results["problems"], [])

    def test_everyReactorUsesOurTransports(self):
        """
        Every reactor the suites built listened, accepted and connected with
        pyamp_fds's port and transports: none of the reactor tests passed on
        Twisted's own.
        """
        evidence = self.results["evidence"]
        reactors = set(evidence["reactors"])
        self.assertTrue(reactors, "the suites built no reactor")
        made = {}
        for transport, reactor, count in evidence["transports"]:
            made.setdefault(reactor, set()).add(transport)
        for reactor in sorted(reactors):
            self.assertEqual(
                made.get(reactor), {"Server", "Client"}, "pyamp_fds transports on %s" % (reactor,)
            )
            self.assertIn(reactor, evidence["ports"])

    def test_ourProtocolsRan(self):
        """
        C{test_amp}'s protocols were pyamp_fds's: both L{pyamp_fds.AMP} and
        L{pyamp_fds.BinaryBoxProtocol} connections were made.
        """
        kinds = {kind for kind, over, count in self.results["evidence"]["protocols"]}
        self.assertEqual(kinds, {"AMP", "BinaryBoxProtocol"})

    def test_bothSuitesRan(self):
        """
        Tests of both suites ran, and none of them failed to import.
        """
        ran = self.results["outcomes"]
        for suite in SUITES:
            self.assertTrue(
                any(testId.startswith(suite + ".") for testId in ran),
                "no test of %s ran:\n%s" % (suite, self.results["output"][-5000:]),
            )

    def test_suitesPass(self):
        """
        Every test of the suites passes (or is skipped by the suite itself,
        as for reactors this machine cannot build), except those listed in
        L{EXPECTED_FAILURES}.
        """
        unexpected = {
            testId: detail
            for testId, (status, detail) in self.outcomes().items()
            if status == "failed" and _listedAs(testId) is None
        }
        if unexpected:
            self.fail(
                "%d of Twisted's tests failed with pyamp_fds substituted:\n\n%s"
                % (
                    len(unexpected),
                    "\n\n".join(
                        "%s\n%s" % (testId, detail)
                        for testId, detail in sorted(unexpected.items())
                    ),
                )
            )

    def test_expectedFailuresStillFail(self):
        """
        Each test in L{EXPECTED_FAILURES} exists and still fails, on every
        reactor it ran on: one that passes has been fixed, and comes off the
        list.
        """
        matched = {}
        for testId, (status, detail) in self.outcomes().items():
            key = _listedAs(testId)
            if key is not None and status != "skipped":
                matched.setdefault(key, {})[testId] = status
        self.assertEqual(set(matched), set(EXPECTED_FAILURES), "listed tests that did not run")
        passing = sorted(
            testId
            for found in matched.values()
            for testId, status in found.items()
            if status == "passed"
        )
        self.assertEqual(passing, [], "listed as expected to fail, but passed")

    def test_noMoreDescriptorsLeftOpen(self):
        """
        The suites leave no more descriptors open, of any kind, with
        pyamp_fds's classes than with Twisted's own (Twisted's tests leave
        some, the same with both).
        """
        ours, stock = self.results["leftOpen"], self.stockResults["leftOpen"]
        more = {
            kind: (count, stock.get(kind, 0))
            for kind, count in ours.items()
            if count > stock.get(kind, 0)
        }
        self.assertEqual(more, {}, "left open (ours, Twisted's)")

    def test_sameTestsAsStock(self):
        """
        The same tests ran as with Twisted's own classes, and those skipped
        were skipped there too.
        """
        ours, stock = self.results["outcomes"], self.stockResults["outcomes"]
        self.assertEqual(sorted(ours), sorted(stock))

        def skipped(outcomes):
            return sorted(
                testId
                for testId, reports in outcomes.items()
                if any(kind == "skip" for kind, detail in reports)
            )

        self.assertEqual(skipped(ours), skipped(stock))
