"""What one point asks of each node: its tasks, and its GPUs in whichever form the site accepts.

A site may take ``--gpus-per-node=N``, or only ``--gres=gpu:TYPE:N``; the experiment says which with
``cluster.gres`` (sent as it is), ``cluster.gpu_type`` (``--gres=gpu:TYPE:N``) or
``cluster.gpus_per_node``.  Where no count is given, the point's own is used: one GPU for
``train.mode: single``, one per rank for DDP (``cluster.tasks_per_node``, else 2) and 2 for
DataParallel; that is for ``devices.device: cuda`` or a ``gpu_type``; other points ask for none.
Every check (DP needs its GPUs, the pre-flight against the nodes) reads :func:`gpu_request`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..config.errors import ConfigError
from ..config.experiment import ExperimentConfig
from ..config.sections import gres_gpus

#: the GPUs of a DataParallel point, and of a DDP point without tasks_per_node (fig5's two TITAN Xp)
PARALLEL_GPUS = 2


@dataclass(frozen=True)
class GpuRequest:
    """The GPUs one point asks of each node, and the config key that says so (named in errors)."""

    count: int
    key: str
    #: sent as ``--gres``; None: ``--gpus-per-node=count`` (when ``send_count``)
    gres: Optional[str] = None
    #: False where ``additional_parameters`` already sends the request itself
    send_count: bool = True


def point_gpus(cfg: ExperimentConfig) -> int:
    """The GPUs the point uses: 1 for single, one per DDP rank, :data:`PARALLEL_GPUS` for DataParallel."""
    if cfg.train.mode == "single":
        return 1
    if cfg.train.mode == "ddp" and cfg.cluster.tasks_per_node:
        return cfg.cluster.tasks_per_node
    return PARALLEL_GPUS


def gpu_request(cfg: ExperimentConfig) -> GpuRequest:
    """The point's GPU request, from the one form the experiment uses (checked by ``ClusterConfig.validate``)."""
    c = cfg.cluster
    if c.gres is not None:
        return GpuRequest(gres_gpus(c.gres), "cluster.gres", gres=c.gres)
    if c.gpu_type is not None:
        n = c.gpus_per_node or point_gpus(cfg)
        return GpuRequest(n, "cluster.gpu_type", gres=f"gpu:{c.gpu_type}:{n}")
    legacy = c.additional_parameters.get("gres")
    if isinstance(legacy, str) and not c.gpus_per_node:  # the request written out by hand
        return GpuRequest(_gres_gpus_or_zero(legacy), "cluster.additional_parameters.gres", send_count=False)
    if c.gpus_per_node is not None:
        return GpuRequest(c.gpus_per_node, "cluster.gpus_per_node")
    return GpuRequest(point_gpus(cfg) if cfg.devices.device == "cuda" else 0, "cluster.gpus_per_node")


def _gres_gpus_or_zero(gres: str) -> int:
    """GPUs of a hand-written --gres; 0 for one in a form :func:`gres_gpus` does not read."""
    try:
        return gres_gpus(gres)
    except ConfigError:
        return 0


def tasks_per_node(cfg: ExperimentConfig) -> int:
    """DDP: one task per GPU (or ``cluster.tasks_per_node`` on CPU nodes); DP and single: one."""
    if cfg.train.mode != "ddp":
        return 1
    return cfg.cluster.tasks_per_node or gpu_request(cfg).count or PARALLEL_GPUS


def gpu_parameters(cfg: ExperimentConfig) -> dict[str, Any]:
    """submitit's parameters for the point's GPUs: ``gpus_per_node`` or ``slurm_gres`` (nothing for none)."""
    req = gpu_request(cfg)
    if req.gres is not None:
        return {"slurm_gres": req.gres} if cfg.cluster.executor == "slurm" else {"gpus_per_node": req.count}
    return {"gpus_per_node": req.count} if req.count and req.send_count else {}
