"""Experiment configuration: one schema for every experiment YAML.

A config is a tree of dataclasses.  ``load_config`` reads a YAML file with ``yaml.safe_load``,
applies ``--set dotted.key=VALUE`` overrides (VALUE parsed as YAML) and validates every key
against the schema; any problem raises :class:`ConfigError` naming the file and the dotted key.

The parts live in their own modules, and every name is importable from here:
:mod:`.sections` (the section dataclasses and their checks), :mod:`.coerce` (raw values to typed
ones), :mod:`.experiment` (the root, its digest and the checks across sections), :mod:`.reading`
(YAML files and overrides) and :mod:`.sweep` (sweep points and run ids).
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError, shown
from .experiment import SAFE_COMPONENT, SWEEPABLE_CLUSTER_KEYS, ExperimentConfig, config_from_dict, sweep_blocks
from .reading import MAX_YAML_DEPTH, MAX_YAML_NODES, apply_override, parse_override, parse_yaml_text, read_yaml
from .sections import (
    COMPILE_MODES,
    CONTAINER_RUNTIMES,
    ClusterConfig,
    ContainerConfig,
    DataConfig,
    DevicesConfig,
    MetricsConfig,
    ModelConfig,
    TrainConfig,
)
from .sweep import expand_sweep, point_run_id, point_slug, sweep_points

__all__ = [
    "COMPILE_MODES", "CONTAINER_RUNTIMES", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "SAFE_COMPONENT",
    "SWEEPABLE_CLUSTER_KEYS", "ClusterConfig", "ConfigError", "ContainerConfig", "DataConfig", "DevicesConfig",
    "ExperimentConfig", "MetricsConfig", "ModelConfig", "TrainConfig", "apply_override", "config_from_dict",
    "expand_sweep", "load_config", "parse_override", "parse_yaml_text", "point_run_id", "point_slug",
    "read_yaml", "shown", "sweep_blocks", "sweep_points",
]


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate an experiment YAML."""
    raw = read_yaml(path)
    for text in overrides or []:
        key, value = parse_override(text)
        apply_override(raw, key, value)
    return config_from_dict(raw, str(path))
