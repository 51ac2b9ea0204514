"""``load_config``: an experiment YAML read, overridden and validated, in one call.

A config is a tree of dataclasses.  :func:`load_config` reads a YAML file with ``yaml.safe_load``
(:mod:`.reading`), applies ``--set dotted.key=VALUE`` overrides (VALUE parsed as YAML) and validates
every key against the schema (:mod:`.experiment`, built from :mod:`.sections` and :mod:`.coerce`);
any problem raises :class:`.errors.ConfigError` naming the file and the dotted key.
"""

from __future__ import annotations

from pathlib import Path

from .experiment import ExperimentConfig, config_from_dict
from .reading import apply_override, parse_override, read_yaml


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate an experiment YAML."""
    raw = read_yaml(path)
    for text in overrides or []:
        key, value = parse_override(text)
        apply_override(raw, key, value)
    return config_from_dict(raw, str(path))
