"""The training loop: one Trainer for every parallel mode, precision and loader.

``Trainer(cfg, run_dir)()`` runs an experiment in this process (one rank of it when launched
distributed), writes ``metrics.h5`` from rank 0 and returns the final status.  It is also the
callable that the dispatcher submits: ``checkpoint()`` makes it requeueable.
"""

from __future__ import annotations

import math
import os
import platform
import random
import socket
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from . import __version__
from .autotune import resolve_auto
from .config import ExperimentConfig
from .data import load_splits, make_loader
from .devices import MemoryCap, cap_gpu_memory, capability, device_name, peak_memory, reset_peaks, set_tf32
from .faults import StopChannel, StopRecord, injected_oom_step, raise_injected_oom
from .metrics import MetricsWriter
from .model import PyramidNet
from .parallel import (
    DistEnv,
    detect_dist_env,
    init_process_group,
    pick_device,
    shutdown_process_group,
    wrap_model,
)
from .paths import AUTOCAST_DTYPES, PathSpec
from .scaling import grad_bytes_of, measure_link

STATUS_EXIT_CODES = {"completed": 0, "oom": 0, "nan": 0, "failed": 1}
CHECKPOINT_NAME = "checkpoint.pt"
#: written into the package by an image build (containers/), where the source has no .git
BUILD_INFO = Path(__file__).resolve().parent / "BUILD_COMMIT"


# ---------------------------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------------------------


def git_commit() -> str:
    """The commit of the package's source tree, or "unknown"."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        commit = out.stdout.strip()
        if out.returncode == 0 and commit:
            dirty = subprocess.run(
                ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=5,
            ).stdout.strip()
            return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    if BUILD_INFO.is_file():
        return BUILD_INFO.read_text().strip() or "unknown"
    return os.environ.get("PYRAMIDREPRO_GIT_COMMIT", "unknown")


def versions() -> dict[str, Any]:
    """Versions of everything that shapes a result."""
    import h5py

    from .dali_loader import dali_version

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "dali": dali_version(),
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "numpy": np.__version__,
        "pyramidrepro": __version__,
    }


def lr_at_epoch(cfg: ExperimentConfig, epoch: int) -> float:
    """Step decay: the effective lr divided by 10 at each milestone fraction of the epochs."""
    lr = cfg.effective_lr
    for frac in cfg.train.lr_milestones:
        if epoch >= int(round(frac * cfg.train.epochs)):
            lr *= 0.1
    return lr


class StepTimer:
    """Per-step durations without a host sync in the loop (CUDA events; perf_counter on CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._marks.append(ev)
        else:
            self._marks.append(time.perf_counter())

    def durations(self) -> list[float]:
        """Seconds between consecutive marks; keeps the last mark as the next window's start."""
        if len(self._marks) < 2:
            return []
        if self.cuda:
            self._marks[-1].synchronize()
            out = [a.elapsed_time(b) / 1000.0 for a, b in zip(self._marks, self._marks[1:])]
        else:
            out = [b - a for a, b in zip(self._marks, self._marks[1:])]
        self._marks = self._marks[-1:]
        return out


class RunStopped(Exception):
    """Raised inside the loop to end a run with a non-completed status."""

    def __init__(self, status: str, **info: Any) -> None:
        super().__init__(status)
        self.status, self.info = status, info


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------


class Trainer:
    """Train one experiment in this process (or this rank) and record it in ``run_dir``."""

    def __init__(
        self, cfg: ExperimentConfig, run_dir: str | Path | None = None,
        extra_attrs: dict[str, Any] | None = None, progress: bool | None = None,
        out_dir: str | Path = "results/runs",
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.out_dir = Path(out_dir)
        self.extra_attrs = dict(extra_attrs or {})
        self.progress = progress
        self._between_steps = True
        self._state: dict[str, Any] | None = None  # where a resume would start
        self._saved: tuple[int, int, int] | None = None  # the position last checkpointed
        self.env = DistEnv()
        self.writer: MetricsWriter | None = None
        self.stop_channel: StopChannel | None = None
        self._recorded = False  # the final status is written (once: the stop watcher may race the loop)
        self._record_lock = threading.Lock()

    # -- submitit integration ----------------------------------------------------------------
    def __call__(self) -> str:
        return self.run()

    def checkpoint(self, *args: Any, **kwargs: Any):  # noqa: ANN201 - submitit API
        """Called by submitit on preemption/timeout (rank 0 only): save, then requeue self.

        The save happens only when the loop is between steps; otherwise the last periodic
        checkpoint stands, and the resumed run rewinds its metrics to it.
        """
        import submitit

        self.save_if_between_steps()
        return submitit.helpers.DelayedSubmission(
            Trainer(self.cfg, self.run_dir, self.extra_attrs, self.progress)
        )

    def save_if_between_steps(self) -> None:
        """Checkpoint now if the loop is at a step boundary (a consistent state)."""
        if self._state is not None and self._between_steps and self.run_dir is not None:
            self._save_checkpoint(**self._state)

    # -- setup --------------------------------------------------------------------------------
    def run(self) -> str:
        """Run to the end; returns the status (completed | oom | nan | failed)."""
        cfg, t = self.cfg, self.cfg.train
        env = detect_dist_env() if t.mode == "ddp" else DistEnv()
        self.env = env
        device = pick_device(cfg.devices.device, env)
        self.device = device
        threads = t.threads or max(1, (os.cpu_count() or 1) // max(1, env.local_world_size))
        self.threads = threads if device.type == "cpu" else None
        if device.type == "cpu":
            torch.set_num_threads(threads)
        self.backend = None
        if t.mode == "ddp":
            if not env.distributed:
                env = DistEnv(launcher="env", master_port=_free_port())
                self.env = env
            self.backend = init_process_group(env, t.backend, device, t.dist_timeout_s)
        if self.run_dir is None:  # rank 0 names the run; every rank writes/reads the same folder
            box = [default_run_dir(cfg, self.out_dir)]
            if dist.is_initialized():
                dist.broadcast_object_list(box, src=0)
            self.run_dir = box[0]
        if t.batch_size % env.world_size:
            raise ValueError(
                f"train.batch_size {t.batch_size} does not divide by the world size {env.world_size}"
            )
        if dist.is_initialized() and env.world_size > 1:
            self.stop_channel = StopChannel(env.rank, env.world_size, self._on_peer_stop)
        self._oom_at = injected_oom_step(env.rank)
        try:
            if self._oom_at == "setup":
                raise_injected_oom("setup")
            self._setup(device)
            self.link = None
            if self.backend is not None and env.world_size > 1 and t.measure_link:
                self.link = measure_link(device)
            if env.is_main:
                self._open_writer()
            status, info = self._train()
        except torch.OutOfMemoryError as exc:
            status, info = self._stop("oom", {"oom_batch_size": t.batch_size, "error": str(exc).splitlines()[0]})
        except BaseException as exc:
            peer = self.stop_channel.peer_record() if self.stop_channel is not None else None
            if peer is None or isinstance(exc, (SystemExit, KeyboardInterrupt)):
                # this rank failed: say so to the peers and in metrics.h5, then let the error out
                self._stop("failed", {"error": f"{type(exc).__name__}: {exc}"})
                if dist.is_initialized() and not isinstance(exc, (SystemExit, KeyboardInterrupt)):
                    dist.destroy_process_group()
                raise
            # a peer stopped the run (and its leaving broke this rank's collective): its outcome
            status, info = peer.outcome()
        self._record(status, info)
        if status == "completed":
            if self.stop_channel is not None:
                self.stop_channel.close()
            shutdown_process_group()
        elif dist.is_initialized():  # peers may be mid-collective: no barrier, just leave
            dist.destroy_process_group()
        if env.is_main:
            print(f"{status}: {self.run_dir / 'metrics.h5'}", flush=True)
        return status

    # -- the outcome --------------------------------------------------------------------------
    def _open_writer(self) -> MetricsWriter:
        """Rank 0: the run folder, its config.yaml and metrics.h5 with what is known before setup."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(self.cfg.to_yaml())
        self.writer = MetricsWriter(self.run_dir / "metrics.h5", flush_interval_s=self.cfg.metrics.flush_interval_s)
        self.writer.set_attrs(**self._identity_attributes())
        self.writer.flush(force=True)
        return self.writer

    def _stop(self, status: str, info: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """This rank ends the run with ``status``: tell every peer (multi-rank); the outcome in force."""
        if self.stop_channel is None:
            return status, info
        return self.stop_channel.post(status, info).outcome()

    def _record(self, status: str, info: dict[str, Any]) -> None:
        """Rank 0 writes the final status once (a run stopped during setup still gets a metrics.h5)."""
        with self._record_lock:
            if self._recorded or not self.env.is_main or self.run_dir is None:
                return
            self._recorded = True
            writer = self.writer or self._open_writer()
            writer.close(status, **info)

    def _on_peer_stop(self, record: StopRecord) -> int:
        """Called from the stop watcher when another rank stopped the run; returns this rank's exit code."""
        self._record(*record.outcome())
        if self.env.is_main:
            print(f"{record.status} (rank {record.rank}): {self.run_dir / 'metrics.h5'}", flush=True)
        return STATUS_EXIT_CODES.get(record.status, 1)

    def _setup(self, device: torch.device) -> None:
        cfg, t, env = self.cfg, self.cfg.train, self.env
        seed = t.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.memory_cap: MemoryCap | None = None
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = cfg.devices.cudnn_benchmark
            set_tf32(cfg.devices.allow_tf32)
            if cfg.devices.memory_limit_gb is not None:
                ids = list(range(torch.cuda.device_count())) if t.mode.startswith("dp") else [device.index]
                self.memory_cap = cap_gpu_memory(cfg.devices.memory_limit_gb, ids)
        splits = load_splits(cfg.data, cfg.model.num_classes, seed)
        self.data_source = splits.source
        m = cfg.model
        model: nn.Module = PyramidNet(
            m.depth, m.alpha, m.block, m.widening, m.num_classes,
            activation_checkpointing=t.activation_checkpointing,
        )
        if t.mode == "ddp" and t.sync_bn:
            if device.type != "cuda":
                raise RuntimeError("train.sync_bn needs GPUs: PyTorch's SyncBatchNorm does not run on CPU")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(device)
        self.path = self._choose_path(device)
        if self.path.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.autocast_dtype = AUTOCAST_DTYPES[self.path.precision]
        self.wrapped, self.gpu_ids = wrap_model(
            model, t.mode, device, allow_cpu_dp=t.allow_cpu_dp,
            gradient_as_bucket_view=t.gradient_as_bucket_view, static_graph=t.static_graph,
            bucket_cap_mb=t.bucket_cap_mb, autocast_dtype=self.autocast_dtype,
        )
        self.step_module = self.wrapped
        if self.path.compile_mode:
            self.step_module = torch.compile(self.wrapped, mode=self.path.compile_mode)
        self.optimizer = make_optimizer(model, cfg, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.path.precision == "fp16")
        self.criterion = nn.CrossEntropyLoss()
        common = dict(rank=env.rank, world_size=env.world_size, seed=seed)
        self.train_loader = make_loader(
            cfg.data.loader, splits.train, t.batch_size, device, augment=cfg.data.augment,
            num_workers=cfg.data.num_workers, **common,
        )
        self.test_loader = (
            make_loader(
                "torch" if cfg.data.loader == "dali" and device.type == "cpu" else cfg.data.loader,
                splits.test, max(256, t.batch_size // env.world_size), device, train=False,
                augment=False, num_workers=cfg.data.num_workers, **common,
            )
            if t.evaluate else None
        )

    def _choose_path(self, device: torch.device) -> PathSpec:
        """Precision, memory format and compile as the config says; ``auto`` ones chosen here.

        Every rank takes rank 0's choice, so a DDP job trains one way.
        """
        cfg, t = self.cfg, self.cfg.train
        requested = {"precision": t.precision, "channels_last": t.channels_last, "compile": t.compile}
        m = cfg.model
        say = print if self.env.is_main else (lambda msg: None)
        self.choice = resolve_auto(requested, (m.depth, m.alpha, m.block),
                                   t.batch_size // self.env.world_size // t.accumulation_steps, device,
                                   resolve_optimizer_impl(t.optimizer_impl, device), t.compile_mode, t.mode, say=say)
        if dist.is_initialized():
            box = [self.choice]
            dist.broadcast_object_list(box, src=0)
            self.choice = box[0]
        return self.choice.spec

    def _autocast(self):  # noqa: ANN202
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # -- checkpoints -------------------------------------------------------------------------
    def _save_checkpoint(self, epoch: int, step: int, batch_in_epoch: int) -> None:
        if not self.env.is_main or self._saved == (epoch, step, batch_in_epoch):
            return
        self._saved = (epoch, step, batch_in_epoch)
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "step": step,
            "batch_in_epoch": batch_in_epoch,
            "torch_rng": torch.get_rng_state(),
            "config_digest": self.cfg.digest(),
        }
        tmp = self.run_dir / (CHECKPOINT_NAME + ".tmp")
        torch.save(state, tmp)
        tmp.replace(self.run_dir / CHECKPOINT_NAME)

    def _load_checkpoint(self) -> dict[str, Any] | None:
        path = self.run_dir / CHECKPOINT_NAME
        if not path.is_file():
            return None
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state.get("config_digest") != self.cfg.digest():
            raise RuntimeError(f"{path}: checkpoint belongs to a different config; move it away")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"].cpu())
        return state

    # -- the loop -----------------------------------------------------------------------------
    def _train(self) -> tuple[str, dict[str, Any]]:
        cfg, t, device = self.cfg, self.cfg.train, self.device
        steps_per_epoch = len(self.train_loader)
        total_steps = steps_per_epoch * t.epochs
        if t.max_steps is not None:
            total_steps = min(total_steps, t.max_steps)
        start_epoch, step, skip = 0, 0, 0
        # every rank reads the checkpoint rank 0 wrote (the run folder is shared)
        resumed = self._load_checkpoint()
        if resumed is not None:
            start_epoch, step, skip = resumed["epoch"], resumed["step"], resumed["batch_in_epoch"]
        if self.writer is not None:
            attrs = self._run_attributes(steps_per_epoch, total_steps)
            if resumed is not None:
                self.writer.rewind(step, start_epoch)
                attrs["resumed_from_step"] = step
            self.writer.set_attrs(**attrs)
            self.writer.flush(force=True)

        progress = self._progress_bar(total_steps, step)
        self._write_s0 = self.writer.write_seconds if self.writer is not None else 0.0
        timer = StepTimer(device)
        measured: list[float] = []  # step times after warm-up
        my_step_times: list[float] = []
        pending: list[tuple[int, int, float, torch.Tensor, float]] = []
        last_ckpt = time.monotonic()
        info: dict[str, Any] = {}
        self.step_module.train()
        epoch = start_epoch
        try:
            for epoch in range(start_epoch, t.epochs):
                if step >= total_steps:
                    break
                lr = lr_at_epoch(cfg, epoch)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.train_loader.set_epoch(epoch, start=skip)
                self._sync_check(step >= t.warmup_steps)
                epoch_start = time.perf_counter()
                loss_sum = torch.zeros((), device=device)
                correct = torch.zeros((), device=device)
                seen = 0
                timer.mark()
                t_data = time.perf_counter()
                batch_in_epoch = skip - 1
                for batch_in_epoch, (x, y) in enumerate(self.train_loader, start=skip):
                    data_time = time.perf_counter() - t_data
                    if self._oom_at == step + 1:
                        raise_injected_oom(f"step {step + 1}")
                    self._between_steps = False
                    loss, n_correct = self._step(x, y)
                    self._between_steps = True
                    step += 1
                    timer.mark()
                    loss_sum += loss.detach() * y.shape[0]
                    correct += n_correct
                    seen += y.shape[0]
                    pending.append((step, epoch, lr, loss.detach(), data_time))
                    self._state = {"epoch": epoch, "step": step, "batch_in_epoch": batch_in_epoch + 1}
                    window_end = step % t.log_every == 0 or step >= total_steps
                    if step == t.warmup_steps:
                        reset_peaks(device, self.gpu_ids)  # peaks of the measured steps, not the warm-up's
                    if window_end or batch_in_epoch + 1 == steps_per_epoch:
                        self._sync_check(False)
                        times = timer.durations()
                        self._drain(pending, times, measured, my_step_times, progress)
                        pending = []
                        if t.checkpoint_every_s and time.monotonic() - last_ckpt > t.checkpoint_every_s:
                            self._save_checkpoint(**self._state)
                            last_ckpt = time.monotonic()
                        self._sync_check(step >= t.warmup_steps)
                    if step >= total_steps:
                        break
                    t_data = time.perf_counter()
                self._sync_check(False)
                skip = 0
                epoch_complete = batch_in_epoch + 1 == steps_per_epoch
                epoch_time = time.perf_counter() - epoch_start
                if epoch_complete:
                    self._end_epoch(epoch, loss_sum, correct, seen, epoch_time)
                    # a finished epoch resumes at the next one, not at the end of this one
                    self._state = {"epoch": epoch + 1, "step": step, "batch_in_epoch": 0}
                    self._save_checkpoint(**self._state)
                    last_ckpt = time.monotonic()
            if self._state is not None:  # the final state (saved unless the epoch end just did)
                self._save_checkpoint(**self._state)
        except RunStopped as stop:
            return stop.status, stop.info
        finally:
            self._sync_check(False)
            if progress is not None:
                progress.close()
        info.update(self._summarise(measured, my_step_times))
        return "completed", info

    def _sync_check(self, on: bool) -> None:
        """``train.sync_debug``: any host-device sync inside the step loop raises (CUDA only).

        Switched on for the measured steps and off around the loop's own once-per-window drain.
        """
        if self.cfg.train.sync_debug and self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("error" if on else "default")

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.cfg.train
        if self.path.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        k = t.accumulation_steps
        xs, ys = (x.chunk(k), y.chunk(k)) if k > 1 else ((x,), (y,))
        total_loss = torch.zeros((), device=self.device)
        total_correct = torch.zeros((), device=self.device)
        for i, (xi, yi) in enumerate(zip(xs, ys)):
            last = i == len(xs) - 1
            sync = nullcontext() if last or t.mode != "ddp" else self.wrapped.no_sync()
            with sync:
                with self._autocast():
                    if t.mode == "dp_balanced":
                        parts = self.step_module(xi, yi).sum(0)
                        loss = parts[0] / parts[2]
                        n_correct = parts[1]
                    else:
                        logits = self.step_module(xi)
                        loss = self.criterion(logits.float(), yi)
                        n_correct = (logits.argmax(1) == yi).sum()
                self.scaler.scale(loss / len(xs)).backward()
            total_loss += loss.detach() / len(xs)
            total_correct += n_correct.detach()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total_loss, total_correct

    def _drain(self, pending, times, measured, my_step_times, progress) -> None:  # noqa: ANN001
        """Turn the window's device-side losses into rows (one host sync per window)."""
        if not pending:
            return
        t = self.cfg.train
        losses = torch.stack([p[3] for p in pending]).float().cpu().numpy()
        if dist.is_initialized():
            # global loss: mean over ranks (each rank's loss is over its slice)
            lt = torch.from_numpy(losses).to(self.device)
            dist.all_reduce(lt)
            losses = (lt / self.env.world_size).cpu().numpy()
        times = list(times)[-len(pending):]
        if len(times) < len(pending):
            times = [float("nan")] * (len(pending) - len(times)) + times
        for (step, epoch, lr, _loss, data_time), loss, dt in zip(pending, losses, times):
            my_step_times.append(dt)
            if step > t.warmup_steps:
                measured.append(dt)
            ips = t.batch_size / dt if dt and dt > 0 else float("nan")
            if self.writer is not None:
                self.writer.log_step(step=step, epoch=epoch, loss=float(loss), lr=lr,
                                     images_per_s=ips, step_time_s=dt, data_time_s=data_time)
            if not math.isfinite(float(loss)):
                raise RunStopped("nan", nan_step=step)
        if progress is not None:
            last_ips = t.batch_size / times[-1] if times[-1] and times[-1] > 0 else 0.0
            progress.set_postfix(loss=f"{losses[-1]:.3f}", img_s=f"{last_ips:,.0f}", refresh=False)
            progress.update(len(pending))

    def _evaluate(self) -> tuple[float, float]:
        assert self.test_loader is not None
        model = self.model
        model.eval()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.float64)
        count = torch.zeros((), device=self.device, dtype=torch.float64)
        criterion = nn.CrossEntropyLoss(reduction="sum")
        self.test_loader.set_epoch(0)
        with torch.no_grad(), self._autocast():
            for x, y in self.test_loader:
                if self.path.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                logits = model(x).float()
                loss_sum += criterion(logits, y).double()
                correct += (logits.argmax(1) == y).sum().double()
                count += y.shape[0]
        if dist.is_initialized():
            stats = torch.stack([loss_sum, correct, count])
            dist.all_reduce(stats)
            loss_sum, correct, count = stats
        model.train()
        return float(loss_sum / count), float(correct / count)

    def _end_epoch(self, epoch, loss_sum, correct, seen, epoch_time) -> None:  # noqa: ANN001
        seen_t = torch.tensor(float(seen), device=self.device)
        stats = torch.stack([loss_sum.float(), correct.float(), seen_t])
        if dist.is_initialized():
            dist.all_reduce(stats)  # sums over every rank's samples
        train_loss = float(stats[0] / stats[2])
        train_acc = float(stats[1] / stats[2])
        test_loss, test_acc = self._evaluate() if self.test_loader is not None else (float("nan"),) * 2
        if self.writer is not None:
            self.writer.log_epoch(epoch=epoch, train_loss=train_loss, train_acc=train_acc,
                                  test_loss=test_loss, test_acc=test_acc, epoch_time_s=epoch_time)
            if self.test_loader is not None:
                self.writer.set_summary(final_test_acc=test_acc)
        if self.env.is_main and not self._use_bar():
            print(f"epoch {epoch + 1}/{self.cfg.train.epochs}: train_loss {train_loss:.4f} "
                  f"train_acc {train_acc:.4f} test_acc {test_acc:.4f} ({epoch_time:.1f}s)", flush=True)

    def _summarise(self, measured: list[float], my_step_times: list[float]) -> dict[str, Any]:
        t = self.cfg.train
        peaks = peak_memory(self.device, self.gpu_ids)
        summary: dict[str, Any] = {}
        if not measured:  # too few steps for a warm-up: use what there is
            measured = [d for d in my_step_times if math.isfinite(d)]
        if measured:
            arr = np.asarray(measured)
            summary["images_per_s"] = float(np.median(t.batch_size / arr))
            summary["images_per_s_mean"] = float(t.batch_size * len(arr) / arr.sum())
            summary["measured_steps"] = len(arr)
        if dist.is_initialized():
            gathered: list[Any] = [None] * self.env.world_size
            dist.all_gather_object(gathered, (my_step_times, peaks))
        else:
            gathered = [(my_step_times, peaks)]
        if self.writer is not None:
            n = min(len(g[0]) for g in gathered)
            step_times = np.array([g[0][:n] for g in gathered], dtype=np.float64)
            rank_peaks = {key: np.array([p for g in gathered for p in g[1][key]], dtype=np.int64) for key in peaks}
            self.writer.set_ranks(step_time_s=step_times, **rank_peaks)
            for key, values in rank_peaks.items():
                summary[key] = int(values.max())
            if self.path.compile_mode and my_step_times:
                summary["compile_time_s"] = float(my_step_times[0])
            # HDF5 cost: seconds inside the writer during the loop over the loop's step time
            loop_s = float(np.nansum(my_step_times))
            write_s = self.writer.write_seconds - self._write_s0
            summary["metrics_write_s"] = write_s
            if loop_s > 0:
                summary["metrics_overhead"] = write_s / loop_s
            self.writer.set_summary(**summary)
        return {}

    def _identity_attributes(self) -> dict[str, Any]:
        """What the run is, known before setup (a run stopped during setup records these)."""
        cfg, t, env = self.cfg, self.cfg.train, self.env
        attrs = {
            "status": "running",
            "config_yaml": cfg.to_yaml(),
            "experiment": cfg.name,
            "git_commit": git_commit(),
            "versions": versions(),
            "hostname": socket.gethostname(),
            "device_name": device_name(self.device),
            "device_capability": capability(self.device),
            "world_size": env.world_size,
            "mode": t.mode,
            "backend": self.backend or "",
            "batch_size": t.batch_size,
            "local_batch_size": t.batch_size // env.world_size,
            "precision": t.precision,
            "channels_last": t.channels_last,
            "compile": t.compile,
            "loader": cfg.data.loader,
            "accumulation_steps": t.accumulation_steps,
            "activation_checkpointing": t.activation_checkpointing,
            "model": f"PyramidNet-{cfg.model.depth} alpha={cfg.model.alpha:g} {cfg.model.block}",
            "warmup_steps": t.warmup_steps,
            "optimizer_impl": resolve_optimizer_impl(t.optimizer_impl, self.device),
            "memory_limit_gb": cfg.devices.memory_limit_gb if cfg.devices.memory_limit_gb else "",
            "allow_tf32": cfg.devices.allow_tf32 if self.device.type == "cuda" else "",
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv),
        }
        attrs.update(self.extra_attrs)
        return attrs

    def _run_attributes(self, steps_per_epoch: int, total_steps: int) -> dict[str, Any]:
        """What a run records once it is set up (the identity attributes are in the file already)."""
        t, env = self.cfg.train, self.env
        gpus = [torch.cuda.get_device_name(i) for i in self.gpu_ids] if self.gpu_ids else []
        return {
            "devices": gpus or [device_name(self.device)],
            "world_size": env.world_size if t.mode == "ddp" else max(1, len(self.gpu_ids)),
            "data_source": self.data_source,
            "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps,
            "threads_per_process": self.threads or "",
            # what the run trained with (an auto value resolved) and how each auto value was chosen
            "precision": self.path.precision,
            "channels_last": self.path.channels_last,
            "compile": self.path.compile_mode is not None,
            "compile_mode": self.path.compile_mode or "",
            "auto_choices": [{"piece": d.name, "kept": d.kept, "reason": d.reason,
                              "images_per_s_without": d.images_per_s_without, "images_per_s_with": d.images_per_s_with}
                             for d in self.choice.decisions],
            "grad_bytes": grad_bytes_of(self.model),
            "bucket_cap_mb": t.bucket_cap_mb,
            "link_name": self.link.name if self.link else "",
            "link_bandwidth_GBps": self.link.bandwidth_GBps if self.link else "",
            "link_latency_us": self.link.latency_us if self.link else "",
            **(self.memory_cap.attributes() if self.memory_cap else {}),
        }

    def _use_bar(self) -> bool:
        if self.progress is not None:
            return self.progress
        return sys.stderr.isatty()

    def _progress_bar(self, total: int, initial: int):  # noqa: ANN202
        if not self.env.is_main or not self._use_bar():
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit="step", desc=self.cfg.name, dynamic_ncols=True)


def default_run_dir(cfg: ExperimentConfig, out_dir: str | Path) -> Path:
    """``OUT/<experiment>/<time stamp>-<config hash>``."""
    return Path(out_dir) / cfg.name / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.digest()}"


def make_optimizer(model: nn.Module, cfg: ExperimentConfig, device: torch.device) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum; the implementation (foreach/fused/plain) is configurable."""
    t = cfg.train
    kwargs: dict[str, Any] = dict(
        lr=cfg.effective_lr, momentum=t.momentum, nesterov=t.nesterov and t.momentum > 0,
        weight_decay=t.weight_decay,
    )
    impl = resolve_optimizer_impl(t.optimizer_impl, device)
    if impl == "fused":
        kwargs["fused"] = True
    elif impl == "foreach":
        kwargs["foreach"] = True
    elif impl == "plain":
        kwargs["foreach"] = False
    return torch.optim.SGD(model.parameters(), **kwargs)


def resolve_optimizer_impl(requested: str, device: torch.device) -> str:
    """``auto``: fused SGD on GPUs, torch's default on CPU.

    Fused is also what keeps fp16 free of a host sync: ``GradScaler.step`` hands the inf check
    to an optimizer that supports it, and otherwise reads ``found_inf`` on the host every step.
    """
    if requested != "auto":
        return requested
    return "fused" if device.type == "cuda" else "default"


def _free_port() -> int:
    from .parallel import free_port

    return free_port()
