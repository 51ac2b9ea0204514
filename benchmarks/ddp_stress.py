"""Stress the 2-rank gloo DDP start-up and shutdown: N consecutive runs must all exit 0.

    python benchmarks/ddp_stress.py --runs 20

Prints one line per run (exit code, seconds) and a summary; exits 1 if any run failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--nproc", type=int, default=2)
    args = ap.parse_args()
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            t0 = time.monotonic()
            r = subprocess.run(
                [sys.executable, "-m", "pyramidrepro", "run", str(ROOT / "experiments/smoke.yaml"),
                 "--nproc", str(args.nproc), "--out", tmp, "--set", "train.mode=ddp",
                 "--set", "train.max_steps=2", "--set", "model.depth=8", "--set", "model.alpha=4",
                 "--no-progress"],
                capture_output=True, text=True, cwd=ROOT,
            )
            dt = time.monotonic() - t0
            aborted = "terminate called" in r.stderr or "Abort" in r.stderr
            print(f"run {i + 1:2d}/{args.runs}: exit {r.returncode} in {dt:5.1f} s"
                  + ("  ABORT seen" if aborted else ""), flush=True)
            if r.returncode != 0 or aborted:
                failures.append((i, r.returncode, r.stderr[-2000:]))
    print(f"clean exits: {args.runs - len(failures)}/{args.runs}")
    for i, code, err in failures:
        print(f"--- run {i + 1} (exit {code}) stderr tail:\n{err}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
