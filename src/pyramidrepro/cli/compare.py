"""``pyramidrepro compare REF NEW``: did NEW reproduce REF? Point by point, with intervals."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._types import float_between


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``compare`` to ``sub``."""
    p = sub.add_parser(
        "compare", help="compare two campaigns (or a reference file and a campaign) point by point",
        description="Match the points of REF and NEW by what defines them (model, line: mode, precision and "
                    "remedies, global batch, ranks), never by run id, and give per point NEW/REF images/s with "
                    "a 95 %% interval and a verdict: slower or faster only beyond noise and beyond --tolerance, "
                    "else the same. The paper's claims and the two machines (GPU, driver, CUDA, torch, DALI, "
                    "image, nodes, commit, precision and path choices) are set side by side, differences first. "
                    "Writes compare.md and compare_fig5.png/.svg (both campaigns' Figure 5, REF dashed) and a "
                    "summary on stdout. Exit 0 when no point is slower beyond the tolerance, 1 when one is (for "
                    "a cron job or CI), 2 on bad input. Needs no torch.")
    p.add_argument("ref", metavar="REF", help="a campaign folder (OUT/<experiment>) or a reference file that "
                                              "report --write-reference wrote")
    p.add_argument("new", metavar="NEW", help="a campaign folder (or a reference file)")
    p.add_argument("--out", help="folder for compare.md and the figure (default: NEW/compare, or ./compare when "
                                 "NEW is a file)")
    p.add_argument("--tolerance", type=float_between(0, 100), default=5.0, metavar="PERCENT",
                   help="a point is slower or faster only beyond this many percent of REF (and beyond noise); "
                        "default 5")
    p.add_argument("--require-all", action="store_true",
                   help="fail (exit 1) when a point is on one side only; by default such points are listed")
    p.set_defaults(func=cmd_compare)


def out_folder(args: argparse.Namespace) -> Path:
    """``--out``, else NEW/compare (./compare when NEW is a file); a file there is refused."""
    from ..config.errors import ConfigError

    out = Path(args.out) if args.out else (Path(args.new) / "compare" if Path(args.new).is_dir() else Path("compare"))
    if out.exists() and not out.is_dir():
        raise ConfigError("compare", "--out", f"{out} is a file; give a folder")
    return out


def cmd_compare(args: argparse.Namespace) -> int:
    """Read both sides, compare, write compare.md and the figure, print the summary."""
    from ..study.compare import compare
    from ..study.compare_render import summary_lines, write_comparison
    from ..study.reference import side_of

    out = out_folder(args)
    comparison = compare(side_of(args.ref), side_of(args.new), args.tolerance / 100)  # all checked before writing
    path = write_comparison(comparison, out)
    for line in summary_lines(comparison):
        print(line)
    print(f"compare: {path}")
    return comparison.exit_code(args.require_all)
