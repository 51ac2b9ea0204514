"""The root of every experiment file: its sections, its run digest, and the checks across sections."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Union

import yaml

from .coerce import build
from .errors import ConfigError, shown
from .sections import ClusterConfig, ContainerConfig, DataConfig, DevicesConfig, MetricsConfig, ModelConfig, TrainConfig

#: a name or run id is one safe path component: letters, digits and ``_.=+,-``, not starting with a dot
SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=+,-]{0,127}$")
#: the job layout a sweep may vary (submit gives each layout its own job array)
SWEEPABLE_CLUSTER_KEYS = ("cluster.nodes", "cluster.tasks_per_node")
#: the sections a sweep may vary by any dotted key
SWEEPABLE_SECTIONS = ("model", "data", "train", "devices", "metrics")
#: the sections whose values reach job scripts and command lines, so must be one line each
ONE_LINE_SECTIONS = ("cluster", "container")
#: the sections with numbers to bound, in the order their errors are reported
BOUNDED_SECTIONS = ("model", "train", "data", "devices", "metrics", "cluster")


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

    def validate(self, source: str) -> None:
        """Every check beyond types, in a fixed order: the same bad file always reports the same first error."""
        self._check_name(source)
        for key in ONE_LINE_SECTIONS:
            getattr(self, key).check_one_line(source, key)
        for key in BOUNDED_SECTIONS:
            getattr(self, key).check_bounds(source, key)
        self.model.validate(source)
        self._check_batch_fits_data(source)
        self.train.check_micro_batches(source)
        self.container.validate(source)
        self.cluster.validate(source)
        self.train.validate(source)
        self.data.validate(source)
        self._check_sweep(source)

    def _check_name(self, source: str) -> None:
        if not SAFE_COMPONENT.match(self.name) or self.name in (".", ".."):
            raise ConfigError(source, "name", f"{shown(self.name)} is not a safe folder name (letters, digits, "
                                              "_ . = + , - ; at most 128; not starting with a dot)")

    def _check_batch_fits_data(self, source: str) -> None:
        d, t = self.data, self.train
        if d.source == "synthetic" and d.synthetic_train_size < t.batch_size:
            raise ConfigError(source, "data.synthetic_train_size",
                              f"{d.synthetic_train_size} images are fewer than one global batch of {t.batch_size}")

    def _check_sweep(self, source: str) -> None:
        if isinstance(self.sweep, list) and not (self.sweep and all(self.sweep)):
            raise ConfigError(source, "sweep", "a list of sweeps holds one or more mappings of dotted keys to values, "
                                               "none empty (no sweep: leave `sweep` out)")
        for i, block in enumerate(sweep_blocks(self)):
            where = f"sweep[{i}]" if isinstance(self.sweep, list) else "sweep"
            for key, values in block.items():
                _check_sweep_key(f"{where}.{key}", key, values, source)


def _check_sweep_key(where: str, key: str, values: list[Any], source: str) -> None:
    """A swept key has values and names something a sweep may vary."""
    if not values:
        raise ConfigError(source, where, "needs a non-empty list of values")
    if (key.split(".")[0] not in SWEEPABLE_SECTIONS or "." not in key) and key not in SWEEPABLE_CLUSTER_KEYS:
        sections = f"{', '.join(SWEEPABLE_SECTIONS[:-1])} or {SWEEPABLE_SECTIONS[-1]}"
        raise ConfigError(source, where, f"sweeps take dotted keys of {sections}, or "
                                         + " / ".join(SWEEPABLE_CLUSTER_KEYS))


def sweep_blocks(cfg: ExperimentConfig) -> list[dict[str, list[Any]]]:
    """``sweep`` as a list of mappings, each expanded as a cartesian product."""
    return cfg.sweep if isinstance(cfg.sweep, list) else [cfg.sweep]


def config_from_dict(raw: Any, source: str = "<config>") -> ExperimentConfig:
    """Validate a raw mapping against the schema."""
    cfg = build(ExperimentConfig, raw, source, "")
    cfg.validate(source)
    return cfg


def schema_digest() -> str:
    """Every config key with its declared type, hashed (16 hex digits): two packages with the same
    digest read each other's configs.  The login node pickles a point's config and the image's
    package unpickles it, so a key added, removed or retyped on one side fails every job at start."""

    def keys(cls: type, prefix: str) -> list[str]:
        out = []
        for f in dataclasses.fields(cls):
            value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(value):
                out += keys(type(value), f"{prefix}{f.name}.")
            else:
                out.append(f"{prefix}{f.name}: {f.type}")
        return out

    return hashlib.sha256("\n".join(keys(ExperimentConfig, "")).encode()).hexdigest()[:16]
