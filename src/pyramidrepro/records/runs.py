"""A run: its folder, its ``config.yaml``, whether it is done, and reading it back.

A run lives in ``OUT/<experiment>/<run id>/`` and holds ``config.yaml`` (what it was asked to do),
``metrics.h5`` (what happened, :mod:`.metrics`) and ``checkpoint.pt`` (where a resume starts).
Every command that names, prepares or asks about a run goes through this module; the names it
reads from ``metrics.h5`` are those of :mod:`.schema`.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..spec.config import SAFE_COMPONENT, ExperimentConfig
from ..spec.schema import BOUND_FIELDS, FINISHED, Attr, Status, Summary
from ..stats.measure import Estimate, windows_of
from .metrics import read_metrics
from .storage import write_atomically

CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.h5"
CHECKPOINT_NAME = "checkpoint.pt"
LOCK_NAME = ".lock"


class RunFolderError(RuntimeError):
    """The run folder cannot be used as asked: another process owns it, its checkpoint is for another
    config or unreadable, or the disk is full.  Nothing of the earlier run was changed."""


def check_run_id(run_id: str, flag: str = "--run-id") -> str:
    """A run id is one safe path component (``config.SAFE_COMPONENT``); ValueError otherwise."""
    if not SAFE_COMPONENT.match(run_id) or run_id in (".", ".."):
        raise ValueError(f"{flag}: {run_id[:60]!r} is not a safe folder name "
                         "(letters, digits, _ . = + , - ; at most 128; not starting with a dot)")
    return run_id


def run_dir_for(out: str | Path, experiment: str, run_id: str) -> Path:
    """``OUT/<experiment>/<run id>``: where a run lives."""
    return Path(out) / experiment / check_run_id(run_id, "run id")


def new_run_id(cfg: ExperimentConfig) -> str:
    """A fresh run's id when none is given: time stamp, config digest, and 6 random hex digits
    (two runs started in the same second never share a folder)."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.digest()}-{secrets.token_hex(3)}"


def prepare(folder: str | Path, cfg: ExperimentConfig) -> Path:
    """Create the run folder and write its ``config.yaml`` (atomically); returns the config file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CONFIG_NAME
    write_atomically(path, cfg.to_yaml().encode())
    return path


class RunLock:
    """An exclusive lock on a run folder, held for the run's life by the process that writes it.

    ``flock`` on the folder itself (no lock file is left behind): the OS releases it when the
    process ends, however it ends, so a killed run never leaves a stale lock.  A second writer
    gets :class:`RunFolderError`.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderError(f"{self.folder}: in use by a run that is still going; wait for it to end, "
                                 "or give another --run-id") from None
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None


def status_of(folder: str | Path) -> str | None:
    """The status ``metrics.h5`` records, or None when the run has no readable metrics yet."""
    path = Path(folder) / METRICS_NAME
    if not path.is_file():
        return None
    try:
        return str(read_metrics(path)["attrs"].get(Attr.STATUS, Status.FAILED))
    except OSError:
        return None


def is_done(folder: str | Path) -> bool:
    """A run is done when it has a result (``schema.FINISHED``): rerunning it would not change it."""
    return status_of(folder) in FINISHED


# ---------------------------------------------------------------------------------------------
# Reading runs back
# ---------------------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """What the report needs of one run."""

    path: str
    experiment: str
    mode: str
    line: str
    batch_size: int
    status: str
    images_per_s: float | None
    peak_memory: list[int]
    device_name: str
    world_size: int
    data_source: str
    memory_limit_gb: float | None
    precision: str
    git_commit: str
    versions: dict[str, Any]
    container_image: str
    finished_at: str
    model: str
    accumulation_steps: int = 1
    activation_checkpointing: bool = False
    epochs: dict[str, list[float]] = field(default_factory=dict)
    depth: int = 0
    alpha: float = 0.0
    block: str = "basic"
    gpu: bool = False
    local_batch_size: int = 0
    threads: int | None = None  # per process (CPU runs)
    grad_bytes: int | None = None
    bucket_cap_mb: float = 25.0
    link: tuple[str, float, float] | None = None  # DDP runs: measured (name, GB/s, latency us)
    metrics_overhead: float | None = None
    step_time_std_s: float | None = None  # after warm-up: the jitter the scaling model needs
    allow_tf32: bool | None = None  # GPU runs: TF32 matmuls/convolutions on or off (None: CPU)
    allocator_cap_bytes: int | None = None  # GPU runs under an emulated card: the allocator's cap
    capability: dict[str, Any] = field(default_factory=dict)  # what the device can do fast (devices.capability)
    auto_choices: list[dict[str, Any]] = field(default_factory=list)  # how auto values were chosen (autotune)
    backend: str = ""  # the process group's (DDP)
    images_per_s_ci: float | None = None  # half-width of the run's 95 % interval (measure.throughput)
    system: dict[str, Any] = field(default_factory=dict)  # the system described from inside the job
    measured_steps: int = 0  # steps behind images_per_s (its interval's windows: measure.windows_of)
    bounds: dict[str, Any] = field(default_factory=dict)  # what bounds the point: Summary.BOUND and its figures
    boundary_probe: bool = False  # a `boundary` search's probe: counts for what fits, not for throughput
    nodes: int = 1  # hosts its ranks ran on (the ranks' host names)
    container_digest: str = ""  # the image's sha256 (container.image_digest), with container_image
    image_commit: str = ""  # the commit baked into that image

    def estimate(self) -> Estimate:
        """Its images/s with the interval and the windows behind it (measure.throughput)."""
        return Estimate(self.images_per_s or float("nan"), self.images_per_s_ci or 0.0,
                        windows_of(self.measured_steps))


def line_label(mode: str, precision: str, accumulation: int, checkpointing: bool,
               threads: int | None = None) -> str:
    """Legend entry of a run: the mode, the memory remedies in use, and a thread count set by hand."""
    parts = [mode]
    if threads:
        parts.append(f"{threads}thread")
    if precision != "fp32":
        parts.append(precision)
    if checkpointing:
        parts.append("ckpt")
    if accumulation > 1:
        parts.append(f"accum{accumulation}")
    return "+".join(parts)


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def measured_step_std(metrics: dict[str, Any]) -> float | None:
    """Standard deviation of a run's step times after its warm-up steps (None if under 3 steps)."""
    import numpy as np

    steps = metrics.get("steps", {})
    if "step_time_s" not in steps:
        return None
    warmup = int(_num(metrics["attrs"].get(Attr.WARMUP_STEPS)) or 0)
    times = np.asarray(steps["step_time_s"], dtype=float)[np.asarray(steps["step"]) > warmup]
    times = times[np.isfinite(times)]
    return float(times.std(ddof=1)) if times.size >= 3 else None


def load_run(path: str | Path) -> RunRecord:
    """Read one metrics.h5 into what the report needs (OSError if it cannot be read)."""
    m = read_metrics(path)
    a = m["attrs"]
    cfg = _config_of(a)
    return RunRecord(path=str(path), **_identity(a, cfg), **_measured(m), **_provenance(a), **_layout(m, a))


def _config_of(a: dict[str, Any]) -> dict[str, Any]:
    """The run's recorded experiment config, checked to be a mapping with mapping sections."""
    try:
        cfg = yaml.safe_load(a.get(Attr.CONFIG_YAML, "") or "{}") or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"its config_yaml attribute is not YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(cfg, dict) or not all(isinstance(cfg.get(k, {}), dict) for k in ("train", "model")):
        raise ValueError("its config_yaml attribute is not an experiment mapping")
    return cfg


def _identity(a: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """What the point is: experiment, mode, line, batch, model, precision and memory remedies."""
    train, model = cfg.get("train", {}), cfg.get("model", {})
    mode = str(a.get(Attr.MODE, train.get("mode", "?")))
    precision = str(a.get(Attr.PRECISION, train.get("precision", "fp32")))
    accum = int(a.get(Attr.ACCUMULATION_STEPS, train.get("accumulation_steps", 1)) or 1)
    ckpt = bool(a.get(Attr.ACTIVATION_CHECKPOINTING, train.get("activation_checkpointing", False)))
    return dict(
        experiment=str(a.get(Attr.EXPERIMENT, cfg.get("name", ""))),
        mode=mode,
        line=line_label(mode, precision, accum, ckpt, train.get("threads")),
        batch_size=int(a.get(Attr.BATCH_SIZE, train.get("batch_size", 0))),
        precision=precision,
        model=str(a.get(Attr.MODEL, "")),
        accumulation_steps=accum,
        activation_checkpointing=ckpt,
        depth=int(model.get("depth", 0)),
        alpha=float(model.get("alpha", 0.0)),
        block=str(model.get("block", "basic")),
        local_batch_size=int(a.get(Attr.LOCAL_BATCH_SIZE, 0) or 0),
        boundary_probe=bool(a.get(Attr.BOUNDARY_SEARCH, "")),
    )


def _measured(m: dict[str, Any]) -> dict[str, Any]:
    """What the run measured: status, throughput and its interval, memory, epochs, bounds."""
    a, s = m["attrs"], m.get("summary", {})
    peaks = m.get("ranks", {}).get(Summary.PEAK_MEMORY_BYTES)
    return dict(
        status=str(a.get(Attr.STATUS, Status.FAILED)),
        images_per_s=_num(s.get(Summary.IMAGES_PER_S)),
        images_per_s_ci=_num(s.get(Summary.IMAGES_PER_S_CI)),
        measured_steps=int(_num(s.get(Summary.MEASURED_STEPS)) or 0),
        step_time_std_s=measured_step_std(m),
        peak_memory=[int(p) for p in peaks] if peaks is not None else [],
        epochs={k: [float(x) for x in v] for k, v in m.get("epochs", {}).items()},
        metrics_overhead=_num(s.get(Summary.METRICS_OVERHEAD)),
        bounds={k.value: (str(s[k]) if k == Summary.BOUND else _num(s[k])) for k in BOUND_FIELDS if k in s},
        finished_at=str(a.get(Attr.FINISHED_AT, "")),
    )


def _provenance(a: dict[str, Any]) -> dict[str, Any]:
    """Where the result came from: commit, versions, image, system and the automatic choices."""
    versions = a.get(Attr.VERSIONS, "{}")
    return dict(
        git_commit=str(a.get(Attr.GIT_COMMIT, "")),
        versions=json.loads(versions) if isinstance(versions, str) and versions else {},
        container_image=str(a.get(Attr.CONTAINER_IMAGE, "")),
        container_digest=str(a.get(Attr.CONTAINER_DIGEST, "")),
        image_commit=str(a.get(Attr.IMAGE_COMMIT, "")),
        capability=_json(a.get(Attr.DEVICE_CAPABILITY), {}),
        auto_choices=_json(a.get(Attr.AUTO_CHOICES), []),
        system=_json(a.get(Attr.SYSTEM), {}),
    )


def _layout(m: dict[str, Any], a: dict[str, Any]) -> dict[str, Any]:
    """The machine the run had: device, ranks, nodes, threads, memory cap, backend and its link."""
    device = str(a.get(Attr.DEVICE_NAME, ""))
    link_bw = _num(a.get(Attr.LINK_BANDWIDTH_GBPS))
    grad_bytes = _num(a.get(Attr.GRAD_BYTES))
    return dict(
        device_name=device,
        gpu=not device.startswith("cpu"),
        world_size=int(a.get(Attr.WORLD_SIZE, 1)),
        nodes=max(1, len(set(m.get("ranks", {}).get("hostname", [])))),
        data_source=str(a.get(Attr.DATA_SOURCE, "")),
        memory_limit_gb=_num(a.get(Attr.MEMORY_LIMIT_GB)),
        threads=int(a[Attr.THREADS_PER_PROCESS]) if _num(a.get(Attr.THREADS_PER_PROCESS)) else None,
        grad_bytes=int(grad_bytes) if grad_bytes else None,
        bucket_cap_mb=_num(a.get(Attr.BUCKET_CAP_MB)) or 25.0,
        link=(str(a.get(Attr.LINK_NAME)), link_bw, _num(a.get(Attr.LINK_LATENCY_US)) or 0.0) if link_bw else None,
        backend=str(a.get(Attr.BACKEND, "")),
        allow_tf32=bool(a[Attr.ALLOW_TF32]) if a.get(Attr.ALLOW_TF32, "") in (True, False) else None,
        allocator_cap_bytes=int(a[Attr.ALLOCATOR_CAP_BYTES]) if _num(a.get(Attr.ALLOCATOR_CAP_BYTES)) else None,
    )


def _json(value: Any, empty: Any) -> Any:
    """A JSON attribute as Python, or ``empty`` when it is missing or malformed."""
    try:
        out = json.loads(value) if isinstance(value, str) and value else empty
    except ValueError:
        return empty
    return out if isinstance(out, type(empty)) else empty


def load_runs(results_dir: str | Path, skipped: list[str] | None = None) -> list[RunRecord]:
    """Read every metrics.h5 below ``results_dir`` (runs still going are included, marked).

    A file that cannot be read or makes no sense is skipped with the reason printed (and appended
    to ``skipped``); one bad run never stops the others from being read.
    """
    records = []
    for path in sorted(Path(results_dir).rglob(METRICS_NAME)):
        try:
            records.append(load_run(path))
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            reason = f"{path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            print(f"report: skipping {reason}")
            if skipped is not None:
                skipped.append(reason)
    return records


