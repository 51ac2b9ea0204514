"""What ``reproduce``, ``submit`` and ``follow`` share: the repeats flags, taking a campaign up from its
state on disk, the report after every pass, and the closing lines."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..spec.config import ConfigError
from ._types import int_between, percentage

if TYPE_CHECKING:
    from ..cluster.campaign import Campaign, Outcome, Progress
    from ..cluster.campaign_state import CampaignState, Repeats

MAX_REPEATS = 20
#: while a pass runs, the report is written again once this long has passed since the last one
REPORT_EVERY_S = 240.0


def add_repeat_args(p: argparse.ArgumentParser, minimum: int, maximum: int, ci_target: float, why: str) -> None:
    """``--min-repeats``, ``--max-repeats`` and ``--ci-target`` with these defaults (``why``: why they suit)."""
    p.add_argument("--ci-target", type=percentage, default=ci_target, metavar="PERCENT",
                   help="repeat a point while its images/s 95 %% interval is wider than +-PERCENT of the mean "
                        f"(default: {ci_target:g})")
    p.add_argument("--max-repeats", type=int_between(1, MAX_REPEATS), default=maximum,
                   help=f"runs of one point at most (default: {maximum})")
    p.add_argument("--min-repeats", type=int, default=minimum,
                   help="runs of every point at least, each in a later pass over the points: one run's interval "
                        f"cannot see how much the machine drifts between runs (default: {minimum}; {why})")


def repeats_of(args: argparse.Namespace) -> Repeats:
    """The repeats rule the flags give; ConfigError unless 1 <= ``--min-repeats`` <= ``--max-repeats``."""
    from ..cluster.campaign_state import Repeats

    if not 1 <= args.min_repeats <= args.max_repeats:
        raise ConfigError(args.command, "--min-repeats", f"must be between 1 and --max-repeats ({args.max_repeats}), "
                                                         f"got {args.min_repeats}")
    return Repeats(args.min_repeats, args.max_repeats, args.ci_target / 100)


def take_up(c: Campaign, repeats: Repeats | None, executor: str, ddp_ranks: int = 0,
            rerun_done: bool = False) -> CampaignState:
    """The campaign's state: the one on disk, resumed (``repeats`` replacing its rule when given), or a
    new one when there is none, ``rerun_done`` asks for a fresh start, or it was made for other points.
    ConfigError when the old state still has jobs queued for points this experiment does not have."""
    from ..cluster.campaign_state import CampaignState, load_state

    old = load_state(c.folder)
    if old is not None and not rerun_done and old.passes and set(old.passes[0]) == set(c.points):
        old.repeats = repeats or old.repeats
        old.config, old.source, old.executor, old.ddp_ranks = c.cfg.to_dict(), c.source, executor, ddp_ranks
        c.say(f"campaign: resuming {c.folder} at pass {len(old.passes)} ({old.jobs_submitted()} job(s) so far)")
        return old
    if old is not None:
        refuse_if_queued(c, old)
    return CampaignState(c.cfg.name, c.source, c.cfg.to_dict(), repeats or old.repeats if old else repeats,
                         executor, ddp_ranks, rerun_done)


def refuse_if_queued(c: Campaign, old: CampaignState) -> None:
    """ConfigError when a campaign about to be replaced still has jobs in the queue."""
    from ..cluster.campaign_state import state_path
    from ..cluster.campaign_view import Kind, look, slurm_queue

    run_ids = [r for runs in old.passes for r in runs]
    queued = [v for v in look(old, c.out, run_ids, slurm_queue(old, run_ids)) if v.kind is Kind.WAITING]
    if queued:
        jobs = ", ".join(v.job.job_id for v in queued[:4] if v.job) + (" ..." if len(queued) > 4 else "")
        raise ConfigError(str(state_path(c.folder)), "campaign", f"holds {len(queued)} queued or running job(s) "
                          f"({jobs}) of other points or of a campaign started afresh: follow it, scancel them, "
                          "or give another --out")


def say_waiting(c: Campaign, outcome: Outcome, prog: str) -> None:
    """A line per run the campaign waits on (its job, state and reason), and how to follow it."""
    for view in outcome.waiting:
        reason = f": {view.reason}" if view.reason and view.reason != "None" else ""
        c.say(f"{view.run_id}: waits on job {view.job.job_id if view.job else '?'} ({view.queue_state}{reason})")
    c.say(f"{prog}: pass {outcome.passes} waits on {len(outcome.waiting)} job(s); "
          f"pyramidrepro status {c.folder} shows them, pyramidrepro follow {c.folder} takes the campaign on")


class ReportSchedule:
    """The campaign's report, written at the end of every pass and, within a pass, once
    :data:`REPORT_EVERY_S` have passed since the last one; each says how far the campaign had come.
    ``prog`` names the command in the lines it prints, ``command`` is the one the report names."""

    def __init__(self, out_dir: Path, command: str, max_repeats: int, every_s: float = REPORT_EVERY_S,
                 prog: str = "reproduce") -> None:
        self.out_dir, self.command, self.max_repeats = out_dir, command, max_repeats
        self.every_s, self.prog = every_s, prog
        self.last = time.monotonic()
        self.passes = 0

    def __call__(self, progress: Progress) -> None:
        if progress.pass_ended:
            self.passes = progress.number
            goes_on = ", the campaign goes on" if progress.number < self.max_repeats else ""
            self.write(f"pass {progress.number} of at most {self.max_repeats} done{goes_on}")
        elif time.monotonic() - self.last >= self.every_s:
            self.write(f"pass {progress.number} of at most {self.max_repeats} under way: "
                       f"{progress.point} of {progress.points} points done, the campaign goes on")

    def write(self, stage: str, final: bool = False) -> dict[str, Any] | None:
        """The report as the campaign stands (``stage``); None, with a line, while no run has metrics."""
        from ..records.runs import METRICS_NAME
        from ..study.report import build_report

        self.last = time.monotonic()
        if not any(self.out_dir.glob(f"*/{METRICS_NAME}")):
            print(f"{self.prog}: no report yet: no run of {self.out_dir} has written metrics", flush=True)
            return None
        report = build_report(self.out_dir, self.out_dir, command=self.command, stage=stage)
        if not final:
            print(f"{self.prog}: report ({stage}) at {report['report']}", flush=True)
        return report

    def final(self) -> dict[str, Any] | None:
        return self.write(f"complete after {self.passes} pass(es)", final=True)


def open_campaign(folder: str, stream: Any = None) -> tuple[Campaign, CampaignState]:
    """The campaign kept in ``folder`` (OUT/<experiment>) and its state; ConfigError naming the folder
    when it holds none."""
    from ..cluster.campaign import Campaign
    from ..cluster.campaign_state import load_state, state_path
    from ..spec.config import config_from_dict

    path = Path(folder)
    state = load_state(path)
    if state is None:
        raise ConfigError(str(path), "campaign", "no campaign.json here: give the OUT/<experiment> folder of a "
                                                 "campaign that submit or reproduce started")
    cfg = config_from_dict(state.config, str(state_path(path)))
    if cfg.name != path.name:
        raise ConfigError(str(path), "campaign", f"holds the campaign of experiment {cfg.name!r}: its runs are "
                                                 f"in a folder of that name")
    return Campaign.of(cfg, state.source, path.parent, stream), state


def print_summary(prog: str, outcome: Outcome, report: dict[str, Any] | None, seconds: float) -> None:
    """Runs, points, failures and time, each claim's verdict, and where the report is."""
    from ..cluster.campaign_state import point_of

    points = {point_of(v.run_id) for v in outcome.runs}
    print(f"{prog}: {len(outcome.runs)} runs of {len(points)} points in {seconds:.0f} s, "
          f"{len(outcome.failed)} failed")
    for v in outcome.failed:
        print(f"  failed: {v.run_id} ({v.status or 'no metrics'}{'; ' + v.reason if v.reason else ''})")
    if report is not None:
        for c in report["claims"]:
            print(f"  {c['key']}: {c['verdict']:8s} {c['evidence']}")
        print(f"{prog}: report at {report['report']}")
