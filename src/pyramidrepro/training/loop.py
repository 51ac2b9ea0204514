"""The training loop: iterate epochs and batches, time the steps, checkpoint, record.

It knows nothing of the parallel mode, the precision or the loader: the step is the executor's
(:mod:`..step.executor`), batches come from a loader (:mod:`..workload.loaders`), rows go to the recorder
(:mod:`..records.recorder`), and of the config it reads only :class:`LoopSettings`.  Losses stay on the
device; once per ``log_every`` window they are fetched in one host sync, all-reduced across
ranks, and written with the window's step times.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..config.experiment import ExperimentConfig
from ..config.schema import Attr, Status, Summary
from ..machine.devices import peak_memory, reset_peaks
from ..machine.interrupts import interruption_reason
from ..records.recorder import RunRecorder
from ..stats.measure import throughput
from ..step.executor import StepExecutor
from ..workload.loaders.base import BatchLoader
from .checkpoint import Checkpoints, Position


@dataclass(frozen=True)
class LoopSettings:
    """What the loop reads of a run: its length, the lr schedule, logging and checkpoint cadence."""

    name: str  # the experiment's, on the progress bar
    epochs: int
    max_steps: int | None
    batch_size: int  # the global batch of one optimizer step
    warmup_steps: int
    log_every: int
    checkpoint_every_s: float | None
    sync_debug: bool
    lr: float  # the effective lr, before the step decay
    lr_milestones: tuple[float, ...]
    world_size: int = 1  # the ranks whose losses are averaged
    progress: bool = False  # a progress bar instead of a line per epoch

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, world_size: int = 1, progress: bool = False) -> LoopSettings:
        t = cfg.train
        return cls(name=cfg.name, epochs=t.epochs, max_steps=t.max_steps, batch_size=t.batch_size,
                   warmup_steps=t.warmup_steps, log_every=t.log_every, checkpoint_every_s=t.checkpoint_every_s,
                   sync_debug=t.sync_debug, lr=cfg.effective_lr, lr_milestones=tuple(t.lr_milestones),
                   world_size=world_size, progress=progress)

    def lr_at_epoch(self, epoch: int) -> float:
        """Step decay: the effective lr divided by 10 at each milestone fraction of the epochs."""
        lr = self.lr
        for frac in self.lr_milestones:
            if epoch >= int(round(frac * self.epochs)):
                lr *= 0.1
        return lr


class StepTimer:
    """Per-step durations without a host sync in the loop (CUDA events; perf_counter on CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())

    def durations(self) -> list[float]:
        """Seconds between consecutive marks; keeps the last mark as the next window's start."""
        if len(self.marks) < 2:
            return []
        if self.cuda:
            self.marks[-1].synchronize()
            out = [a.elapsed_time(b) / 1000.0 for a, b in zip(self.marks, self.marks[1:])]
        else:
            out = [b - a for a, b in zip(self.marks, self.marks[1:])]
        self.marks = self.marks[-1:]
        return out


class RunStopped(Exception):
    """Raised inside the loop to end a run with a status other than completed."""

    def __init__(self, status: str, **info: Any) -> None:
        super().__init__(status)
        self.status, self.info = status, info


@dataclass
class PendingStep:
    """A step whose loss is still on the device."""

    step: int
    epoch: int
    lr: float
    loss: torch.Tensor
    data_time_s: float


@dataclass
class EpochTally:
    """Training loss and accuracy of an epoch, summed on the device."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    started: float = field(default_factory=time.perf_counter)


def evaluate(executor: StepExecutor, loader: BatchLoader) -> tuple[float, float]:
    """(loss, accuracy) of the executor's model on ``loader``, over every rank's share."""
    device = executor.device
    executor.train(False)
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, correct, count
    criterion = torch.nn.CrossEntropyLoss(reduction="sum")
    loader.set_epoch(0)
    for x, y in loader:
        logits = executor.logits(x)
        sums += torch.stack([criterion(logits, y).double(), (logits.argmax(1) == y).sum().double(),
                             torch.tensor(float(y.shape[0]), device=device, dtype=torch.float64)])
    if dist.is_initialized():
        dist.all_reduce(sums)
    executor.train(True)
    return float(sums[0] / sums[2]), float(sums[1] / sums[2])


class TrainingLoop:
    """Train ``executor`` on ``train_loader`` from a position to the end of the run.

    ``position`` is where a resume would start (None before the first step); ``checkpointable``
    says whether a checkpoint at ``position`` may be taken right now: the loop is between steps and
    every step up to it has reached the recorder.  A checkpoint ahead of the recorded rows would
    leave a gap in the metrics of the run that resumes from it (the resume keeps rows up to the
    checkpoint's step and continues after it), so a preemption arriving while a logging window
    is still open on the device saves nothing and the resume starts from the last checkpoint.

    ``interrupt`` is asked at every step boundary; a stop signal it returns (a rank's noted SIGINT or
    SIGTERM, :class:`..machine.interrupts.DeferredStop`) ends the run there, interrupted.
    """

    def __init__(self, settings: LoopSettings, executor: StepExecutor, train_loader: BatchLoader,
                 test_loader: BatchLoader | None, recorder: RunRecorder, checkpoints: Checkpoints,
                 before_step: Callable[[int], None] | None = None,
                 interrupt: Callable[[], KeyboardInterrupt | None] | None = None) -> None:
        self.settings, self.executor, self.device = settings, executor, executor.device
        self.train_loader, self.test_loader = train_loader, test_loader
        self.recorder, self.checkpoints = recorder, checkpoints
        self.before_step = before_step or (lambda step: None)  # fault injection for tests
        self.interrupt = interrupt or (lambda: None)
        self.position: Position | None = None
        self.checkpointable = True
        self.step_times: list[float] = []  # every step of this rank, in this process
        self.images_per_s: float | None = None  # the settled images/s, once a completed run is summarised
        self.timer = StepTimer(self.device)
        self.write_s0 = 0.0
        self.steps_per_epoch = len(train_loader)  # a full epoch (the loader is built at epoch 0)
        total = self.steps_per_epoch * settings.epochs
        self.total_steps = min(total, settings.max_steps) if settings.max_steps is not None else total

    def save_if_checkpointable(self) -> None:
        """Checkpoint now if the state is consistent and recorded (see the class docstring).

        Called from signal handlers too, so it leaves the metrics writer alone (the main thread may
        be inside it); the rows it stands on are flushed when the run records its outcome.
        """
        if self.position is not None and self.checkpointable:
            self.checkpoints.save(self.position)

    def _stop_if_interrupted(self) -> None:
        """At a step boundary: a stop signal noted since the last one ends the run here, interrupted
        (with a checkpoint when the run keeps them and the state is recorded, as Ctrl-C in one process)."""
        signalled = self.interrupt()
        if signalled is None:
            return
        if self.settings.checkpoint_every_s is not None and self.position is not None and self.checkpointable:
            self._save(self.position)
        raise RunStopped(Status.INTERRUPTED, **{Attr.ERROR: interruption_reason(signalled)})

    def _save(self, at: Position) -> None:
        """Checkpoint from the loop itself: the recorded rows reach the disk first, so a checkpoint
        never claims a step whose row could still be lost with the process."""
        self.recorder.flush()
        self.checkpoints.save(at)

    # -- the loop -----------------------------------------------------------------------------
    def run(self, start: Position) -> tuple[str, dict[str, Any]]:
        """Train from ``start``; returns (status, info) and leaves the figures in the recorder."""
        s = self.settings
        bar = self._progress_bar(start.step)
        self.write_s0 = self.recorder.write_seconds
        self.executor.train()
        step, skip = start.step, start.batch_in_epoch
        try:
            for epoch in range(start.epoch, s.epochs):
                if step >= self.total_steps:
                    break
                step = self._epoch(epoch, step, skip, bar)
                skip = 0
            if self.position is not None:  # the final state (saved unless the epoch end just did)
                self._save(self.position)
        except RunStopped as stop:
            return stop.status, stop.info
        finally:
            self._sync_check(False)
            if bar is not None:
                bar.close()
        self._summarise()
        return Status.COMPLETED, {}

    def _epoch(self, epoch: int, step: int, skip: int, bar: Any) -> int:
        """One epoch from batch ``skip``; returns the step count at its end."""
        s = self.settings
        lr = s.lr_at_epoch(epoch)
        for group in self.executor.optimizer.param_groups:
            group["lr"] = lr
        self.train_loader.set_epoch(epoch, start=skip)
        steps_in_epoch = self.steps_per_epoch
        self._sync_check(step >= s.warmup_steps)
        tally = EpochTally(torch.zeros((), device=self.device), torch.zeros((), device=self.device))
        pending: list[PendingStep] = []
        last_ckpt = time.monotonic()
        self.timer.mark()
        t_data = time.perf_counter()
        batch = skip - 1
        for batch, (x, y) in enumerate(self.train_loader, start=skip):
            data_time = time.perf_counter() - t_data
            self._stop_if_interrupted()
            self.before_step(step + 1)
            self.checkpointable = False  # until this step's row is drained to the recorder
            loss, n_correct = self.executor.train_step(x, y)
            step += 1
            self.timer.mark()
            tally.loss_sum += loss.detach() * y.shape[0]
            tally.correct += n_correct
            tally.seen += y.shape[0]
            pending.append(PendingStep(step, epoch, lr, loss.detach(), data_time))
            self.position = Position(epoch, step, batch + 1)
            if step == s.warmup_steps:
                reset_peaks(self.device, self.executor.gpu_ids)  # peaks of the measured steps only
            if step % s.log_every == 0 or step >= self.total_steps or batch + 1 == steps_in_epoch:
                self._sync_check(False)
                self._drain(pending, self.timer.durations(), bar)
                pending = []
                if batch + 1 < steps_in_epoch:  # an epoch's last step waits for the epoch's row
                    self.checkpointable = True
                    if s.checkpoint_every_s and time.monotonic() - last_ckpt > s.checkpoint_every_s:
                        self._save(self.position)
                        last_ckpt = time.monotonic()
                self._sync_check(step >= s.warmup_steps)
            if step >= self.total_steps:
                break
            t_data = time.perf_counter()
        self._sync_check(False)
        if batch + 1 == steps_in_epoch:
            self._end_epoch(epoch, tally)
            # a finished epoch resumes at the next one, not at the end of this one
            self.position = Position(epoch + 1, step, 0)
            self.checkpointable = True
            self._save(self.position)
        return step

    def _sync_check(self, on: bool) -> None:
        """``train.sync_debug``: any host-device sync inside the step loop raises (CUDA only).

        Switched on for the measured steps and off around the loop's own once-per-window drain.
        """
        if self.settings.sync_debug and self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("error" if on else "default")

    def _drain(self, pending: list[PendingStep], times: list[float], bar: Any) -> None:
        """Turn the window's device-side losses into rows (one host sync per window)."""
        if not pending:
            return
        s = self.settings
        losses = torch.stack([p.loss for p in pending]).float().cpu().numpy()
        if dist.is_initialized():
            # global loss: mean over ranks (each rank's loss is over its slice)
            lt = torch.from_numpy(losses).to(self.device)
            dist.all_reduce(lt)
            losses = (lt / self.settings.world_size).cpu().numpy()
        times = list(times)[-len(pending):]
        times = [float("nan")] * (len(pending) - len(times)) + times
        for p, loss, dt in zip(pending, losses, times):
            self.step_times.append(dt)
            ips = s.batch_size / dt if dt and dt > 0 else float("nan")
            self.recorder.log_step(step=p.step, epoch=p.epoch, loss=float(loss), lr=p.lr,
                                   images_per_s=ips, step_time_s=dt, data_time_s=p.data_time_s)
            if not math.isfinite(float(loss)):
                raise RunStopped(Status.NAN, nan_step=p.step)
        if bar is not None:
            last_ips = s.batch_size / times[-1] if times[-1] and times[-1] > 0 else 0.0
            bar.set_postfix(loss=f"{losses[-1]:.3f}", img_s=f"{last_ips:,.0f}", refresh=False)
            bar.update(len(pending))

    # -- epoch ends ---------------------------------------------------------------------------
    def _end_epoch(self, epoch: int, tally: EpochTally) -> None:
        epoch_time = time.perf_counter() - tally.started
        stats = torch.stack([tally.loss_sum.float(), tally.correct.float(),
                             torch.tensor(float(tally.seen), device=self.device)])
        if dist.is_initialized():
            dist.all_reduce(stats)  # sums over every rank's samples
        train_loss, train_acc = float(stats[0] / stats[2]), float(stats[1] / stats[2])
        test_loss, test_acc = (evaluate(self.executor, self.test_loader) if self.test_loader is not None
                               else (float("nan"), float("nan")))
        self.recorder.log_epoch(epoch=epoch, train_loss=train_loss, train_acc=train_acc,
                                test_loss=test_loss, test_acc=test_acc, epoch_time_s=epoch_time)
        if self.test_loader is not None:
            self.recorder.set_summary(**{Summary.FINAL_TEST_ACC: test_acc})
        if self.recorder.is_main and not self.settings.progress:
            print(f"epoch {epoch + 1}/{self.settings.epochs}: train_loss {train_loss:.4f} "
                  f"train_acc {train_acc:.4f} test_acc {test_acc:.4f} ({epoch_time:.1f}s)", flush=True)

    def _summarise(self) -> None:
        """The run's figures: images/s after warm-up, peaks per rank, the HDF5 writer's share."""
        s = self.settings
        peaks = peak_memory(self.device, self.executor.gpu_ids)
        summary: dict[str, Any] = {}
        start = 0
        if any(math.isfinite(d) and d > 0 for d in self.step_times):
            estimate, start, measured = throughput(self.step_times, s.batch_size, floor=s.warmup_steps)
            summary[Summary.IMAGES_PER_S] = self.images_per_s = estimate.images_per_s
            summary[Summary.IMAGES_PER_S_CI] = estimate.ci
            summary[Summary.MEASURED_FROM_STEP] = start + 1
            summary[Summary.MEASURED_STEPS] = measured
        mine = (self.step_times, peaks, socket.gethostname())
        gathered: list[Any] = [mine]
        if dist.is_initialized():
            gathered = [None] * self.settings.world_size
            dist.all_gather_object(gathered, mine)
        if not self.recorder.is_main:
            return
        n = min(len(g[0]) for g in gathered)
        rank_peaks = {key: np.array([p for g in gathered for p in g[1][key]], dtype=np.int64) for key in peaks}
        self.recorder.set_ranks(step_time_s=np.array([g[0][:n] for g in gathered], dtype=np.float64),
                                hostname=np.array([g[2] for g in gathered], dtype=bytes), **rank_peaks)
        summary.update({key: int(values.max()) for key, values in rank_peaks.items()})
        rank_totals = [float(np.nansum(g[0][start:n])) for g in gathered]
        if len(rank_totals) > 1 and min(rank_totals) > 0:  # a straggler: one rank's measured time apart
            summary[Summary.RANK_TIME_SPREAD] = max(rank_totals) / min(rank_totals) - 1
        if self.executor.settings.compile_mode and self.step_times:
            summary[Summary.COMPILE_TIME_S] = float(self.step_times[0])
        # HDF5 cost: seconds inside the writer during the loop over the loop's step time
        loop_s = float(np.nansum(self.step_times))
        write_s = self.recorder.write_seconds - self.write_s0
        summary[Summary.METRICS_WRITE_S] = write_s
        if loop_s > 0:
            summary[Summary.METRICS_OVERHEAD] = write_s / loop_s
        self.recorder.set_summary(**summary)

    def _progress_bar(self, initial: int) -> Any:
        if not self.recorder.is_main or not self.settings.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=self.total_steps, initial=initial, unit="step", desc=self.settings.name, dynamic_ncols=True)
