"""The local campaign behind ``reproduce``: ``submit --cluster local``, one point at a time.

Every sweep point is submitted through submitit's local executor (:mod:`.dispatch`), the same
job a Slurm array runs, and waited for before the next starts, so each point has the machine to
itself and a crash or an out-of-memory point ends that point only.  Points whose run is done
(:func:`.runs.is_done`) are skipped, so an interrupted campaign picks up where it stopped.

Every point runs at least ``min_repeats`` times (one run's interval cannot see how much the
machine drifts between runs), and a point whose images/s interval is still wider than ``ci_target``
(a fraction of the mean) runs again, as ``<run id>-r2``, ``-r3`` ..., each repeat in a later pass
over the points, until the repeats pooled (:func:`.measure.pool`) are narrow enough or
``max_repeats`` runs exist.
"""

from __future__ import annotations

import dataclasses
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from ..records.runs import is_done, load_run, run_dir_for, status_of
from ..spec.config import ExperimentConfig, expand_sweep
from ..spec.schema import EXIT_CODES, FINISHED, Status
from ..stats.measure import Estimate, pool
from . import dispatch


@dataclasses.dataclass(frozen=True)
class Campaign:
    """What every run of a campaign shares: the experiment, where it came from and writes to, the
    DDP ranks of a point, where progress is told, and when the campaign started."""

    cfg: ExperimentConfig
    source: str
    out: str | Path
    ddp_ranks: int
    stream: TextIO
    started: float  # time.monotonic()


@dataclasses.dataclass(frozen=True)
class Repeats:
    """How often a point runs: at least ``minimum`` times, again while its images/s interval is wider
    than ``ci_target`` (a fraction of the mean; None: never), at most ``maximum`` times."""

    minimum: int = 1
    maximum: int = 1
    ci_target: float | None = None


def local_point(cfg: ExperimentConfig, ddp_ranks: int) -> ExperimentConfig:
    """A point as the local executor runs it: DDP with ``ddp_ranks`` processes on this machine."""
    cluster = dataclasses.replace(cfg.cluster, executor="local", tasks_per_node=ddp_ranks, nodes=1)
    return dataclasses.replace(cfg, cluster=cluster)


def repeat_id(run_id: str, repeat: int) -> str:
    """The run id of a point's ``repeat``-th run (the first keeps the point's own)."""
    return run_id if repeat == 1 else f"{run_id}-r{repeat}"


def point_estimate(out: str | Path, experiment: str, run_id: str, repeats: int) -> Estimate | None:
    """The pooled images/s of a point's completed runs so far; None when none has a figure."""
    runs = []
    for n in range(1, repeats + 1):
        metrics = run_dir_for(out, experiment, repeat_id(run_id, n)) / "metrics.h5"
        if status_of(metrics.parent) == Status.COMPLETED:
            try:
                record = load_run(metrics)
            except (OSError, ValueError):
                continue  # unreadable or makes no sense: no figure to pool
            if record.images_per_s:
                runs.append(record.estimate())
    return pool(runs) if runs else None


def needs_repeat(estimate: Estimate | None, ci_target: float | None) -> bool:
    """Whether a point's interval is still wider than ``ci_target``; one window gives no interval
    (its 0 means unknown, e.g. a short run whose warm-up left under four steps), so it is too wide."""
    return (ci_target is not None and estimate is not None
            and (estimate.samples < 2 or estimate.ci > ci_target * estimate.images_per_s))


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a campaign stands after a run: pass ``number``, its ``point`` of ``points``, and whether
    that pass has ended (then ``point == points``)."""

    number: int
    point: int
    points: int
    pass_ended: bool = False


def why_repeat(estimate: Estimate | None, repeat: int, repeats: Repeats) -> str | None:
    """Why a point with ``estimate`` so far runs its ``repeat``-th time (> 1), or None: it does not."""
    if estimate is None:
        return None
    if repeat <= repeats.minimum:
        return f"repeat {repeat} of at least {repeats.minimum}"
    if needs_repeat(estimate, repeats.ci_target):
        width = ("no interval from one window" if estimate.samples < 2 else
                 f"± {100 * estimate.ci / estimate.images_per_s:.1f} % > {100 * (repeats.ci_target or 0):g} %")
        return f"{width}: repeat {repeat} of at most {repeats.maximum}"
    return None


def run_campaign(cfg: ExperimentConfig, source: str, out: str | Path, ddp_ranks: int,
                 repeats: Repeats = Repeats(), stream: TextIO | None = None,
                 on_progress: Callable[[Progress], None] | None = None) -> list[tuple[str, str, float]]:
    """Run every sweep point here, in passes; returns (run id, outcome, seconds) per run.

    The first ``repeats.minimum`` passes run every point; each later pass runs again the points whose
    pooled interval is still wider than ``repeats.ci_target``.  A point's repeats are thus a pass
    apart, not back to back, so a slow drift of the machine shows in their spread instead of in one
    point alone.  The outcome is the run's status, with `` (exit N)`` added when its job did not end
    cleanly.  ``on_progress`` hears of every run and of the end of every pass that ran something.
    ``stream``: where the lines go (default: ``sys.stdout`` as it is at the call).
    """
    points = expand_sweep(cfg, source)
    results: list[tuple[str, str, float]] = []
    stopped: set[str] = set()  # points that ended oom, nan or failed: not measured again
    campaign = Campaign(cfg, source, out, ddp_ranks, stream or sys.stdout, time.monotonic())
    tell = on_progress or (lambda progress: None)
    for repeat in range(1, repeats.maximum + 1):
        ran = len(results)
        for i, (run_id, point_cfg) in enumerate(points, 1):
            counter = f"[{i}/{len(points)}]"
            if repeat > 1:
                estimate = point_estimate(out, cfg.name, run_id, repeat - 1)
                why = None if run_id in stopped else why_repeat(estimate, repeat, repeats)
                if why is None:
                    continue
                print(f"{counter} {run_id}: {estimate.images_per_s:,.1f} ± {estimate.ci:,.1f} images/s ({why})",
                      file=stream, flush=True)
            outcome = run_point(campaign, repeat_id(run_id, repeat), point_cfg, counter)
            results.append(outcome)
            if outcome[1] not in (Status.COMPLETED, "skipped"):
                stopped.add(run_id)
            if outcome[1] != "skipped":
                tell(Progress(repeat, i, len(points)))
        if len(results) > ran:
            tell(Progress(repeat, len(points), len(points), pass_ended=True))
    return results


def run_point(campaign: Campaign, run_id: str, point_cfg: ExperimentConfig, counter: str) -> tuple[str, str, float]:
    """One run of one point through the local executor (skipped when its folder says done)."""
    c, stream = campaign, campaign.stream
    folder = run_dir_for(c.out, c.cfg.name, run_id)
    label = f"{counter} {run_id}"
    if is_done(folder):
        print(f"{label}: already done, skipped", file=stream, flush=True)
        return run_id, "skipped", 0.0
    print(f"{label}: running ...", file=stream, flush=True)
    t0 = time.monotonic()
    job = dispatch.submit(c.cfg, c.source, c.out, stream=io.StringIO(),
                          points=[(run_id, local_point(point_cfg, c.ddp_ranks))])[0]
    error = ""
    try:
        job.results()
    except Exception as exc:  # noqa: BLE001 - the point failed; the campaign goes on
        error = "\n".join(str(exc).strip().splitlines()[-5:])
    status = status_of(folder) or Status.FAILED
    code = 0 if status in FINISHED and not error else EXIT_CODES.get(status, 1) or 1
    outcome = status if code == 0 else f"{status} (exit {code})"
    print(f"{label}: {outcome} in {time.monotonic() - t0:.1f} s "
          f"(elapsed {time.monotonic() - c.started:.0f} s)", file=stream, flush=True)
    if error:
        print(f"    {error}", file=stream, flush=True)
    return run_id, outcome, time.monotonic() - t0
