"""``pyramidrepro follow OUT/EXPERIMENT``: take a submitted campaign on from its state on disk."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._campaign import enter_workdir, open_campaign
from .submit import add_follow_args, run_campaign


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``follow`` to ``sub``."""
    p = sub.add_parser(
        "follow", help="take a campaign on: follow its jobs, submit its later passes, report",
        description="Reattach to a campaign that submit (or reproduce) started, from its state in "
                    "OUT/<experiment>/campaign.json: follow its queued and running jobs (one squeue call per poll), "
                    "submit again a run whose job vanished without a result, submit each later pass as it becomes "
                    "due, and write the report after every pass. Exit 0 when every run has a result, 1 when one "
                    "failed, as submit --wait. A Slurm campaign needs no torch here: run it on the login node (in "
                    "tmux or screen); a local one (reproduce, submit --cluster local) trains here.")
    p.add_argument("campaign", metavar="OUT/EXPERIMENT", help="the campaign's folder (holding campaign.json)")
    add_follow_args(p)
    p.set_defaults(func=cmd_follow)


def cmd_follow(args: argparse.Namespace) -> int:
    """Drive the campaign in ``args.campaign`` to its end, from where it was submitted."""
    from ..cluster.campaign_state import campaign_held

    with campaign_held(Path(args.campaign).resolve()) as folder:
        campaign, state = open_campaign(str(folder))
        enter_workdir(state, "follow")
        return run_campaign("follow", campaign, state, args, wait=True)
