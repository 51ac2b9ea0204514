"""The campaign engine behind ``reproduce``, ``submit`` and ``follow``: passes of repeats, one rule.

Every point runs at least ``minimum`` times (one run's interval cannot see how much the machine drifts
between runs), and a point whose images/s interval is still wider than ``ci_target`` (a fraction of the
mean) runs again, as ``<run id>-r2``, ``-r3`` ..., each repeat in a later pass over the points, until the
repeats pooled (:func:`..stats.measure.pool`) are narrow enough or ``maximum`` runs exist.  A pass starts only
when every run of the previous one has ended, so a point's repeats are a pass apart.

The executor is the only difference (:mod:`.campaign_launchers`): locally one point at a time, each with
the machine to itself; on Slurm one job array per pass and layout.  What was planned and submitted is
kept in the campaign's state (:mod:`.campaign_state`), so any later process takes the campaign over:
a run whose job is still queued or running is not submitted again, one whose job vanished without a
result is, and a run that is done is skipped.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from ..config.experiment import ExperimentConfig
from ..config.schema import FINISHED, Status
from ..config.sweep import expand_sweep
from ..records.runs import METRICS_NAME, load_run, run_dir_for
from ..stats.measure import Estimate, pool
from .campaign_state import CampaignState, Repeats, point_of, repeat_id, save_state
from .campaign_view import ENDED_HERE, Kind, RunView, look

__all__ = ["Campaign", "Outcome", "Progress", "drive", "point_estimate", "why_repeat"]


@dataclasses.dataclass(frozen=True)
class Campaign:
    """What every run of a campaign shares: the experiment and where it came from, the results folder,
    its points ({run id: config}, in sweep order), where progress is told, and when this process
    took the campaign up."""

    cfg: ExperimentConfig
    source: str
    out: Path
    points: dict[str, ExperimentConfig]
    stream: TextIO
    started: float = dataclasses.field(default_factory=time.monotonic)

    @classmethod
    def of(cls, cfg: ExperimentConfig, source: str, out: str | Path, stream: TextIO | None = None) -> Campaign:
        """The campaign of ``cfg``'s sweep; ``stream``: where lines go (default ``sys.stdout`` at the call)."""
        return cls(cfg, source, Path(out), dict(expand_sweep(cfg, source)), stream or sys.stdout)

    @property
    def folder(self) -> Path:
        return self.out / self.cfg.name

    def say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a campaign stands after a run: pass ``number``, its ``point`` of ``points``, and whether
    that pass has ended (then ``point == points``)."""

    number: int
    point: int
    points: int
    pass_ended: bool = False


@dataclasses.dataclass(frozen=True)
class Outcome:
    """Where :func:`drive` left the campaign: its passes, every run's view, and whether it is complete
    (else it waits for the ``waiting`` runs' jobs)."""

    passes: int
    runs: list[RunView]
    complete: bool

    @property
    def failed(self) -> list[RunView]:
        return [v for v in self.runs if v.kind is Kind.FAILED or (v.status and v.status not in FINISHED
                                                                  and v.kind is not Kind.WAITING)]

    @property
    def waiting(self) -> list[RunView]:
        return [v for v in self.runs if v.kind is Kind.WAITING]


def point_estimate(out: str | Path, experiment: str, run_id: str, repeats: int) -> Estimate | None:
    """The pooled images/s of a point's completed runs among its first ``repeats``; None when none has a figure."""
    runs = []
    for n in range(1, repeats + 1):
        metrics = run_dir_for(out, experiment, repeat_id(run_id, n)) / METRICS_NAME
        try:
            record = load_run(metrics) if metrics.is_file() else None
        except (OSError, ValueError):
            continue  # unreadable or makes no sense: no figure to pool
        if record is not None and record.status == Status.COMPLETED and record.images_per_s:
            runs.append(record.estimate())
    return pool(runs) if runs else None


def needs_repeat(estimate: Estimate | None, ci_target: float | None) -> bool:
    """Whether a point's interval is still wider than ``ci_target``; one window gives no interval
    (its 0 means unknown, e.g. a short run whose warm-up left under four steps), so it is too wide."""
    return (ci_target is not None and estimate is not None
            and (estimate.samples < 2 or estimate.ci > ci_target * estimate.images_per_s))


def why_repeat(estimate: Estimate | None, repeat: int, repeats: Repeats) -> str | None:
    """Why a point with ``estimate`` so far runs its ``repeat``-th time (> 1), or None: it does not."""
    if estimate is None or repeat > repeats.maximum:
        return None
    if repeat <= repeats.minimum:
        return f"repeat {repeat} of at least {repeats.minimum}"
    if needs_repeat(estimate, repeats.ci_target):
        width = ("no interval from one window" if estimate.samples < 2 else
                 f"± {100 * estimate.ci / estimate.images_per_s:.1f} % > {100 * (repeats.ci_target or 0):g} %")
        return f"{width}: repeat {repeat} of at most {repeats.maximum}"
    return None


def repeats_due(out: str | Path, experiment: str, ended: list[RunView], repeats: Repeats,
                number: int) -> list[tuple[str, Estimate, str]]:
    """(point, its estimate so far, why) for each point that runs again in pass ``number``: those whose
    run completed in the pass before (``ended``) and whose repeats do not yet meet the rule."""
    due = []
    for view in ended:
        if not view.completed:
            continue  # oom, nan or failed: measuring it again would not change that
        point = point_of(view.run_id)
        estimate = point_estimate(out, experiment, point, number - 1)
        why = why_repeat(estimate, number, repeats)
        if why is not None and estimate is not None:
            due.append((point, estimate, why))
    return due


def next_pass(c: Campaign, state: CampaignState, ended: list[RunView]) -> list[str]:
    """The run ids of the pass after the one whose runs ``ended`` (:func:`repeats_due`); a line per point
    that runs again."""
    number = len(state.passes) + 1
    due = repeats_due(c.out, c.cfg.name, ended, state.repeats, number)
    for i, (point, estimate, why) in enumerate(due, 1):
        c.say(f"[{i}/{len(due)}] {point}: {estimate.images_per_s:,.1f} ± {estimate.ci:,.1f} images/s ({why})")
    return [repeat_id(point, number) for point, _, _ in due]


class Launcher:
    """How a campaign's runs get onto machines (:mod:`.campaign_launchers`): ``launch`` submits the due
    runs (recording each job in the state); a synchronous launcher has run them to their end by then,
    else ``follow`` waits for the waiting runs' jobs to end."""

    synchronous = True

    def launch(self, c: Campaign, state: CampaignState, number: int, due: list[RunView]) -> None:
        raise NotImplementedError

    def follow(self, c: Campaign, state: CampaignState, waiting: list[RunView]) -> None:
        raise NotImplementedError


@dataclasses.dataclass
class Session:
    """What this process learnt while driving: runs it took to an end without a result (not submitted
    again by it) and the jobs it followed to their end (the controller is not asked about them again)."""

    given_up: set[str] = dataclasses.field(default_factory=set)
    ended_jobs: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)

    def look(self, c: Campaign, state: CampaignState, run_ids: list[str] | None = None) -> list[RunView]:
        """:func:`.campaign_view.look` with what this process learnt (no ``squeue`` when every job ended here)."""
        return look(state, c.out, run_ids, frozenset(self.given_up), known=self.ended_jobs)

    def followed(self, views: list[RunView]) -> None:
        self.given_up |= {v.run_id for v in views}
        self.ended_jobs |= {v.job.job_id: (ENDED_HERE, "") for v in views if v.job}


def drive(c: Campaign, state: CampaignState, launcher: Launcher, wait: bool = True,
          on_progress: Callable[[Progress], None] | None = None) -> Outcome:
    """Take the campaign from where ``state`` says it stands to its end (``wait``), or until every run of
    the current pass is submitted (not ``wait``: then it returns with the runs it waits for).

    ``on_progress`` hears of the end of every pass (and, from a synchronous launcher, of every run).  The
    caller holds the campaign's lock (:func:`.campaign_state.campaign_held`) from before it read ``state``."""
    tell = on_progress or (lambda progress: None)
    session = Session()
    if not state.passes:
        state.passes.append(list(c.points))
    say_done(c, state)
    while True:
        number, run_ids = len(state.passes), state.passes[-1]
        views = session.look(c, state, run_ids)
        due = [v for v in views if v.kind is Kind.DUE]
        waiting = [v for v in views if v.kind is Kind.WAITING and v.run_id not in session.given_up]
        if due:
            launcher.launch(c, state, number, due)
            if launcher.synchronous:
                session.given_up |= {v.run_id for v in due}  # run to their end: no result now means failed
                continue
            waiting += [dataclasses.replace(v, kind=Kind.WAITING, job=state.last_job(v.run_id)) for v in due]
        if waiting and not wait:
            return Outcome(number, session.look(c, state), complete=False)
        if waiting:
            launcher.follow(c, state, waiting)
            session.followed(waiting)
            continue
        tell(Progress(number, len(views), len(views), pass_ended=True))
        following = next_pass(c, state, views)
        if not following:
            return Outcome(number, session.look(c, state), complete=True)
        state.passes.append(following)
        save_state(c.folder, state)
        c.say(f"pass {number + 1} of at most {state.repeats.maximum}: {len(following)} run(s)")


def say_done(c: Campaign, state: CampaignState) -> None:
    """A line per run of the campaign that is done already (it is skipped)."""
    done = {v.run_id for v in look(state, c.out) if v.kind is Kind.DONE}
    for runs in state.passes:
        for i, run_id in enumerate(runs, 1):
            if run_id in done:
                c.say(f"[{i}/{len(runs)}] {run_id}: already done, skipped")
