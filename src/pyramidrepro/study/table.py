"""The table behind Figure 5 (line x batch -> the pooled images/s of its completed runs) and what
fitted under the memory cap on each line."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

from ..config.schema import Status
from ..records.runs import RunRecord
from ..stats.measure import Estimate, pool


@dataclass
class Point:
    line: str
    batch_size: int
    status: str  # completed | oom | nan | failed | running
    images_per_s: float | None
    peak_memory: list[int]
    runs: int
    devices: str
    loaders: str = ""  # what fed its runs (data.loader), comma-separated
    ci: float = 0.0  # half-width of the 95 % interval: over repeats, or the one run's own
    bounds: dict[str, Any] = field(default_factory=dict)  # the latest completed run's (bounds.py)

    @property
    def estimate(self) -> Estimate:
        return Estimate(self.images_per_s or float("nan"), self.ci, self.runs)


Table = dict[str, dict[int, Point]]


def _point(line: str, batch: int, runs: list[RunRecord]) -> Point:
    """One line's point at one batch: repeats pooled (measure.pool), else the latest run's outcome."""
    done = [r for r in runs if r.status == Status.COMPLETED and r.images_per_s]
    loaders = ", ".join(sorted({r.loader for r in runs if r.loader}))
    if not done:
        latest = max(runs, key=lambda r: r.finished_at)
        return Point(line, batch, latest.status, None, latest.peak_memory, len(runs), runs[0].device_name, loaders)
    est = pool([r.estimate() for r in done])
    best = max(done, key=lambda r: r.finished_at)
    return Point(line, batch, Status.COMPLETED, est.images_per_s, best.peak_memory, len(runs), runs[0].device_name,
                 loaders, est.ci, best.bounds)


def summarise(records: list[RunRecord]) -> Table:
    """Per line and batch, the throughput point (boundary probes left out: too short to measure)."""
    groups: dict[tuple[str, int], list[RunRecord]] = defaultdict(list)
    for r in records:
        if not r.boundary_probe:
            groups[(r.line, r.batch_size)].append(r)
    table: Table = defaultdict(dict)
    for (line, batch), runs in sorted(groups.items()):
        table[line][batch] = _point(line, batch, runs)
    return table


def main_loader(records: list[RunRecord]) -> str:
    """The loader most runs used ("" when none says)."""
    counts = Counter(r.loader for r in records if r.loader)
    return counts.most_common(1)[0][0] if counts else ""


def mark_loaders(records: list[RunRecord]) -> list[RunRecord]:
    """The runs, where one point (line and batch) was fed by two loaders with each run not fed by the
    :func:`main_loader` in a line of its own (``single+torch``), so the two stand side by side and
    the claims read the main loader's lines."""
    main = main_loader(records)
    loaders: dict[tuple[str, int], set[str]] = defaultdict(set)
    for r in records:
        loaders[(r.line, r.batch_size)].add(r.loader)
    return [replace(r, line=f"{r.line}+{r.loader}")
            if r.loader != main and len(loaders[(r.line, r.batch_size)]) > 1 else r for r in records]


@dataclass(frozen=True)
class LoaderPair:
    """One point fed by the main loader and by another one."""

    batch_size: int
    main: Point
    other: Point
    other_loader: str


def loader_pairs(table: Table) -> list[LoaderPair]:
    """Every point of a line ``L+<loader>`` (:func:`mark_loaders`) beside the same batch of ``L``."""
    pairs = []
    for line, points in sorted(table.items()):
        base, _, loader = line.rpartition("+")
        for batch, other in sorted(points.items()):
            main = table.get(base, {}).get(batch) if base else None
            if main is not None and loader and other.loaders == loader:
                pairs.append(LoaderPair(batch, main, other, loader))
    return pairs


def completed_estimates(table: Table, line: str) -> dict[int, Estimate]:
    """Batch -> the estimate of each completed point of ``line``."""
    return {b: p.estimate for b, p in table.get(line, {}).items() if p.status == Status.COMPLETED and p.images_per_s}


def fmt_estimate(e: Estimate) -> str:
    """``1,234 ± 56`` (the interval left out when there is none)."""
    return f"{e.images_per_s:,.0f}" + (f" ± {e.ci:,.0f}" if e.ci else "")


@dataclass
class Fit:
    """What ran under the memory cap on one line: the largest batch that completed, the smallest
    that ran out of memory, and how many of the runs were boundary probes (``boundary`` command)."""

    largest: int | None
    first_oom: int | None
    probes: int


def largest_fitting_batch(records: list[RunRecord]) -> dict[str, Fit]:
    """Per line, from every run there: measured points and boundary probes alike."""
    by_line: dict[str, list[RunRecord]] = defaultdict(list)
    for r in records:
        by_line[r.line].append(r)
    out = {}
    for line, runs in by_line.items():
        done = [r.batch_size for r in runs if r.status == Status.COMPLETED]
        oom = [r.batch_size for r in runs if r.status == Status.OOM]
        out[line] = Fit(max(done) if done else None, min(oom) if oom else None, sum(r.boundary_probe for r in runs))
    return out
