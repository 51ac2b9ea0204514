"""Run one experiment in this process (one rank of it when launched distributed).

``Trainer(cfg, run_dir).run()`` is the entry point every command ends in: ``run`` calls it in
this process (or in each rank that ``run --nproc`` or torchrun starts), ``submit`` and
``reproduce`` in the job a submitit executor runs (:class:`.dispatch.JobRunner`).  It builds the
run context (rank, device, run folder), then what trains (:func:`build_training`: model, path,
step executor, loaders), hands them to the loop (:mod:`.loop`), and records the outcome once
(:mod:`.recorder`): completed, oom and nan are results; anything else is failed.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..machine.container import container_attributes
from ..machine.devices import (
    MemoryCap,
    allocator_settings,
    cap_gpu_memory,
    cap_process_memory,
    capability,
    device_name,
    is_out_of_memory,
    request_allocator_settings,
    set_tf32,
)
from ..machine.parallel import (
    DistEnv,
    detect_dist_env,
    free_port,
    init_process_group,
    pick_device,
    shutdown_process_group,
)
from ..machine.provenance import git_commit, versions
from ..machine.system import describe_system, slurm_attributes
from ..records.recorder import RunRecorder
from ..records.runs import METRICS_NAME, RunFolderError, RunLock, new_run_id, run_dir_for
from ..spec.config import ConfigError, ExperimentConfig
from ..spec.schema import EXIT_CODES, Attr, Status
from ..stats.scaling import Link, grad_bytes_of, measure_link
from ..step.autotune import Choice, resolve_auto
from ..step.bounds import measure_bounds
from ..step.executor import OptimizerSettings, StepExecutor, StepSettings, make_executor, resolve_optimizer_impl
from ..workload.data import DataError, load_splits, per_rank_batch
from ..workload.loaders import BatchLoader, make_loader
from ..workload.model import PyramidNet
from .checkpoint import Checkpoints, Position
from .faults import (
    StopChannel,
    StopRecord,
    injected_oom_step,
    injected_signal,
    raise_injected_oom,
    send_injected_signal,
)
from .loop import TrainingLoop


@dataclass(frozen=True)
class RunContext:
    """Where this process stands in a run: rank and world, device, run folder, backend, threads."""

    env: DistEnv
    device: torch.device
    run_dir: Path
    backend: str | None = None  # the process group's, for DDP
    threads: int | None = None  # intra-op threads of a CPU run

    @property
    def is_main(self) -> bool:
        return self.env.is_main


def open_context(cfg: ExperimentConfig, run_dir: str | Path | None, out_dir: str | Path) -> RunContext:
    """Join the process group (DDP), pick the device and the threads, name the run folder.

    Without ``run_dir``, rank 0 names a new one under ``out_dir`` and every rank uses it.
    """
    t = cfg.train
    env = detect_dist_env() if t.mode == "ddp" else DistEnv()
    if cfg.devices.device != "cpu" and torch.cuda.is_available():  # before CUDA's first use
        request_allocator_settings(cfg.devices.expandable_segments)
    device = pick_device(cfg.devices.device, env)
    threads = None
    if device.type == "cpu":
        threads = t.threads or max(1, (os.cpu_count() or 1) // max(1, env.local_world_size))
        torch.set_num_threads(threads)
    backend = None
    if t.mode == "ddp":
        if not env.distributed:  # one rank, started without a launcher
            env = DistEnv(launcher="env", master_port=free_port())
        backend = init_process_group(env, t.backend, device, t.dist_timeout_s)
    per_rank_batch(t.batch_size, env.world_size)
    if run_dir is None:
        box = [run_dir_for(out_dir, cfg.name, new_run_id(cfg))]
        if dist.is_initialized():
            dist.broadcast_object_list(box, src=0)
        run_dir = box[0]
    return RunContext(env, device, Path(run_dir), backend, threads)


@dataclass
class Training:
    """What a run trains with, once set up."""

    executor: StepExecutor
    train_loader: BatchLoader
    test_loader: BatchLoader | None
    choice: Choice  # the path trained (precision, memory format, compile) and how auto values were chosen
    data_source: str
    memory_cap: MemoryCap | None = None
    link: Link | None = None  # the all-reduce link a multi-rank DDP run measured
    grad_bytes: int = 0


def build_training(cfg: ExperimentConfig, ctx: RunContext) -> Training:
    """Seeds, device flags, data, model, the path (auto values chosen), the executor and loaders."""
    t, device, env = cfg.train, ctx.device, ctx.env
    random.seed(t.seed)
    np.random.seed(t.seed)
    torch.manual_seed(t.seed)
    memory_cap = None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.devices.cudnn_benchmark
        set_tf32(cfg.devices.allow_tf32)
        if cfg.devices.memory_limit_gb is not None:
            ids = list(range(torch.cuda.device_count())) if t.mode.startswith("dp") else [device.index]
            memory_cap = cap_gpu_memory(cfg.devices.memory_limit_gb, ids)
    elif cfg.devices.memory_limit_gb is not None:
        memory_cap = cap_process_memory(cfg.devices.memory_limit_gb)
    splits = load_splits(cfg.data, cfg.model.num_classes, t.seed)
    m = cfg.model
    model: nn.Module = PyramidNet(m.depth, m.alpha, m.block, m.widening, m.num_classes,
                                  activation_checkpointing=t.activation_checkpointing)
    if t.mode == "ddp" and t.sync_bn:
        if device.type != "cuda":
            raise RuntimeError("train.sync_bn needs GPUs: PyTorch's SyncBatchNorm does not run on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    choice = choose_path(cfg, ctx)
    executor = make_executor(
        t.mode, model, device,
        StepSettings(precision=choice.spec.precision, channels_last=choice.spec.channels_last,
                     compile_mode=choice.spec.compile_mode, accumulation_steps=t.accumulation_steps,
                     allow_cpu_dp=t.allow_cpu_dp, gradient_as_bucket_view=t.gradient_as_bucket_view,
                     static_graph=t.static_graph, bucket_cap_mb=t.bucket_cap_mb),
        OptimizerSettings(lr=cfg.effective_lr, momentum=t.momentum, nesterov=t.nesterov,
                          weight_decay=t.weight_decay, impl=t.optimizer_impl),
    )
    shard = dict(rank=env.rank, world_size=env.world_size, seed=t.seed, num_workers=cfg.data.num_workers)
    train_loader = make_loader(cfg.data.loader, splits.train, t.batch_size, device, augment=cfg.data.augment, **shard)
    test_loader = None
    if t.evaluate:  # DALI's CPU mode evaluates through the tensor loader (the same images, unaugmented)
        kind = "torch" if cfg.data.loader == "dali" and device.type == "cpu" else cfg.data.loader
        eval_batch = env.world_size * max(256, per_rank_batch(t.batch_size, env.world_size))
        test_loader = make_loader(kind, splits.test, eval_batch, device, train=False, augment=False, **shard)
    link = None
    if ctx.backend is not None and env.world_size > 1 and t.measure_link:
        link = measure_link(device)
    return Training(executor, train_loader, test_loader, choice, splits.source, memory_cap, link, grad_bytes_of(model))


def choose_path(cfg: ExperimentConfig, ctx: RunContext) -> Choice:
    """Precision, memory format and compile as the config says; ``auto`` ones chosen here.

    Every rank takes rank 0's choice, so a DDP job trains one way.
    """
    t, m, device = cfg.train, cfg.model, ctx.device
    requested = {"precision": t.precision, "channels_last": t.channels_last, "compile": t.compile}
    micro_batch = per_rank_batch(t.batch_size, ctx.env.world_size) // t.accumulation_steps
    choice = resolve_auto(requested, (m.depth, m.alpha, m.block), micro_batch, device,
                          resolve_optimizer_impl(t.optimizer_impl, device), t.compile_mode, t.mode,
                          say=print if ctx.is_main else (lambda msg: None))
    if dist.is_initialized():
        box = [choice]
        dist.broadcast_object_list(box, src=0)
        choice = box[0]
    return choice


def identity_attributes(cfg: ExperimentConfig, ctx: RunContext, extra: dict[str, Any]) -> dict[str, Any]:
    """What the run is, known before setup (a run stopped during setup records these)."""
    t = cfg.train
    return {
        Attr.CONFIG_YAML: cfg.to_yaml(), Attr.EXPERIMENT: cfg.name, Attr.GIT_COMMIT: git_commit(),
        Attr.VERSIONS: versions(), Attr.HOSTNAME: socket.gethostname(),
        Attr.DEVICE_NAME: device_name(ctx.device), Attr.DEVICE_CAPABILITY: capability(ctx.device),
        Attr.WORLD_SIZE: ctx.env.world_size, Attr.MODE: t.mode, Attr.BACKEND: ctx.backend or "",
        Attr.BATCH_SIZE: t.batch_size, Attr.LOCAL_BATCH_SIZE: per_rank_batch(t.batch_size, ctx.env.world_size),
        Attr.PRECISION: t.precision, Attr.CHANNELS_LAST: t.channels_last, Attr.COMPILE: t.compile,
        Attr.LOADER: cfg.data.loader, Attr.ACCUMULATION_STEPS: t.accumulation_steps,
        Attr.ACTIVATION_CHECKPOINTING: t.activation_checkpointing,
        Attr.MODEL: f"PyramidNet-{cfg.model.depth} alpha={cfg.model.alpha:g} {cfg.model.block}",
        Attr.WARMUP_STEPS: t.warmup_steps, Attr.OPTIMIZER_IMPL: resolve_optimizer_impl(t.optimizer_impl, ctx.device),
        Attr.MEMORY_LIMIT_GB: cfg.devices.memory_limit_gb or "",
        Attr.ALLOW_TF32: cfg.devices.allow_tf32 if ctx.device.type == "cuda" else "",
        Attr.ALLOCATOR_SETTINGS: allocator_settings() if ctx.device.type == "cuda" else "",
        Attr.STARTED_AT: time.strftime("%Y-%m-%dT%H:%M:%S%z"), Attr.COMMAND: " ".join(sys.argv),
        Attr.SYSTEM: describe_system(ctx.device, ctx.env.local_world_size),
        **slurm_attributes(), **container_attributes(), **extra,
    }


def setup_attributes(cfg: ExperimentConfig, ctx: RunContext, training: Training, loop: TrainingLoop) -> dict[str, Any]:
    """What a run records once it is set up: the devices that share a step, the path trained ..."""
    t, ex = cfg.train, training.executor
    gpus = [torch.cuda.get_device_name(i) for i in ex.gpu_ids]
    devices = ctx.env.world_size if t.mode == "ddp" else max(1, len(ex.gpu_ids))
    spec, link = training.choice.spec, training.link
    return {
        Attr.DEVICES: gpus or [device_name(ctx.device)],
        Attr.WORLD_SIZE: devices, Attr.LOCAL_BATCH_SIZE: per_rank_batch(t.batch_size, devices),
        Attr.DATA_SOURCE: training.data_source,
        Attr.STEPS_PER_EPOCH: loop.steps_per_epoch, Attr.TOTAL_STEPS: loop.total_steps,
        Attr.THREADS_PER_PROCESS: ctx.threads or "",
        # what the run trained with (an auto value resolved) and how each auto value was chosen
        Attr.PRECISION: spec.precision, Attr.CHANNELS_LAST: spec.channels_last,
        Attr.COMPILE: spec.compile_mode is not None, Attr.COMPILE_MODE: spec.compile_mode or "",
        Attr.AUTO_CHOICES: [{"piece": d.name, "kept": d.kept, "reason": d.reason,
                             "images_per_s_without": d.images_per_s_without,
                             "images_per_s_with": d.images_per_s_with} for d in training.choice.decisions],
        Attr.GRAD_BYTES: training.grad_bytes, Attr.BUCKET_CAP_MB: t.bucket_cap_mb,
        Attr.LINK_NAME: link.name if link else "", Attr.LINK_BANDWIDTH_GBPS: link.bandwidth_GBps if link else "",
        Attr.LINK_LATENCY_US: link.latency_us if link else "",
        **(training.memory_cap.attributes() if training.memory_cap else {}),
    }


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM (what schedulers send) turned into an exception, handled like Ctrl-C."""


def _raise_interrupted(signum: int, frame: Any) -> None:  # noqa: ARG001
    raise RunInterrupted(signal.Signals(signum).name)


class Trainer:
    """Train one experiment in this process (or this rank) and record it in its run folder.

    ``handle_signals``: SIGTERM ends the run like Ctrl-C (status interrupted, a checkpoint if the
    run keeps them).  Off under submitit, which handles the scheduler's signals itself.
    """

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path | None = None,
                 extra_attrs: dict[str, Any] | None = None, progress: bool | None = None,
                 out_dir: str | Path = "results/runs", handle_signals: bool = False) -> None:
        self.cfg = cfg
        self.requested_run_dir = Path(run_dir) if run_dir is not None else None
        self.out_dir = Path(out_dir)
        self.extra_attrs = dict(extra_attrs or {})
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.context: RunContext | None = None
        self.recorder: RunRecorder | None = None
        self.loop: TrainingLoop | None = None
        self.stop_channel: StopChannel | None = None
        self.identity: dict[str, Any] = {}
        self.handle_signals = handle_signals
        self.lock: RunLock | None = None
        self.requeued = False  # set by prepare_requeue

    @property
    def distributed(self) -> bool:
        """Whether this process is a rank of a process group (it then leaves through ``exit_rank``)."""
        return self.context is not None and self.context.backend is not None

    def prepare_requeue(self) -> None:
        """submitit's preemption/timeout hook (rank 0, in a signal handler): checkpoint if the loop's
        state is consistent and recorded; the exit submitit makes next records ``interrupted``, not
        ``failed``, since the requeued job resumes the run."""
        self.requeued = True
        if self.loop is not None:
            self.loop.save_if_checkpointable()

    def run(self) -> str:
        """Run to the end; returns the status (``schema.Status``)."""
        previous = None
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _raise_interrupted)
        try:
            return self._run()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if self.lock is not None:
                self.lock.release()

    def _run(self) -> str:
        ctx = self.context = open_context(self.cfg, self.requested_run_dir, self.out_dir)
        self.recorder = RunRecorder(self.cfg, ctx.run_dir, ctx.is_main)
        self.identity = identity_attributes(self.cfg, ctx, self.extra_attrs)
        if dist.is_initialized() and ctx.env.world_size > 1:
            self.stop_channel = StopChannel(ctx.env.rank, ctx.env.world_size, self._on_peer_stop)
        try:
            status, info = self._train(ctx)
        except (RunFolderError, DataError, ConfigError):  # not its folder, no data, bad input: nothing written
            self._leave()
            raise
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: keep what is consistent, say interrupted
            if self.loop is not None and self.cfg.train.checkpoint_every_s is not None:
                self.loop.save_if_checkpointable()
            self._finish(*self._stop(Status.INTERRUPTED, {Attr.ERROR: f"{type(exc).__name__} {exc}".strip()}))
            raise
        except BaseException as exc:
            if self.requeued and isinstance(exc, SystemExit):  # submitit ends this attempt; the job goes on
                saved = self.loop.checkpoints.saved if self.loop is not None else None
                why = "preempted or timed out: requeued, " + (f"resumes from step {saved.step}" if saved is not None
                                                               else "starts afresh")
                self._finish(*self._stop(Status.INTERRUPTED, {Attr.ERROR: why}))
                print(f"pyramidrepro: {why}", file=sys.stderr, flush=True)
                raise
            if is_out_of_memory(exc):  # CUDA's, or the CPU allocator's under an emulated cap
                status, info = self._stop(Status.OOM, {Attr.OOM_BATCH_SIZE: self.cfg.train.batch_size,
                                                       Attr.ERROR: (str(exc).splitlines() or [repr(exc)])[0]})
            else:
                peer = self.stop_channel.peer_record() if self.stop_channel is not None else None
                if peer is None or isinstance(exc, (SystemExit, KeyboardInterrupt)):
                    # this rank failed: say so to the peers and in metrics.h5, then let the error out
                    self._finish(*self._stop(Status.FAILED, {Attr.ERROR: f"{type(exc).__name__}: {exc}"}))
                    if not isinstance(exc, SystemExit):
                        self._leave()
                    raise
                status, info = peer.outcome()  # a peer stopped the run (its leaving broke this rank's collective)
        self._finish(status, info)
        if status == Status.COMPLETED:
            if self.stop_channel is not None:
                self.stop_channel.close()
            shutdown_process_group()
        else:
            self._leave()
        if ctx.is_main:
            print(f"{status}: {ctx.run_dir / METRICS_NAME}", flush=True)
        return Status(status).value  # plain text: it travels in submitit's pickled results

    @staticmethod
    def _leave() -> None:
        """Leave the process group without a barrier (peers may be mid-collective)."""
        if dist.is_initialized():
            dist.destroy_process_group()

    def _train(self, ctx: RunContext) -> tuple[str, dict[str, Any]]:
        assert self.recorder is not None
        oom_at, signal_at = injected_oom_step(ctx.env.rank), injected_signal(ctx.env.rank)
        if oom_at == "setup":
            raise_injected_oom("setup")
        training = build_training(self.cfg, ctx)  # writes nothing in the run folder
        if ctx.is_main:  # from here the run folder is this run's alone until it ends
            self.lock = RunLock(ctx.run_dir).acquire()
        checkpoints = Checkpoints(ctx.run_dir, self.cfg.digest(), training.executor, writes=ctx.is_main)
        resumed = checkpoints.load()  # every rank reads the checkpoint rank 0 wrote; refused before any write
        self.recorder.open(self.identity, resuming=resumed is not None)

        def before_step(step: int) -> None:
            if oom_at == step:
                raise_injected_oom(f"step {step}")
            if signal_at is not None and signal_at[0] == step:
                send_injected_signal(signal_at[1])

        self.loop = TrainingLoop(self.cfg, training.executor, training.train_loader, training.test_loader,
                                 self.recorder, checkpoints, world_size=ctx.env.world_size,
                                 progress=self.progress, before_step=before_step)
        start = resumed or Position()
        attrs = setup_attributes(self.cfg, ctx, training, self.loop)
        if resumed is not None:
            self.recorder.rewind(start.step, start.epoch)
            attrs[Attr.RESUMED_FROM_STEP] = start.step
        self.recorder.set_attrs(flush=True, **attrs)
        status, info = self.loop.run(start)
        if status == Status.COMPLETED and self.cfg.train.measure_bounds:
            self.loop.checkpointable = False  # the timed steps move the weights: no checkpoint from here
            t = self.cfg.train
            bounds = measure_bounds(training.executor, training.train_loader, t.batch_size, training.grad_bytes,
                                    t.bucket_cap_mb, ctx.env.world_size if t.mode == "ddp" else 1)
            self.recorder.set_summary(**bounds.summary())
        return status, info

    def _stop(self, status: str, info: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """This rank ends the run with ``status``: tell every peer (multi-rank); the outcome in force."""
        if self.stop_channel is None:
            return status, info
        return self.stop_channel.post(status, info).outcome()

    def _finish(self, status: str, info: dict[str, Any]) -> None:
        """Record the outcome (rank 0, holding the folder's lock; a folder another run holds is left alone)."""
        if self.recorder is None or self.context is None:
            return
        if self.context.is_main and self.lock is None:
            try:
                self.lock = RunLock(self.context.run_dir).acquire()
            except RunFolderError:
                return
        self.recorder.finish(status, info, self.identity)

    def _on_peer_stop(self, record: StopRecord) -> int:
        """Called from the stop watcher when another rank stopped the run; returns this rank's exit code."""
        self._finish(*record.outcome())
        if self.context is not None and self.context.is_main:
            print(f"{record.status} (rank {record.rank}): {self.context.run_dir / METRICS_NAME}", flush=True)
        return EXIT_CODES.get(record.status, 1)
