"""``pyramidrepro status OUT/EXPERIMENT``: where a campaign stands, a row per point (one squeue call)."""

from __future__ import annotations

import argparse
import json

from ._campaign import open_campaign


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``status`` to ``sub``."""
    p = sub.add_parser(
        "status", help="where a campaign stands: a row per point, and what it waits for",
        description="One table from the campaign's state (OUT/<experiment>/campaign.json), its runs' metrics and "
                    "one squeue call: per point the runs done and wanted, the pooled images/s with its 95 % "
                    "interval against --ci-target, and for each run not done its job, state and pending reason, "
                    "or its log when it failed; a last line says what the campaign waits for. Needs no torch.")
    p.add_argument("campaign", metavar="OUT/EXPERIMENT", help="the campaign's folder (holding campaign.json)")
    p.add_argument("--json", action="store_true", help="print the same as JSON, for scripts")
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    """Print the campaign's table (or JSON)."""
    from ..cluster.campaign_status import campaign_status, render_json, render_text

    campaign, state = open_campaign(args.campaign)
    status = campaign_status(campaign.folder, state)
    print(json.dumps(render_json(status), indent=1) if args.json else render_text(status))
    return 0
