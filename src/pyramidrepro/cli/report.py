"""``pyramidrepro report``: figure 5, the claims and the tables from a folder of runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``report`` to ``sub``."""
    p = sub.add_parser("report", help="figure 5, claims and tables from a folder of runs",
                       description="Read every metrics.h5 below RESULTS and write report.md plus "
                                   "fig5_throughput.png/.svg (and accuracy plots if any), and the same numbers as "
                                   "runs.csv (a row per run) and points.csv (a row per point of the table).")
    p.add_argument("results", help="folder holding runs (searched recursively)")
    p.add_argument("--out", help="where to write the report (default: RESULTS)")
    p.add_argument("--write-reference", metavar="FILE",
                   help="also write the campaign's pooled points, claims and machine as a reference file (YAML, "
                        "versioned) that compare FILE NEW reads in place of the campaign")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Write the report; print each claim's verdict and where the report is."""
    from ..study.report import build_report

    reference = Path(args.write_reference) if args.write_reference else None
    if reference is not None and (reference.is_dir() or not reference.parent.is_dir()):
        raise ConfigError("report", "--write-reference", f"{reference}: give a file name in a folder that exists")
    result = build_report(args.results, args.out, command=" ".join(["pyramidrepro", *args.argv]))
    if reference is not None:
        from ..study.compare import campaign_side
        from ..study.reference import write_reference

        print(f"reference: {write_reference(campaign_side(args.results), reference)}")
    for c in result["claims"]:
        print(f"{c['key']}: {c['verdict']:8s} {c['evidence']}")
    print(f"report: {result['report']} ({result['runs']} runs)")
    return 0
