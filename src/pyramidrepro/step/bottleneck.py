"""What bounds a point: the model step alone, the loader alone and the gradient all-reduce alone.

Measured after a completed run's last step, in the same processes, on the same devices and in
the same process group:

- **compute**: forward, backward and optimizer step on one batch already on the device, with
  DDP's gradient synchronisation off (``no_sync``);
- **input**: the training loader's batches, nothing done with them;
- **communication** (multi-rank DDP): all-reduces of one DDP bucket (``train.bucket_cap_mb``),
  as many as the run's gradient bytes fill.

Each figure becomes global images/s (the slowest rank's time; every rank works on its share at
once), and the point is labelled by the lowest of the three: it is what the step cannot go
faster than.  Compute and communication overlap on GPUs (NCCL during backward); on CPUs (gloo)
they add up, so a CPU DDP point can be slower than all three.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..config.schema import Summary
from ..stats.scaling import slowest_rank
from ..workload.loaders.base import BatchLoader
from .executor import StepExecutor

#: timed repeats of each part, after one untimed
BOUND_REPEATS = 5
LABELS = {Summary.COMPUTE_IMAGES_PER_S: "compute", Summary.INPUT_IMAGES_PER_S: "input",
          Summary.ALLREDUCE_IMAGES_PER_S: "communication"}


@dataclass
class Bounds:
    """Global images/s each part alone allows (None: not measured) and which is the lowest."""

    compute: float
    input: float
    communication: float | None

    def summary(self) -> dict[str, float | str]:
        parts = {Summary.COMPUTE_IMAGES_PER_S: self.compute, Summary.INPUT_IMAGES_PER_S: self.input,
                 Summary.ALLREDUCE_IMAGES_PER_S: self.communication}
        known = {k: v for k, v in parts.items() if v is not None and math.isfinite(v)}
        return {**known, Summary.BOUND: LABELS[min(known, key=lambda k: known[k])]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compute_seconds(executor: StepExecutor, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds per optimizer step on a batch already on the device, with no gradient sync."""

    def step() -> None:
        with executor.micro_batch_context(last=False):  # DDP: no_sync; otherwise nothing
            loss, _ = executor.forward_loss(executor.prepare(x), y)
            executor.backward(loss)
        executor.optimizer_step()

    step()
    _sync(executor.device)
    t0 = time.perf_counter()
    for _ in range(BOUND_REPEATS):
        step()
    _sync(executor.device)
    return (time.perf_counter() - t0) / BOUND_REPEATS


def input_seconds(loader: BatchLoader, device: torch.device) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Seconds per batch of the loader alone (after its first batch), and that first batch."""
    loader.set_epoch(0)
    batches = iter(loader)
    first_x, first_y = next(batches)
    _sync(device)
    t0 = time.perf_counter()
    n = 0
    for n, _batch in enumerate(batches, 1):
        if n == BOUND_REPEATS * 2:
            break
    _sync(device)
    seconds = (time.perf_counter() - t0) / n if n else math.nan  # nan: one batch is all the loader has
    return seconds, first_x, first_y


def allreduce_seconds(grad_bytes: int, bucket_cap_mb: float, device: torch.device) -> float:
    """Seconds to all-reduce ``grad_bytes`` in buckets of ``bucket_cap_mb`` on the default group."""
    bucket_bytes = int(bucket_cap_mb * 2**20)
    buckets = max(1, math.ceil(grad_bytes / bucket_bytes))
    buffer = torch.zeros(min(grad_bytes, bucket_bytes) // 4 + 1, dtype=torch.float32, device=device)

    def step() -> None:
        for _ in range(buckets):
            dist.all_reduce(buffer)

    step()
    _sync(device)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(BOUND_REPEATS):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / BOUND_REPEATS


def measure_bounds(executor: StepExecutor, loader: BatchLoader, global_batch: int, grad_bytes: int,
                   bucket_cap_mb: float, ddp_ranks: int) -> Bounds:
    """The three figures for a run whose global batch is ``global_batch`` (every rank calls this)."""
    executor.train()
    per_batch, x, y = input_seconds(loader, executor.device)
    input_s = slowest_rank(per_batch, executor.device)
    compute_s = slowest_rank(compute_seconds(executor, x, y), executor.device)
    comm = None
    if ddp_ranks > 1 and dist.is_initialized():
        comm = global_batch / slowest_rank(allreduce_seconds(grad_bytes, bucket_cap_mb, executor.device),
                                           executor.device)
    return Bounds(global_batch / compute_s, global_batch / input_s, comm)
