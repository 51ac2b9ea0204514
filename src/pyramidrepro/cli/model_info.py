"""``pyramidrepro model-info``: parameters and forward MACs of a PyramidNet variant, as JSON."""

from __future__ import annotations

import argparse
import json

from ..config.sections import ModelConfig
from ._common import add_model_args, check_model_args


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``model-info`` to ``sub``."""
    p = sub.add_parser("model-info", help="parameters and forward MACs of a PyramidNet variant")
    add_model_args(p, depth=110, alpha=48)
    p.add_argument("--widening", choices=["additive", "multiplicative"], default="additive")
    p.add_argument("--channel-multiple", type=int, default=1, metavar="N",
                   help="also count the MACs of the layout with every layer's channels rounded up to a "
                        "multiple of N (8: tensor cores), the added ones held at zero; params stay the paper's")
    p.set_defaults(func=cmd_model_info)


def cmd_model_info(args: argparse.Namespace) -> int:
    """Check the size, then print the model's numbers."""
    from ..workload.model import model_info

    check_model_args(args, args.widening)
    ModelConfig.CHANNEL_MULTIPLE.check(args.channel_multiple, "model-info", "--channel-multiple")  # the config's range
    info = model_info(args.depth, args.alpha, args.block, args.widening, args.channel_multiple)
    print(json.dumps(info, indent=2))
    return 0
