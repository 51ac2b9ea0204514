"""A :class:`.compare.Comparison` written out: ``compare.md`` and its figure, and the summary on stdout.
One small function per section of the markdown; every recorded text goes through :mod:`.markdown`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..records.storage import write_atomically
from .compare import GAINED, LOST, SLOWER, Comparison, PointComparison, Side, SidePoint
from .figures import plot_compare
from .markdown import md_code, md_text


def _figure(p: SidePoint) -> str:
    if not p.measured:
        return md_text(p.status)
    return f"{p.images_per_s:,.1f}" + (f" ± {p.ci:,.1f}" if p.ci else "")


def _ratio(row: PointComparison) -> str:
    if row.ratio is None:
        return "-"
    return f"{row.ratio:.3f} ({row.low:.3f}-{row.high:.3f})"


def _head(c: Comparison, figure: str) -> list[str]:
    counts = ", ".join(f"{c.count(v)} {v}" for v in ("same", "slower", "faster", LOST, GAINED) if c.count(v))
    return ["# Campaign comparison", "",
            f"- REF: {md_code(c.ref.source)} ({md_text(', '.join(c.ref.experiments))})",
            f"- NEW: {md_code(c.new.source)} ({md_text(', '.join(c.new.experiments))})",
            f"- verdicts: {counts}; slower or faster means beyond noise (the ratio's 95 % interval excludes 1) "
            f"and beyond the tolerance of {100 * c.tolerance:g} %",
            f"- points on one side only: {len(c.only_ref)} in REF, {len(c.only_new)} in NEW", "",
            f"![both campaigns' Figure 5, REF dashed]({figure})", ""]


def _points(c: Comparison) -> list[str]:
    rows = sorted(c.rows, key=lambda r: (r.verdict not in (SLOWER, LOST), r.key))
    return (["## Points", "", "| point | REF images/s | NEW images/s | NEW/REF (95 % CI) | verdict |",
             "| --- | ---: | ---: | ---: | --- |"]
            + [f"| {md_text(r.key.label())} | {_figure(r.ref)} | {_figure(r.new)} | {_ratio(r)} "
               f"| **{r.verdict}** ({md_text(r.why)}) |" for r in rows] + [""])


def _one_side(c: Comparison) -> list[str]:
    if not (c.only_ref or c.only_new):
        return []
    lines = ["## Points on one side only", ""]
    lines += [f"- only in REF: {md_text(k.label())}: {_figure(c.ref.points[k])}" for k in c.only_ref]
    lines += [f"- only in NEW: {md_text(k.label())}: {_figure(c.new.points[k])}" for k in c.only_new]
    return [*lines, ""]


def _claims(c: Comparison) -> list[str]:
    if not c.claims:
        return []
    return (["## The paper's claims", "", "| claim | REF | NEW | |", "| --- | --- | --- | --- |"]
            + [f"| {md_text(k)} | {md_text(a)} | {md_text(b)} | {'**changed**' if a != b else ''} |"
               for k, a, b in c.claims] + [""])


def _machines(c: Comparison) -> list[str]:
    return (["## What changed between the machines", "", "| | REF | NEW | |", "| --- | --- | --- | --- |"]
            + [f"| {md_text(f)} | {md_text(a)} | {md_text(b)} | {'**differs**' if a != b else ''} |"
               for f, a, b in c.machine] + [""])


def _skipped(c: Comparison) -> list[str]:
    skipped = [f"- REF: {md_text(s)}" for s in c.ref.skipped] + [f"- NEW: {md_text(s)}" for s in c.new.skipped]
    return ["## Runs skipped (unreadable)", "", *skipped, ""] if skipped else []


SECTIONS: tuple[Callable[[Comparison], list[str]], ...] = (_points, _one_side, _claims, _machines, _skipped)


def render(c: Comparison, figure: str) -> str:
    """``compare.md``: the head, then every section in order."""
    return "\n".join([*_head(c, figure), *(line for section in SECTIONS for line in section(c))])


def _curves(side: Side) -> dict[tuple[str, int], tuple[float, float]]:
    """(line, batch) -> (images/s, half-width) of a side's measured points (one model and rank count per line)."""
    return {(k.line, k.batch_size): (float(p.images_per_s or 0), p.ci)
            for k, p in side.points.items() if p.measured}


def write_comparison(c: Comparison, out_dir: Path) -> Path:
    """``compare.md`` and ``compare_fig5.png/.svg`` in ``out_dir`` (made if need be); the markdown's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = plot_compare(_curves(c.ref), _curves(c.new), ("REF", "NEW"), out_dir)
    path = out_dir / "compare.md"
    write_atomically(path, render(c, figs[0].name).encode())
    return path


def summary_lines(c: Comparison) -> list[str]:
    """What stdout says: a line per point that is not the same, the counts, the claims that changed."""
    lines = [f"{r.verdict.upper()}: {r.key.label()}: NEW/REF {_ratio(r)}" if r.ratio is not None else
             f"{r.verdict.upper()}: {r.key.label()}: {r.why}" for r in c.rows if r.verdict != "same"]
    lines += [f"only in {side}: {k.label()}" for side, keys in (("REF", c.only_ref), ("NEW", c.only_new))
              for k in keys]
    lines += [f"claim {k}: {a} -> {b}" for k, a, b in c.claims if a != b]
    differs = [f for f, a, b in c.machine if a != b]
    lines.append(f"compare: {len(c.rows)} point(s): " + ", ".join(
        f"{c.count(v)} {v}" for v in ("same", "slower", "faster", LOST, GAINED) if c.count(v))
        + (f"; machines differ in {', '.join(differs)}" if differs else "; same machine fields"))
    return lines

