"""Scaling: the ring all-reduce model (stats.scaling) against measured DDP runs, and the report's
section that compares them."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from ..config.schema import Status
from ..records.runs import RunRecord
from ..stats.scaling import DeviceStep, Fabric, Link, Prediction, default_overlap, predict
from .markdown import md_text

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
    predicted: Prediction

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


def _predictable(r: RunRecord) -> bool:
    """A completed multi-rank DDP run with a measured link and what the model needs of it."""
    return bool(r.mode == "ddp" and r.world_size > 1 and r.status == Status.COMPLETED and r.images_per_s
                and r.link and r.grad_bytes and r.local_batch_size)


def _row(r: RunRecord, bases: list[RunRecord]) -> ScalingRow:
    """The model's prediction for ``r`` from the median of its one-device ``bases``."""
    base_ips = statistics.median(b.images_per_s for b in bases)
    jitter = statistics.median([b.step_time_std_s for b in bases if b.step_time_std_s is not None] or [0.0])
    one = DeviceStep(r.local_batch_size / base_ips, r.local_batch_size, r.grad_bytes, jitter)
    pred = predict(one, r.world_size, Fabric(Link(*r.link), bucket_cap_mb=r.bucket_cap_mb,
                                             overlap=default_overlap(r.gpu)))
    return ScalingRow(r, base_ips, jitter, pred)


def scaling_rows(records: list[RunRecord]) -> list[ScalingRow]:
    """Predict every completed multi-rank DDP run (with a measured link) from its one-device base."""
    rows = []
    for r in filter(_predictable, records):
        bases = one_device_base(r, records)
        if bases:
            rows.append(_row(r, bases))
    return rows


def _table_row(w: ScalingRow) -> str:
    _, bw, lat = w.ddp.link
    return (f"| {md_text(w.ddp.line)} | {w.ddp.nodes} | {w.ddp.world_size} | {w.ddp.local_batch_size} | "
            f"{w.base_images_per_s:,.0f} | {bw:.2f} GB/s, {lat:.0f} us | {w.predicted.images_per_s:,.0f} | "
            f"{w.ddp.images_per_s:,.0f} | {100 * w.error:+.1f}% |")


def scaling_section(rows: list[ScalingRow], figs: list[Path]) -> list[str]:
    """The report's scaling section: model, figure and prediction vs measurement table."""
    lines = ["", "## Scaling: ring all-reduce model vs measured DDP", "",
             "Prediction from the one-device step time t1 at the per-device batch and the gradient bytes G "
             "in DDP's buckets: t_N = t1 + exposed(sum over buckets of 2(N-1)/N x bytes / B + 2(N-1) x "
             "latency) + sigma x E[max of N standard normals]; images/s = N x batch / t_N. sigma is the "
             "one-device run's step-time jitter (each step waits for the slowest rank). "
             "B and the latency are what each DDP run measured on its "
             "own process group; communication overlaps backward on GPUs (NCCL), not on CPUs (gloo). "
             f"The other curves use nominal link rates, {GPUS_PER_NODE} devices per node.", ""]
    if not rows:
        return lines + ["Not drawn: needs a completed multi-rank DDP run with a measured link and a completed "
                        "one-device run at its per-rank batch (same model, precision and, on CPU, threads).", ""]
    lines += [f"![scaling]({figs[0].name})", "",
              "| DDP run | nodes | devices | batch per device | one device (img/s) | link | predicted (img/s) | "
              "measured (img/s) | error |", "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    lines += [_table_row(w) for w in sorted(rows, key=lambda w: (w.ddp.local_batch_size, w.ddp.nodes,
                                                                   w.ddp.world_size))]
    worst = max(abs(w.error) for w in rows)
    return lines + ["", f"Largest prediction error: {100 * worst:.1f}%.", ""]
