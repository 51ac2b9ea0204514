"""Two campaigns side by side, point by point (``pyramidrepro compare REF NEW``).

A side is a campaign folder (every ``metrics.h5`` below it, read through the report's own records and
pooling: :func:`.report.report_data`, :func:`.table.summarise`) or a reference file a site keeps
(:func:`.reference.side_of` reads either).  Points are matched by what defines them
(:class:`PointKey`: the model, the line, which names the mode and the precision and remedies in use,
the global batch and the ranks), never by run id.  Per point, NEW/REF images/s with a 95 % interval
for the ratio, and a verdict: slower or faster only beyond noise (the interval excludes 1) *and*
beyond ``tolerance``; else the same.  The claims and the machines are set side by side too.  No
torch: a login node compares.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..config.errors import ConfigError
from ..config.schema import Status
from ..records.runs import RunRecord, load_runs
from .table import summarise

#: slower or faster only beyond this fraction of REF (``--tolerance``), and beyond noise
TOLERANCE = 0.05

SAME, SLOWER, FASTER, LOST, GAINED = "same", "slower", "faster", "lost", "gained"
#: the verdicts that fail a comparison (exit 1)
WORSE = (SLOWER, LOST)


@dataclasses.dataclass(frozen=True, order=True)
class PointKey:
    """What defines a point, across campaigns."""

    model: str
    line: str
    batch_size: int
    world_size: int

    def label(self) -> str:
        return f"{self.line} batch {self.batch_size} ({self.world_size} rank(s), {self.model})"


@dataclasses.dataclass(frozen=True)
class SidePoint:
    """A point's figure on one side: its status, pooled images/s with its 95 % half-width, its runs."""

    status: str
    images_per_s: float | None
    ci: float
    runs: int

    @property
    def measured(self) -> bool:
        return self.status == Status.COMPLETED and bool(self.images_per_s)


@dataclasses.dataclass(frozen=True)
class Side:
    """One side of a comparison: where it came from, its experiments, points, claims and machine."""

    source: str
    experiments: tuple[str, ...]
    points: dict[PointKey, SidePoint]
    claims: list[dict[str, str]]  # key, verdict, evidence
    machine: dict[str, str]  # what it ran on and with, one line per field (:data:`MACHINE_FIELDS`)
    skipped: list[str] = dataclasses.field(default_factory=list)  # unreadable runs, with the reason


def _joined(values: Any) -> str:
    found = sorted({str(v) for v in values if v not in (None, "", 0)})
    return ", ".join(found) or "-"


def _choices(r: RunRecord) -> list[str]:
    return [f"{d.get('piece')} {'kept' if d.get('kept') else 'left out'}" for d in r.auto_choices]


#: the machine a side ran on, field by field: what a difference between two campaigns is read from
MACHINE_FIELDS: dict[str, Any] = {
    "GPU": lambda r: [r.device_name] if r.gpu else [],
    "CPU": lambda r: [r.system.get("cpu_model")],
    "driver": lambda r: [r.system.get("driver")],
    "CUDA": lambda r: [r.versions.get("cuda")],
    "torch": lambda r: [r.versions.get("torch")],
    "DALI": lambda r: [r.versions.get("dali")],
    "pyramidrepro": lambda r: [r.versions.get("pyramidrepro")],
    "commit": lambda r: [r.git_commit],
    "image": lambda r: [r.container_digest or r.container_image],
    "nodes": lambda r: list(r.hosts),
    "precision": lambda r: [r.precision],
    "loader": lambda r: [r.loader],
    "threads per process": lambda r: [r.threads],
    "path choices": _choices,
}


def machine_of(records: list[RunRecord]) -> dict[str, str]:
    """Each :data:`MACHINE_FIELDS` field over the runs, its distinct values joined ('-' for none)."""
    return {name: _joined(v for r in records for v in read(r)) for name, read in MACHINE_FIELDS.items()}


def campaign_points(records: list[RunRecord]) -> dict[PointKey, SidePoint]:
    """The points of a campaign's measured runs, each pooled as the report pools it (per model and ranks)."""
    groups: dict[tuple[str, int], list[RunRecord]] = defaultdict(list)
    for r in records:
        groups[(r.model, r.world_size)].append(r)
    points = {}
    for (model, world), runs in sorted(groups.items()):
        for line, by_batch in summarise(runs).items():
            for batch, p in by_batch.items():
                points[PointKey(model, line, batch, world)] = SidePoint(str(p.status), p.images_per_s, p.ci, p.runs)
    return points


def campaign_side(folder: str | Path) -> Side:
    """A campaign folder as a side; FileNotFoundError when it holds no readable run."""
    from .report import report_data

    folder = Path(folder)
    skipped: list[str] = []
    records = load_runs(folder, skipped)
    if not records:
        why = f"{len(skipped)} metrics.h5 found, all unreadable; first: {skipped[0]}" if skipped else \
            "no metrics.h5 files below this folder"
        raise FileNotFoundError(f"{folder}: {why}")
    data = report_data(folder, records, skipped)
    claims = [{"key": str(c.key), "verdict": str(c.verdict), "evidence": str(c.evidence)} for c in data.claims]
    return Side(str(folder), tuple(sorted({r.experiment for r in records})), campaign_points(data.measured),
                claims, machine_of(records), skipped)


@dataclasses.dataclass(frozen=True)
class PointComparison:
    """One point on both sides: NEW/REF with its 95 % interval (None: not both measured), the verdict
    and why."""

    key: PointKey
    ref: SidePoint
    new: SidePoint
    ratio: float | None
    low: float | None
    high: float | None
    verdict: str
    why: str


def ratio_interval(ref: SidePoint, new: SidePoint) -> tuple[float, float, float]:
    """NEW/REF and its 95 % interval: the two relative half-widths added in quadrature (first order, the
    sides independent); a side without an interval (0: unknown) adds none, and :func:`judge` says so."""
    r, n = float(ref.images_per_s or 0), float(new.images_per_s or 0)
    ratio = n / r
    rel = math.hypot(ref.ci / r, new.ci / n)
    return ratio, ratio * (1 - rel), ratio * (1 + rel)


def judge(key: PointKey, ref: SidePoint, new: SidePoint, tolerance: float) -> PointComparison:
    """The verdict on one point (see the module's docstring); a point measured on one side only is
    lost (REF measured it) or gained."""
    if not (ref.measured and new.measured):
        if ref.measured:
            return PointComparison(key, ref, new, None, None, None, LOST, f"completed -> {new.status}")
        if new.measured:
            return PointComparison(key, ref, new, None, None, None, GAINED, f"{ref.status} -> completed")
        why = ref.status if ref.status == new.status else f"{ref.status} -> {new.status}"
        return PointComparison(key, ref, new, None, None, None, SAME, f"not measured: {why}")
    ratio, low, high = ratio_interval(ref, new)
    if high < 1 and ratio < 1 - tolerance:
        verdict, why = SLOWER, "beyond noise and tolerance"
    elif low > 1 and ratio > 1 + tolerance:
        verdict, why = FASTER, "beyond noise and tolerance"
    else:
        verdict, why = SAME, "within noise" if low <= 1 <= high else "within tolerance"
    if not (ref.ci and new.ci):  # one run of one window: its noise is unknown, not nil
        why += f"; no interval on {'either side' if not (ref.ci or new.ci) else 'one side'}, its noise unknown"
    return PointComparison(key, ref, new, ratio, low, high, verdict, why)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """REF and NEW compared: a row per point on both sides, the points on one side only, the claims'
    verdicts and the machines' fields side by side."""

    ref: Side
    new: Side
    tolerance: float
    rows: list[PointComparison]
    only_ref: list[PointKey]
    only_new: list[PointKey]
    claims: list[tuple[str, str, str]]  # claim key, REF verdict, NEW verdict
    machine: list[tuple[str, str, str]]  # field, REF, NEW: differences first

    def count(self, verdict: str) -> int:
        return sum(row.verdict == verdict for row in self.rows)

    @property
    def worse(self) -> list[PointComparison]:
        return [row for row in self.rows if row.verdict in WORSE]

    def exit_code(self, require_all: bool = False) -> int:
        """1 when a point is slower beyond tolerance (or lost), or, with ``require_all``, on one side only."""
        return 1 if self.worse or (require_all and (self.only_ref or self.only_new)) else 0


def compare(ref: Side, new: Side, tolerance: float = TOLERANCE) -> Comparison:
    """REF and NEW compared (see :class:`Comparison`); ConfigError when they share no experiment or no point."""
    if not set(ref.experiments) & set(new.experiments):
        raise ConfigError(new.source, "experiment", f"{', '.join(new.experiments)} is not REF's "
                                                    f"{', '.join(ref.experiments)} ({ref.source}): nothing to compare")
    common = sorted(set(ref.points) & set(new.points))
    if not common:
        raise ConfigError(new.source, "points", f"none of its {len(new.points)} point(s) is one of REF's "
                                                f"{len(ref.points)} ({ref.source}): nothing to compare")
    rows = [judge(k, ref.points[k], new.points[k], tolerance) for k in common]
    ref_claims = {c["key"]: c["verdict"] for c in ref.claims}
    new_claims = {c["key"]: c["verdict"] for c in new.claims}
    claims = [(k, ref_claims.get(k, "-"), new_claims.get(k, "-")) for k in sorted(set(ref_claims) | set(new_claims))]
    fields = [(f, ref.machine.get(f, "-"), new.machine.get(f, "-")) for f in MACHINE_FIELDS]
    machine = [row for row in fields if row[1] != row[2]] + [row for row in fields if row[1] == row[2]]
    return Comparison(ref, new, tolerance, rows, sorted(set(ref.points) - set(new.points)),
                      sorted(set(new.points) - set(ref.points)), claims, machine)
