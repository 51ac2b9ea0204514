"""Turn a campaign (every ``metrics.h5`` below a folder) into the paper's Figure 5 and a report.

``build_report(results_dir, out_dir)`` writes ``report.md``, ``fig5_throughput.png/.svg``, the tables
``runs.csv`` and ``points.csv`` (:mod:`.csv_tables`) and, when
the runs have them, ``largest_batch``, ``accuracy`` and ``scaling`` figures; it also returns the
claims' verdicts.

The runs are read once into a :class:`ReportData`; the figures are drawn from it and the markdown
is rendered from it by one small function per section (:data:`SECTIONS`, in order); every text a
run recorded goes through :mod:`.markdown` on its way in.  A run that cannot be read or makes no sense
(``records.runs.load_run``) is left out and listed, with the reason, under "Runs skipped".  Every file
is written whole or not at all (``records.storage.write_atomically``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.errors import ConfigError
from ..config.schema import BOUND_FIELDS, Status, Summary
from ..records.runs import RunRecord, load_runs
from ..records.storage import write_atomically
from .claims import Claim, check_claims
from .csv_tables import write_tables
from .figures import plot_accuracy, plot_fig5, plot_fitting, plot_scaling
from .markdown import md_code, md_text
from .paper import PAPER_BATCHES, PAPER_ERROR
from .provenance_section import provenance_lines
from .scaling_section import ScalingRow, scaling_rows, scaling_section
from .table import (
    Fit,
    LoaderPair,
    Point,
    Table,
    fmt_estimate,
    largest_fitting_batch,
    loader_pairs,
    mark_loaders,
    summarise,
)

__all__ = ["ReportData", "Figures", "SECTIONS", "build_report", "render", "report_data"]


@dataclass(frozen=True)
class ReportData:
    """Everything the report says, worked out once from the runs below ``results_dir``."""

    results_dir: Path
    command: str  # the command line that made the report ("": not shown)
    stage: str  # how far the campaign behind it had come, e.g. "pass 1 of at most 3" ("": not shown)
    records: list[RunRecord]  # every run read, boundary probes included
    skipped: list[str]  # the metrics files that could not be read, with the reason
    measured: list[RunRecord]  # the runs that measure throughput: boundary probes left out
    running: list[RunRecord]
    table: Table  # line -> batch -> point (table.summarise)
    fits: dict[str, Fit]  # line -> what fitted under the memory cap (table.largest_fitting_batch)
    claims: list[Claim]
    scaling: list[ScalingRow]
    provenance: list[str]  # the provenance section's list (provenance_section.provenance_lines)

    @property
    def synthetic(self) -> bool:
        return any(r.data_source == "synthetic" for r in self.records)

    @property
    def title(self) -> str:
        """Figure 5's title: the models, and whether the data was synthetic."""
        return ("Throughput vs batch size: " + ", ".join(sorted({r.model for r in self.records}))
                + (" (synthetic data)" if self.synthetic else ""))


def report_data(results_dir: Path, records: list[RunRecord], skipped: list[str], command: str = "",
                stage: str = "") -> ReportData:
    """Work out what the report says from the runs ``load_runs`` read (a point fed by two loaders
    split into two lines: :func:`.table.mark_loaders`)."""
    records = mark_loaders(records)
    table = summarise(records)
    measured = [r for r in records if not r.boundary_probe]
    return ReportData(results_dir, command, stage, records, skipped, measured,
                      running=[r for r in records if r.status == Status.RUNNING], table=table,
                      fits=largest_fitting_batch(records), claims=check_claims(records, table),
                      scaling=scaling_rows(measured), provenance=provenance_lines(records))


@dataclass(frozen=True)
class Figures:
    """The figure files drawn, per figure (empty: not drawn), each ``[png, svg]``."""

    fig5: list[Path]
    largest_batch: list[Path]
    accuracy: list[Path]
    scaling: list[Path]

    def all(self) -> list[Path]:
        """Every file drawn, in the order above."""
        return self.fig5 + self.largest_batch + self.accuracy + self.scaling


def draw_figures(data: ReportData, out: Path) -> Figures:
    """Draw every figure the data has into ``out``."""
    return Figures(fig5=plot_fig5(data.table, data.title, out, data.fits), largest_batch=plot_fitting(data.fits, out),
                   accuracy=plot_accuracy(data.measured, out), scaling=plot_scaling(data.scaling, out))


# ---------------------------------------------------------------------------------------------
# The markdown: one function per section, each (data, figures) -> its lines
# ---------------------------------------------------------------------------------------------


def _title(data: ReportData, figs: Figures) -> list[str]:
    lines = [f"# Reproduction report{' (synthetic data)' if data.synthetic else ''}", ""]
    lines += [f"Produced by: {md_code(data.command)}", ""] if data.command else []
    return lines + ([f"Campaign: {md_text(data.stage)}", ""] if data.stage else [])


def _runs_read(data: ReportData, figs: Figures) -> list[str]:
    probes = len(data.records) - len(data.measured)
    return [f"Runs read: {len(data.records)} from {md_code(data.results_dir)}"
            + (f" ({len(data.running)} still running, marked below)" if data.running else "")
            + (f"; {probes} of them boundary probes, used for the largest batch and C1 only" if probes else "")
            + (f"; {len(data.skipped)} skipped, listed below" if data.skipped else ""), ""]


def _skipped(data: ReportData, figs: Figures) -> list[str]:
    if not data.skipped:
        return []
    return (["## Runs skipped", "", "Each could not be read or makes no sense as a run: no figure, table or "
             "claim of this report uses it.", ""] + [f"- {md_text(reason)}" for reason in data.skipped] + [""])


def _figure5(data: ReportData, figs: Figures) -> list[str]:
    return ["## Figure 5: throughput vs batch size", "", f"![Figure 5]({figs.fig5[0].name})", ""]


def _claims(data: ReportData, figs: Figures) -> list[str]:
    return (["## The paper's claims", "", "| claim | verdict | evidence |", "| --- | --- | --- |"]
            + [f"| {c.text} | **{c.verdict}** | {c.evidence} |" for c in data.claims])


def _fmt_mem(peaks: list[int]) -> str:
    if not peaks:
        return "-"
    gib = [p / 2**30 for p in peaks]
    if len(gib) == 1:
        return f"{gib[0]:.2f}"
    return f"master {gib[0]:.2f} / others max {max(gib[1:]):.2f}"


def _fmt_bounds(bounds: dict[str, Any]) -> str:
    """``**compute**: 850 / 57,000 / -``: the label, then each part's images/s alone."""
    if not bounds.get(Summary.BOUND):
        return "-"
    figures = [bounds.get(k) for k in BOUND_FIELDS[1:]]
    return f"**{md_text(bounds[Summary.BOUND])}**: " + " / ".join("-" if v is None else f"{v:,.0f}" for v in figures)


def _run_row(line: str, b: int, p: Point) -> str:
    ips = fmt_estimate(p.estimate) if p.images_per_s else "-"
    return (f"| {md_text(line)} | {b} | {md_text(p.loaders or '-')} | {md_text(p.status)} | {ips} "
            f"| {_fmt_bounds(p.bounds)} | {_fmt_mem(p.peak_memory)} | {p.runs} |")


def _runs_table(data: ReportData, figs: Figures) -> list[str]:
    return (["", "## Runs: images/s by mode and batch", "",
             "| line | batch | loader | status | images/s (± 95 % CI) "
             "| bound: compute / input / all-reduce alone (images/s) | peak memory (GiB) | repeats |",
             "| --- | ---: | --- | --- | ---: | --- | --- | ---: |"]
            + [_run_row(line, b, p) for line, pts in sorted(data.table.items()) for b, p in sorted(pts.items())])


def _pair_row(pair: LoaderPair) -> str:
    main, other = pair.main, pair.other
    ratio = f"{main.images_per_s / other.images_per_s:.2f}x" if main.images_per_s and other.images_per_s else "-"
    cells = [md_text(main.line), str(pair.batch_size)]
    for p in (main, other):
        cells += [f"{md_text(p.loaders)}: {fmt_estimate(p.estimate) if p.images_per_s else md_text(p.status)}",
                  _fmt_bounds(p.bounds)]
    return "| " + " | ".join(cells) + f" | {ratio} |"


def _loaders_side_by_side(data: ReportData, figs: Figures) -> list[str]:
    pairs = loader_pairs(data.table)
    if not pairs:
        return []
    return (["", "## Loaders side by side", "",
             "The same point fed by two loaders; the bound says whether the input (the loader alone) or the "
             "step limits it.", "",
             "| line | batch | images/s | bound | images/s | bound | ratio |",
             "| --- | ---: | ---: | --- | ---: | --- | ---: |"]
            + [_pair_row(pair) for pair in pairs])


def _paper_cell(p: Point | None) -> str:
    if p is None:
        return "-"
    return f"{p.images_per_s:,.0f}" if p.images_per_s else md_text(p.status)


def _paper_batches(data: ReportData, figs: Figures) -> list[str]:
    table = data.table
    batches = [b for b in PAPER_BATCHES if any(b in pts for pts in table.values())]
    if len(table) <= 1 or not batches:
        return []
    return (["", "## Images/s at the paper's batch sizes", "",
             "| line | " + " | ".join(str(b) for b in batches) + " |", "| --- |" + " ---: |" * len(batches)]
            + [f"| {md_text(line)} | " + " | ".join(_paper_cell(pts.get(b)) for b in batches) + " |"
               for line, pts in sorted(table.items())])


def _fit_line(line: str, f: Fit) -> str:
    oom = f", out of memory at {f.first_oom}" if f.first_oom else ""
    searched = f" (boundary search: {f.probes} probes)" if f.probes else ""
    return f"- {md_text(line)}: fits {f.largest or '-'}{oom}{searched}"


def _largest_batch(data: ReportData, figs: Figures) -> list[str]:
    if not figs.largest_batch:
        return []
    return (["", "## Largest batch under the memory cap", "", f"![largest batch]({figs.largest_batch[0].name})", ""]
            + [_fit_line(line, f) for line, f in sorted(data.fits.items())])


def _accuracy_row(r: RunRecord) -> str:
    ref = PAPER_ERROR.get((r.depth, r.alpha))
    err = 100 * (1 - r.epochs["test_acc"][-1])
    return f"| {md_text(r.model)} | {len(r.epochs['test_acc'])} | {err:.2f}% | {f'{ref:.2f}%' if ref else '-'} |"


def _accuracy(data: ReportData, figs: Figures) -> list[str]:
    if not figs.accuracy:
        return []
    return (["", "## Accuracy", "", f"![accuracy]({figs.accuracy[0].name})", "",
             "| model | epochs | final test error | Han et al. 2017 |", "| --- | ---: | ---: | ---: |"]
            + [_accuracy_row(r) for r in data.records if len(r.epochs.get("test_acc", [])) > 1])


def _scaling(data: ReportData, figs: Figures) -> list[str]:
    return scaling_section(data.scaling, figs.scaling)


def _provenance(data: ReportData, figs: Figures) -> list[str]:
    return ["", "## Provenance", "", *data.provenance, ""]


def _still_running(data: ReportData, figs: Figures) -> list[str]:
    if not data.running:
        return []
    return (["Runs still going when this report was made:", ""]
            + [f"- {md_code(r.path)} ({md_text(r.line)}, batch {r.batch_size})" for r in data.running] + [""])


#: the report's sections, in order
SECTIONS: tuple[Callable[[ReportData, Figures], list[str]], ...] = (
    _title, _runs_read, _skipped, _figure5, _claims, _runs_table, _loaders_side_by_side, _paper_batches,
    _largest_batch, _accuracy, _scaling, _provenance, _still_running,
)


def render(data: ReportData, figs: Figures) -> str:
    """The report's markdown: every section in order."""
    return "\n".join(line for section in SECTIONS for line in section(data, figs))


# ---------------------------------------------------------------------------------------------
# build_report: load -> work out -> draw -> render -> write
# ---------------------------------------------------------------------------------------------


def _folders(results_dir: str | Path, out_dir: str | Path | None) -> tuple[Path, Path]:
    """The results folder and the report's folder (default: the results folder), checked."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"{results_dir}: " + ("is a file, not a results folder" if results_dir.exists()
                                                      else "no such results folder"))
    out = Path(out_dir) if out_dir else results_dir
    if out.exists() and not out.is_dir():
        raise ConfigError("report", "--out", f"{out} is a file; give a folder for the report")
    return results_dir, out


def _load(results_dir: Path) -> tuple[list[RunRecord], list[str]]:
    """Every readable run below ``results_dir`` and the files skipped; FileNotFoundError when none is readable."""
    skipped: list[str] = []
    records = load_runs(results_dir, skipped)
    if not records and skipped:
        raise FileNotFoundError(f"{results_dir}: {len(skipped)} metrics.h5 found, all skipped; first: {skipped[0]}")
    if not records:
        raise FileNotFoundError(f"{results_dir}: no metrics.h5 files below this folder")
    return records, skipped


def _result(report: Path, data: ReportData, figs: Figures) -> dict[str, Any]:
    return {"report": str(report), "figures": [str(p) for p in figs.all()],
            "claims": [c.__dict__ for c in data.claims], "runs": len(data.records),
            "scaling": [{"run": w.ddp.path, "predicted": w.predicted.images_per_s,
                         "measured": w.ddp.images_per_s, "error": w.error} for w in data.scaling]}


def build_report(results_dir: str | Path, out_dir: str | Path | None = None,
                 command: str = "", stage: str = "") -> dict[str, Any]:
    """Write report.md and the figures; returns {'report': path, 'claims': [...], 'runs': n}.

    ``stage`` says how far the campaign had come (a report written while it still runs)."""
    results_dir, out = _folders(results_dir, out_dir)
    records, skipped = _load(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = report_data(results_dir, records, skipped, command, stage)
    figs = draw_figures(data, out)
    report = out / "report.md"
    write_atomically(report, render(data, figs).encode())
    write_tables(data.records, data.table, out)
    return _result(report, data, figs)
