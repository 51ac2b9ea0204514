"""The sections of an experiment file, one dataclass each, and the rules each checks on itself.

A section is checked in phases (see ``ExperimentConfig.validate`` for their order): values that
reach job scripts are one line (:meth:`Section.check_one_line`), numbers lie in their bounds
(:meth:`Section.check_bounds`, from the section's ``BOUNDS``), then the section's own rules
(:meth:`Section.validate`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple, Optional, Union

from .binds import parse_bind
from .errors import ConfigError, shown
from .model_shape import check_size

#: torch.compile modes (``train.compile_mode``)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CONTAINER_RUNTIMES = ("auto", "apptainer", "bwrap")
#: a Slurm name (a GPU type, a wckey, a reservation): letters, digits and ``_ . + -``
SLURM_NAME = re.compile(r"[A-Za-z0-9_.+-]+")
#: one generic resource as sbatch --gres takes it: NAME[:TYPE][:COUNT]
GRES_ITEM = re.compile(r"(?P<name>[A-Za-z][A-Za-z0-9_.+-]*)(?::(?P<type>[A-Za-z0-9_.+-]*[A-Za-z_.+-][A-Za-z0-9_.+-]*))?"
                       r"(?::(?P<count>[0-9]+))?")
#: the most GPUs one node is asked for, in any form
MAX_GPUS_PER_NODE = 1024


class Bound(NamedTuple):
    """A number's range: finite, above ``low`` (or at least it), at most ``high`` (None: unbounded)."""

    name: str
    low: float
    high: Optional[float] = None
    at_least: bool = False

    def describe(self) -> str:
        text = (">= " if self.at_least else "> ") + f"{self.low:g}"
        return text + (f" and <= {self.high:g}" if self.high is not None else "")

    def check(self, value: Optional[float], source: str, key: str) -> None:
        """Raise ConfigError when ``value`` (None: unset, fine) is not finite or out of range."""
        if value is None:
            return
        if not math.isfinite(value):
            raise ConfigError(source, key, f"must be a finite number, got {value}")
        below = value < self.low if self.at_least else value <= self.low
        if below or (self.high is not None and value > self.high):
            raise ConfigError(source, key, f"must be {self.describe()}, got {value:g}")


def check_one_line(value: Any, key: str, source: str) -> None:
    """No string in ``value`` (nested lists and mappings, keys included) holds a control character."""
    if isinstance(value, dict):
        for k, v in value.items():
            check_one_line(k, key, source)
            check_one_line(v, f"{key}.{k}", source)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_one_line(v, f"{key}[{i}]", source)
    elif isinstance(value, str) and any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ConfigError(source, key, f"{shown(value)} holds a control character (a newline?); "
                                       "values that reach job scripts and command lines must be one line")


class Section:
    """What every section can check on itself; ``prefix`` is the section's key in the experiment file."""

    #: the section's numbers and their ranges, in the order they are checked
    BOUNDS: ClassVar[tuple[Bound, ...]] = ()

    def check_one_line(self, source: str, prefix: str) -> None:
        check_one_line(dataclasses.asdict(self), prefix, source)

    def check_bounds(self, source: str, prefix: str) -> None:
        for bound in self.BOUNDS:
            bound.check(getattr(self, bound.name), source, f"{prefix}.{bound.name}")

    def validate(self, source: str) -> None:
        """The section's own rules beyond types and bounds (none unless a section has some)."""


@dataclass
class ModelConfig(Section):
    """PyramidNet variant."""

    depth: int = 110
    alpha: float = 48.0
    block: Literal["basic", "bottleneck"] = "basic"
    widening: Literal["additive", "multiplicative"] = "additive"
    num_classes: int = 10
    channel_multiple: int = 1  # 8: every layer's channels rounded up for tensor cores, the added ones kept at zero

    CHANNEL_MULTIPLE = Bound("channel_multiple", 1, 64, at_least=True)
    BOUNDS = (Bound("num_classes", 0, 100_000), CHANNEL_MULTIPLE)

    def validate(self, source: str) -> None:
        """The variant exists and is not too large to build (:func:`check_size`)."""
        try:
            check_size(self.depth, self.alpha, self.block, self.widening)
        except ValueError as exc:
            key = "model.alpha" if "alpha" in str(exc).split(" with ")[0] else "model.depth"
            raise ConfigError(source, key, str(exc)) from None


@dataclass
class DataConfig(Section):
    """Where images come from and how they are loaded and augmented."""

    source: Literal["cifar10", "synthetic"] = "cifar10"
    root: str = "data"
    download: bool = False
    checksums: Optional[dict[str, str]] = None
    loader: Literal["torch", "torchvision", "dali"] = "torch"
    augment: bool = True
    num_workers: int = 2
    synthetic_train_size: int = 50000
    synthetic_test_size: int = 10000
    synthetic_learnable: bool = False

    BOUNDS = (Bound("num_workers", 0, 1024, at_least=True), Bound("synthetic_train_size", 0, 10_000_000),
              Bound("synthetic_test_size", 0, 10_000_000))

    def validate(self, source: str) -> None:
        """Every checksum is an MD5 hex digest."""
        for name, md5 in (self.checksums or {}).items():
            if len(md5) != 32 or any(c not in "0123456789abcdef" for c in md5.lower()):
                raise ConfigError(source, f"data.checksums.{name}", f"not an MD5 hex digest: {md5!r}")


@dataclass
class TrainConfig(Section):
    """Optimisation, parallel mode, precision and run length."""

    mode: Literal["single", "dp", "dp_balanced", "ddp"] = "single"
    batch_size: int = 128
    epochs: int = 1
    max_steps: Optional[int] = None
    warmup_steps: int = 5
    lr: Optional[float] = None
    base_lr: float = 0.1
    lr_reference_batch: int = 128
    lr_milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    optimizer_impl: Literal["auto", "foreach", "fused", "plain"] = "auto"
    #: auto: chosen for this device, model and batch by capability and a short trial (autotune)
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    channels_last: Union[bool, Literal["auto"]] = False
    compile: Union[bool, Literal["auto"]] = False
    compile_mode: Optional[str] = None
    seed: int = 0
    log_every: int = 20
    evaluate: bool = True
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    sync_bn: bool = False
    allow_cpu_dp: bool = False
    accumulation_steps: int = 1
    activation_checkpointing: bool = False
    gradient_as_bucket_view: bool = True
    static_graph: bool = False
    bucket_cap_mb: float = 25.0
    measure_link: bool = True
    #: CPU threads per rank; None: OMP_NUM_THREADS where set, else the CPUs given to the process / local ranks
    threads: Optional[int] = None
    dist_timeout_s: float = 120.0
    checkpoint_every_s: Optional[float] = 300.0
    #: CUDA: raise on any host-device sync in the step loop after warm-up (the device check's proof)
    sync_debug: bool = False
    #: after the last step, time the model step, the loader and the all-reduce alone (bounds.py)
    measure_bounds: bool = True

    BOUNDS = (
        Bound("lr", 0, at_least=True), Bound("base_lr", 0, at_least=True), Bound("momentum", 0, 1, at_least=True),
        Bound("weight_decay", 0, 1, at_least=True), Bound("seed", 0, 2**32 - 1, at_least=True),
        Bound("dist_timeout_s", 0, 7 * 86400), Bound("checkpoint_every_s", 0, at_least=True),
        Bound("batch_size", 0, 1_000_000), Bound("epochs", 0, 1_000_000), Bound("max_steps", 0, 10**12),
        Bound("warmup_steps", 0, at_least=True), Bound("log_every", 0), Bound("accumulation_steps", 0),
        Bound("lr_reference_batch", 0), Bound("bucket_cap_mb", 0, 1e5), Bound("threads", 0, 4096),
    )

    def check_micro_batches(self, source: str) -> None:
        """The batch splits evenly into ``accumulation_steps`` micro batches."""
        if self.batch_size % self.accumulation_steps:
            raise ConfigError(source, "train.accumulation_steps",
                              f"batch_size {self.batch_size} does not divide into {self.accumulation_steps} "
                              "micro batches")

    def validate(self, source: str) -> None:
        """torch.compile settings that can work with this mode, and learning-rate milestones as fractions."""
        self._check_compile(source)
        for i, ms in enumerate(self.lr_milestones):
            if not 0 < ms <= 1:
                raise ConfigError(source, f"train.lr_milestones[{i}]", "fractions in (0, 1]")

    def _check_compile(self, source: str) -> None:
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ConfigError(source, "train.compile_mode",
                              f"one of {', '.join(COMPILE_MODES)} or null, got {self.compile_mode!r} "
                              "(`pyramidrepro bench --compile auto` measures which is fastest)")
        if self.compile is True and self.mode in ("dp", "dp_balanced"):
            raise ConfigError(source, "train.compile",
                              f"torch.compile does not support nn.DataParallel (train.mode: {self.mode}); "
                              "use train.mode: ddp or train.compile: false")
        if self.compile and self.mode == "ddp" and self.compile_mode == "reduce-overhead":
            raise ConfigError(source, "train.compile_mode",
                              "reduce-overhead (CUDA graphs) does not capture DDP's all-reduce hooks; "
                              "use default or max-autotune-no-cudagraphs with train.mode: ddp")


@dataclass
class DevicesConfig(Section):
    """Which device to use and how to constrain it."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: emulate a GPU with this much memory in all (GiB): the allocator is capped at this minus what
    #: the CUDA context and NCCL take outside it, as measured in the run (the paper's TITAN Xp: 11.91).
    #: On a CPU: the process's private writable memory, Python and torch included (RLIMIT_DATA)
    memory_limit_gb: Optional[float] = None
    cudnn_benchmark: bool = True
    #: CUDA: PyTorch's allocator grows segments in place (PYTORCH_ALLOC_CONF=expandable_segments:True)
    #: unless the environment already sets its options, so fragmentation does not decide what fits
    expandable_segments: bool = True
    #: TF32 matmuls/convolutions on Ampere and newer; off reproduces a pre-Ampere card's fp32
    allow_tf32: bool = False

    BOUNDS = (Bound("memory_limit_gb", 0, 1e5),)


@dataclass
class MetricsConfig(Section):
    """HDF5 metrics writer settings."""

    flush_interval_s: float = 2.0

    BOUNDS = (Bound("flush_interval_s", 0, 86400, at_least=True),)


@dataclass
class ClusterConfig(Section):
    """Where ``pyramidrepro submit`` sends the job."""

    executor: Literal["slurm", "local", "debug"] = "local"
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    time_min: int = 60
    nodes: int = 1
    #: None: derived from the point (see cluster.requests.gpu_request); 0: no GPUs
    gpus_per_node: Optional[int] = None
    #: --gres=gpu:TYPE:N, N being gpus_per_node or the point's own count
    gpu_type: Optional[str] = None
    #: sent as it is (--gres=gpu:a100:2), instead of gpus_per_node and gpu_type
    gres: Optional[str] = None
    #: --exclusive: no other job on the nodes (clean throughput measurements)
    exclusive: bool = False
    reservation: Optional[str] = None
    #: None: no --wckey line (submitit would send --wckey=submitit)
    wckey: Optional[str] = None
    #: the rendezvous port of DDP ranks (None: derived from the job id, below the ephemeral range)
    master_port: Optional[int] = None
    tasks_per_node: Optional[int] = None
    cpus_per_task: int = 2
    mem_gb: Optional[float] = None
    array_parallelism: int = 16
    signal_delay_s: int = 120
    max_requeues: int = 3
    #: --requeue: Slurm may requeue the job (submitit's requeue at a preemption or the time limit needs it
    #: where the site sets JobRequeue=0); false: --no-requeue.  additional_parameters may say otherwise
    requeue: bool = True
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)

    BOUNDS = (
        Bound("nodes", 0, 100_000), Bound("cpus_per_task", 0, 100_000), Bound("time_min", 0),
        Bound("array_parallelism", 0), Bound("gpus_per_node", 0, MAX_GPUS_PER_NODE, at_least=True),
        Bound("tasks_per_node", 0, 1024), Bound("mem_gb", 0), Bound("signal_delay_s", 0, at_least=True),
        Bound("max_requeues", 0, at_least=True), Bound("master_port", 1024, 65535, at_least=True),
    )

    def validate(self, source: str) -> None:
        """Names Slurm can take, and GPUs asked in one form only: ``gres``, or ``gpu_type`` (with
        ``gpus_per_node`` or the point's count), or ``gpus_per_node``."""
        if self.gres is not None:
            gres_gpus(self.gres, source, "cluster.gres")
        for key in ("gpu_type", "wckey"):
            _check_name(getattr(self, key), source, f"cluster.{key}")
        for name in [] if self.reservation is None else self.reservation.split(","):
            _check_name(name, source, "cluster.reservation")
        self._check_one_gpu_form(source)
        self._check_no_twin_in_additional_parameters(source)

    def _check_one_gpu_form(self, source: str) -> None:
        if self.gres is not None and self.gpu_type is not None:
            raise ConfigError(source, "cluster.gpu_type", f"conflicts with cluster.gres ({self.gres}): {_ONE_FORM}")
        if self.gres is not None and self.gpus_per_node is not None:
            raise ConfigError(source, "cluster.gpus_per_node",
                              f"conflicts with cluster.gres ({self.gres}): {_ONE_FORM}")
        if self.gpu_type is not None and self.gpus_per_node == 0:
            raise ConfigError(source, "cluster.gpus_per_node", f"0 GPUs of type {self.gpu_type}: {_ONE_FORM}")

    def _check_no_twin_in_additional_parameters(self, source: str) -> None:
        """What a key of this section sends is not sent again through ``additional_parameters``."""
        given = {str(k).replace("-", "_"): k for k in self.additional_parameters}
        sent = (("gres", "gres", self.gres), ("gres", "gpu_type", self.gpu_type),
                ("exclusive", "exclusive", self.exclusive), ("reservation", "reservation", self.reservation),
                ("wckey", "wckey", self.wckey))
        for flag, key, value in sent:
            if value and flag in given:
                raise ConfigError(source, f"cluster.additional_parameters.{given[flag]}",
                                  f"conflicts with cluster.{key}: set it in one place")


_ONE_FORM = "give the GPUs in one form: gres, or gpu_type (with gpus_per_node or the count each point needs), " \
            "or gpus_per_node"


def _check_name(value: Optional[str], source: str, key: str) -> None:
    if value is not None and not SLURM_NAME.fullmatch(value):
        raise ConfigError(source, key, f"{shown(value)} is not a Slurm name (letters, digits, _ . + -)")


def gres_gpus(gres: str, source: str = "--gres", key: str = "cluster.gres") -> int:
    """The GPUs per node ``gres`` asks for (``gpu:a100:2`` 2, ``gpu`` 1, ``shard:4`` 0); ConfigError for a
    string that is not comma-separated NAME[:TYPE][:COUNT] items, or a count of 0 or above the bound."""
    total = 0
    for item in gres.split(","):
        m = GRES_ITEM.fullmatch(item)
        if m is None:
            raise ConfigError(source, key, f"{shown(gres)} is not NAME[:TYPE][:COUNT] (e.g. gpu:a100:2), "
                                           "comma-separated for several")
        count = int(m["count"] or 1)
        if not 0 < count <= MAX_GPUS_PER_NODE:
            raise ConfigError(source, key, f"{shown(gres)}: a count is >= 1 and <= {MAX_GPUS_PER_NODE}")
        total += count if m["name"] == "gpu" else 0
    if total > MAX_GPUS_PER_NODE:
        raise ConfigError(source, key, f"{shown(gres)}: more than {MAX_GPUS_PER_NODE} GPUs per node")
    return total


@dataclass
class ContainerConfig(Section):
    """The image runs execute in (optional): an Apptainer .sif or a root-filesystem folder."""

    image: Optional[str] = None
    #: auto: Apptainer when installed, else bwrap for a folder image (container.py)
    runtime: str = "auto"
    binds: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    apptainer: str = "apptainer"

    def validate(self, source: str) -> None:
        """A known runtime, and every bind of the form SRC[:DEST[:ro]], none over the image's own folders."""
        if self.runtime not in CONTAINER_RUNTIMES:
            raise ConfigError(source, "container.runtime",
                              f"one of {', '.join(CONTAINER_RUNTIMES)}, got {self.runtime!r}")
        for i, b in enumerate(self.binds):
            try:
                parse_bind(b)
            except ValueError as exc:
                raise ConfigError(source, f"container.binds[{i}]", str(exc)) from None
