"""``pyramidrepro bench``: the seed-style baseline vs the optimized training path, side by side."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..config.sections import COMPILE_MODES
from ..workload.requirements import importable
from ._common import add_model_args, check_model_args
from ._types import positive_float, positive_int

DESCRIPTION = ("Train the same model, batch and device two ways: the seed-style baseline "
               "(true fp32 with TF32 off, NCHW, eager, torchvision DataLoader, loss.item() every step, "
               "plain SGD; on a GPU also in PyTorch's TF32 default, reported beside it) "
               "and the path chosen for this machine: from the baseline, each piece (tensor "
               "loader, no host sync, foreach/fused SGD, bf16 where the device has bf16 units, "
               "channels_last, tensor-core widths on GPUs, torch.compile modes) is tried on top of "
               "the path so far and kept only if its trial wins; pieces the capability rules out "
               "are not tried, and on a GPU the tensor loader and no host sync are kept without a "
               "trial (they cannot cost anything there). Then the baselines and the optimized path "
               "alternate for the headline; every ratio names the baseline it divides by. Prints the "
               "capability, every piece's verdict, JSON and a table: images/s, the ratios, MFU, "
               "per-stage times, the HDF5 logging cost and, with --ablate, each piece alone. "
               "Finishes within --budget-s.")
EPILOG = ("MFU = 3 x forward MACs x 2 FLOP x images/s / peak (dense bf16 peak of known "
          "GPUs; --peak-tflops otherwise).\nExample: pyramidrepro bench --device cuda "
          "--depth 110 --alpha 270 --batch-size 256")
CHANNELS_LAST = {"auto": None, "on": True, "off": False}


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench`` to ``sub``."""
    p = sub.add_parser("bench", help="seed-style baseline vs optimized training path, side by side",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    add_model_args(p, depth=32, alpha=48)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--steps", type=positive_int, default=None,
                   help="timed steps per measurement (default: sized to fit --budget-s, 3 to 12)")
    p.add_argument("--budget-s", type=positive_float, default=180.0,
                   help="time budget in seconds (default 180): compile trials it cannot hold are skipped "
                        "with the reason, and the default steps are sized to it")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="alternated repeats of the headline, at least (more while the budget has room); medians "
                        "are reported (default 3)")
    p.add_argument("--peak-tflops", type=float, help="device peak for MFU (known GPUs are looked up)")
    p.add_argument("--compile", default="auto", choices=["off", "auto", *COMPILE_MODES],
                   help="torch.compile for the optimized path: off, a mode, or auto = measure each of "
                        "--compile-modes and keep the fastest (default: auto)")
    p.add_argument("--compile-modes", nargs="+", metavar="MODE",
                   help="candidates for --compile auto (default: default max-autotune-no-cudagraphs, "
                        "plus reduce-overhead on CUDA)")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                   help="memory format of the optimized path (auto: channels_last on GPUs, NCHW on CPUs)")
    p.add_argument("--widths", choices=["try", "off"], default="try",
                   help="try tensor-core widths on a GPU (every layer's channels rounded up to a multiple of 8, "
                        "the added ones held at zero: the paper's function; default try)")
    p.add_argument("--ablate", action="store_true", help="also measure each optimization alone vs the baseline")
    p.add_argument("--json-out", metavar="FILE", help="also write the JSON result to FILE")
    p.set_defaults(func=cmd_bench)


def progress_printer() -> Callable[[str], None]:
    """Progress lines on stderr, stamped with the seconds since the bench began."""
    t0 = time.monotonic()
    return lambda msg: print(f"bench [{time.monotonic() - t0:5.0f} s] {msg}", file=sys.stderr, flush=True)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the comparison; print (and with ``--json-out`` write) its JSON, then the table."""
    from ..bench.harness import bench_training
    from ..bench.plan import BenchPlan

    check_model_args(args)
    baseline_loader = "torchvision"
    if not importable("torchvision"):
        baseline_loader = "torch"
        print("bench: torchvision is not installed: the baseline feeds from the tensor loader instead of the "
              "DataLoader (its 'baseline' entry says loader torch)", file=sys.stderr)
    plan = BenchPlan(device=args.device, depth=args.depth, alpha=args.alpha, block=args.block,
                     batch_size=args.batch_size, steps=args.steps, repeats=args.repeats,
                     peak_tflops=args.peak_tflops, compile=args.compile,
                     compile_modes=tuple(args.compile_modes) if args.compile_modes else None,
                     ablate=args.ablate, channels_last=CHANNELS_LAST[args.channels_last], budget_s=args.budget_s,
                     widths=args.widths == "try", baseline_loader=baseline_loader)
    r = bench_training(plan, progress=progress_printer())
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(r, indent=2) + "\n")
    print(json.dumps(r, indent=2))
    print(format_bench(r))
    return 0


def _header_rows(r: dict) -> list[str]:
    """The model and machine, the capability and every piece's verdict."""
    cap = r["capability"]
    rows = [f"{r['model']}, batch {r['batch_size']}, {r['device']} ({r['machine'].get('gpu', r['machine']['cpu'])})",
            "capability: " + ", ".join(f"{k} {v}" for k, v in cap.items() if k != "device"),
            "pieces, each tried on top of the path chosen so far:"]
    return rows + [f"  {c['name']:22s} {'kept' if c['kept'] else 'left out':9s} {c['reason']}" for c in r["choices"]]


def _throughput_rows(r: dict) -> list[str]:
    """Images/s of the baseline, the optimized path and, with --ablate, each piece alone."""
    rows = [f"ratios over {r['ratio_over']}",
            f"{'path':34s} {'images/s':>10s} {'vs baseline':>12s}",
            f"{'baseline (seed-style, fp32)':34s} {r['baseline_images_per_s']:10,.1f} {1.0:11.2f}x"]
    if r.get("baseline_tf32_images_per_s"):
        tf32 = r["baseline_tf32_images_per_s"]
        rows.append(f"{'baseline in TF32 (PyTorch default)':34s} {tf32:10,.1f} "
                    f"{tf32 / r['baseline_images_per_s']:11.2f}x")
    rows.append(f"{'optimized':34s} {r['optimized_images_per_s']:10,.1f} {r['ratio']:11.2f}x")
    for name, a in r["ablation"].items():
        if "skipped" in a:
            rows.append(f"{'  baseline + ' + name:34s} not measured ({a['skipped']})")
        else:
            rows.append(f"{'  baseline + ' + name:34s} {a['images_per_s']:10,.1f} {a['ratio']:11.2f}x")
    return rows


def _compile_rows(r: dict) -> list[str]:
    """Each compile trial and the mode chosen."""
    c = r["compile"]
    rows = [f"compile mode {mode}: {t['images_per_s']:,.1f} images/s, {t['compile_s']:.1f} s to compile"
            for mode, t in c.get("trials", {}).items()]
    if c.get("mode"):
        rows.append(f"compile: {c['mode']} chosen ({c['compile_s']:.1f} s to compile, not in images/s)")
    return rows


def _cost_rows(r: dict) -> list[str]:
    """Steps and budget, per-stage times, the HDF5 logging cost, the ratio and MFU."""
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (give --peak-tflops)"
    st = r["stage_seconds_per_step"]
    m = r["metrics_overhead"]
    rows = [f"{r['steps_per_repeat']} steps per measurement, {r['repeats']} alternated repeats, "
            f"{r['elapsed_s']:.0f} s of a {r['budget_s']:.0f} s budget",
            "ms per step      " + " ".join(f"{k:>9s}" for k in st["baseline"])]
    rows += [f"{path:16s} " + " ".join(f"{1e3 * v:9.2f}" for v in st[path].values())
             for path in ("baseline", "optimized")]
    rows.append(f"HDF5 logging: {100 * m['overhead']:.2f}% of step time in the writer "
                f"({m['flushes']} flushes); with vs without: {100 * m['ab_overhead']:+.2f}%")
    over_tf32 = f" ({r['ratio_over_tf32']:.2f}x over the TF32 baseline)" if r.get("ratio_over_tf32") else ""
    rows.append(f"ratio {r['ratio']:.2f}x over the true-fp32 baseline{over_tf32}   MFU {mfu}")
    return rows


def format_bench(r: dict) -> str:
    """The human-readable table under ``bench``'s JSON."""
    return "\n".join([*_header_rows(r), *_throughput_rows(r), *_compile_rows(r), *_cost_rows(r)])
