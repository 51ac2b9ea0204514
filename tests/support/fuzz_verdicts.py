"""Count the verdicts of the input fuzz cases (tests/support/fuzz_cases.py), per group.

    cd tests && python -m support.fuzz_verdicts [--show silent,traceback,hang]

Run it against any checkout (PYTHONPATH=OTHER/src) to compare before and after.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from .fuzz_cases import all_cases, run_case


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show", default="silent,traceback,hang", help="verdicts whose cases are listed")
    parser.add_argument("--group", help="only the cases of this group")
    parser.add_argument("--one", nargs=2, metavar=("INDEX", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # one case, in a process of its own (a crash or a hang ends it, not the count)
        outcome = run_case(all_cases()[int(args.one[0])], Path(args.one[1]))
        print(json.dumps({"verdict": outcome.verdict, "code": outcome.code, "stderr": outcome.stderr[-2000:]}))
        return 0
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    show = set(args.show.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(all_cases()):
            if args.group and case.group != args.group:
                continue
            try:
                proc = subprocess.run([sys.executable, "-m", "support.fuzz_verdicts", "--one", str(i), f"{tmp}/c{i}"],
                                      capture_output=True, text=True, timeout=case.timeout_s + 30)
                lines = proc.stdout.strip().splitlines()
                outcome = json.loads(lines[-1]) if proc.returncode == 0 and lines else {
                    "verdict": "traceback", "code": proc.returncode, "stderr": proc.stderr[-500:] or "crashed"}
            except subprocess.TimeoutExpired:
                outcome = {"verdict": "hang", "code": None, "stderr": ""}
            counts[case.group][outcome["verdict"]] += 1
            if outcome["verdict"] in show:
                last = (outcome["stderr"].strip().splitlines() or [""])[-1][:150]
                print(f"{outcome['verdict']:9s} {case.id}: exit {outcome['code']}: {last}", flush=True)
    verdicts = ["clear", "ok", "traceback", "hang", "silent"]
    print(f"\n{'group':10s} " + " ".join(f"{v:>9s}" for v in verdicts) + "    total")
    total: collections.Counter = collections.Counter()
    for group, c in counts.items():
        total.update(c)
        print(f"{group:10s} " + " ".join(f"{c[v]:9d}" for v in verdicts) + f" {sum(c.values()):8d}")
    print(f"{'all':10s} " + " ".join(f"{total[v]:9d}" for v in verdicts) + f" {sum(total.values()):8d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
