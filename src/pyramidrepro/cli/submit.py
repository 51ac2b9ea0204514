"""``pyramidrepro submit``: an experiment's sweep as a campaign through submitit (Slurm, local, debug)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..cluster.campaign_state import Repeats, campaign_held
from ..cluster.follow import LOCAL_POLL_S, MAX_POLL_S, POLL_S, QUIET_S
from ..config.load import load_config
from ..config.schema import FINISHED
from ..config.sweep import expand_sweep
from ._campaign import ReportSchedule, add_repeat_args, print_summary, repeats_of, say_waiting, take_up
from ._common import add_config_args, add_container_arg, add_out_arg, container_override
from ._types import positive_float

#: the cluster's defaults: two runs a pass apart give every point an interval across runs (one run's
#: windows cannot see a node's drift), a third only where that interval is still wider than 2 %
CLUSTER_REPEATS = Repeats(2, 3, 0.02)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``submit`` to ``sub``."""
    p = sub.add_parser(
        "submit", help="submit an experiment's sweep as a campaign through submitit",
        description="Expand the sweep and run it as a campaign in passes: every point at least --min-repeats "
                    "times, again while its interval is wider than --ci-target, at most --max-repeats times. On "
                    "Slurm each pass is one job array per task layout, submitted once the previous pass's jobs "
                    "have ended; local and debug run one point at a time here. The campaign's state (passes, "
                    "each run's job) is kept in OUT/<experiment>/campaign.json: submitting again resumes it "
                    "(a run whose job is queued or running is not submitted again, one whose job vanished without "
                    "a result is), `pyramidrepro status` shows it and `pyramidrepro follow` takes it on. Without "
                    "--wait, submit returns once the current pass is queued. Results: OUT/<experiment>/<run id>/.")
    add_config_args(p)
    add_out_arg(p)
    p.add_argument("--cluster", choices=["slurm", "local", "debug"], help="override cluster.executor")
    p.add_argument("--dry-run", action="store_true",
                   help="print the first pass's sbatch script(s) and points; submit nothing")
    p.add_argument("--wait", action="store_true",
                   help="follow the campaign to its end, submitting each pass as it becomes due; exit 1 if a run "
                        "failed (local and debug always run to the end)")
    add_follow_args(p)
    add_repeat_args(p, CLUSTER_REPEATS, why="on a cluster each run costs GPU hours: two runs a pass apart are "
                                             "the fewest that give an interval across runs")
    p.add_argument("--rerun-done", action="store_true",
                   help=f"start the campaign afresh and run again the runs that are done ({', '.join(sorted(FINISHED))}"
                        "); by default each is skipped with one line, as reproduce does")
    add_container_arg(p)
    p.set_defaults(func=cmd_submit)


def add_follow_args(p: argparse.ArgumentParser) -> None:
    """``--poll``, ``--never-starts`` and ``--no-preflight``: how a campaign's jobs are followed and submitted."""
    p.add_argument("--poll", type=positive_float,
                   help="seconds between state checks while waiting (on Slurm one squeue call for all jobs each; "
                        f"after {QUIET_S:g} s without a change they grow to {MAX_POLL_S:g} s). Default: {POLL_S:g} "
                        f"on Slurm, {LOCAL_POLL_S:g} for local jobs, which ask no scheduler")
    p.add_argument("--never-starts", choices=["cancel", "keep"], default="cancel",
                   help="while waiting, a Slurm job pending for a reason that never clears (PartitionConfig, "
                        "a per-job limit, more than any node of the cluster has) ends the wait with the "
                        "reason: cancel it (default) or keep it queued; a reason that clears (nodes drained, "
                        "down or reserved for maintenance, a hold, a reservation, priority) is waited on")
    p.add_argument("--no-preflight", action="store_true",
                   help="submit even what sinfo says no node can hold (by default that is refused, exit 2)")
    p.add_argument("--no-data-check", action="store_true",
                   help="submit without looking for CIFAR-10 under data.root here: for a data.root that exists "
                        "on the compute nodes only (node-local scratch a prolog fills); by default a campaign "
                        "whose data is not there is refused before any job queues")


def launcher_for(executor: str, args: argparse.Namespace, ddp_ranks: int = 0):  # noqa: ANN201
    """The campaign's launcher for ``executor``: Slurm job arrays, or one point at a time here."""
    from ..cluster.campaign_launchers import LocalLauncher, SlurmLauncher

    if executor == "slurm":
        return SlurmLauncher(args.poll or POLL_S, args.never_starts, checks_of(args))
    return LocalLauncher(ddp_ranks, checks=checks_of(args))


def checks_of(args: argparse.Namespace):  # noqa: ANN201
    """What --no-preflight and --no-data-check leave of submit's checks."""
    from ..cluster.dispatch import Checks

    return Checks(nodes=not args.no_preflight, data=not args.no_data_check)


def run_campaign(prog: str, campaign, state, args: argparse.Namespace, wait: bool) -> int:  # noqa: ANN001
    """Drive the campaign (to its end with ``wait``); the report after every pass and at the end."""
    from ..cluster.campaign import drive

    t0 = time.monotonic()
    launcher = launcher_for(state.executor, args, state.ddp_ranks)
    reports = ReportSchedule(campaign.folder, "pyramidrepro " + " ".join(args.argv), state.repeats.maximum, prog=prog)
    outcome = drive(campaign, state, launcher, wait=wait or launcher.synchronous, on_progress=reports)
    if not outcome.complete:
        say_waiting(campaign, outcome, prog)
        return 0
    reports.passes = outcome.passes
    print_summary(prog, outcome, reports.final(), time.monotonic() - t0)
    return 1 if outcome.failed else 0


def cmd_submit(args: argparse.Namespace) -> int:
    """Check, then submit the campaign's due runs; with ``--wait``, follow it to its end."""
    from ..cluster import dispatch
    from ..cluster.campaign import Campaign

    overrides = [*args.set, *container_override(args)]
    if args.cluster:
        overrides.append(f"cluster.executor={args.cluster}")
    cfg = load_config(args.experiment, overrides)
    if args.dry_run:
        repeats_of(args, CLUSTER_REPEATS)
        points = expand_sweep(cfg, args.experiment)
        if not args.rerun_done:
            points = dispatch.not_done(points, Path(args.out).resolve(), cfg.name, sys.stdout)
        dispatch.submit(cfg, args.experiment, args.out, dry_run=True, points=points, checks=checks_of(args))
        return 0
    cfg.cluster.validate(args.experiment)
    campaign = Campaign.of(cfg, args.experiment, args.out)
    with campaign_held(campaign.folder):
        state = take_up(campaign, args, CLUSTER_REPEATS, cfg.cluster.executor, rerun_done=args.rerun_done)
        return run_campaign("submit", campaign, state, args, args.wait)
