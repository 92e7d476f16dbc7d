"""
The benchmark harness: runs every implementation of a scenario side by side
in the same run, alternating, several times, and reports medians and ratios
against the scenario's anchors.

A scenario is a L{Scenario}: a name, the unit it counts, the parameters it
is run at, its implementations (each a callable taking the parameter and
returning C{(units, seconds)}), which implementation is the anchor, and the
targets to report.  Add one by putting a module in C{benchmarks/scenarios/}
that defines C{SCENARIOS = [Scenario(...), ...]}.
"""

import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

_TICK = os.sysconf("SC_CLK_TCK")


def processCPUSeconds(pid):
    """
    The CPU time (user and system, every thread) process C{pid} has used so
    far, from C{/proc/PID/stat}: for peers run by a scenario.
    """
    with open("/proc/%d/stat" % (pid,)) as f:
        # The command name, in parentheses, may hold spaces: count after it.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


#: The longest one run of a peer program may take: one that hangs fails the
#: scenario instead of stopping the benchmark for ever.
PEER_TIMEOUT = 300


@dataclass
class Target:
    """
    C{implementation} should reach C{ratio} times C{anchor}'s rate at the
    given parameter (every parameter if L{None}); or, with C{figure}, the
    median of that extra figure it reports should be at most C{ratio} (with
    C{worst}, the largest of every repetition's: a bound never to cross).
    """

    implementation: str
    anchor: str
    ratio: float
    param: object = None
    text: str = ""
    figure: str = None
    worst: bool = False


@dataclass
class Scenario:
    name: str
    title: str
    unit: str
    params: list
    implementations: dict
    anchor: str
    targets: list = field(default_factory=list)
    quickRepetitions: int = 3
    fullRepetitions: int = 7
    # Extra figures a measurement may report (e.g. syscalls per descriptor):
    # a measurement may return (units, seconds, {name: value}).
    extras: list = field(default_factory=list)


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import twisted

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "uname": " ".join(platform.uname()),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
    }


def progress(message):
    print(message, file=sys.stderr, flush=True)


def runScenario(scenario, full):
    """
    Measure every implementation at every parameter, alternating the
    implementations within each repetition (and rotating who goes first).

    @return: a dict: param -> implementation -> summary.
    """
    repetitions = scenario.fullRepetitions if full else scenario.quickRepetitions
    names = list(scenario.implementations)
    results = {}
    for param in scenario.params:
        samples = {name: [] for name in names}
        extras = {name: {} for name in names}
        for rep in range(repetitions):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                outcome = scenario.implementations[name](param)
                units, seconds = outcome[0], outcome[1]
                samples[name].append(units / seconds)
                for key, value in (outcome[2] if len(outcome) > 2 else {}).items():
                    extras[name].setdefault(key, []).append(value)
            progress(
                "  %s [%s] repetition %d/%d: %s"
                % (
                    scenario.name,
                    param,
                    rep + 1,
                    repetitions,
                    ", ".join("%s %.0f" % (n, samples[n][-1]) for n in names),
                )
            )
        summary = {}
        anchorRate = statistics.median(samples[scenario.anchor])
        for name in names:
            rate = statistics.median(samples[name])
            summary[name] = {
                "median": rate,
                "samples": samples[name],
                "ratio": rate / anchorRate,
                "extras": {k: statistics.median(v) for k, v in extras[name].items()},
                "worst": {k: max(v) for k, v in extras[name].items()},
            }
        results[str(param)] = summary
    return results


def checkTargets(scenario, results):
    verdicts = []
    for target in scenario.targets:
        params = [target.param] if target.param is not None else scenario.params
        for param in params:
            row = results[str(param)]
            if target.figure is not None:
                figures = row[target.implementation]["worst" if target.worst else "extras"]
                measured = figures[target.figure]
                met = measured <= target.ratio
                default = "%s %s <= %.3g" % (target.implementation, target.figure, target.ratio)
            else:
                measured = row[target.implementation]["median"] / row[target.anchor]["median"]
                met = measured >= target.ratio
                default = "%s >= %.2fx %s" % (target.implementation, target.ratio, target.anchor)
            verdicts.append(
                {
                    "scenario": scenario.name,
                    "param": str(param),
                    "target": target.text or default,
                    "measured": measured,
                    "unit": "" if target.figure is not None else "x",
                    "met": met,
                }
            )
    return verdicts


def formatTable(scenario, results):
    lines = ["", "%s (%s; ratios against %s)" % (scenario.title, scenario.unit, scenario.anchor)]
    names = list(scenario.implementations)
    header = "  %-10s" % "param" + "".join("%24s" % n for n in names)
    lines.append(header)
    for param in scenario.params:
        row = results[str(param)]
        cells = []
        for name in names:
            cells.append("%24s" % ("%.0f (%.2fx)" % (row[name]["median"], row[name]["ratio"])))
        lines.append("  %-10s" % param + "".join(cells))
        for name in names:
            worst = row[name].get("worst", {})
            for key, value in sorted(row[name]["extras"].items()):
                line = "  %-10s   %s: %s = %.4g" % ("", name, key, value)
                if worst.get(key, value) != value:
                    line += " (largest %.4g)" % (worst[key],)
                lines.append(line)
    return "\n".join(lines)


def chart(allResults, scenarios, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [s for s in scenarios if s.name in allResults]
    fig, axes = plt.subplots(len(shown), 1, figsize=(9, 2.8 * len(shown)), squeeze=False)
    for ax, scenario in zip(axes[:, 0], shown):
        results = allResults[scenario.name]
        names = list(scenario.implementations)
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            ratios = [results[str(p)][name]["ratio"] for p in scenario.params]
            ax.bar(
                [x + i * width for x in range(len(scenario.params))],
                ratios,
                width,
                label=name,
            )
        ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(scenario.params))])
        ax.set_xticklabels([str(p) for p in scenario.params])
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_ylabel("x %s" % scenario.anchor)
        ax.set_title("%s (%s)" % (scenario.title, scenario.unit), fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
