"""The system a run ran on, described from inside the job (and the container), for provenance.

Recorded once per run (``metrics.h5`` attribute ``system``, JSON) and read by the report, which
shows it and flags the known confounders (:mod:`..study.confounders`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import torch

from ..config.schema import Attr
from .devices import cpu_model

ENV_PREFIXES = ("NCCL_", "CUDA_", "SLURM_JOB_", "OMP_", "MKL_")


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _ranges(cpus: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    out, start = [], None
    for i, c in enumerate(cpus):
        if start is None:
            start = c
        if i + 1 == len(cpus) or cpus[i + 1] != c + 1:
            out.append(f"{start}-{c}" if c != start else f"{c}")
            start = None
    return ",".join(out)


def cpu_affinity() -> list[int]:
    """The CPUs this process may run on: its affinity mask, which a Slurm allocation, a cgroup cpuset or
    taskset narrows, unlike ``os.cpu_count()`` (the whole node's); empty where the OS cannot tell."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def default_threads(local_ranks: int, environ: dict[str, str] | None = None) -> int:
    """Intra-op threads of one rank on a CPU when ``train.threads`` is unset: ``OMP_NUM_THREADS`` where
    it is set to a count (how job scripts and sites say it, and what torch itself starts with), else the
    CPUs given to this process shared among the ranks on the node."""
    env = os.environ if environ is None else environ
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    return max(1, (len(cpu_affinity()) or os.cpu_count() or 1) // max(1, local_ranks))


def slurm_attributes(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The Slurm job a process runs in (empty outside Slurm): job id (an array's parent id), array
    task, node list and partition, as every run records them however it was launched (submitit or sbatch)."""
    env = os.environ if environ is None else environ
    if "SLURM_JOB_ID" not in env:
        return {}
    return {Attr.SLURM_JOB_ID: env.get("SLURM_ARRAY_JOB_ID") or env["SLURM_JOB_ID"],
            Attr.SLURM_ARRAY_TASK_ID: env.get("SLURM_ARRAY_TASK_ID", ""),
            Attr.SLURM_NODELIST: env.get("SLURM_JOB_NODELIST", ""),
            Attr.SLURM_PARTITION: env.get("SLURM_JOB_PARTITION", "")}


def describe_system(device: torch.device, local_world_size: int = 1,
                    environ: dict[str, str] | None = None) -> dict[str, Any]:
    """GPUs (model, count, memory, driver, CUDA/cuDNN/NCCL, topology), CPU (model, cores given,
    affinity), /dev/shm, and the NCCL_/CUDA_/OMP_/MKL_ environment of this process."""
    env = os.environ if environ is None else environ
    affinity = cpu_affinity()
    shm = shutil.disk_usage("/dev/shm").total if os.path.isdir("/dev/shm") else None
    info: dict[str, Any] = {
        "cpu_model": cpu_model(), "cpu_cores_machine": os.cpu_count(), "cpus_given": len(affinity) or os.cpu_count(),
        "cpu_affinity": _ranges(affinity), "local_world_size": local_world_size, "dev_shm_bytes": shm,
        "env": {k: v for k, v in sorted(env.items()) if k.startswith(ENV_PREFIXES)},
    }
    if device.type == "cuda":
        n = torch.cuda.device_count()
        props = [torch.cuda.get_device_properties(i) for i in range(n)]
        nccl = torch.cuda.nccl.version() if hasattr(torch.cuda, "nccl") else None
        info.update(
            gpu_models=[p.name for p in props], gpu_count=n, gpu_memory_bytes=[int(p.total_memory) for p in props],
            cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
            nccl=".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl,
            driver=_run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
            topology=_run(["nvidia-smi", "topo", "-m"]),
        )
    return info


def node_sharing(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Slurm's view of this job's node now: what is allocated there and what of it is this job's, so
    ``other_cpus`` / ``other_gpus`` are other jobs' (a throughput measured beside them is distorted).
    {} outside Slurm; ``{"unknown": why}`` when Slurm's client cannot tell (in an image, the relay's
    ``scontrol`` answers it)."""
    env = os.environ if environ is None else environ
    node = env.get("SLURMD_NODENAME")
    if "SLURM_JOB_ID" not in env or not node:
        return {}
    try:
        r = subprocess.run(["scontrol", "-o", "show", "node", node], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"unknown": f"scontrol show node {node}: {exc}"}
    if r.returncode != 0:
        return {"unknown": f"scontrol show node {node}: {(r.stderr.strip().splitlines() or ['failed'])[-1]}"}
    fields = dict(f.split("=", 1) for f in r.stdout.split() if "=" in f)
    tres = dict(t.split("=", 1) for t in fields.get("AllocTRES", "").split(",") if "=" in t)
    own_cpus = _count(env.get("SLURM_CPUS_ON_NODE"))
    own_gpus = _count(env.get("SLURM_GPUS_ON_NODE")) or len([g for g in env.get("SLURM_JOB_GPUS", "").split(",") if g])
    cpus, gpus = _count(fields.get("CPUAlloc")), _count(tres.get("gres/gpu"))
    return {"node": node, "cpus_allocated": cpus, "cpus_own": own_cpus, "other_cpus": max(0, cpus - own_cpus),
            "gpus_allocated": gpus, "gpus_own": own_gpus, "other_gpus": max(0, gpus - own_gpus)}


def _count(text: str | None) -> int:
    """A count Slurm printed ("4", "4(x2)" for per-node repeats), 0 when missing."""
    digits = (text or "").split("(")[0]
    return int(digits) if digits.isdigit() else 0
