"""Where a training step's time goes, and the most any path can gain while convolutions cost what they do.

    python benchmarks/step_profile.py [--depth 32 --alpha 48 --batch-size 64] [--steps 3] [--repeats 3]
                                      [--compile max-autotune-no-cudagraphs|default|off] [--precision fp32]

Two paths are built as ``bench`` builds them (:class:`pyramidrepro.step.paths.TrainPath`, same model,
weights and synthetic data): the seed-style baseline and the optimized one given here (tensor
loader, no host sync, channels_last, the compile mode, fp32 unless ``--precision``).  They are
profiled in turn ``--repeats`` times (torch.profiler, self CPU time per op) and every op lands in
one of three groups: the convolutions' forward (``aten::mkldnn_convolution``), their backward
(``aten::convolution_backward``: data and weight gradients) and everything else (batch norm,
pointwise ops or the compiled kernels that fuse them, the optimizer, data, Python).  A last pass
of each path with oneDNN's verbose log on splits the backward into data and weight gradients and
gives each kind's GFLOP/s.

The printed bound is the baseline's step time over the optimized path's convolution time: the
ratio a path would reach if everything but the convolutions cost nothing.  On an fp32 CPU path it
says how much room the pieces that ``bench`` can choose (loader, memory format, compile) have left.
The profiler slows every op alike by a few per cent; the figures are for locating costs, ``bench``
gives the throughput.  Emulate an AVX2-only CPU on a newer one with
``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from pyramidrepro.machine.devices import capability  # noqa: E402
from pyramidrepro.step.paths import BASELINE, TrainPath  # noqa: E402
from pyramidrepro.study.benchmarks import machine, training_tflops  # noqa: E402
from pyramidrepro.workload.data import synthetic_splits  # noqa: E402
from pyramidrepro.workload.model import PyramidNet, count_macs  # noqa: E402

GROUPS = ("conv forward", "conv backward", "everything else")
ONEDNN_KINDS = ("forward_training", "backward_data", "backward_weights")


def group_of(op: str) -> str:
    if op == "aten::mkldnn_convolution":
        return "conv forward"
    if op == "aten::convolution_backward":
        return "conv backward"
    return "everything else"


def profiled_ms_per_step(path: TrainPath, steps: int) -> dict[str, float]:
    """Self CPU milliseconds per step of each group, and the step's wall time, over ``steps`` steps."""
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        path.train(steps)
    wall = (time.perf_counter() - t0) * 1e3 / steps
    out = dict.fromkeys(GROUPS, 0.0)
    for event in prof.key_averages():
        out[group_of(event.key)] += event.self_cpu_time_total / 1e3 / steps
    out["step (wall)"] = wall
    return out


def onednn_ms_per_step(path: TrainPath, steps: int) -> dict[str, float]:
    """oneDNN's own execution time per step of each convolution kind, read from its verbose log."""
    with tempfile.TemporaryFile(mode="w+") as log:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                path.train(steps)
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        text = log.read()
    out = dict.fromkeys(ONEDNN_KINDS, 0.0)
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) > 7 and fields[3] == "exec" and fields[4] == "cpu" and fields[5] == "convolution":
            kind = next((k for k in ONEDNN_KINDS if k in fields[7]), None)
            if kind and re.fullmatch(r"[0-9.]+", fields[-1]):
                out[kind] += float(fields[-1]) / steps
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=32)
    ap.add_argument("--alpha", type=float, default=48)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="profiled steps per pass (default 3)")
    ap.add_argument("--repeats", type=int, default=3, help="alternated passes of each path (default 3)")
    ap.add_argument("--compile", default="max-autotune-no-cudagraphs",
                    help="compile mode of the optimized path, or off (default max-autotune-no-cudagraphs)")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    args = ap.parse_args()

    device = torch.device("cpu")
    arch = (args.depth, args.alpha, "basic")
    torch.manual_seed(0)
    reference = PyramidNet(*arch)
    init = reference.state_dict()
    macs = count_macs(reference)
    gflop_fwd = 2 * macs * args.batch_size / 1e9  # one forward pass; each oneDNN kind does about that
    splits = synthetic_splits(max(args.batch_size * 8, 512), 16)
    optimized = replace(BASELINE, precision=args.precision, channels_last=True, loader="torch", host_sync=False,
                        compile_mode=None if args.compile == "off" else args.compile)
    specs = {"baseline (seed-style)": BASELINE, "optimized": optimized}

    isa_env = " ".join(f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ)
    print(f"# command: {isa_env + ' ' if isa_env else ''}python {' '.join(sys.argv)}")
    print(f"# machine: {machine()}; capability: {capability(device)}")
    print(f"# PyramidNet-{args.depth} alpha={args.alpha:g}, batch {args.batch_size}; "
          f"optimized = {optimized.describe()}", flush=True)
    paths = {}
    for name, spec in specs.items():
        t0 = time.perf_counter()
        paths[name] = TrainPath(spec, arch, init, splits, args.batch_size, device).warm_up(2)
        print(f"# {name}: built and warmed up in {time.perf_counter() - t0:.0f} s", flush=True)

    rows: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
    for r in range(args.repeats):
        for name, path in paths.items():
            rows[name].append(profiled_ms_per_step(path, args.steps))
        print(f"# pass {r + 1}/{args.repeats} done", flush=True)
    median = {name: {k: statistics.median(row[k] for row in rs) for k in rs[0]} for name, rs in rows.items()}

    print(f"{'ms per step (median of passes)':<24}" + "".join(f"{k:>18}" for k in (*GROUPS, "step (wall)")))
    for name, m in median.items():
        print(f"{name:<24}" + "".join(f"{m[k]:>18.1f}" for k in (*GROUPS, "step (wall)")))
    for name, m in median.items():
        conv = m["conv forward"] + m["conv backward"]
        print(f"{name}: convolutions {conv:.0f} ms = {100 * conv / sum(m[g] for g in GROUPS):.0f} % of the "
              f"profiled time; {1e3 * training_tflops(macs, args.batch_size * 1e3 / conv):.0f} GFLOP/s over the "
              "whole convolution work")
    best = median["optimized"]
    bound = median["baseline (seed-style)"]["step (wall)"] / (best["conv forward"] + best["conv backward"])
    print(f"bound: baseline step / optimized convolutions = {bound:.2f}x "
          f"(measured optimized / baseline here: "
          f"{median['baseline (seed-style)']['step (wall)'] / best['step (wall)']:.2f}x)")

    print("oneDNN's own time per step, by kind (one more pass each, verbose log on):")
    for name, path in paths.items():
        kinds = onednn_ms_per_step(path, args.steps)
        print(f"  {name:<22}" + "  ".join(
            f"{k} {v:.0f} ms ({gflop_fwd * 1e3 / v:.0f} GFLOP/s)" if v else f"{k} -" for k, v in kinds.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
