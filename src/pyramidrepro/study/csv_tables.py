"""The report's numbers as tables a user can load: ``runs.csv`` (one row per run) and ``points.csv``
(one row per point of the report's table), written beside ``report.md`` with the standard ``csv``
module, so ``csv`` or pandas reads them without this package.

``runs.csv`` columns (:data:`RUN_COLUMNS`): ``run_id`` (the run's folder), ``experiment``, ``model``,
``line`` (the report's line: the mode with the precision and remedies in use), ``mode``, ``batch_size``
(global), ``world_size``, ``precision``, ``loader``, ``status``, ``images_per_s`` and
``images_per_s_ci95`` (the run's own figure and the half-width of its 95 % interval; empty when not
measured), ``peak_memory_gib`` (the largest of its devices), ``bound`` (compute, input or all-reduce;
empty when not measured), ``nodes`` (space-separated), ``git_commit``, ``finished_at``, ``path`` (its
metrics.h5), ``boundary_probe`` (1 for a boundary search's probe, which the points leave out).

``points.csv`` columns (:data:`POINT_COLUMNS`): ``line``, ``batch_size``, ``status`` (completed when a
run completed, else the latest run's), ``images_per_s`` and ``ci95`` (the completed runs pooled, as the
report's table shows them: ``stats.measure.pool``), ``repeats`` (runs of the point), ``loaders``,
``device``, ``bound``, ``peak_memory_gib``.  Figures keep their full precision; the report rounds them.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ..config.schema import Summary
from ..records.runs import RunRecord
from ..records.storage import write_atomically
from .table import Point, Table

RUN_COLUMNS = ("run_id", "experiment", "model", "line", "mode", "batch_size", "world_size", "precision", "loader",
               "status", "images_per_s", "images_per_s_ci95", "peak_memory_gib", "bound", "nodes", "git_commit",
               "finished_at", "path", "boundary_probe")
POINT_COLUMNS = ("line", "batch_size", "status", "images_per_s", "ci95", "repeats", "loaders", "device", "bound",
                 "peak_memory_gib")


def _gib(peaks: list[int]) -> str:
    return f"{max(peaks) / 2**30:.4f}" if peaks else ""


def _number(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def run_row(r: RunRecord) -> dict[str, Any]:
    """One run's row of ``runs.csv``."""
    return {"run_id": Path(r.path).parent.name, "experiment": r.experiment, "model": r.model, "line": r.line,
            "mode": r.mode, "batch_size": r.batch_size, "world_size": r.world_size, "precision": r.precision,
            "loader": r.loader, "status": r.status, "images_per_s": _number(r.images_per_s),
            "images_per_s_ci95": _number(r.images_per_s_ci) if r.images_per_s else "",
            "peak_memory_gib": _gib(r.peak_memory), "bound": r.bounds.get(Summary.BOUND, ""),
            "nodes": " ".join(r.hosts), "git_commit": r.git_commit, "finished_at": r.finished_at, "path": r.path,
            "boundary_probe": int(r.boundary_probe)}


def point_row(p: Point) -> dict[str, Any]:
    """One point's row of ``points.csv``."""
    return {"line": p.line, "batch_size": p.batch_size, "status": p.status, "images_per_s": _number(p.images_per_s),
            "ci95": _number(p.ci) if p.images_per_s else "", "repeats": p.runs, "loaders": p.loaders,
            "device": p.devices, "bound": p.bounds.get(Summary.BOUND, ""), "peak_memory_gib": _gib(p.peak_memory)}


def _csv(columns: tuple[str, ...], rows: list[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def write_tables(records: list[RunRecord], table: Table, out_dir: Path) -> list[Path]:
    """``runs.csv`` and ``points.csv`` in ``out_dir``, each whole or not at all."""
    runs = sorted(records, key=lambda r: r.path)
    points = [p for _, by_batch in sorted(table.items()) for _, p in sorted(by_batch.items())]
    written = []
    for name, columns, rows in (("runs.csv", RUN_COLUMNS, [run_row(r) for r in runs]),
                                ("points.csv", POINT_COLUMNS, [point_row(p) for p in points])):
        write_atomically(out_dir / name, _csv(columns, rows))
        written.append(out_dir / name)
    return written
