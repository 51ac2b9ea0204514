"""Set up one run in this process: where it stands (:func:`open_context`) and what it trains with
(:func:`build_training`: model, path, step executor, loaders).  Nothing here writes in the run folder."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..autotune.chooser import Choice
from ..autotune.run_values import AutoRequest, resolve_auto, review_prediction
from ..autotune.trial_cache import retune_requested
from ..config.experiment import ExperimentConfig
from ..machine.devices import MemoryCap, cap_gpu_memory, cap_process_memory, request_allocator_settings, set_tf32
from ..machine.parallel import DistEnv, detect_dist_env, free_port, init_process_group, pick_device
from ..machine.system import default_threads
from ..records.runs import new_run_id, run_dir_for
from ..stats.scaling import Link, grad_bytes_of, measure_link
from ..step.executor import OptimizerSettings, StepExecutor, StepSettings, make_executor, resolve_optimizer_impl
from ..workload.data import load_splits, per_rank_batch
from ..workload.loaders import make_loader
from ..workload.loaders.base import BatchLoader, Shard
from ..workload.model import PyramidNet


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
        threads = t.threads or default_threads(env.local_world_size)
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
                                  activation_checkpointing=t.activation_checkpointing,
                                  channel_multiple=m.channel_multiple)
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
    shard = Shard(env.rank, env.world_size, t.seed)
    train_loader = make_loader(cfg.data.loader, splits.train, t.batch_size, device, shard=shard,
                               augment=cfg.data.augment, num_workers=cfg.data.num_workers,
                               channels_last=choice.spec.channels_last)
    test_loader = None
    if t.evaluate:
        eval_batch = env.world_size * max(256, per_rank_batch(t.batch_size, env.world_size))
        test_loader = make_loader(cfg.data.loader, splits.test, eval_batch, device, shard=shard, train=False,
                                  augment=False, num_workers=cfg.data.num_workers,
                                  channels_last=choice.spec.channels_last)
    link = None
    if ctx.backend is not None and env.world_size > 1 and t.measure_link:
        link = measure_link(device)
    return Training(executor, train_loader, test_loader, choice, splits.source, memory_cap, link, grad_bytes_of(model))


def choose_path(cfg: ExperimentConfig, ctx: RunContext) -> Choice:
    """Precision, memory format and compile as the config says; ``auto`` ones chosen here.

    Every rank takes rank 0's choice, so a DDP job trains one way.
    """
    t, m, device = cfg.train, cfg.model, ctx.device
    request = AutoRequest(precision=t.precision, channels_last=t.channels_last, compile=t.compile,
                          compile_mode=t.compile_mode, optimizer=resolve_optimizer_impl(t.optimizer_impl, device),
                          mode=t.mode)
    micro_batch = per_rank_batch(t.batch_size, ctx.env.world_size) // t.accumulation_steps
    choice = resolve_auto(request, (m.depth, m.alpha, m.block), micro_batch, device,
                          say=print if ctx.is_main else (lambda msg: None), retune=retune_requested(),
                          writes=ctx.is_main)
    if dist.is_initialized():
        box = [choice]
        dist.broadcast_object_list(box, src=0)
        choice = box[0]
    return choice


def review_choice(cfg: ExperimentConfig, ctx: RunContext, choice: Choice, images_per_s: float | None) -> None:
    """After a completed run: drop its cached auto choice if the run measured far below what the
    trials predicted (:func:`..autotune.run_values.review_prediction`).

    Only where the run's step is the trials' step: one process, one device, device-resident data
    (the ``torch`` loader) and no activation checkpointing; other runs' images/s hold costs (an
    all-reduce, DataParallel, a loader, recomputation) that no trial measured.
    """
    t = cfg.train
    like_the_trials = (t.mode in ("single", "ddp") and ctx.env.world_size == 1 and cfg.data.loader == "torch"
                       and not t.activation_checkpointing)
    if ctx.is_main and like_the_trials:
        review_prediction(choice, images_per_s)
