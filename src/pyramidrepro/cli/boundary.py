"""``pyramidrepro boundary``: the largest batch under the memory cap, per line, by doubling and bisection."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config.errors import ConfigError
from ..config.load import load_config
from ._common import add_config_args, add_out_arg, check_runnable, default_nproc, hardware
from ._types import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``boundary`` to ``sub``."""
    p = sub.add_parser("boundary", help="the largest batch that fits under the memory cap, by search",
                       description="Per line of EXPERIMENT (each mode and remedy of its sweep, the batch "
                                   "left out): double the batch until a probe runs out of memory, then "
                                   "bisect to --resolution.  Each probe is a short run in its own process "
                                   "(3 steps) under OUT/<experiment>/boundary-b<batch>-<line>; the "
                                   "report reads them for its largest-batch figure and claim C1.  On a "
                                   "CPU, devices.memory_limit_gb caps the process's memory (RLIMIT_DATA).")
    add_config_args(p)
    add_out_arg(p)
    p.add_argument("--start", type=positive_int, default=16, help="first batch tried (default: 16)")
    p.add_argument("--max-batch", type=positive_int, default=8192,
                   help="largest batch tried (default: 8192, or the training set's size)")
    p.add_argument("--resolution", type=positive_int, default=1,
                   help="stop when the fitting and failing batches are this close (default: 1; "
                        "DDP lines round up to a multiple of their ranks)")
    p.add_argument("--nproc", type=int, help="DDP ranks of a ddp line (default: GPUs present, or 2 on CPU)")
    p.add_argument("--json-out", help="also write the boundaries and every probe as JSON here")
    p.set_defaults(func=cmd_boundary)


def cmd_boundary(args: argparse.Namespace) -> int:
    """The largest batch under the memory cap, per line of the experiment, by doubling and bisection."""
    from ..cluster.batch_search import ProbeError, find_boundaries
    from ..records.storage import write_atomically

    cfg = load_config(args.experiment, args.set)
    kind, n_gpus = hardware()
    if cfg.devices.memory_limit_gb is None and (kind == "cpu" or cfg.devices.device == "cpu"):
        raise ConfigError(args.experiment, "devices.memory_limit_gb",
                          "a search on a CPU needs a cap, or it would fill the machine's memory "
                          "(e.g. --set devices.memory_limit_gb=2)")
    check_runnable(cfg, args.experiment)
    try:
        found = find_boundaries(args.experiment, args.set, args.out, default_nproc(args, n_gpus), args.resolution,
                                args.start, args.max_batch)
    except ValueError as exc:
        raise ConfigError(args.experiment, "train.batch_size", str(exc)) from None
    except ProbeError as exc:
        print(f"pyramidrepro: boundary: {exc}", file=sys.stderr)
        return 1
    if args.json_out:
        write_atomically(Path(args.json_out), (json.dumps([b.to_dict() for b in found], indent=2) + "\n").encode())
    return 0
