"""The report's figures: Figure 5 (throughput vs batch), the largest batch under the memory cap, the
accuracy curves and the scaling model; each written as ``<stem>.png`` and ``<stem>.svg``, whole or not
at all: both are drawn in memory first, then each written through a temporary file and a rename."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ..config.schema import Status
from ..records.runs import RunRecord
from ..records.storage import write_atomically
from ..stats.scaling import LINKS, DeviceStep, Fabric, Link, default_overlap, predict
from .paper import PAPER_ERROR
from .scaling_section import GPUS_PER_NODE, SCALING_CLUSTERS, SCALING_DEVICES, ScalingRow
from .table import Fit, Point, Table

_STYLE = {"single": ("tab:blue", "o"), "dp": ("tab:orange", "s"), "dp_balanced": ("tab:brown", "D"),
          "ddp": ("tab:green", "^")}

#: one line style per memory remedy (a line with none is solid), the same in every figure
_REMEDY_STYLE = {"bf16": "--", "fp16": "--", "ckpt": ":", "accum": "-."}


def line_style(line: str) -> dict[str, str]:
    """Colour and marker by the mode, line style by the remedy: ``single+bf16+accum2`` is a blue
    dash-dot line (the last remedy named decides the style)."""
    parts = line.split("+")
    color, marker = _STYLE.get(parts[0], ("tab:gray", "v"))
    style = "-"
    for part in parts[1:]:
        style = next((v for k, v in _REMEDY_STYLE.items() if part.startswith(k)), style)
    return {"color": color, "marker": marker, "linestyle": style}


def figure5_lines(table: Table) -> Table:
    """The lines Figure 5 draws: modes and remedies; a thread count set by hand (the scaling model's
    one-thread base) is not a Figure-5 line."""
    return {line: pts for line, pts in table.items() if not any(p.endswith("thread") for p in line.split("+"))}


def _new_axes(figsize: tuple[float, float], ncols: int = 1) -> Any:
    """A figure and axes on the non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(ncols=ncols, figsize=figsize)


def plain(text: str) -> str:
    """Recorded text as a figure shows it: a ``$`` is a dollar sign, never the start of mathtext."""
    return text.replace("$", r"\$")


def _rendered(fig: Any, fmt: str) -> bytes:
    """The figure drawn as ``fmt`` (png, svg), in memory."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=130)
    return buffer.getvalue()


def _save(fig: Any, out_dir: Path, stem: str) -> list[Path]:
    """Write ``stem``.png and ``stem``.svg and close the figure; when drawing fails neither file is
    touched, and a file is never left half written."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        drawn = {out_dir / f"{stem}.{fmt}": _rendered(fig, fmt) for fmt in ("png", "svg")}
    finally:
        plt.close(fig)
    for path, data in drawn.items():
        write_atomically(path, data)
    return list(drawn)


def _log2_axis(ax: Any, ticks: list[int]) -> None:
    """A log2 x axis labelled at ``ticks`` (none: matplotlib's own)."""
    ax.set_xscale("log", base=2)
    if ticks:
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(b) for b in ticks])
        ax.minorticks_off()


def _oom_marks(pts: dict[int, Point], searched: Fit | None) -> dict[int, str]:
    """Batch -> label of each ✕ on a line: its out-of-memory points and the first failure a boundary search saw."""
    oom = {b: "OOM" for b, p in pts.items() if p.status == Status.OOM}
    if searched and searched.probes and searched.first_oom:
        oom[searched.first_oom] = f"OOM from {searched.first_oom}"
    return oom


def _draw_line(ax: Any, line: str, pts: dict[int, Point], marks: dict[int, str], floor: float,
               oom_labelled: bool) -> bool:
    """One Figure-5 line with its error bars and ✕ marks; returns whether "out of memory" has its legend entry."""
    style = line_style(line)
    color = style["color"]
    xs = sorted(b for b, p in pts.items() if p.images_per_s)
    if xs:
        ax.errorbar(xs, [pts[b].images_per_s for b in xs], yerr=[pts[b].ci for b in xs], label=plain(line),
                    capsize=3, **style)
    for b, text in marks.items():
        ax.scatter([b], [floor], marker="x", s=90, color=color, zorder=5,
                   label=None if oom_labelled else "out of memory")
        ax.annotate(text, (b, floor), textcoords="offset points", xytext=(0, 7),
                    ha="center", fontsize=8, color=color)
        oom_labelled = True
    return oom_labelled


def plot_fig5(table: Table, title: str, out_dir: Path, fits: dict[str, Fit] | None = None) -> list[Path]:
    """Images/s against batch per line with error bars; ✕ where a point ran out of memory and, for a
    line a ``boundary`` search covered, at the first batch the search saw fail."""
    fig, ax = _new_axes((7, 4.5))
    table = figure5_lines(table)
    all_ips = [p.images_per_s for pts in table.values() for p in pts.values() if p.images_per_s]
    floor = min(all_ips) * 0.8 if all_ips else 1.0
    oom_labelled = False
    for line, pts in sorted(table.items()):
        marks = _oom_marks(pts, (fits or {}).get(line))
        oom_labelled = _draw_line(ax, line, pts, marks, floor, oom_labelled)
    _log2_axis(ax, sorted({b for pts in table.values() for b in pts}))
    ax.set_xlabel("global batch size")
    ax.set_ylabel("training throughput (images/s)")
    ax.set_title(plain(title), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, out_dir, "fig5_throughput")


def _fit_label(f: Fit) -> str:
    return (f" {f.largest}" + (f" (OOM at {f.first_oom})" if f.first_oom else " (no OOM seen)")
            + (f", searched: {f.probes} probes" if f.probes else ""))


def plot_fitting(fits: dict[str, Fit], out_dir: Path) -> list[Path]:
    """Bar chart: the largest batch each remedy / mode ran under the memory cap
    (``fits``: :func:`.table.largest_fitting_batch`)."""
    if not any(f.first_oom for f in fits.values()):
        return []  # no OOM anywhere: the limit was not reached, nothing to show
    fits = {k: f for k, f in fits.items() if f.largest}
    lines = sorted(fits, key=lambda k: fits[k].largest or 0)
    fig, ax = _new_axes((7, 0.5 * len(lines) + 1.5))
    ax.barh([plain(k) for k in lines], [fits[k].largest for k in lines],
            color=[_STYLE.get(k.split("+")[0], ("tab:gray", ""))[0] for k in lines])
    for i, k in enumerate(lines):
        ax.text(fits[k].largest, i, _fit_label(fits[k]), va="center", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("largest global batch that ran under the memory cap")
    return _save(fig, out_dir, "largest_batch")


def plot_accuracy(records: list[RunRecord], out_dir: Path) -> list[Path]:
    """Test error per epoch of each run that tested more than once, beside the paper's final error."""
    runs = [r for r in records if len(r.epochs.get("test_acc", [])) > 1]
    if not runs:
        return []
    fig, ax = _new_axes((7, 4))
    for r in runs:
        ax.plot([e + 1 for e in r.epochs["epoch"]], [100 * (1 - a) for a in r.epochs["test_acc"]],
                label=plain(f"{r.model} ({r.status})"))
        ref = PAPER_ERROR.get((r.depth, r.alpha))
        if ref:
            ax.axhline(ref, linestyle=":", color="gray")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out_dir, "accuracy")


def _scaling_curves(run: RunRecord) -> list[tuple[str, Fabric, dict[str, Any]]]:
    """(label, fabric, plot style) of each model curve: the measured link, then each hypothetical
    cluster; all with ``run``'s DDP buckets."""
    measured_link = Link(*run.link)
    curves = [(f"model, measured link ({measured_link.bandwidth_GBps:.2f} GB/s, {measured_link.latency_us:.0f} us)",
               Fabric(measured_link, bucket_cap_mb=run.bucket_cap_mb, overlap=default_overlap(run.gpu)),
               dict(color="tab:green", linestyle="-"))]
    for (intra, inter), ls in zip(SCALING_CLUSTERS, ["-.", "--", (0, (3, 1, 1, 1)), (0, (1, 1))]):
        curves.append((f"model, {intra.upper()} x{GPUS_PER_NODE} per node + {inter.upper()} between nodes",
                       Fabric(LINKS[intra], inter=LINKS[inter], devices_per_node=GPUS_PER_NODE,
                              bucket_cap_mb=run.bucket_cap_mb, overlap=default_overlap(gpu=True)),
                       dict(color="tab:blue", linestyle=ls, alpha=0.75)))
    return curves


def _scaling_axes(ax: Any, ax_eff: Any) -> None:
    """Shared x axis (devices, log2) on both panels; labels and scales of each."""
    for a in (ax, ax_eff):
        _log2_axis(a, list(SCALING_DEVICES))
        a.set_xlabel("devices (DDP ranks)")
        a.grid(True, which="both", alpha=0.3)
    ax.set_yscale("log")
    ax.set_ylabel("training throughput (images/s)")
    ax_eff.set_ylabel("scaling efficiency (images/s over N x one device)")
    ax_eff.set_ylim(0, 1.05)
    ax.legend(fontsize=7)


def plot_scaling(rows: list[ScalingRow], out_dir: Path) -> list[Path]:
    """Predicted throughput and efficiency vs number of devices (the measured link and hypothetical
    clusters) with the measured DDP points, for the largest per-device batch with a measured pair."""
    if not rows:
        return []
    ref = max(rows, key=lambda w: (w.ddp.local_batch_size, w.ddp.world_size))
    b, run, one = ref.ddp.local_batch_size, ref.ddp, ref.base_images_per_s
    step = DeviceStep(b / one, b, ref.ddp.grad_bytes or 0, ref.base_step_std_s)
    ns = list(SCALING_DEVICES)
    same = [w for w in rows if w.ddp.local_batch_size == b and w.ddp.model == run.model]
    fig, (ax, ax_eff) = _new_axes((11, 4.5), ncols=2)
    ax.plot(ns, [n * one for n in ns], ":", color="gray", label="linear (no communication)")
    ax_eff.axhline(1.0, linestyle=":", color="gray")
    for label, fabric, style in _scaling_curves(run):
        preds = [predict(step, n, fabric) for n in ns]
        ax.plot(ns, [p.images_per_s for p in preds], label=label, **style)
        ax_eff.plot(ns, [p.efficiency for p in preds], **style)
    ax.scatter([1], [one], color="black", zorder=5, label="measured, one device")
    ax.scatter([w.ddp.world_size for w in same], [w.ddp.images_per_s for w in same], marker="^", s=60,
               color="tab:red", zorder=5, label="measured DDP")
    ax_eff.scatter([w.ddp.world_size for w in same], [w.ddp.images_per_s / (w.ddp.world_size * one) for w in same],
                   marker="^", s=60, color="tab:red", zorder=5)
    _scaling_axes(ax, ax_eff)
    fig.suptitle(plain(f"Scaling model: {run.model}, {b} images per device"), fontsize=10)
    return _save(fig, out_dir, "scaling")


def plot_compare(ref: dict[tuple[str, int], tuple[float, float]], new: dict[tuple[str, int], tuple[float, float]],
                 names: tuple[str, str], out_dir: Path) -> list[Path]:
    """Figure 5 of two campaigns: (line, batch) -> (images/s, 95 % half-width) each, REF dashed and
    hollow, NEW solid; ``names``: how the legend calls REF and NEW."""
    fig, ax = _new_axes((7, 4.5))
    for side, name, dashed in ((ref, names[0], True), (new, names[1], False)):
        for line in sorted({line for line, _ in side}):
            xs = sorted(b for ln, b in side if ln == line)
            style = {**line_style(line), **({"linestyle": "--", "markerfacecolor": "none"} if dashed else {})}
            ax.errorbar(xs, [side[(line, b)][0] for b in xs], yerr=[side[(line, b)][1] for b in xs],
                        label=plain(f"{line} ({name})"), capsize=3, **style)
    _log2_axis(ax, sorted({b for side in (ref, new) for _, b in side}))
    ax.set_xlabel("global batch size")
    ax.set_ylabel("training throughput (images/s)")
    ax.set_title(plain(f"{names[1]} against {names[0]} (dashed)"), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return _save(fig, out_dir, "compare_fig5")
