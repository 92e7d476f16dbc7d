"""
Run the benchmarks: C{make bench} (quick, about a minute or two) or
C{make bench BENCH_ARGS=--full}.

    python benchmarks/run.py [--full] [--only NAME] [--json PATH] [--png PATH]
"""

import argparse
import importlib
import json
import os
import pkgutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks import harness, scenarios  # noqa: E402


def allScenarios():
    found = []
    for module in sorted(pkgutil.iter_modules(scenarios.__path__), key=lambda m: m.name):
        found.extend(importlib.import_module("benchmarks.scenarios." + module.name).SCENARIOS)
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="more repetitions")
    parser.add_argument("--only", action="append", help="run this scenario (repeatable)")
    parser.add_argument("--json", default=os.path.join(HERE, "results", "latest.json"))
    parser.add_argument("--png", default=os.path.join(HERE, "results", "latest.png"))
    parser.add_argument("--list", action="store_true", help="list the scenarios")
    args = parser.parse_args(argv)

    chosen = allScenarios()
    if args.list:
        for s in chosen:
            print("%-20s %s" % (s.name, s.title))
        return 0
    if args.only:
        unknown = set(args.only) - {s.name for s in chosen}
        if unknown:
            parser.error("unknown scenario: %s" % ", ".join(sorted(unknown)))
        chosen = [s for s in chosen if s.name in args.only]

    started = time.time()
    allResults, verdicts = {}, []
    for i, scenario in enumerate(chosen, 1):
        harness.progress("[%d/%d] %s" % (i, len(chosen), scenario.title))
        results = allResults[scenario.name] = harness.runScenario(scenario, args.full)
        verdicts.extend(harness.checkTargets(scenario, results))
        print(harness.formatTable(scenario, results), flush=True)

    print("\nTargets")
    for v in verdicts:
        print(
            "  [%s] %-16s %-14s %-52s measured %.3g%s"
            % ("met" if v["met"] else "MISSED", v["scenario"], v["param"], v["target"],
               v["measured"], v["unit"])
        )
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(
            {
                "machine": harness.machine(),
                "mode": "full" if args.full else "quick",
                "seconds": time.time() - started,
                "results": allResults,
                "targets": verdicts,
            },
            f,
            indent=2,
        )
    harness.chart(allResults, chosen, args.png)
    print("\nwrote %s and %s (%.0f s)" % (args.json, args.png, time.time() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
