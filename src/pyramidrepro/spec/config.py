"""Experiment configuration: one schema for every experiment YAML.

A config is a tree of dataclasses.  ``load_config`` reads a YAML file with ``yaml.safe_load``,
applies ``--set dotted.key=VALUE`` overrides (VALUE parsed as YAML) and validates every key
against the schema; any problem raises :class:`ConfigError` naming the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    """A configuration problem: file, dotted key and what was expected."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source, self.key, self.message = source, key, message
        where = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(where + message)


#: the job layout a sweep may vary (submit gives each layout its own job array)
SWEEPABLE_CLUSTER_KEYS = ("cluster.nodes", "cluster.tasks_per_node")
#: torch.compile modes (``train.compile_mode``)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CONTAINER_RUNTIMES = ("auto", "apptainer", "bwrap")


@dataclass
class ModelConfig:
    """PyramidNet variant."""

    depth: int = 110
    alpha: float = 48.0
    block: Literal["basic", "bottleneck"] = "basic"
    widening: Literal["additive", "multiplicative"] = "additive"
    num_classes: int = 10


@dataclass
class DataConfig:
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


@dataclass
class TrainConfig:
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
    threads: Optional[int] = None
    dist_timeout_s: float = 120.0
    checkpoint_every_s: Optional[float] = 300.0
    #: CUDA: raise on any host-device sync in the step loop after warm-up (the device check's proof)
    sync_debug: bool = False
    #: after the last step, time the model step, the loader and the all-reduce alone (bounds.py)
    measure_bounds: bool = True


@dataclass
class DevicesConfig:
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


@dataclass
class MetricsConfig:
    """HDF5 metrics writer settings."""

    flush_interval_s: float = 2.0


@dataclass
class ClusterConfig:
    """Where ``pyramidrepro submit`` sends the job."""

    executor: Literal["slurm", "local", "debug"] = "local"
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    time_min: int = 60
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: Optional[int] = None
    cpus_per_task: int = 2
    mem_gb: Optional[float] = None
    array_parallelism: int = 16
    signal_delay_s: int = 120
    max_requeues: int = 3
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)


@dataclass
class ContainerConfig:
    """The image runs execute in (optional): an Apptainer .sif or a root-filesystem folder."""

    image: Optional[str] = None
    #: auto: Apptainer when installed, else bwrap for a folder image (container.py)
    runtime: str = "auto"
    binds: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    apptainer: str = "apptainer"


@dataclass
class ExperimentConfig:
    """A whole experiment: the root of every YAML file."""

    name: str = "experiment"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    container: ContainerConfig = field(default_factory=ContainerConfig)
    #: a mapping of dotted keys to value lists (their cartesian product), or a list of such
    #: mappings (the union of their products, in order)
    sweep: Union[dict[str, list[Any]], list[dict[str, list[Any]]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def digest(self) -> str:
        """Short stable hash of what shapes the result: ``model``, ``data``, ``train``, ``devices``.

        Where a run executes (``cluster``, ``container``), how it logs (``metrics``), its name and
        its sweep are left out: moving a run to another partition or image keeps its run id, so
        it finds its checkpoint and resumes.
        """
        d = {key: getattr(self, key) for key in ("model", "data", "train", "devices")}
        d = json.loads(json.dumps({k: dataclasses.asdict(v) for k, v in d.items()}, default=str))
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:8]

    @property
    def effective_lr(self) -> float:
        """The learning rate: ``train.lr`` or base_lr scaled linearly with the global batch."""
        t = self.train
        if t.lr is not None:
            return t.lr
        return t.base_lr * t.batch_size / t.lr_reference_batch


# ---------------------------------------------------------------------------------------------
# Generic validation from the dataclass type hints
# ---------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any value"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error message never prints an unbounded value."""
    if isinstance(value, (dict, list)) and len(value) > 8:
        return f"a {type(value).__name__} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _coerce(value: Any, tp: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, source, key)
            except ConfigError:
                continue
        raise ConfigError(source, key, f"expected {_type_name(tp)}, got {shown(value)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(source, key, f"expected {_type_name(tp)}, got {shown(value)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(source, key, f"expected {_type_name(tp)}, got {shown(value)}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"expected a mapping, got {shown(value)}")
        ktp, vtp = typing.get_args(tp)
        return {
            _coerce(k, ktp, source, key): _coerce(v, vtp, source, f"{key}.{k}")
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, source, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(source, key, f"expected true/false, got {shown(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(source, key, f"expected an integer, got {shown(value)}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string: accept it
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(source, key, f"expected a number, got {shown(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(source, key, f"expected a string, got {shown(value)}")
        return value
    raise TypeError(f"unsupported schema type {tp!r}")  # pragma: no cover - schema bug


def _build(cls: type, raw: Any, source: str, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, prefix or "<root>", f"expected a mapping, got {shown(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in raw:
        if k not in names:
            dotted = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(
                source, dotted, f"unknown key (allowed here: {', '.join(names)})"
            )
    kwargs = {}
    for k, v in raw.items():
        dotted = f"{prefix}.{k}" if prefix else k
        kwargs[k] = _coerce(v, hints[k], source, dotted)
    return cls(**kwargs)


#: (dotted key, low, high): each number must be finite, above ``low`` (or at least it, for the keys in
#: AT_LEAST) and at most ``high`` (None: unbounded)
RANGES: tuple[tuple[str, float, float | None], ...] = (
    ("model.num_classes", 0, 100_000), ("train.lr", 0, None), ("train.base_lr", 0, None),
    ("train.momentum", 0, 1), ("train.weight_decay", 0, 1), ("train.seed", 0, 2**32 - 1),
    ("train.dist_timeout_s", 0, 7 * 86400), ("train.checkpoint_every_s", 0, None),
    ("train.batch_size", 0, 1_000_000), ("train.epochs", 0, 1_000_000), ("train.max_steps", 0, 10**12),
    ("train.warmup_steps", 0, None), ("train.log_every", 0, None), ("train.accumulation_steps", 0, None),
    ("train.lr_reference_batch", 0, None), ("train.bucket_cap_mb", 0, 1e5), ("train.threads", 0, 4096),
    ("data.num_workers", 0, 1024), ("data.synthetic_train_size", 0, 10_000_000),
    ("data.synthetic_test_size", 0, 10_000_000), ("devices.memory_limit_gb", 0, 1e5),
    ("metrics.flush_interval_s", 0, 86400), ("cluster.nodes", 0, 100_000), ("cluster.cpus_per_task", 0, 100_000),
    ("cluster.time_min", 0, None), ("cluster.array_parallelism", 0, None), ("cluster.gpus_per_node", 0, 1024),
    ("cluster.tasks_per_node", 0, 1024), ("cluster.mem_gb", 0, None), ("cluster.signal_delay_s", 0, None),
    ("cluster.max_requeues", 0, None),
)
AT_LEAST = {"train.lr", "train.base_lr", "train.momentum", "train.weight_decay", "train.seed",
            "train.checkpoint_every_s", "train.warmup_steps", "data.num_workers", "metrics.flush_interval_s",
            "cluster.gpus_per_node", "cluster.signal_delay_s", "cluster.max_requeues"}


def _check_ranges(cfg: ExperimentConfig, source: str) -> None:
    for key, low, high in RANGES:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is None:
            continue
        if not math.isfinite(value):
            raise ConfigError(source, key, f"must be a finite number, got {value}")
        below = value < low if key in AT_LEAST else value <= low
        if below or (high is not None and value > high):
            bounds = (">= " if key in AT_LEAST else "> ") + f"{low:g}"
            bounds += f" and <= {high:g}" if high is not None else ""
            raise ConfigError(source, key, f"must be {bounds}, got {value:g}")


def _check_text(cfg: ExperimentConfig, source: str) -> None:
    """Names are safe path components; no value that reaches a script or command holds a control character."""
    if not SAFE_COMPONENT.match(cfg.name) or cfg.name in (".", ".."):
        raise ConfigError(source, "name", f"{shown(cfg.name)} is not a safe folder name (letters, digits, "
                                          "_ . = + , - ; at most 128; not starting with a dot)")

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(k, key)
                walk(v, f"{key}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")
        elif isinstance(value, str) and any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise ConfigError(source, key, f"{shown(value)} holds a control character (a newline?); "
                                           "values that reach job scripts and command lines must be one line")

    for section in ("cluster", "container"):
        walk(dataclasses.asdict(getattr(cfg, section)), section)


def _check_semantics(cfg: ExperimentConfig, source: str) -> None:
    from .architecture import check_size

    m, t, d = cfg.model, cfg.train, cfg.data
    _check_text(cfg, source)
    _check_ranges(cfg, source)
    try:
        check_size(m.depth, m.alpha, m.block, m.widening)
    except ValueError as exc:
        raise ConfigError(source, "model.alpha" if "alpha" in str(exc).split(" with ")[0] else "model.depth",
                          str(exc)) from None
    if d.source == "synthetic" and d.synthetic_train_size < t.batch_size:
        raise ConfigError(source, "data.synthetic_train_size",
                          f"{d.synthetic_train_size} images are fewer than one global batch of {t.batch_size}")
    if t.batch_size % t.accumulation_steps:
        raise ConfigError(
            source,
            "train.accumulation_steps",
            f"batch_size {t.batch_size} does not divide into {t.accumulation_steps} micro batches",
        )
    if cfg.container.runtime not in CONTAINER_RUNTIMES:
        raise ConfigError(source, "container.runtime",
                          f"one of {', '.join(CONTAINER_RUNTIMES)}, got {cfg.container.runtime!r}")
    for i, b in enumerate(cfg.container.binds):
        if not b or b.count(":") > 2:
            raise ConfigError(source, f"container.binds[{i}]", f"expected SRC[:DEST[:ro]], got {b!r}")
    if t.compile_mode is not None and t.compile_mode not in COMPILE_MODES:
        raise ConfigError(source, "train.compile_mode",
                          f"one of {', '.join(COMPILE_MODES)} or null, got {t.compile_mode!r} "
                          "(`pyramidrepro bench --compile auto` measures which is fastest)")
    if t.compile is True and t.mode in ("dp", "dp_balanced"):
        raise ConfigError(source, "train.compile",
                          f"torch.compile does not support nn.DataParallel (train.mode: {t.mode}); "
                          "use train.mode: ddp or train.compile: false")
    if t.compile and t.mode == "ddp" and t.compile_mode == "reduce-overhead":
        raise ConfigError(source, "train.compile_mode",
                          "reduce-overhead (CUDA graphs) does not capture DDP's all-reduce hooks; "
                          "use default or max-autotune-no-cudagraphs with train.mode: ddp")
    for i, ms in enumerate(t.lr_milestones):
        if not 0 < ms <= 1:
            raise ConfigError(source, f"train.lr_milestones[{i}]", "fractions in (0, 1]")
    if d.checksums:
        for name, md5 in d.checksums.items():
            if len(md5) != 32 or any(c not in "0123456789abcdef" for c in md5.lower()):
                raise ConfigError(source, f"data.checksums.{name}", f"not an MD5 hex digest: {md5!r}")
    for i, block in enumerate(sweep_blocks(cfg)):
        where = f"sweep[{i}]" if isinstance(cfg.sweep, list) else "sweep"
        for key, values in block.items():
            if not values:
                raise ConfigError(source, f"{where}.{key}", "needs a non-empty list of values")
            section = key.split(".")[0]
            if (section not in ("model", "data", "train", "devices", "metrics") or "." not in key) \
                    and key not in SWEEPABLE_CLUSTER_KEYS:
                raise ConfigError(source, f"{where}.{key}",
                                  "sweeps take dotted keys of model, data, train, devices or metrics, or "
                                  + " / ".join(SWEEPABLE_CLUSTER_KEYS))


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``dotted.key=VALUE``; VALUE is parsed as YAML (so lists and mappings work)."""
    if "=" not in text:
        raise ConfigError("--set", text, "expected dotted.key=VALUE")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError("--set", text, "empty key")
    value = parse_yaml_text(raw, f"--set {key}") if raw.strip() else None
    return key, value


def apply_override(raw: dict[str, Any], key: str, value: Any, source: str = "--set") -> None:
    """Set ``raw[a][b][c] = value`` for ``key = "a.b.c"``, creating mappings on the way."""
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(source, ".".join(parts[: i + 1]), "is not a section")
        node = nxt
    node[parts[-1]] = value


def config_from_dict(raw: Any, source: str = "<config>") -> ExperimentConfig:
    """Validate a raw mapping against the schema."""
    cfg = _build(ExperimentConfig, raw, source, "")
    _check_semantics(cfg, source)
    return cfg


#: limits on what an experiment file may expand to (aliases make small files large)
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 64
#: a name or run id is one safe path component: letters, digits and ``_.=+,-``, not starting with a dot
SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=+,-]{0,127}$")


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {shown(key)}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """(values, depth) of a composed document once its aliases are expanded; stops past the limits."""
    sizes: dict[int, tuple[int, int]] = {}

    def walk(node: yaml.Node, level: int) -> tuple[int, int]:
        if level > MAX_YAML_DEPTH:
            return 1, level
        if id(node) in sizes:
            return sizes[id(node)]
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        total, depth = 1, level
        for child in children:
            n, d = walk(child, level + 1)
            total, depth = total + n, max(depth, d)
            if total > MAX_YAML_NODES or depth > MAX_YAML_DEPTH:
                break
        sizes[id(node)] = (total, depth)
        return total, depth

    return walk(root, 0)


def parse_yaml_text(text: str, source: str) -> Any:
    """``yaml.safe_load`` with duplicate keys refused and aliases, size and nesting bounded."""
    loader = None
    try:
        loader = _StrictLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        values, depth = _expanded_size(node)
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(source, "", f"values nested deeper than {MAX_YAML_DEPTH} levels")
        if values > MAX_YAML_NODES:
            raise ConfigError(source, "", f"YAML aliases expand to more than {MAX_YAML_NODES:,} values "
                                          "(an alias bomb?); write the values out")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(source, "", f"malformed YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(source, "", f"values nested deeper than {MAX_YAML_DEPTH} levels") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read one experiment file; errors name the file."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(str(p), "", "not a file but a folder: give an experiment YAML file")
    if not p.is_file():
        raise ConfigError(str(p), "", "no such file")
    blob = p.read_bytes()
    if len(blob) > 1 << 20:
        raise ConfigError(str(p), "", f"{len(blob):,} bytes: an experiment file is at most 1 MiB")
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(p), "", f"not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    raw = parse_yaml_text(text, str(p))
    if raw is None:
        raise ConfigError(str(p), "", "empty experiment file (expected a mapping: name, model, data, train ...)")
    if not isinstance(raw, dict):
        raise ConfigError(str(p), "<root>", "expected a mapping at the top level")
    raw.setdefault("name", p.stem)
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate an experiment YAML."""
    raw = read_yaml(path)
    for text in overrides or []:
        key, value = parse_override(text)
        apply_override(raw, key, value)
    return config_from_dict(raw, str(path))


def sweep_blocks(cfg: ExperimentConfig) -> list[dict[str, list[Any]]]:
    """``sweep`` as a list of mappings, each expanded as a cartesian product."""
    return cfg.sweep if isinstance(cfg.sweep, list) else [cfg.sweep]


def sweep_points(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """Cartesian product of ``sweep`` as a list of {dotted key: value}; [{}] without a sweep."""
    import itertools

    points: list[dict[str, Any]] = []
    for block in sweep_blocks(cfg):
        keys = list(block)
        if not keys:
            continue
        points += [dict(zip(keys, combo)) for combo in itertools.product(*(block[k] for k in keys))]
    return points or [{}]


def expand_sweep(cfg: ExperimentConfig, source: str = "<config>") -> list[tuple[str, ExperimentConfig]]:
    """One (run id, config) per sweep point; each point's config is validated on its own."""
    base = cfg.to_dict()
    base["sweep"] = {}
    out = []
    for i, point in enumerate(sweep_points(cfg)):
        raw = json.loads(json.dumps(base))
        for key, value in point.items():
            apply_override(raw, key, value, source=f"{source}: sweep")
        point_cfg = config_from_dict(raw, f"{source} (sweep point {point})")
        out.append((point_run_id(i, point, point_cfg), point_cfg))
    return out


def point_slug(point: dict[str, Any]) -> str:
    """The swept values of a point, readable and safe in a folder name ("" for no values)."""
    parts = [f"{k.split('.')[-1]}={v}" for k, v in point.items()]
    return re.sub(r"[^A-Za-z0-9_.=+,-]", "_", "-".join(parts).replace(" ", ""))[:96]


def point_run_id(index: int, point: dict[str, Any], cfg: ExperimentConfig) -> str:
    """A stable, readable run id: index, the swept values, and the resolved config's hash."""
    slug = point_slug(point)
    return f"p{index:03d}-{slug}-{cfg.digest()}" if slug else f"run-{cfg.digest()}"
