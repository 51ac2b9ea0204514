"""The PyramidNet variants a config may name: the depth rule, the widening rule, the size limit.

Plain arithmetic, no torch: a config is checked (``validate``, ``submit``) on a host without it,
and :mod:`pyramidrepro.workload.model` builds the network from the same widths.
"""

from __future__ import annotations

import math
from typing import Literal

BlockKind = Literal["basic", "bottleneck"]
Widening = Literal["additive", "multiplicative"]


def blocks_per_stage(depth: int, block: BlockKind) -> int:
    """Blocks in each of the three stages: (depth-2)/6 for basic, (depth-2)/9 for bottleneck."""
    per_block = 2 if block == "basic" else 3
    if depth < 2 or (depth - 2) % (3 * per_block) != 0 or depth == 2:
        form = "6n+2" if block == "basic" else "9n+2"
        raise ValueError(f"depth {depth} is not of the form {form} (n >= 1) for {block} blocks")
    return (depth - 2) // (3 * per_block)


#: the largest PyramidNet this package builds: deeper than any published variant (272 layers), and
#: at most a billion weights (4 GB in fp32 before gradients and optimizer state)
MAX_DEPTH = 2000
MAX_PARAMETERS = 1_000_000_000


def check_size(depth: int, alpha: float, block: BlockKind, widening: Widening = "additive") -> None:
    """ValueError when a variant is not buildable here: a bad depth, or too many weights (estimated)."""
    blocks_per_stage(depth, block)
    if depth > MAX_DEPTH:
        raise ValueError(f"depth {depth} is over the limit of {MAX_DEPTH}")
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
    if widening == "multiplicative" and alpha < 1:
        raise ValueError(f"multiplicative widening needs alpha >= 1, got {alpha}")
    if alpha > 100 * MAX_DEPTH:
        raise ValueError(f"alpha {alpha:g} is over the limit of {100 * MAX_DEPTH}")
    expansion = 1 if block == "basic" else 4
    weights, width_in = 0.0, 16
    for width in block_widths(depth, alpha, block, widening):
        # 3x3 convolutions (basic: 2; bottleneck: 1x1, 3x3, 1x1 to 4x the width)
        weights += 9 * (width_in * width + width * width) if block == "basic" else (
            width_in * width + 9 * width * width + width * width * expansion)
        width_in = width * expansion
        if weights > MAX_PARAMETERS:
            raise ValueError(f"depth {depth} with alpha {alpha:g} has more than {MAX_PARAMETERS:,} weights; "
                             "that is beyond what this package builds")


def block_widths(depth: int, alpha: float, block: BlockKind, widening: Widening) -> list[int]:
    """The width (``planes``) of every block, in order, as the paper's widening rule gives it.

    Additive: the width grows by alpha/N per block (N blocks in all), rounded per block, so the
    last block is 16 + alpha wide.  Multiplicative: the width is multiplied by alpha**(1/N) per
    block and floored, as in the paper's eq. (3), so the last block is about 16 * alpha wide.
    """
    n_total = 3 * blocks_per_stage(depth, block)
    widths: list[int] = []
    width = 16.0
    for _ in range(n_total):
        if widening == "additive":
            width += alpha / n_total
            widths.append(int(round(width)))
        else:
            width *= alpha ** (1.0 / n_total)
            widths.append(int(math.floor(width)))
    return widths
