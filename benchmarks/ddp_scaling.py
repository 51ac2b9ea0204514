"""2-rank vs 1-rank DDP (gloo) throughput on this machine, one thread per rank.

    python benchmarks/ddp_scaling.py [--batch-per-rank 32] [--steps 30]

Weak scaling: each rank keeps the same local batch, so the 2-rank job trains twice the global
batch per step.  Both runs go through the CLI (same model, data, warm-up) back to back; the
figure is the ratio of global images/s (median of measured steps).  Target on 2 cores: >= 1.85.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(nproc: int, batch: int, steps: int, out: str, extra: list[str]) -> float:
    from pyramidrepro.metrics import read_metrics

    rid = f"n{nproc}"
    cmd = [sys.executable, "-m", "pyramidrepro", "run", str(ROOT / "experiments/smoke.yaml"),
           "--out", out, "--run-id", rid, "--no-progress", "--nproc", str(nproc),
           "--set", "train.mode=ddp", "--set", f"train.batch_size={batch}",
           "--set", f"train.max_steps={steps}", "--set", "train.warmup_steps=5",
           "--set", "train.threads=1", "--set", "data.synthetic_train_size=8192", *extra]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    return float(read_metrics(Path(out) / "smoke" / rid / "metrics.h5")["summary"]["images_per_s"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-per-rank", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    args = ap.parse_args()
    extra = [x for s in args.set for x in ("--set", s)]
    one, two = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):  # alternate, so drift hits both alike
            one.append(run(1, args.batch_per_rank, args.steps, f"{tmp}/{i}a", extra))
            two.append(run(2, 2 * args.batch_per_rank, args.steps, f"{tmp}/{i}b", extra))
    r1, r2 = max(one), max(two)
    result = {"one_rank_images_per_s": r1, "two_rank_images_per_s": r2, "ratio": r2 / r1,
              "batch_per_rank": args.batch_per_rank, "threads_per_rank": 1, "all_one": one,
              "all_two": two}
    print(json.dumps(result, indent=2))
    print(f"2 ranks / 1 rank = {r2 / r1:.2f}x  (target >= 1.85)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
