"""``pyramidrepro report``: figure 5, the claims and the tables from a folder of runs."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``report`` to ``sub``."""
    p = sub.add_parser("report", help="figure 5, claims and tables from a folder of runs",
                       description="Read every metrics.h5 below RESULTS and write report.md plus "
                                   "fig5_throughput.png/.svg (and accuracy plots if any).")
    p.add_argument("results", help="folder holding runs (searched recursively)")
    p.add_argument("--out", help="where to write the report (default: RESULTS)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Write the report; print each claim's verdict and where the report is."""
    from ..study.report import build_report

    result = build_report(args.results, args.out, command=" ".join(["pyramidrepro", *args.argv]))
    for c in result["claims"]:
        print(f"{c['key']}: {c['verdict']:8s} {c['evidence']}")
    print(f"report: {result['report']} ({result['runs']} runs)")
    return 0
