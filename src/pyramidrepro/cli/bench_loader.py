"""``pyramidrepro bench-loader``: images/s of one data loader (median of epochs), as JSON."""

from __future__ import annotations

import argparse
import json

from ..config.errors import ConfigError
from ._types import non_negative_int, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench-loader`` to ``sub``."""
    p = sub.add_parser("bench-loader", help="images/s of a data loader (median of epochs), JSON")
    p.add_argument("--loader", choices=["torch", "torchvision", "dali"], default="torch")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--images", type=int, default=10240, help="synthetic images per epoch")
    p.add_argument("--epochs", type=positive_int, default=5, help="epochs timed (after one warm-up)")
    p.add_argument("--num-workers", type=non_negative_int, default=2, help="workers (torchvision loader)")
    p.set_defaults(func=cmd_bench_loader)


def cmd_bench_loader(args: argparse.Namespace) -> int:
    """Time the loader and print its JSON; an epoch holds at least one batch."""
    from ..bench.harness import bench_loader

    if args.images < args.batch_size:
        raise ConfigError("bench-loader", "--images", f"must be >= {args.batch_size}, got {args.images}")
    print(json.dumps(bench_loader(args.loader, args.device, args.batch_size, args.images,
                                  args.epochs, args.num_workers), indent=2))
    return 0
