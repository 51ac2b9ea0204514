"""2-rank vs 1-rank DDP (gloo) throughput here, and the scaling model's prediction of it.

    python benchmarks/ddp_scaling.py [--case DEPTH,ALPHA,BATCH_PER_RANK ...] [--steps 30]
    python benchmarks/ddp_scaling.py --knobs [--case 20,240,2]

Weak scaling, one thread per rank: each rank keeps the same local batch, so the 2-rank job trains
twice the global batch per step.  Both runs go through the CLI (same model, data, warm-up) back to
back, alternated over ``--repeats``; the figure is global images/s (median of measured steps,
best repeat).  The prediction (``pyramidrepro.stats.scaling.predict``) takes the 1-rank step time, the
model's gradient bytes and the link the 2-rank run measured on its own process group, and is
compared with the measured 2-rank throughput.  Targets on 2 cores: ratio >= 1.85 for the default
small case; prediction within 15 % of the measurement for every case.

``--knobs`` instead measures the DDP settings one at a time on 2 ranks (bucket size,
gradient_as_bucket_view, static_graph), alternated with the defaults, on the first case.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from pyramidrepro.records.runs import RunRecord, load_run

ROOT = Path(__file__).resolve().parents[1]


def run(nproc: int, depth: int, alpha: float, batch: int, steps: int, out: str, extra: list[str]) -> RunRecord:

    rid = f"n{nproc}"
    cmd = [sys.executable, "-m", "pyramidrepro", "run", str(ROOT / "experiments/smoke.yaml"),
           "--out", out, "--run-id", rid, "--no-progress", "--nproc", str(nproc),
           "--set", "train.mode=ddp", "--set", f"train.batch_size={batch}",
           "--set", f"model.depth={depth}", "--set", f"model.alpha={alpha}",
           "--set", f"train.max_steps={steps}", "--set", "train.warmup_steps=5",
           "--set", "train.threads=1", "--set", "data.synthetic_train_size=8192", *extra]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    return load_run(Path(out) / "smoke" / rid / "metrics.h5")


def case(depth: int, alpha: float, per_rank: int, steps: int, repeats: int, extra: list[str]) -> dict:
    from pyramidrepro.stats.scaling import DeviceStep, Fabric, Link, default_overlap, predict

    one, two = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):  # alternate, so drift hits both alike
            one.append(run(1, depth, alpha, per_rank, steps, f"{tmp}/{i}a", extra))
            two.append(run(2, depth, alpha, 2 * per_rank, steps, f"{tmp}/{i}b", extra))
    best1 = max(one, key=lambda r: r.images_per_s)
    best2 = max(two, key=lambda r: r.images_per_s)
    link = Link(*best2.link)
    jitter = best1.step_time_std_s or 0.0
    pred = predict(DeviceStep(per_rank / best1.images_per_s, per_rank, best2.grad_bytes, jitter), 2,
                   Fabric(link, bucket_cap_mb=best2.bucket_cap_mb, overlap=default_overlap(gpu=False)))
    measured = best2.images_per_s
    return {
        "model": f"PyramidNet-{depth} alpha={alpha:g}", "batch_per_rank": per_rank,
        "grad_MB": best2.grad_bytes / 1e6,
        "link_GBps": link.bandwidth_GBps, "link_latency_us": link.latency_us,
        "one_rank_images_per_s": best1.images_per_s, "two_rank_images_per_s": measured,
        "ratio": measured / best1.images_per_s,
        "predicted_two_rank_images_per_s": pred.images_per_s, "predicted_comm_ms": 1e3 * pred.comm_s,
        "one_rank_step_std_ms": 1e3 * jitter,
        "prediction_error": (pred.images_per_s - measured) / measured,
        "all_one": [r.images_per_s for r in one], "all_two": [r.images_per_s for r in two],
    }


KNOBS = {
    "defaults (25 MB buckets, bucket view, dynamic graph)": [],
    "bucket_cap_mb=1": ["train.bucket_cap_mb=1"],
    "bucket_cap_mb=100": ["train.bucket_cap_mb=100"],
    "gradient_as_bucket_view=false": ["train.gradient_as_bucket_view=false"],
    "static_graph=true": ["train.static_graph=true"],
}


def knobs(depth: int, alpha: float, per_rank: int, steps: int, repeats: int, extra: list[str]) -> dict:
    """2-rank images/s for each DDP setting, all settings measured in turn ``repeats`` times."""
    rates: dict[str, list[float]] = {k: [] for k in KNOBS}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            for j, (name, sets) in enumerate(KNOBS.items()):
                more = [x for s in sets for x in ("--set", s)]
                r = run(2, depth, alpha, 2 * per_rank, steps, f"{tmp}/{i}-{j}", extra + more)
                rates[name].append(r.images_per_s)
    return {name: max(v) for name, v in rates.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", action="append", metavar="DEPTH,ALPHA,BATCH_PER_RANK",
                    help="model and per-rank batch (repeatable; default 20,12,32 and 20,240,2)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    ap.add_argument("--knobs", action="store_true", help="measure DDP settings one at a time instead")
    args = ap.parse_args()
    extra = [x for s in args.set for x in ("--set", s)]
    if args.knobs:
        d, a, b = (args.case or ["20,240,2"])[0].split(",")
        res = knobs(int(d), float(a), int(b), args.steps, args.repeats, extra)
        print(json.dumps(res, indent=2))
        base = res[next(iter(KNOBS))]
        for name, v in res.items():
            print(f"{name:55s} {v:8.1f} images/s  {v / base:5.2f}x")
        return 0
    cases = []
    for spec in args.case or ["20,12,32", "20,240,2"]:
        d, a, b = spec.split(",")
        cases.append(case(int(d), float(a), int(b), args.steps, args.repeats, extra))
        print(json.dumps(cases[-1]), flush=True)
    print(f"{'model':28s} {'batch/rank':>10s} {'grad MB':>8s} {'1 rank':>8s} {'2 ranks':>8s} "
          f"{'ratio':>6s} {'predicted':>9s} {'error':>7s}")
    for c in cases:
        print(f"{c['model']:28s} {c['batch_per_rank']:10d} {c['grad_MB']:8.2f} {c['one_rank_images_per_s']:8.1f} "
              f"{c['two_rank_images_per_s']:8.1f} {c['ratio']:6.2f} {c['predicted_two_rank_images_per_s']:9.1f} "
              f"{100 * c['prediction_error']:+6.1f}%")
    worst = max(abs(c["prediction_error"]) for c in cases)
    print(f"largest prediction error {100 * worst:.1f}% (target <= 15%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
