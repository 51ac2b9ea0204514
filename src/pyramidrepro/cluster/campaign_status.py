"""``pyramidrepro status``: a campaign as one table, a row per point, and what it waits for.

Built once from the campaign's state, its runs' folders and one ``squeue`` call (:func:`campaign_status`),
then rendered as text or JSON.  No torch and no job objects: a login node answers at once.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from ..stats.measure import Estimate
from .campaign import needs_repeat, point_estimate, repeats_due
from .campaign_state import CampaignState, driven, point_of
from .campaign_view import Kind, RunView, look


@dataclasses.dataclass(frozen=True)
class PointRow:
    """One point: its runs done and wanted, its pooled images/s, and its runs not done."""

    point: str
    done: int
    wanted: int
    estimate: Estimate | None
    meets_target: bool | None  # None: no target, or no figure yet
    open_runs: list[RunView]


@dataclasses.dataclass(frozen=True)
class CampaignStatus:
    """The whole campaign: where it is, its rows, and the line that says what it waits for."""

    folder: Path
    passes: int
    ci_target: float | None
    rows: list[PointRow]
    waits_for: str


def log_path(view: RunView) -> str:
    """The stderr log of a run's latest job (submitit's own path for it), '' without a job."""
    if view.job is None:
        return ""
    from submitit.core.utils import JobPaths

    return str(JobPaths(view.job.folder.replace("%j", view.job.job_id), view.job.job_id, 0).stderr)


def point_row(folder: Path, state: CampaignState, point: str, views: list[RunView], more: bool) -> PointRow:
    """The row of ``point`` from its runs' ``views``; ``more``: the rule wants another repeat of it."""
    done = [v for v in views if v.kind is Kind.DONE]
    estimate = point_estimate(folder.parent, state.experiment, point, len(state.passes))
    target = state.repeats.ci_target
    meets = None
    if target is not None and estimate is not None and not math.isnan(estimate.images_per_s):
        meets = not needs_repeat(estimate, target)
    stopped = any(v.kind is Kind.FAILED or (v.kind is Kind.DONE and not v.completed) for v in views)
    wanted = len(views) if stopped else max(state.repeats.minimum, len(views) + more)
    return PointRow(point, len(done), wanted, estimate, meets, [v for v in views if v.kind is not Kind.DONE])


def campaign_status(folder: str | Path, state: CampaignState) -> CampaignStatus:
    """The campaign in ``folder`` (OUT/<experiment>) as it stands now: one ``squeue`` call."""
    folder = Path(folder)
    views = look(state, folder.parent)
    last = [v for v in views if v.run_id in set(state.passes[-1])] if state.passes else []
    settled = all(v.kind in (Kind.DONE, Kind.FAILED) for v in last)
    more = {p for p, _, _ in repeats_due(folder.parent, state.experiment, last, state.repeats,
                                         len(state.passes) + 1)} if settled else set()
    by_point: dict[str, list[RunView]] = {}
    for v in views:
        by_point.setdefault(point_of(v.run_id), []).append(v)
    rows = [point_row(folder, state, p, vs, p in more) for p, vs in by_point.items()]
    line = waits_for(folder, len(state.passes), last, settled, len(more))
    if driven(folder) and not line.startswith("complete"):
        line = f"a running {'reproduce or submit' if state.executor != 'slurm' else 'submit --wait or follow'} " \
               f"drives it: {line.split(': pyramidrepro follow')[0]}"
    return CampaignStatus(folder, len(state.passes), state.repeats.ci_target, rows, line)


def waits_for(folder: Path, number: int, last: list[RunView], settled: bool, more: int) -> str:
    """What the campaign waits for: the jobs of its current pass, runs to submit, its next pass, or nothing."""
    waiting = [v for v in last if v.kind is Kind.WAITING]
    due = [v for v in last if v.kind is Kind.DUE]
    if waiting:
        states: dict[str, int] = {}
        for v in waiting:
            states[v.queue_state.lower()] = states.get(v.queue_state.lower(), 0) + 1
        said = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        tail = f"; then {len(due)} run(s) to submit" if due else ""
        return f"waits for {len(waiting)} job(s) of pass {number} ({said}){tail}"
    if due:
        return (f"{len(due)} run(s) of pass {number} not in the queue (never submitted, or their job is gone): "
                f"pyramidrepro follow {folder} submits them")
    if settled and more:
        return f"pass {number} has ended; pass {number + 1} ({more} run(s)) is due: pyramidrepro follow {folder}"
    failed = sum(v.kind is Kind.FAILED for v in last)
    return f"complete after {number} pass(es)" + (f", {failed} run(s) of the last pass failed" if failed else "")


def open_run_text(view: RunView) -> str:
    """``p001-..-r2: job 81_1 PENDING (Priority)``, or a failed run with its log."""
    job = f"job {view.job.job_id}" if view.job else "no job"
    if view.kind is Kind.WAITING:
        reason = f" ({view.reason})" if view.reason and view.reason != "None" else ""
        return f"{view.run_id}: {job} {view.queue_state}{reason}"
    if view.kind is Kind.FAILED or view.status == "failed":
        log = log_path(view)
        return f"{view.run_id}: {job} failed ({view.status or 'no metrics'}){'; log ' + log if log else ''}"
    return f"{view.run_id}: {job}, due ({view.reason})"


def figure_text(row: PointRow, ci_target: float | None) -> tuple[str, str]:
    """(``1,234.5 ± 12.3``, ``±1.0 % <= 2 %``) for a row; dashes without a figure."""
    e = row.estimate
    if e is None or math.isnan(e.images_per_s):
        return "-", "-"
    figure = f"{e.images_per_s:,.1f} ± {e.ci:,.1f}"
    if ci_target is None:
        return figure, "-"
    width = f"±{100 * e.ci / e.images_per_s:.1f} %" if e.samples >= 2 else "one window"
    return figure, f"{width} {'<=' if row.meets_target else '>'} {100 * ci_target:g} %"


def render_text(status: CampaignStatus) -> str:
    """The table and the closing line."""
    lines = [f"campaign {status.folder}: pass {status.passes}",
             "| point | runs done/wanted | images/s (95 % CI) | vs target | runs not done |",
             "| --- | --- | --- | --- | --- |"]
    for row in status.rows:
        figure, target = figure_text(row, status.ci_target)
        open_runs = "; ".join(open_run_text(v) for v in row.open_runs) or "-"
        lines.append(f"| {row.point} | {row.done}/{row.wanted} | {figure} | {target} | {open_runs} |")
    lines.append(status.waits_for)
    return "\n".join(lines)


def render_json(status: CampaignStatus) -> dict[str, Any]:
    """The same for scripts."""
    def run(v: RunView) -> dict[str, Any]:
        return {"run_id": v.run_id, "kind": v.kind.value, "status": v.status, "job_id": v.job.job_id if v.job else None,
                "queue_state": v.queue_state, "reason": v.reason, "submissions": v.submissions,
                "log": log_path(v) if v.kind is Kind.FAILED or v.status == "failed" else None}

    def row(r: PointRow) -> dict[str, Any]:
        e = r.estimate
        finite = e is not None and not math.isnan(e.images_per_s)
        return {"point": r.point, "done": r.done, "wanted": r.wanted, "meets_target": r.meets_target,
                "images_per_s": e.images_per_s if finite else None, "ci": e.ci if finite else None,
                "open_runs": [run(v) for v in r.open_runs]}

    return {"campaign": str(status.folder), "passes": status.passes, "ci_target": status.ci_target,
            "points": [row(r) for r in status.rows], "waits_for": status.waits_for}
