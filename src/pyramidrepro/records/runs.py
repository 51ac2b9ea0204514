"""A run: its folder, its ``config.yaml``, whether it is done, and reading it back.

A run lives in ``OUT/<experiment>/<run id>/`` and holds ``config.yaml`` (what it was asked to do),
``metrics.h5`` (what happened, :mod:`.metrics`) and ``checkpoint.pt`` (where a resume starts); its
writer holds ``.lock`` (:mod:`.lock`).
Every command that names, prepares or asks about a run goes through this module; the names it
reads from ``metrics.h5`` are those of :mod:`..config.schema`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config.errors import ConfigError
from ..config.experiment import SAFE_COMPONENT, ExperimentConfig
from ..config.reading import parse_yaml_text
from ..config.schema import (
    BOUND_FIELDS,
    FINISHED,
    FLAG,
    FLOAT,
    INT,
    JSON_LIST,
    JSON_OBJECT,
    TEXT,
    Attr,
    Documented,
    Status,
    Summary,
)
from ..stats.measure import Estimate, windows_of
from .fields import Fields, is_missing, series
from .metrics import read_metrics
from .storage import write_atomically

CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.h5"
CHECKPOINT_NAME = "checkpoint.pt"
#: every status a run can record (schema.Status): any other makes no sense as a run
STATUSES = tuple(s.value for s in Status)


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
    """What the report needs of one run (:func:`load_run` reads and checks it)."""

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
    loader: str = ""  # data.loader: what fed the step ("" when the run does not say)
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
    hosts: tuple[str, ...] = ()  # the nodes it ran on, sorted (_hosts); empty: none recorded
    node_sharing: dict[str, Any] = field(default_factory=dict)  # Slurm's view of its node at start and end
    container_digest: str = ""  # the image's sha256 (container.image_digest), with container_image
    image_commit: str = ""  # the commit baked into that image
    #: every root and summary attribute the run recorded, each read as its schema kind says
    #: (:func:`recorded_values`): a name added to the schema is here without a change to this reader
    recorded: dict[str, Any] = field(default_factory=dict)

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


def measured_step_std(metrics: dict[str, Any]) -> float | None:
    """Standard deviation of a run's step times after its warm-up steps (None if under 3 steps)."""
    steps = metrics.get("steps", {})
    if "step_time_s" not in steps or "step" not in steps:
        return None
    warmup = Fields(metrics["attrs"], "{} attribute").integer(Attr.WARMUP_STEPS, 0, least=0)
    times, step = series(steps["step_time_s"], "steps/step_time_s"), series(steps["step"], "steps/step")
    n = min(len(times), len(step))
    times = times[:n][step[:n] > warmup]
    times = times[np.isfinite(times)]
    return float(times.std(ddof=1)) if times.size >= 3 else None


def load_run(path: str | Path) -> RunRecord:
    """Read one metrics.h5 into what the report needs: OSError if it cannot be read, ValueError with
    the reason when it makes no sense as a run.

    This is the one check of a run read back (the report, ``scaling --run`` and a campaign's repeats
    read through it): every value used has its type (text, a finite number, a JSON object ...), the
    status is a :class:`..config.schema.Status`, the batch, ranks and micro-batches are at least 1 and every
    figure is in range (images/s above 0, none negative), so what reads the record can use it as is.
    Text is kept as recorded: the report escapes what it shows (``study/markdown.py``).
    """
    m = read_metrics(path)
    a = Fields(m["attrs"], "{} attribute")
    cfg = _config_of(a)
    return RunRecord(path=str(path), **_identity(a, cfg), **_measured(m, a), **_provenance(a), **_layout(m, a),
                     recorded={**recorded_values(a, Attr), **recorded_values(Fields(m.get("summary", {}),
                                                                                   "summary's {}"), Summary)})


def recorded_values(values: Fields, names: type[Documented]) -> dict[str, Any]:
    """Each of ``names`` that ``values`` holds, read as its kind (:data:`..config.schema.KINDS`): text,
    a whole number, a finite number, a flag, a JSON object or list; ValueError naming the first that is not."""
    read: dict[str, Callable[[str], Any]] = {
        TEXT: values.text, INT: lambda k: values.integer(k, None), FLOAT: values.number,
        FLAG: lambda k: values.flag(k, None), JSON_OBJECT: lambda k: values.nested(k, dict),
        JSON_LIST: lambda k: values.nested(k, list)}
    return {name.value: read[name.kind](name) for name in names if values.raw(name) is not None}


def _config_of(a: Fields) -> dict[str, Any]:
    """The run's recorded experiment config, checked to be a mapping with mapping sections."""
    try:
        cfg = parse_yaml_text(a.text(Attr.CONFIG_YAML) or "{}", Attr.CONFIG_YAML.value) or {}
    except ConfigError as exc:
        raise ValueError(f"its config_yaml attribute is not YAML ({exc.message})") from None
    if not isinstance(cfg, dict) or not all(isinstance(cfg.get(k, {}), dict) for k in ("train", "model", "data")):
        raise ValueError("its config_yaml attribute is not an experiment mapping")
    return cfg


def _recorded(a: Fields, train: Fields, read: Callable[..., Any], key: str, default: Any, **limits: Any) -> Any:
    """The attribute ``key`` as ``read`` reads it, else the config's ``train.<key>``, else ``default``."""
    return read(a if a.raw(key) is not None else train, key, default, **limits)


def _identity(a: Fields, cfg: dict[str, Any]) -> dict[str, Any]:
    """What the point is: experiment, mode, line, batch, model, precision and memory remedies (the
    attribute, else the config's value)."""
    train = Fields(cfg.get("train", {}), "config's train.{}", parsed=True)
    model = Fields(cfg.get("model", {}), "config's model.{}", parsed=True)
    data = Fields(cfg.get("data", {}), "config's data.{}", parsed=True)
    mode = _recorded(a, train, Fields.text, Attr.MODE, "?")
    precision = _recorded(a, train, Fields.text, Attr.PRECISION, "fp32")
    accum = _recorded(a, train, Fields.integer, Attr.ACCUMULATION_STEPS, 1, least=1)
    ckpt = _recorded(a, train, Fields.flag, Attr.ACTIVATION_CHECKPOINTING, False)
    batch = _recorded(a, train, Fields.integer, Attr.BATCH_SIZE, None, least=1)
    if batch is None:
        raise ValueError("it records no batch_size (attribute or config)")
    return dict(
        experiment=a.text(Attr.EXPERIMENT) or Fields(cfg, "config's {}", parsed=True).text("name"),
        mode=mode,
        line=line_label(mode, precision, accum, ckpt, train.integer("threads", None, least=0)),
        batch_size=batch,
        precision=precision,
        model=a.text(Attr.MODEL),
        accumulation_steps=accum,
        activation_checkpointing=ckpt,
        loader=a.text(Attr.LOADER) or data.text("loader", ""),
        depth=model.integer("depth", 0, least=0),
        alpha=model.number("alpha", least=0) or 0.0,
        block=model.text("block", "basic"),
        local_batch_size=a.integer(Attr.LOCAL_BATCH_SIZE, 0, least=0),
        boundary_probe=bool(a.text(Attr.BOUNDARY_SEARCH)),
    )


def _status(a: Fields) -> str:
    """The run's status: a :class:`..config.schema.Status` (none recorded: it failed before writing one)."""
    status = a.text(Attr.STATUS, Status.FAILED.value)
    if status not in STATUSES:
        raise a.fail(Attr.STATUS, f"not a run status ({', '.join(STATUSES)})", status)
    return status


def _measured(m: dict[str, Any], a: Fields) -> dict[str, Any]:
    """What the run measured: status, throughput and its interval, memory, epochs, bounds."""
    s = Fields(m.get("summary", {}), "summary's {}")
    return dict(
        status=_status(a),
        images_per_s=s.number(Summary.IMAGES_PER_S, above=0),
        images_per_s_ci=s.number(Summary.IMAGES_PER_S_CI, least=0),
        measured_steps=s.integer(Summary.MEASURED_STEPS, 0, least=0),
        step_time_std_s=measured_step_std(m),
        peak_memory=_peaks(m),
        epochs=_epochs(m),
        metrics_overhead=s.number(Summary.METRICS_OVERHEAD, least=0),
        bounds=_bounds(s),
        finished_at=a.text(Attr.FINISHED_AT),
    )


def _peaks(m: dict[str, Any]) -> list[int]:
    """The peak memory of each rank or GPU, in bytes."""
    peaks = m.get("ranks", {}).get(Summary.PEAK_MEMORY_BYTES)
    if peaks is None:
        return []
    values = series(peaks, "ranks/peak_memory_bytes")
    if not np.all(np.isfinite(values) & (values >= 0)):
        raise ValueError("its ranks/peak_memory_bytes dataset holds a value that is not a count of bytes")
    return [int(p) for p in values]


def _epochs(m: dict[str, Any]) -> dict[str, list[float]]:
    """Per-epoch figures (NaN: not measured that epoch); test accuracy needs its epoch numbers."""
    epochs = {k: series(v, f"epochs/{k}").tolist() for k, v in m.get("epochs", {}).items()}
    if "test_acc" in epochs and len(epochs.get("epoch", [])) != len(epochs["test_acc"]):
        raise ValueError("its epochs/test_acc dataset has no epoch number for each value")
    return epochs


def _bounds(s: Fields) -> dict[str, Any]:
    """What bounds the point: the label (``Summary.BOUND``) first, then each part's images/s alone."""
    label = s.text(Summary.BOUND)
    figures = {k.value: s.number(k, least=0) for k in BOUND_FIELDS[1:] if s.raw(k) is not None}
    return {Summary.BOUND.value: label, **figures} if label else figures


def _provenance(a: Fields) -> dict[str, Any]:
    """Where the result came from: commit, versions, image, system and the automatic choices."""
    return dict(
        git_commit=a.text(Attr.GIT_COMMIT),
        versions=a.nested(Attr.VERSIONS, dict),
        container_image=a.text(Attr.CONTAINER_IMAGE),
        container_digest=a.text(Attr.CONTAINER_DIGEST),
        image_commit=a.text(Attr.IMAGE_COMMIT),
        capability=a.nested(Attr.DEVICE_CAPABILITY, dict),
        auto_choices=a.each(Attr.AUTO_CHOICES, Fields.nested, kind=dict),
        system=_system(a.nested(Attr.SYSTEM, dict)),
    )


def _system(system: dict[str, Any]) -> dict[str, Any]:
    """The system the run describes (``machine.system.describe_system``), checked where the report reads
    it; its missing (null) fields left out."""
    s = Fields(system, "system attribute's {}", parsed=True)
    s.nested("env", dict)
    s.text("topology")
    s.number("dev_shm_bytes", least=0)
    s.integer("cpus_given", None, least=1)
    s.integer("local_world_size", 1, least=1)
    s.integer("gpu_count", 0, least=0)
    s.each("gpu_memory_bytes", Fields.number, least=0)
    s.each("gpu_models", Fields.text)
    return {k: v for k, v in system.items() if not is_missing(v)}


def _layout(m: dict[str, Any], a: Fields) -> dict[str, Any]:
    """The machine the run had: device, ranks, nodes, threads, memory cap, backend and its link
    (a figure of 0 is one not recorded)."""
    device = a.text(Attr.DEVICE_NAME)
    link_bw = a.number(Attr.LINK_BANDWIDTH_GBPS, least=0)
    hosts = m.get("ranks", {}).get("hostname", [])
    return dict(
        device_name=device,
        gpu=not device.startswith("cpu"),
        world_size=a.integer(Attr.WORLD_SIZE, 1, least=1),
        nodes=max(1, len({str(h) for h in np.ravel(hosts)})),
        hosts=_hosts(hosts, a),
        node_sharing=a.nested(Attr.NODE_SHARING, dict),
        data_source=a.text(Attr.DATA_SOURCE),
        memory_limit_gb=a.number(Attr.MEMORY_LIMIT_GB, least=0) or None,
        threads=a.integer(Attr.THREADS_PER_PROCESS, None, least=0) or None,
        grad_bytes=a.integer(Attr.GRAD_BYTES, None, least=0) or None,
        bucket_cap_mb=a.number(Attr.BUCKET_CAP_MB, least=0) or 25.0,
        link=(a.text(Attr.LINK_NAME), link_bw, a.number(Attr.LINK_LATENCY_US, least=0) or 0.0) if link_bw else None,
        backend=a.text(Attr.BACKEND),
        allow_tf32=a.flag(Attr.ALLOW_TF32, None),
        allocator_cap_bytes=a.integer(Attr.ALLOCATOR_CAP_BYTES, None, least=0) or None,
    )


def _hosts(rank_hosts: Any, a: Fields) -> tuple[str, ...]:
    """The nodes a run ran on, sorted: its ranks' host names, else the Slurm node list (as Slurm writes
    it, ``node[1-2]``), else rank 0's hostname; empty when it records none."""
    names = sorted({str(h) for h in np.ravel(rank_hosts)} - {""})
    if names:
        return tuple(names)
    recorded = a.text(Attr.SLURM_NODELIST) or a.text(Attr.HOSTNAME)
    return (recorded,) if recorded else ()


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


