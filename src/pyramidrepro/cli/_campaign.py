"""What ``reproduce``, ``submit`` and ``follow`` share: the repeats flags, taking a campaign up from its
state on disk, the report after every pass, and the closing lines."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config.errors import ConfigError
from ._types import int_between, percentage

if TYPE_CHECKING:
    from ..cluster.campaign import Campaign, Outcome, Progress
    from ..cluster.campaign_state import CampaignState, Repeats

MAX_REPEATS = 20
#: while a pass runs, the report is written again once this long has passed since the last one
REPORT_EVERY_S = 240.0


def add_repeat_args(p: argparse.ArgumentParser, defaults: Repeats, why: str) -> None:
    """``--min-repeats``, ``--max-repeats`` and ``--ci-target``; a campaign that is resumed keeps its own
    rule but for the flags given, a new one takes ``defaults`` but for them (``why``: why they suit)."""
    target = 100 * (defaults.ci_target or 0)
    p.add_argument("--ci-target", type=percentage, metavar="PERCENT",
                   help="repeat a point while its images/s 95 %% interval is wider than +-PERCENT of the mean "
                        f"(default: {target:g}, or the resumed campaign's)")
    p.add_argument("--max-repeats", type=int_between(1, MAX_REPEATS),
                   help=f"runs of one point at most (default: {defaults.maximum}, or the resumed campaign's)")
    p.add_argument("--min-repeats", type=int,
                   help="runs of every point at least, each in a later pass over the points: one run's interval "
                        f"cannot see how much the machine drifts between runs (default: {defaults.minimum}, or "
                        f"the resumed campaign's; {why})")


def repeats_of(args: argparse.Namespace, base: Repeats) -> Repeats:
    """``base`` with the repeats flags given in its place; ConfigError unless 1 <= min <= max."""
    from ..cluster.campaign_state import Repeats

    minimum = base.minimum if args.min_repeats is None else args.min_repeats
    maximum = base.maximum if args.max_repeats is None else args.max_repeats
    target = base.ci_target if args.ci_target is None else args.ci_target / 100
    if not 1 <= minimum <= maximum:
        raise ConfigError(args.command, "--min-repeats", f"must be between 1 and --max-repeats ({maximum}), "
                                                         f"got {minimum}")
    return Repeats(minimum, maximum, target)


def take_up(c: Campaign, args: argparse.Namespace, defaults: Repeats, executor: str, ddp_ranks: int = 0,
            rerun_done: bool = False) -> CampaignState:
    """The campaign's state: the one on disk, resumed, or a new one when there is none, ``rerun_done``
    asks for a fresh start, or it was made for other points; the repeats flags given replace its rule.
    ConfigError when a campaign replaced, or moved to another executor, still has jobs queued.  The
    caller holds the campaign's lock (:func:`..cluster.campaign_state.campaign_held`)."""
    from ..cluster.campaign_state import CampaignState, load_state

    old = load_state(c.folder)
    resumable = old is not None and not rerun_done and bool(old.passes) and set(old.passes[0]) == set(c.points)
    if old is not None and (not resumable or old.executor != executor):
        refuse_if_queued(c, old)
    if old is not None and resumable:
        old.repeats = repeats_of(args, old.repeats)
        old.config, old.source, old.executor, old.ddp_ranks = c.cfg.to_dict(), c.source, executor, ddp_ranks
        old.workdir = os.getcwd()
        c.say(f"campaign: resuming {c.folder} at pass {len(old.passes)} ({old.jobs_submitted()} job(s) so far)")
        return old
    return CampaignState(c.cfg.name, c.source, c.cfg.to_dict(), repeats_of(args, defaults), executor, ddp_ranks,
                         rerun_done)


def refuse_if_queued(c: Campaign, old: CampaignState) -> None:
    """ConfigError when a campaign about to be replaced still has jobs in the queue."""
    from ..cluster.campaign_state import state_path
    from ..cluster.campaign_view import Kind, look

    queued = [v for v in look(old, c.out) if v.kind is Kind.WAITING]
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
    from ..config.experiment import config_from_dict

    path = Path(folder).resolve()  # `status .` names its folder too
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


def enter_workdir(state: CampaignState, prog: str) -> None:
    """Work where the campaign was submitted from: its jobs start there and a relative data.root or image
    path in its config is read from there."""
    here, there = Path.cwd(), Path(state.workdir)
    if state.workdir and there.is_dir() and there.resolve() != here.resolve():
        os.chdir(there)
        print(f"{prog}: working in {there}, where the campaign was submitted from", flush=True)
