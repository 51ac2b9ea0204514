"""Sweeps: the points of an experiment's ``sweep``, one validated config and one run id per point."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from .experiment import ExperimentConfig, config_from_dict, sweep_blocks
from .reading import apply_override


def sweep_points(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """Cartesian product of ``sweep`` as a list of {dotted key: value}; [{}] without a sweep."""
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
