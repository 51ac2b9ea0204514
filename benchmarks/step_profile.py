"""Where a training step's time goes, and the most any path can gain while convolutions cost what they do.

    python benchmarks/step_profile.py [--depth 32 --alpha 48 --batch-size 64] [--steps 3] [--repeats 3]
                                      [--compile max-autotune-no-cudagraphs|default|off] [--precision fp32]
    python benchmarks/step_profile.py --device cuda --depth 110 --alpha 270 --batch-size 256 \
                                      --precision bf16 --compile off [--channel-multiple 8] [--json-out F]

On a GPU (``--device cuda``) each path's CUDA kernels are profiled instead (torch.profiler's device
time per kernel) and summed by kernel class: convolution, batch norm, elementwise, compiled (fused
Triton kernels), copy (memcpy, memset, layout transposes), optimizer, matmul and other; the table
gives milliseconds per step, the share of kernel time, and each class's three costliest kernels.

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
import json
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

from pyramidrepro.bench.harness import machine, training_tflops
from pyramidrepro.machine.devices import capability  # noqa: E402
from pyramidrepro.step.paths import BASELINE, TrainPath  # noqa: E402
from pyramidrepro.workload.data import synthetic_splits  # noqa: E402
from pyramidrepro.workload.model import PyramidNet, count_macs  # noqa: E402

GROUPS = ("conv forward", "conv backward", "everything else")
#: CUDA kernel classes, each with the name fragments that put a kernel in it; the first class matching wins
KERNEL_CLASSES = (
    ("optimizer", ("multi_tensor_apply", "fused_sgd", "fusedsgd", "_foreach")),
    ("batch norm", ("batch_norm", "batchnorm", "bn_fw", "bn_bw", "cudnn::bn")),
    ("copy", ("memcpy", "memset", "copy_kernel", "nchwtonhwc", "nhwctonchw", "transpose")),
    ("convolution", ("conv", "fprop", "dgrad", "wgrad", "implicit_gemm", "winograd", "im2col")),
    ("compiled", ("triton_",)),
    ("matmul", ("gemm", "gemv", "cublas", "cutlass")),
    ("convolution", ("xmma", "cudnn")),  # cuDNN's other engines, once GEMMs are told apart
    ("elementwise", ("elementwise", "pointwise", "reduce_kernel", "pool", "fill")),
)
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


def kernel_class(name: str) -> str:
    """The class of a CUDA kernel, from its name (see :data:`KERNEL_CLASSES`)."""
    low = name.lower()
    return next((cls for cls, parts in KERNEL_CLASSES if any(p in low for p in parts)), "other")


def kernel_table(kernels: list[tuple[str, float, int]], steps: int) -> dict[str, dict]:
    """(kernel name, device ms, launches) summed by class: ms and launches per step, share, top three."""
    total = sum(ms for _, ms, _ in kernels) or 1.0
    table: dict[str, dict] = {}
    for name, ms, count in sorted(kernels, key=lambda k: -k[1]):
        row = table.setdefault(kernel_class(name), {"ms_per_step": 0.0, "launches_per_step": 0.0, "top": []})
        row["ms_per_step"] += ms / steps
        row["launches_per_step"] += count / steps
        if len(row["top"]) < 3:
            row["top"].append({"kernel": name[:120], "ms_per_step": ms / steps})
    for row in table.values():
        row["share"] = row["ms_per_step"] * steps / total
    return dict(sorted(table.items(), key=lambda kv: -kv[1]["ms_per_step"]))


def cuda_kernels(path: TrainPath, steps: int) -> tuple[list[tuple[str, float, int]], float]:
    """Each CUDA kernel's device milliseconds and launches over ``steps`` profiled steps, and the wall ms per step."""
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        path.train(steps)
    wall = (time.perf_counter() - t0) * 1e3 / steps
    kernels = []
    for event in prof.key_averages():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            us = getattr(event, "self_device_time_total", None) or event.self_cuda_time_total
            kernels.append((event.key, us / 1e3, event.count))
    return kernels, wall


def print_kernel_table(name: str, table: dict[str, dict], wall_ms: float) -> None:
    kernel_ms = sum(row["ms_per_step"] for row in table.values())
    print(f"{name}: {kernel_ms:.1f} ms of kernels per step, {wall_ms:.1f} ms wall (profiled)")
    print(f"  {'class':<12}{'ms/step':>10}{'share':>8}{'launches':>10}  costliest kernels")
    for cls, row in table.items():
        top = "; ".join(f"{t['kernel'][:60]} {t['ms_per_step']:.2f}" for t in row["top"])
        figures = f"{row['ms_per_step']:>10.2f}{100 * row['share']:>7.1f}%{row['launches_per_step']:>10.0f}"
        print(f"  {cls:<12}{figures}  {top}")


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


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cpu: profiler groups and oneDNN's times; cuda: the CUDA kernel table (default cpu)")
    ap.add_argument("--depth", type=int, default=32)
    ap.add_argument("--alpha", type=float, default=48)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="profiled steps per pass (default 3)")
    ap.add_argument("--repeats", type=int, default=3, help="alternated passes of each path (default 3)")
    ap.add_argument("--compile", default="max-autotune-no-cudagraphs",
                    help="compile mode of the optimized path, or off (default max-autotune-no-cudagraphs)")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--channel-multiple", type=int, default=1,
                    help="the optimized path's widths rounded up to this multiple (8: tensor cores; default 1)")
    ap.add_argument("--json-out", metavar="FILE", help="cuda: also write the kernel tables as JSON")
    return ap.parse_args()


def build_paths(args: argparse.Namespace, device: torch.device) -> tuple[dict[str, TrainPath], float]:
    """The baseline and the optimized path, built and warmed up; the model's forward MACs per image."""
    arch = (args.depth, args.alpha, "basic")
    torch.manual_seed(0)
    reference = PyramidNet(*arch)
    init = reference.state_dict()
    splits = synthetic_splits(max(args.batch_size * 8, 512), 16)
    optimized = replace(BASELINE, precision=args.precision, channels_last=True, loader="torch", host_sync=False,
                        optimizer="fused" if device.type == "cuda" else "plain",
                        compile_mode=None if args.compile == "off" else args.compile,
                        channel_multiple=args.channel_multiple)
    isa_env = " ".join(f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ)
    print(f"# command: {isa_env + ' ' if isa_env else ''}python {' '.join(sys.argv)}")
    print(f"# machine: {machine()}; capability: {capability(device)}")
    print(f"# PyramidNet-{args.depth} alpha={args.alpha:g}, batch {args.batch_size}; "
          f"optimized = {optimized.describe()}", flush=True)
    paths = {}
    for name, spec in {"baseline (seed-style)": BASELINE, "optimized": optimized}.items():
        t0 = time.perf_counter()
        paths[name] = TrainPath(spec, arch, init, splits, args.batch_size, device).warm_up(2)
        print(f"# {name}: built and warmed up in {time.perf_counter() - t0:.0f} s", flush=True)
    return paths, count_macs(reference)


def cuda_report(paths: dict[str, TrainPath], args: argparse.Namespace) -> None:
    """Each path's CUDA kernel table (the last of ``--repeats`` passes), printed and optionally written."""
    tables = {}
    for name, path in paths.items():
        for _ in range(args.repeats):
            kernels, wall = cuda_kernels(path, args.steps)
        tables[name] = {"wall_ms_per_step": wall, "classes": kernel_table(kernels, args.steps)}
        print_kernel_table(name, tables[name]["classes"], wall)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"command": " ".join(sys.argv), "machine": machine(),
                                                   "paths": tables}, indent=2) + "\n")


def cpu_report(paths: dict[str, TrainPath], args: argparse.Namespace, macs: float) -> None:
    """The profiler's three groups per path (median of passes), the bound, and oneDNN's own times."""
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
    base_wall = median["baseline (seed-style)"]["step (wall)"]
    print(f"bound: baseline step / optimized convolutions = "
          f"{base_wall / (best['conv forward'] + best['conv backward']):.2f}x "
          f"(measured optimized / baseline here: {base_wall / best['step (wall)']:.2f}x)")

    gflop_fwd = 2 * macs * args.batch_size / 1e9  # one forward pass; each oneDNN kind does about that
    print("oneDNN's own time per step, by kind (one more pass each, verbose log on):")
    for name, path in paths.items():
        kinds = onednn_ms_per_step(path, args.steps)
        print(f"  {name:<22}" + "  ".join(
            f"{k} {v:.0f} ms ({gflop_fwd * 1e3 / v:.0f} GFLOP/s)" if v else f"{k} -" for k, v in kinds.items()))


def main() -> int:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("step_profile: --device cuda, but no CUDA device is available", file=sys.stderr)
            return 2
        torch.backends.cudnn.benchmark = True
    paths, macs = build_paths(args, device)
    if device.type == "cuda":
        cuda_report(paths, args)
    else:
        cpu_report(paths, args, macs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
