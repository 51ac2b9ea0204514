"""The attributes a run records of itself in ``metrics.h5``: what it is (known before setup: where
it runs and logs included) and what it was set up with (the devices that share a step, the path
trained, the link measured)."""

from __future__ import annotations

import socket
import sys
import time
from typing import Any

import torch

from ..config.experiment import ExperimentConfig
from ..config.schema import Attr
from ..machine.container import container_attributes
from ..machine.devices import allocator_settings, capability, device_name
from ..machine.provenance import git_commit, versions
from ..machine.slurm_job import job_log_paths
from ..machine.system import describe_system, node_sharing, slurm_attributes
from ..step.executor import resolve_optimizer_impl
from ..workload.data import per_rank_batch
from .loop import TrainingLoop
from .setup import RunContext, Training


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
        **slurm_attributes(), **job_log_attributes(ctx.is_main), **container_attributes(), **extra,
        **_node_sharing_at_start(ctx.is_main),
    }


def _node_sharing_at_start(is_main: bool) -> dict[str, Any]:
    """Slurm's view of rank 0's node as the run starts (``node_sharing``); {} elsewhere."""
    sharing = node_sharing() if is_main else {}
    return {Attr.NODE_SHARING: {"start": sharing}} if sharing else {}


def job_log_attributes(is_main: bool) -> dict[str, Any]:
    """Where the job's stdout and stderr go (``job_stdout``, ``job_stderr``), asked by rank 0 only;
    {} outside a scheduler's job."""
    out, err = job_log_paths() if is_main else ("", "")
    return {Attr.JOB_STDOUT: out, Attr.JOB_STDERR: err} if out or err else {}


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
        Attr.AUTO_CHOICES: training.choice.records(),
        Attr.GRAD_BYTES: training.grad_bytes, Attr.BUCKET_CAP_MB: t.bucket_cap_mb,
        Attr.LINK_NAME: link.name if link else "", Attr.LINK_BANDWIDTH_GBPS: link.bandwidth_GBps if link else "",
        Attr.LINK_LATENCY_US: link.latency_us if link else "",
        **(training.memory_cap.attributes() if training.memory_cap else {}),
    }
