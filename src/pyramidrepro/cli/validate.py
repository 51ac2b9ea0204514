"""``pyramidrepro validate``: check an experiment; print the resolved config, its sweep, where its data stands."""

from __future__ import annotations

import argparse

from ..config.load import load_config
from ._common import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``validate`` to ``sub``."""
    p = sub.add_parser("validate", help="validate an experiment and print the resolved config")
    add_config_args(p)
    p.set_defaults(func=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> int:
    """Print the resolved config; for a sweep, the run id of every point; then where the data stands
    here (a comment: missing data does not fail the check of the config)."""
    from ..config.sweep import expand_sweep
    from ..workload.data import dataset_state

    cfg = load_config(args.experiment, args.set)
    points = expand_sweep(cfg, args.experiment)
    print(cfg.to_yaml(), end="")
    if cfg.sweep:
        print(f"# sweep: {len(points)} points")
        for run_id, _ in points:
            print(f"#   {run_id}")
    for state in dict.fromkeys(dataset_state(point.data) for _, point in points):
        print(f"# data: {state}")
    return 0
