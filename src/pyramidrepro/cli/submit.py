"""``pyramidrepro submit``: every point of an experiment's sweep through submitit (Slurm, local, debug)."""

from __future__ import annotations

import argparse

from ..cluster.follow import LOCAL_POLL_S, MAX_POLL_S, POLL_S, QUIET_S
from ..spec.config import load_config
from ..spec.schema import FINISHED
from ._common import add_config_args, add_container_arg, add_out_arg, container_override
from ._types import positive_float


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``submit`` to ``sub``."""
    p = sub.add_parser("submit", help="submit an experiment (and its sweep) through submitit",
                       description="Expand the sweep and submit every point through submitit: one Slurm "
                                   "job array per task layout (cluster.executor: slurm), local processes "
                                   "(local) or in this process (debug). Results: OUT/<experiment>/<run id>/.")
    add_config_args(p)
    add_out_arg(p)
    p.add_argument("--cluster", choices=["slurm", "local", "debug"], help="override cluster.executor")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script(s) and points; submit nothing")
    p.add_argument("--wait", action="store_true", help="follow the jobs; exit non-zero if any failed")
    p.add_argument("--poll", type=positive_float,
                   help="seconds between state checks with --wait (on Slurm one squeue call for all jobs each; "
                        f"after {QUIET_S:g} s without a change they grow to {MAX_POLL_S:g} s). Default: {POLL_S:g} "
                        f"on Slurm, {LOCAL_POLL_S:g} for local jobs, which ask no scheduler")
    p.add_argument("--never-starts", choices=["cancel", "keep"], default="cancel",
                   help="with --wait, a Slurm job pending for a reason that never clears (PartitionConfig, "
                        "a per-job limit, more than any node of the cluster has) ends the wait with the "
                        "reason: cancel it (default) or keep it queued; a reason that clears (nodes drained, "
                        "down or reserved for maintenance, a hold, a reservation, priority) is waited on")
    p.add_argument("--rerun-done", action="store_true",
                   help=f"submit again the points whose run is done ({', '.join(sorted(FINISHED))}); by default "
                        "each is skipped with one line, as reproduce does")
    p.add_argument("--no-preflight", action="store_true",
                   help="submit even what sinfo says no node can hold (by default that is refused, exit 2)")
    add_container_arg(p)
    p.set_defaults(func=cmd_submit)


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit the points; with ``--wait``, follow them and fail if any job did."""
    from ..cluster import dispatch

    overrides = [*args.set, *container_override(args)]
    if args.cluster:
        overrides.append(f"cluster.executor={args.cluster}")
    cfg = load_config(args.experiment, overrides)
    jobs = dispatch.submit(cfg, args.experiment, args.out, dry_run=args.dry_run, check_nodes=not args.no_preflight,
                           rerun_done=args.rerun_done)
    if args.dry_run or not args.wait:
        return 0
    poll = args.poll or (POLL_S if cfg.cluster.executor == "slurm" else LOCAL_POLL_S)
    bad = dispatch.wait(jobs, poll_s=poll, on_never=args.never_starts)
    print(f"submit: {len(jobs) - bad}/{len(jobs)} job(s) completed")
    return 1 if bad else 0
