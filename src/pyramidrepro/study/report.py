"""Turn a campaign (every ``metrics.h5`` below a folder) into the paper's Figure 5 and a report.

``build_report(results_dir, out_dir)`` writes ``report.md``, ``fig5_throughput.png/.svg`` and,
when there are accuracy runs, ``accuracy.png/.svg``; it also returns the claims' verdicts.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..records.runs import RunRecord, load_runs
from ..spec.schema import BOUND_FIELDS, Status, Summary
from ..stats.measure import Estimate, compare, pool

PAPER_ERROR = {(110, 48.0): 4.62, (110, 270.0): 3.73}  # Han et al. 2017, CIFAR-10 top-1 error %
PAPER_OOM_BATCH = 512
PAPER_GPU_MEMORY_GB = 12
ABOUT = 0.20  # "about equal": within 20 %


def system_lines(records: list[RunRecord]) -> list[str]:
    """Provenance: each distinct system the runs describe, their environment, and the confounder checks."""
    from ..machine.system import confounders

    lines, seen = [], set()
    for r in records:
        s = {k: v for k, v in r.system.items() if k not in ("env", "topology")}
        if not s:
            continue
        shm = f"{s['dev_shm_bytes'] / 2**30:.2f} GiB" if s.get("dev_shm_bytes") else "?"
        text = (f"- system: {s.get('cpu_model', '?')}, {s.get('cpus_given', '?')} of {s.get('cpu_cores_machine', '?')} "
                f"cores given (affinity {s.get('cpu_affinity') or '?'}), /dev/shm {shm}")
        if s.get("gpu_count"):
            mem = ", ".join(f"{b / 2**30:.0f} GiB" for b in s.get("gpu_memory_bytes", []))
            text += (f"; {s['gpu_count']} x {', '.join(sorted(set(s.get('gpu_models', []))))} ({mem}), driver "
                     f"{s.get('driver') or '?'}, CUDA {s.get('cuda')}, cuDNN {s.get('cudnn')}, NCCL {s.get('nccl')}")
        if text not in seen:
            seen.add(text)
            lines.append(text)
    env = sorted({f"{k}={v}" for r in records for k, v in r.system.get("env", {}).items()})
    if env:
        lines.append(f"- environment: {'; '.join(env)}")
    topo = next((r.system["topology"] for r in records if r.system.get("topology")), None)
    if topo:
        lines += ["- GPU topology (`nvidia-smi topo -m`):", "", "```", topo, "```", ""]
    flags = confounders(records)
    lines += [f"- **confounder:** {f}" for f in flags] or ["- confounder checks: none tripped (/dev/shm with NCCL, "
                                                          "NCCL_P2P_DISABLE, TF32, mixed GPU models, threads over "
                                                          "cores, mixed commits or versions)"]
    return lines


def capability_lines(records: list[RunRecord]) -> list[str]:
    """Provenance: what each device could do fast, and the auto choices the runs made on it."""
    lines = []
    for cap in sorted({json.dumps(r.capability, sort_keys=True) for r in records if r.capability}):
        c = json.loads(cap)
        traits = [f"{k} {v}" for k, v in c.items() if k != "device"]
        lines.append(f"- device capability: {c.get('device', '?')}: {', '.join(traits)}")
    choices = sorted({f"{d.get('piece')} {'kept' if d.get('kept') else 'left out'} ({d.get('reason')})"
                      for r in records for d in r.auto_choices})
    if choices:
        lines.append("- auto choices: " + "; ".join(choices))
    return lines


# ---------------------------------------------------------------------------------------------
# The table behind the figure: line x batch -> median images/s of completed repeats
# ---------------------------------------------------------------------------------------------


@dataclass
class Point:
    line: str
    batch_size: int
    status: str  # completed | oom | nan | failed | running
    images_per_s: float | None
    peak_memory: list[int]
    runs: int
    devices: str
    ci: float = 0.0  # half-width of the 95 % interval: over repeats, or the one run's own
    bounds: dict[str, Any] = field(default_factory=dict)  # the latest completed run's (bounds.py)

    @property
    def estimate(self) -> Estimate:
        return Estimate(self.images_per_s or float("nan"), self.ci, self.runs)


def summarise(records: list[RunRecord]) -> dict[str, dict[int, Point]]:
    """Per line and batch, the throughput point (boundary probes left out: too short to measure)."""
    groups: dict[tuple[str, int], list[RunRecord]] = defaultdict(list)
    for r in records:
        if r.boundary_probe:
            continue
        groups[(r.line, r.batch_size)].append(r)
    table: dict[str, dict[int, Point]] = defaultdict(dict)
    for (line, batch), runs in sorted(groups.items()):
        done = [r for r in runs if r.status == Status.COMPLETED and r.images_per_s]
        ci = 0.0
        if done:  # one run: its own estimate; repeats: their windows pooled (measure.pool)
            est = pool([r.estimate() for r in done])
            ips, ci = est.images_per_s, est.ci
            best = max(done, key=lambda r: r.finished_at)
            status, peaks, bounds = Status.COMPLETED, best.peak_memory, best.bounds
        else:
            latest = max(runs, key=lambda r: r.finished_at)
            ips, status, peaks, bounds = None, latest.status, latest.peak_memory, {}
        table[line][batch] = Point(line, batch, status, ips, peaks, len(runs), runs[0].device_name, ci, bounds)
    return table


# ---------------------------------------------------------------------------------------------
# The paper's claims
# ---------------------------------------------------------------------------------------------


@dataclass
class Claim:
    key: str
    text: str
    verdict: str  # PASS | FAIL | WITHIN NOISE (a difference inside the 95 % intervals) | NOT RUN
    evidence: str


def _estimates(table: dict[str, dict[int, Point]], line: str) -> dict[int, Estimate]:
    return {b: p.estimate for b, p in table.get(line, {}).items() if p.status == Status.COMPLETED and p.images_per_s}


def _verdict(outcomes: list[str], wanted: str) -> str:
    """PASS when every comparison goes the claimed way beyond the intervals, FAIL when one goes the
    other way beyond them, WITHIN NOISE when the rest overlap."""
    if any(o not in (wanted, "noise") for o in outcomes):
        return "FAIL"
    return "PASS" if all(o == wanted for o in outcomes) else "WITHIN NOISE"


def _fmt(e: Estimate) -> str:
    return f"{e.images_per_s:,.0f}" + (f" ± {e.ci:,.0f}" if e.ci else "")


def check_claims(records: list[RunRecord]) -> list[Claim]:
    """C1-C4 of the paper, each PASS / FAIL / NOT RUN with the numbers behind it."""
    table = summarise(records)
    claims = []

    # C1: a single 12 GB GPU runs out of memory at batch >= 512
    capped = [r for r in records if r.line == "single" and r.gpu and r.memory_limit_gb
              and abs(r.memory_limit_gb - PAPER_GPU_MEMORY_GB) <= 1]
    text = f"C1: a single GPU with the paper's {PAPER_GPU_MEMORY_GB} GB runs out of memory at batch >= 512"
    if not capped:
        claims.append(Claim("C1", text, "NOT RUN",
                            "needs single-GPU runs under devices.memory_limit_gb: 11.91 (the paper's 12 GB card; "
                            "none with a cap within 1 GB of it)"))
    else:  # decided from the boundary: what fits below 512 and what fails at or below it
        fit = largest_fitting_batch(capped)["single"]
        searched = f" (boundary search: {fit.probes} probes)" if fit.probes else ""
        evidence = f"largest batch that completed {fit.largest or '-'}, smallest out of memory {fit.first_oom or '-'}"
        if fit.largest is None or fit.first_oom is None:
            claims.append(Claim("C1", text, "NOT RUN", f"needs completed and out-of-memory runs ({evidence})"))
        else:
            ok = PAPER_OOM_BATCH // 2 <= fit.largest < fit.first_oom <= PAPER_OOM_BATCH
            claims.append(Claim("C1", text, "PASS" if ok else "FAIL", evidence + searched))

    single, dp, ddp = _estimates(table, "single"), _estimates(table, "dp"), _estimates(table, "ddp")

    # C2: DP slower than single at equal batch; DP at 512 about single at 256
    text = "C2: DP is slower than single GPU at equal batch, and DP at 512 is about single at 256"
    common = sorted(set(single) & set(dp))
    if not dp:
        claims.append(Claim("C2", text, "NOT RUN", "no completed DP runs (DataParallel needs >= 2 GPUs)"))
    elif not common:
        claims.append(Claim("C2", text, "NOT RUN", "no batch size with both single and DP results"))
    else:
        outcomes = [compare(dp[b], single[b]) for b in common]
        ev = [f"batch {b}: DP {_fmt(dp[b])} vs single {_fmt(single[b])} img/s" for b in common]
        verdict = _verdict(outcomes, "lower")
        if 512 in dp and 256 in single:
            ratio = dp[512].images_per_s / single[256].images_per_s
            ev.append(f"DP@512 / single@256 = {ratio:.2f}")
            verdict = verdict if abs(ratio - 1) <= ABOUT else "FAIL"
        else:
            ev.append("DP@512 vs single@256 not measured")
        claims.append(Claim("C2", text, verdict, "; ".join(ev)))

    # C3: DDP faster than both at every batch
    text = "C3: DDP is faster than single GPU and DP at every batch size"
    comps = [(b, name, other[b]) for b in sorted(ddp) for name, other in (("single", single), ("DP", dp))
             if b in other]
    if not ddp:
        claims.append(Claim("C3", text, "NOT RUN", "no completed DDP runs"))
    elif not comps:
        claims.append(Claim("C3", text, "NOT RUN", "no batch size with DDP and another mode"))
    else:
        verdict = _verdict([compare(ddp[b], v) for b, _, v in comps], "higher")
        ev = "; ".join(f"batch {b}: DDP {_fmt(ddp[b])} vs {n} {_fmt(v)}" for b, n, v in comps)
        claims.append(Claim("C3", text, verdict, ev))

    # C4: DDP throughput grows with batch
    text = "C4: DDP throughput grows with the batch size"
    pts = sorted(ddp.items())
    if len(pts) < 2:
        claims.append(Claim("C4", text, "NOT RUN", "needs DDP results at two or more batch sizes"))
    else:
        verdict = _verdict([compare(b2, b1) for (_, b1), (_, b2) in zip(pts, pts[1:])], "higher")
        ev = " -> ".join(f"{b}: {_fmt(v)}" for b, v in pts)
        claims.append(Claim("C4", text, verdict, ev))
    return claims


# ---------------------------------------------------------------------------------------------
# Figures and the markdown report
# ---------------------------------------------------------------------------------------------

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


def figure5_lines(table: dict[str, dict[int, Point]]) -> dict[str, dict[int, Point]]:
    """The lines Figure 5 draws: modes and remedies; a thread count set by hand (the scaling model's
    one-thread base) is not a Figure-5 line."""
    return {line: pts for line, pts in table.items() if not any(p.endswith("thread") for p in line.split("+"))}


def _new_axes(figsize: tuple[float, float], ncols: int = 1):  # noqa: ANN202
    """A figure and axes on the non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(ncols=ncols, figsize=figsize)


def _save(fig, out_dir: Path, stem: str) -> list[Path]:  # noqa: ANN001
    """Write ``stem``.png and ``stem``.svg and close the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    for p in paths:
        fig.savefig(p, dpi=130)
    plt.close(fig)
    return paths


def plot_fig5(table: dict[str, dict[int, Point]], title: str, out_dir: Path,
              fits: dict[str, Fit] | None = None) -> list[Path]:
    """Images/s against batch per line with error bars; ✕ where a point ran out of memory and, for a
    line a ``boundary`` search covered, at the first batch the search saw fail."""
    fig, ax = _new_axes((7, 4.5))
    table = figure5_lines(table)
    all_ips = [p.images_per_s for pts in table.values() for p in pts.values() if p.images_per_s]
    floor = min(all_ips) * 0.8 if all_ips else 1.0
    oom_labelled = False
    for line, pts in sorted(table.items()):
        style = line_style(line)
        color = style["color"]
        xs = sorted(b for b, p in pts.items() if p.images_per_s)
        if xs:
            ax.errorbar(xs, [pts[b].images_per_s for b in xs], yerr=[pts[b].ci for b in xs], label=line,
                        capsize=3, **style)
        oom = {b: "OOM" for b, p in pts.items() if p.status == Status.OOM}
        searched = (fits or {}).get(line)
        if searched and searched.probes and searched.first_oom:
            oom[searched.first_oom] = f"OOM from {searched.first_oom}"
        for b, text in oom.items():
            ax.scatter([b], [floor], marker="x", s=90, color=color, zorder=5,
                       label=None if oom_labelled else "out of memory")
            ax.annotate(text, (b, floor), textcoords="offset points", xytext=(0, 7),
                        ha="center", fontsize=8, color=color)
            oom_labelled = True
    ax.set_xscale("log", base=2)
    batches = sorted({b for pts in table.values() for b in pts})
    if batches:
        ax.set_xticks(batches)
        ax.set_xticklabels([str(b) for b in batches])
        ax.minorticks_off()
    ax.set_xlabel("global batch size")
    ax.set_ylabel("training throughput (images/s)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, out_dir, "fig5_throughput")


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


def plot_fitting(records: list[RunRecord], out_dir: Path) -> list[Path]:
    """Bar chart: the largest batch each remedy / mode ran under the memory cap."""
    fits = largest_fitting_batch(records)
    if not any(f.first_oom for f in fits.values()):
        return []  # no OOM anywhere: the limit was not reached, nothing to show
    fits = {k: f for k, f in fits.items() if f.largest}
    lines = sorted(fits, key=lambda k: fits[k].largest or 0)
    fig, ax = _new_axes((7, 0.5 * len(lines) + 1.5))
    ax.barh(lines, [fits[k].largest for k in lines],
            color=[_STYLE.get(k.split("+")[0], ("tab:gray", ""))[0] for k in lines])
    for i, k in enumerate(lines):
        f = fits[k]
        ax.text(f.largest, i, f" {f.largest}" + (f" (OOM at {f.first_oom})" if f.first_oom else " (no OOM seen)")
                + (f", searched: {f.probes} probes" if f.probes else ""), va="center", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("largest global batch that ran under the memory cap")
    return _save(fig, out_dir, "largest_batch")


def plot_accuracy(records: list[RunRecord], out_dir: Path) -> list[Path]:
    runs = [r for r in records if len(r.epochs.get("test_acc", [])) > 1]
    if not runs:
        return []
    fig, ax = _new_axes((7, 4))
    for r in runs:
        ax.plot([e + 1 for e in r.epochs["epoch"]], [100 * (1 - a) for a in r.epochs["test_acc"]],
                label=f"{r.model} ({r.status})")
        ref = PAPER_ERROR.get((r.depth, r.alpha))
        if ref:
            ax.axhline(ref, linestyle=":", color="gray")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out_dir, "accuracy")


# ---------------------------------------------------------------------------------------------
# Scaling: the ring all-reduce model (scaling.py) against measured DDP runs
# ---------------------------------------------------------------------------------------------

SCALING_DEVICES = (1, 2, 4, 8, 16, 32, 64)
#: hypothetical clusters drawn beside the measured link: (intra-node link, inter-node link), 8 per node
SCALING_CLUSTERS = (("nvlink4", "400g"), ("nvlink4", "200g"), ("nvlink4", "100g"), ("pcie4", "100g"))
GPUS_PER_NODE = 8


@dataclass
class ScalingRow:
    """A measured multi-rank DDP run, its one-device base and what the model predicted for it."""

    ddp: RunRecord
    base_images_per_s: float
    base_step_std_s: float
    predicted: Any  # scaling.Prediction

    @property
    def error(self) -> float:
        return (self.predicted.images_per_s - self.ddp.images_per_s) / self.ddp.images_per_s


def one_device_base(run: RunRecord, records: list[RunRecord]) -> list[RunRecord]:
    """Completed one-device runs that match ``run`` per device: same model, precision, remedies,
    device kind and (on CPU) threads per process, at the DDP run's per-rank batch."""
    return [r for r in records
            if r.status == Status.COMPLETED and r.images_per_s and r.world_size == 1 and r.mode in ("single", "ddp")
            and r.batch_size == run.local_batch_size and r.model == run.model and r.precision == run.precision
            and r.accumulation_steps == run.accumulation_steps
            and r.activation_checkpointing == run.activation_checkpointing
            and r.gpu == run.gpu and (run.gpu or r.threads == run.threads)]


def scaling_rows(records: list[RunRecord]) -> list[ScalingRow]:
    """Predict every completed multi-rank DDP run (with a measured link) from its one-device base."""
    from ..stats.scaling import Link, default_overlap, predict

    rows = []
    for r in records:
        if not (r.mode == "ddp" and r.world_size > 1 and r.status == Status.COMPLETED and r.images_per_s
                and r.link and r.grad_bytes and r.local_batch_size):
            continue
        bases = one_device_base(r, records)
        if not bases:
            continue
        base_ips = statistics.median(b.images_per_s for b in bases)
        jitter = statistics.median([b.step_time_std_s for b in bases if b.step_time_std_s is not None] or [0.0])
        pred = predict(r.local_batch_size / base_ips, r.local_batch_size, r.grad_bytes, r.world_size,
                       intra=Link(*r.link), bucket_cap_mb=r.bucket_cap_mb,
                       overlap=default_overlap(r.gpu), step_jitter_s=jitter)
        rows.append(ScalingRow(r, base_ips, jitter, pred))
    return rows


def plot_scaling(rows: list[ScalingRow], out_dir: Path) -> list[Path]:
    """Predicted throughput and efficiency vs number of devices (the measured link and hypothetical
    clusters) with the measured DDP points, for the largest per-device batch with a measured pair."""
    from ..stats.scaling import LINKS, Link, default_overlap, predict

    if not rows:
        return []
    ref = max(rows, key=lambda w: (w.ddp.local_batch_size, w.ddp.world_size))
    b, grad, run = ref.ddp.local_batch_size, ref.ddp.grad_bytes or 0, ref.ddp
    step_s, one = b / ref.base_images_per_s, ref.base_images_per_s
    common = dict(bucket_cap_mb=run.bucket_cap_mb, step_jitter_s=ref.base_step_std_s)
    ns = list(SCALING_DEVICES)
    measured_link = Link(*run.link)
    curves = [(f"model, measured link ({measured_link.bandwidth_GBps:.2f} GB/s, {measured_link.latency_us:.0f} us)",
               dict(intra=measured_link, overlap=default_overlap(run.gpu)),
               dict(color="tab:green", linestyle="-"))]
    for (intra, inter), ls in zip(SCALING_CLUSTERS, ["-.", "--", (0, (3, 1, 1, 1)), (0, (1, 1))]):
        curves.append((f"model, {intra.upper()} x{GPUS_PER_NODE} per node + {inter.upper()} between nodes",
                       dict(intra=LINKS[intra], inter=LINKS[inter], devices_per_node=GPUS_PER_NODE,
                            overlap=default_overlap(gpu=True)),
                       dict(color="tab:blue", linestyle=ls, alpha=0.75)))
    same = [w for w in rows if w.ddp.local_batch_size == b and w.ddp.model == run.model]
    fig, (ax, ax_eff) = _new_axes((11, 4.5), ncols=2)
    ax.plot(ns, [n * one for n in ns], ":", color="gray", label="linear (no communication)")
    ax_eff.axhline(1.0, linestyle=":", color="gray")
    for label, kw, style in curves:
        preds = [predict(step_s, b, grad, n, **kw, **common) for n in ns]
        ax.plot(ns, [p.images_per_s for p in preds], label=label, **style)
        ax_eff.plot(ns, [p.efficiency for p in preds], **style)
    ax.scatter([1], [one], color="black", zorder=5, label="measured, one device")
    ax.scatter([w.ddp.world_size for w in same], [w.ddp.images_per_s for w in same], marker="^", s=60,
               color="tab:red", zorder=5, label="measured DDP")
    ax_eff.scatter([w.ddp.world_size for w in same], [w.ddp.images_per_s / (w.ddp.world_size * one) for w in same],
                   marker="^", s=60, color="tab:red", zorder=5)
    for a in (ax, ax_eff):
        a.set_xscale("log", base=2)
        a.set_xticks(ns)
        a.set_xticklabels([str(n) for n in ns])
        a.minorticks_off()
        a.set_xlabel("devices (DDP ranks)")
        a.grid(True, which="both", alpha=0.3)
    ax.set_yscale("log")
    ax.set_ylabel("training throughput (images/s)")
    ax_eff.set_ylabel("scaling efficiency (images/s over N x one device)")
    ax_eff.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    fig.suptitle(f"Scaling model: {run.model}, {b} images per device", fontsize=10)
    return _save(fig, out_dir, "scaling")


def scaling_section(rows: list[ScalingRow], figs: list[Path]) -> list[str]:
    """The report's scaling section: model, figure and prediction vs measurement table."""
    lines = ["", "## Scaling: ring all-reduce model vs measured DDP", "",
             "Prediction from the one-device step time t1 at the per-device batch and the gradient bytes G "
             "in DDP's buckets: t_N = t1 + exposed(sum over buckets of 2(N-1)/N x bytes / B + 2(N-1) x "
             "latency) + sigma x E[max of N standard normals]; images/s = N x batch / t_N. sigma is the "
             "one-device run's step-time jitter (each step waits for the slowest rank). "
             "B and the latency are what each DDP run measured on its "
             "own process group; communication overlaps backward on GPUs (NCCL), not on CPUs (gloo). "
             "The other curves use nominal link rates, 8 devices per node.", ""]
    if not rows:
        return lines + ["Not drawn: needs a completed multi-rank DDP run with a measured link and a completed "
                        "one-device run at its per-rank batch (same model, precision and, on CPU, threads).", ""]
    lines += [f"![scaling]({figs[0].name})", "",
              "| DDP run | nodes | devices | batch per device | one device (img/s) | link | predicted (img/s) | "
              "measured (img/s) | error |", "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for w in sorted(rows, key=lambda w: (w.ddp.local_batch_size, w.ddp.nodes, w.ddp.world_size)):
        name, bw, lat = w.ddp.link
        lines.append(f"| {w.ddp.line} | {w.ddp.nodes} | {w.ddp.world_size} | {w.ddp.local_batch_size} | "
                     f"{w.base_images_per_s:,.0f} | {bw:.2f} GB/s, {lat:.0f} us | {w.predicted.images_per_s:,.0f} | "
                     f"{w.ddp.images_per_s:,.0f} | {100 * w.error:+.1f}% |")
    worst = max(abs(w.error) for w in rows)
    return lines + ["", f"Largest prediction error: {100 * worst:.1f}%.", ""]


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
    return f"**{bounds[Summary.BOUND]}**: " + " / ".join("-" if v is None else f"{v:,.0f}" for v in figures)


def build_report(results_dir: str | Path, out_dir: str | Path | None = None,
                 command: str = "") -> dict[str, Any]:
    """Write report.md and the figures; returns {'report': path, 'claims': [...], 'runs': n}."""
    from ..spec.config import ConfigError

    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"{results_dir}: " + ("is a file, not a results folder" if results_dir.exists()
                                                      else "no such results folder"))
    out = Path(out_dir) if out_dir else results_dir
    if out.exists() and not out.is_dir():
        raise ConfigError("report", "--out", f"{out} is a file; give a folder for the report")
    skipped: list[str] = []
    records = load_runs(results_dir, skipped)
    if not records and skipped:
        raise FileNotFoundError(f"{results_dir}: {len(skipped)} metrics.h5 found, all skipped; first: {skipped[0]}")
    if not records:
        raise FileNotFoundError(f"{results_dir}: no metrics.h5 files below this folder")
    out.mkdir(parents=True, exist_ok=True)
    table = summarise(records)
    claims = check_claims(records)
    synthetic = any(r.data_source == "synthetic" for r in records)
    devices = sorted({r.device_name for r in records})
    models = sorted({r.model for r in records})
    title = "Throughput vs batch size: " + ", ".join(models)
    if synthetic:
        title += " (synthetic data)"
    figs = plot_fig5(table, title, out, largest_fitting_batch(records))
    fit_figs = plot_fitting(records, out)
    measured = [r for r in records if not r.boundary_probe]
    acc_figs = plot_accuracy(measured, out)
    rows = scaling_rows(measured)
    scale_figs = plot_scaling(rows, out)
    running = [r for r in records if r.status == Status.RUNNING]

    lines = [f"# Reproduction report{' (synthetic data)' if synthetic else ''}", ""]
    if command:
        lines += [f"Produced by: `{command}`", ""]
    probes = len(records) - len(measured)
    lines += [f"Runs read: {len(records)} from `{results_dir}`"
              + (f" ({len(running)} still running, marked below)" if running else "")
              + (f"; {probes} of them boundary probes, used for the largest batch and C1 only" if probes else ""), ""]
    lines += ["## Figure 5: throughput vs batch size", "", f"![Figure 5]({figs[0].name})", ""]
    lines += ["## The paper's claims", "", "| claim | verdict | evidence |", "| --- | --- | --- |"]
    lines += [f"| {c.text} | **{c.verdict}** | {c.evidence} |" for c in claims]
    lines += ["", "## Runs: images/s by mode and batch", "",
              "| line | batch | status | images/s (± 95 % CI) | bound: compute / input / all-reduce alone (images/s) "
              "| peak memory (GiB) | repeats |",
              "| --- | ---: | --- | ---: | --- | --- | ---: |"]
    for line, pts in sorted(table.items()):
        for b, p in sorted(pts.items()):
            ips = _fmt(p.estimate) if p.images_per_s else "-"
            lines.append(f"| {line} | {b} | {p.status} | {ips} | {_fmt_bounds(p.bounds)} | {_fmt_mem(p.peak_memory)} "
                         f"| {p.runs} |")
    paper_batches = [b for b in (64, 128, 256, 512) if any(b in pts for pts in table.values())]
    if len(table) > 1 and paper_batches:
        lines += ["", "## Images/s at the paper's batch sizes", "",
                  "| line | " + " | ".join(str(b) for b in paper_batches) + " |",
                  "| --- |" + " ---: |" * len(paper_batches)]
        for line, pts in sorted(table.items()):
            cells = []
            for b in paper_batches:
                p = pts.get(b)
                cells.append("-" if p is None else (f"{p.images_per_s:,.0f}" if p.images_per_s else p.status))
            lines.append(f"| {line} | " + " | ".join(cells) + " |")
    if fit_figs:
        lines += ["", "## Largest batch under the memory cap", "", f"![largest batch]({fit_figs[0].name})", ""]
        for line, f in sorted(largest_fitting_batch(records).items()):
            oom = f", out of memory at {f.first_oom}" if f.first_oom else ""
            lines.append(f"- {line}: fits {f.largest or '-'}{oom}"
                         + (f" (boundary search: {f.probes} probes)" if f.probes else ""))
    if acc_figs:
        lines += ["", "## Accuracy", "", f"![accuracy]({acc_figs[0].name})", "",
                  "| model | epochs | final test error | Han et al. 2017 |", "| --- | ---: | ---: | ---: |"]
        for r in records:
            if len(r.epochs.get("test_acc", [])) > 1:
                ref = PAPER_ERROR.get((r.depth, r.alpha))
                err = 100 * (1 - r.epochs["test_acc"][-1])
                lines.append(f"| {r.model} | {len(r.epochs['test_acc'])} | {err:.2f}% | "
                             f"{f'{ref:.2f}%' if ref else '-'} |")
    lines += scaling_section(rows, scale_figs)
    v = records[0].versions
    overheads = [r.metrics_overhead for r in records if r.metrics_overhead is not None]
    images = sorted({f"{r.container_image} ({r.container_digest or 'no digest'}, built from {r.image_commit or '?'})"
                     for r in records if r.container_image})
    caps = sorted({(r.memory_limit_gb, r.allocator_cap_bytes) for r in records if r.memory_limit_gb})
    tf32 = sorted({"on" if r.allow_tf32 else "off" for r in records if r.allow_tf32 is not None})
    lines += ["", "## Provenance", "",
              f"- hardware: {'; '.join(devices)}",
              "- GPU memory cap: " + (", ".join(
                  f"a {c:g} GiB card emulated" + (f" (allocator capped at {a / 2**30:.2f} GiB)" if a else "")
                  for c, a in caps) if caps else "none"),
              f"- TF32 on GPUs: {' and '.join(tf32) if tf32 else 'n/a (no GPU runs)'}",
              *capability_lines(records),
              *system_lines(records),
              f"- data: {', '.join(sorted({r.data_source for r in records}))}",
              f"- git commit: {', '.join(sorted({r.git_commit for r in records}))}",
              f"- versions: {', '.join(f'{k} {val}' for k, val in v.items() if val)}",
              f"- container image: {', '.join(images) or 'none (host Python)'}",
              "- HDF5 logging: " + (f"median {100 * statistics.median(overheads):.2f}%, at most "
                                    f"{100 * max(overheads):.2f}% of step time over {len(overheads)} runs"
                                    if overheads else "overhead not recorded"),
              ""]
    if running:
        lines += ["Runs still going when this report was made:", ""]
        lines += [f"- `{r.path}` ({r.line}, batch {r.batch_size})" for r in running] + [""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return {"report": str(report), "figures": [str(p) for p in figs + fit_figs + acc_figs + scale_figs],
            "claims": [c.__dict__ for c in claims], "runs": len(records),
            "scaling": [{"run": w.ddp.path, "predicted": w.predicted.images_per_s,
                         "measured": w.ddp.images_per_s, "error": w.error} for w in rows]}
