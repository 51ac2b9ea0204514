"""``pyramidrepro scaling``: predict DDP throughput on N devices and nodes from one device's step."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config.errors import ConfigError
from ..config.schema import Status
from ..stats.scaling import LINKS
from ._common import add_model_args, check_model_args
from ._types import float_between, non_negative_float, positive_float, positive_int

if TYPE_CHECKING:
    from ..stats.scaling import Link

DESCRIPTION = ("Ring all-reduce model: t_N = t_1 + exposed(sum over DDP buckets of 2(N-1)/N x "
               "bytes / bandwidth + 2(N-1) x latency) + jitter x E[max of N normals]; "
               "images/s = N x batch / t_N. The one-device step comes from a run "
               "(--run) or is given (--step-time-ms, --batch-per-device).")
EPILOG = ("Links: " + ", ".join(f"{k} ({v.name})" for k, v in LINKS.items())
          + "; or NAME=GBps[:latency_us].\nExample: pyramidrepro scaling --run "
            "results/runs/fig5/p000-.../metrics.h5 --inter 100g 400g")
#: DDP's bucket size: below 0.1 MB the buckets of a large model run into the millions
BUCKET_CAP_MB = (0.1, 1e5)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``scaling`` to ``sub``."""
    p = sub.add_parser("scaling", help="predict DDP throughput on N devices / nodes from one device's step",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("--run", metavar="METRICS", help="a completed one-device run (metrics.h5 or its folder)")
    p.add_argument("--step-time-ms", type=positive_float, help="one device's step time (instead of --run)")
    p.add_argument("--batch-per-device", type=positive_int, help="the batch that step time is for")
    add_model_args(p, depth=110, alpha=270, what="the model whose gradient bytes count (without --run)")
    p.add_argument("--devices", type=positive_int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--per-node", type=positive_int, default=8, help="devices per node (default 8)")
    p.add_argument("--intra", default="nvlink4", help="link within a node (default nvlink4)")
    p.add_argument("--inter", nargs="+", default=["100g", "200g", "400g"], help="links between nodes")
    p.add_argument("--bucket-cap-mb", type=float_between(*BUCKET_CAP_MB), default=25.0,
                   help=f"DDP's bucket size in MB (default 25; {BUCKET_CAP_MB[0]:g} to {BUCKET_CAP_MB[1]:g})")
    p.add_argument("--overlap", type=float_between(0, 1), help="share of backward that hides communication, 0 to 1 "
                                                               "(default: 1 for GPU runs, 0 for CPU runs)")
    p.add_argument("--jitter-ms", type=non_negative_float,
                   help="step-time standard deviation (default: from --run, else 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=cmd_scaling)


@dataclass(frozen=True)
class OneDevice:
    """The measured (or given) one-device step that the prediction scales."""

    depth: int
    alpha: float
    block: str
    batch: int
    step_s: float
    jitter_s: float
    gpu: bool
    grad_bytes: int  # 0: count them from the model

    @property
    def model(self) -> str:
        return f"PyramidNet-{self.depth} alpha={self.alpha:g} {self.block}"


def _from_run(run: str) -> OneDevice:
    """The step of a completed one-device run (its metrics file or folder)."""
    from ..records.runs import load_run

    path = Path(run)
    path = path / "metrics.h5" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such metrics file")
    try:
        r = load_run(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(str(path), "", f"not a readable metrics file ({str(exc).splitlines()[0]})") from None
    if r.status != Status.COMPLETED or not r.images_per_s:
        raise ConfigError(str(path), "status", f"needs a completed run with images_per_s (got {r.status})")
    if r.world_size != 1:
        raise ConfigError(str(path), "world_size", f"needs a one-device run, got {r.world_size} devices")
    return OneDevice(r.depth, r.alpha, r.block, r.batch_size, r.batch_size / r.images_per_s,
                     r.step_time_std_s or 0.0, r.gpu, r.grad_bytes or 0)


def _given(args: argparse.Namespace) -> OneDevice:
    """The step given by ``--step-time-ms`` and ``--batch-per-device`` (taken as a GPU's)."""
    if not args.step_time_ms or not args.batch_per_device:
        raise ConfigError("scaling", "--step-time-ms/--batch-per-device",
                          "give both (a measured one-device step), or --run METRICS_FILE")
    check_model_args(args)
    return OneDevice(args.depth, args.alpha, args.block, args.batch_per_device, args.step_time_ms / 1e3,
                     0.0, True, 0)


def one_device(args: argparse.Namespace) -> OneDevice:
    """The one-device step for ``scaling``: gradient bytes counted when unknown, ``--jitter-ms`` applied."""
    from dataclasses import replace

    from ..stats.scaling import grad_bytes_of
    from ..workload.model import PyramidNet

    base = _from_run(args.run) if args.run else _given(args)
    if not base.grad_bytes:
        base = replace(base, grad_bytes=grad_bytes_of(PyramidNet(base.depth, base.alpha, base.block)))
    if args.jitter_ms is not None:
        base = replace(base, jitter_s=args.jitter_ms / 1e3)
    return base


def link_of(flag: str, text: str) -> Link:
    """The link ``text`` names (stats.scaling.parse_link); ConfigError naming ``flag`` for a bad one."""
    from ..stats.scaling import parse_link

    try:
        return parse_link(text)
    except ValueError as exc:
        raise ConfigError("scaling", flag, str(exc)) from None


def cmd_scaling(args: argparse.Namespace) -> int:
    """Predict images/s and efficiency per device count and link between nodes; print a table or JSON."""
    from ..stats.scaling import DeviceStep, Fabric, default_overlap, predict

    intra, inters = link_of("--intra", args.intra), [link_of("--inter", x) for x in args.inter]
    base = one_device(args)
    overlap = args.overlap if args.overlap is not None else default_overlap(base.gpu)
    step = DeviceStep(base.step_s, base.batch, base.grad_bytes, base.jitter_s)
    fabrics = {inter.name: Fabric(intra, inter, args.per_node, args.bucket_cap_mb, overlap) for inter in inters}
    table = {name: [predict(step, n, fabric).__dict__ for n in args.devices] for name, fabric in fabrics.items()}
    if args.json:
        print(json.dumps({"model": base.model, "step_s": base.step_s, "batch_per_device": base.batch,
                          "grad_bytes": base.grad_bytes, "step_jitter_s": base.jitter_s, "overlap": overlap,
                          "intra": asdict(intra), "devices_per_node": args.per_node, "predictions": table},
                         indent=2))
    else:
        print_table(args, base, overlap, intra.name, table)
    return 0


def print_table(args: argparse.Namespace, base: OneDevice, overlap: float, intra: str, table: dict) -> None:
    """The predictions as a table: one row per device count, one column per link between nodes."""
    from ..stats.scaling import ddp_buckets

    print(f"{base.model}: {base.batch} images per device, one device {1e3 * base.step_s:.1f} ms/step "
          f"({base.batch / base.step_s:,.0f} img/s), gradients {base.grad_bytes / 1e6:.1f} MB in "
          f"{len(ddp_buckets(base.grad_bytes, args.bucket_cap_mb))} buckets, overlap {overlap:g}, "
          f"jitter {1e3 * base.jitter_s:.1f} ms")
    print(f"within a node: {intra}, {args.per_node} devices per node")
    print(f"{'devices':>7s} {'nodes':>5s} " + " ".join(f"{name[:24]:>24s}" for name in table))
    for i, n in enumerate(args.devices):
        cells = [f"{t[i]['images_per_s']:>14,.0f} img/s {100 * t[i]['efficiency']:3.0f}%" for t in table.values()]
        print(f"{n:7d} {next(iter(table.values()))[i]['nodes']:5d} " + " ".join(f"{c:>24s}" for c in cells))
