# -*- test-case-name: tests.test_twisted_suites -*-
"""
Twisted's own suites for AMP and UNIX transports, run with pyamp_fds's
classes in place of Twisted's.

Run in a process of its own (the substitution is for the whole process)::

    python -m tests.twisted_substitute [--stock] RESULTS.json [TEST NAME ...]

It substitutes, runs the named tests (by default L{SUITES}) with trial's
runner, prints trial's verbose report, and writes C{RESULTS.json}:
C{"outcomes"}, each test's reports (C{[kind, detail]}: C{"success"},
C{"failure"}, C{"error"}, C{"skip"}, ...); C{"problems"}, what L{staticChecks}
found wrong; C{"evidence"}, what L{Evidence} counted; C{"leftOpen"}, the
descriptors the run opened and left open, counted by kind (Twisted's own
tests leave some).  Whether that is a pass is for L{tests.test_twisted_suites}
to say.  With C{--stock}, nothing is substituted: the same run with
Twisted's own classes, to compare with.

What is substituted, and how:

  - C{twisted.protocols.amp}'s C{AMP}, C{BinaryBoxProtocol} and
    C{Descriptor} are pyamp_fds's for every module that imports C{amp}
    after L{substitute} (Twisted's test modules among them).
  - C{twisted.internet.unix}'s C{Server}, C{Client}, C{Port} and
    C{Connector} are pyamp_fds.transport's, for those modules and for the
    reactors: C{listenUNIX}, C{connectUNIX}, C{adoptStreamPort} and
    C{adoptStreamConnection} of every reactor built on
    L{twisted.internet.posixbase} look them up there.

One intended difference is configured rather than fixed: pyamp_fds's
protocols refuse descriptors that arrive through C{fileDescriptorReceived}
from a transport that cannot report descriptors the kernel dropped
(C{MSG_CTRUNC}), as Twisted's own and its test fakes cannot, because after
such a drop every later ordinal names the wrong file.  Twisted's descriptor
tests feed numbers through exactly such fakes, so the run sets
C{allowUncheckedDescriptors = True} on the substituted classes, the opt-in
a user of Twisted's transports would set (L{INTENDED_DIFFERENCES}).

Neither module is changed in place: those who import them afterwards get a
stand-in module that holds the substitutes and passes every other name, read,
set or deleted, through to the real module.  In place would not work:
Twisted's classes name each other through their module's globals
(C{AMP.makeConnection} calls C{BinaryBoxProtocol.makeConnection(self, ...)},
pyamp_fds's C{Server} calls C{unix.Server.__init__}), and with the names
rebound those calls would land on the subclasses and recurse.
"""

import gc
import json
import sys
from collections import Counter
from types import ModuleType

SUITES = ("twisted.test.test_amp", "twisted.internet.test.test_unix")

#: What the run configures to differ from pyamp_fds's defaults, and why.
INTENDED_DIFFERENCES = {
    "allowUncheckedDescriptors = True": (
        "Twisted's descriptor tests pass descriptors through fakes of its own "
        "transport, which cannot report dropped descriptors; pyamp_fds refuses "
        "those by default (a drop would shift every later ordinal)"
    ),
}


class _SubstitutedModule(ModuleType):
    """
    A stand-in for a module: a few names of its own, every other name the
    real module's (also for setting and deleting, so that a test patching
    the module patches what the module's own code sees).
    """

    def __init__(self, real, substitutes):
        ModuleType.__init__(self, real.__name__, real.__doc__)
        for name in ("__file__", "__package__", "__loader__", "__spec__", "__path__"):
            if hasattr(real, name):
                ModuleType.__setattr__(self, name, getattr(real, name))
        ModuleType.__setattr__(self, "_real", real)
        ModuleType.__setattr__(self, "_substitutes", dict(substitutes))
        for name, value in substitutes.items():
            ModuleType.__setattr__(self, name, value)

    def __getattr__(self, name):
        return getattr(self._real, name)

    def __setattr__(self, name, value):
        if name in self._substitutes:
            ModuleType.__setattr__(self, name, value)
        else:
            setattr(self._real, name, value)

    def __delattr__(self, name):
        if name in self._substitutes:
            ModuleType.__delattr__(self, name)
        else:
            delattr(self._real, name)

    def __dir__(self):
        return sorted(set(dir(self._real)) | set(self._substitutes))


def _install(real, substitutes):
    stand_in = _SubstitutedModule(real, substitutes)
    packageName, _, attribute = real.__name__.rpartition(".")
    sys.modules[real.__name__] = stand_in
    setattr(sys.modules[packageName], attribute, stand_in)
    return stand_in


def substitute():
    """
    Put pyamp_fds's classes in place of Twisted's, for every module imported
    from now on and for the reactors; see the module docstring.

    @return: the two stand-in modules, C{(amp, unix)}.
    """
    # pyamp_fds first: its modules must hold the real ones.
    import pyamp_fds
    import pyamp_fds.endpoints  # noqa: F401
    import pyamp_fds.credentials
    import pyamp_fds.transport
    from twisted.internet import posixbase, unix
    from twisted.protocols import amp

    assert not isinstance(amp, _SubstitutedModule), "substitute() called twice"
    ampStandIn = _install(
        amp,
        {
            "AMP": pyamp_fds.AMP,
            "BinaryBoxProtocol": pyamp_fds.BinaryBoxProtocol,
            "Descriptor": pyamp_fds.Descriptor,
        },
    )
    unixStandIn = _install(
        unix,
        {
            "Server": pyamp_fds.transport.Server,
            "Client": pyamp_fds.transport.Client,
            "Port": pyamp_fds.credentials.Port,
            "Connector": pyamp_fds.transport.Connector,
        },
    )
    posixbase.unix = unixStandIn
    # See INTENDED_DIFFERENCES.
    pyamp_fds.AMP.allowUncheckedDescriptors = True
    pyamp_fds.BinaryBoxProtocol.allowUncheckedDescriptors = True
    return ampStandIn, unixStandIn


class Evidence:
    """
    What the run built, counted as it is built: whose transports and
    protocols the suites really used.

    @ivar reactors: reactor class names the suites' builders built, counted.
    @ivar transports: C{(transport class, reactor class)} counts of
        pyamp_fds transports made.
    @ivar ports: reactor class names on which pyamp_fds ports listened.
    @ivar protocols: C{(protocol kind, transport kind)} counts of pyamp_fds
        protocols connected.
    """

    def __init__(self):
        self.reactors = Counter()
        self.transports = Counter()
        self.ports = Counter()
        self.protocols = Counter()

    def watch(self):
        """
        Count, from now on, what is built.
        """
        from twisted.internet.test.reactormixins import ReactorBuilder

        import pyamp_fds
        from pyamp_fds import credentials, protocol, transport
        from pyamp_fds.interfaces import IBatchingTransport

        reactors, transports, ports, protocols = (
            self.reactors, self.transports, self.ports, self.protocols
        )

        buildReactor = ReactorBuilder.buildReactor

        def countingBuildReactor(builder):
            reactor = buildReactor(builder)
            reactors[type(reactor).__name__] += 1
            return reactor

        ReactorBuilder.buildReactor = countingBuildReactor

        def countInit(cls):
            init = cls.__init__

            def countingInit(self, *args, **kwargs):
                init(self, *args, **kwargs)
                transports[(cls.__name__, type(self.reactor).__name__)] += 1

            cls.__init__ = countingInit

        countInit(transport.Server)
        countInit(transport.Client)

        startListening = credentials.Port.startListening

        def countingStartListening(port):
            ports[type(port.reactor).__name__] += 1
            return startListening(port)

        credentials.Port.startListening = countingStartListening

        makeConnection = protocol._Framing.makeConnection

        def countingMakeConnection(proto, transport_):
            kind = "AMP" if isinstance(proto, pyamp_fds.AMP) else "BinaryBoxProtocol"
            over = "pyamp_fds" if IBatchingTransport.providedBy(transport_) else "other"
            protocols[(kind, over)] += 1
            return makeConnection(proto, transport_)

        protocol._Framing.makeConnection = countingMakeConnection

    def asJSON(self):
        return {
            "reactors": dict(self.reactors),
            "transports": [[t, r, n] for (t, r), n in sorted(self.transports.items())],
            "ports": dict(self.ports),
            "protocols": [[p, k, n] for (p, k), n in sorted(self.protocols.items())],
        }



def staticChecks():
    """
    What the suites' modules see, once imported: problems found, as text.
    """
    import pyamp_fds
    import pyamp_fds.transport
    from twisted.internet import posixbase
    from twisted.test import test_amp

    seen = {
        "test_amp's amp.AMP": (test_amp.amp.AMP, pyamp_fds.AMP),
        "test_amp's amp.BinaryBoxProtocol": (
            test_amp.amp.BinaryBoxProtocol,
            pyamp_fds.BinaryBoxProtocol,
        ),
        "test_amp's amp.Descriptor": (test_amp.amp.Descriptor, pyamp_fds.Descriptor),
        "the reactors' unix.Server": (posixbase.unix.Server, pyamp_fds.transport.Server),
        "the reactors' unix.Client": (posixbase.unix.Client, pyamp_fds.transport.Client),
        "the reactors' unix.Port": (posixbase.unix.Port, pyamp_fds.credentials.Port),
        "the reactors' unix.Connector": (
            posixbase.unix.Connector,
            pyamp_fds.transport.Connector,
        ),
    }
    problems = [
        "%s is %r, not %r" % (what, found, wanted)
        for what, (found, wanted) in seen.items()
        if found is not wanted
    ]
    # A class of the suite's own, made from amp.AMP when it was imported.
    if not issubclass(test_amp.SimpleSymmetricProtocol, pyamp_fds.AMP):
        problems.append("test_amp.SimpleSymmetricProtocol is not a pyamp_fds.AMP")
    return problems


def _reporterFactory(outcomes):
    from twisted.trial import reporter

    class RecordingReporter(reporter.VerboseTextReporter):
        """
        Trial's verbose report, and each test's outcome kept for the results.
        """

        def _record(self, test, outcome, detail=""):
            # A test may report more than once (a failure, then an error
            # in its cleanup): keep every one.
            outcomes.setdefault(test.id(), []).append([outcome, detail])

        def addSuccess(self, test):
            super().addSuccess(test)
            self._record(test, "success")

        def addError(self, test, error):
            super().addError(test, error)
            self._record(test, "error", self._detail(error))

        def addFailure(self, test, fail):
            super().addFailure(test, fail)
            self._record(test, "failure", self._detail(fail))

        def addSkip(self, test, reason):
            super().addSkip(test, reason)
            self._record(test, "skip", str(reason))

        def addExpectedFailure(self, test, error, todo=None):
            super().addExpectedFailure(test, error, todo)
            self._record(test, "expectedFailure", self._detail(error))

        def addUnexpectedSuccess(self, test, todo=None):
            super().addUnexpectedSuccess(test, todo)
            self._record(test, "unexpectedSuccess")

        def _detail(self, failure):
            from twisted.python.failure import Failure

            if isinstance(failure, tuple):
                failure = Failure(failure[1], failure[0], failure[2])
            return failure.getTraceback()

    def factory(stream, tbformat, rterrors, log):
        return RecordingReporter(stream, tbformat, rterrors, log)

    return factory


def _kind(target):
    """
    What sort of thing a descriptor refers to, from its C{/proc} link:
    C{"socket"}, C{"pipe"}, C{"anon_inode:[eventpoll]"} and the like, or
    C{"file"}.
    """
    head = target.partition(":")[0]
    if head in ("socket", "pipe"):
        return head
    if head == "anon_inode":
        return target
    return "file"


def main(argv):
    stock = argv[:1] == ["--stock"]
    if stock:
        argv = argv[1:]
    resultsPath, names = argv[0], argv[1:] or list(SUITES)
    if not stock:
        substitute()
    evidence = Evidence()
    evidence.watch()

    from twisted.trial import runner

    from tests.fdcheck import openDescriptors

    loader = runner.TestLoader()
    suite = loader.loadByNames(names)
    problems = [] if stock else staticChecks()
    outcomes = {}
    trial = runner.TrialRunner(_reporterFactory(outcomes), stream=sys.stdout)
    before = openDescriptors()
    trial.run(suite)
    gc.collect()
    after = openDescriptors()
    leftOpen = Counter(
        _kind(target) for fd, target in after.items() if before.get(fd) != target
    )
    with open(resultsPath, "w") as f:
        json.dump(
            {
                "outcomes": outcomes,
                "problems": problems,
                "evidence": evidence.asJSON(),
                "leftOpen": dict(leftOpen),
            },
            f,
            indent=1,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
