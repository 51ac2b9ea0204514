"""A site's reference figures: a campaign's pooled points, claims and machine as a small YAML file
(``report --write-reference FILE``), read back by ``compare FILE NEW`` in place of the campaign.

The format (version 1)::

    format: pyramidrepro-reference
    version: 1
    written_at: 2026-12-06T09:30:00+00:00
    source: results/runs/fig5          # the campaign folder it was written from
    experiments: [fig5]
    machine: {GPU: ..., CPU: ..., driver: ..., CUDA: ..., torch: ..., commit: ..., ...}
    claims:
      - {key: C1, verdict: PASS, evidence: ...}
    points:
      - {model: ..., line: ddp, batch_size: 256, world_size: 2, status: completed,
         images_per_s: 1234.5, ci: 12.3, runs: 3}

``images_per_s`` is the pooled figure of the point's completed runs (null when none completed) and
``ci`` the half-width of its 95 % interval (0: unknown).  Another ``format`` or ``version`` is refused.
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any

import yaml

from ..config.errors import ConfigError
from ..records.storage import write_atomically
from .compare import MACHINE_FIELDS, PointKey, Side, SidePoint, campaign_side

FORMAT = "pyramidrepro-reference"
VERSION = 1
#: a reference holds a campaign's points: a file larger than this is not one
MAX_BYTES = 4 << 20


def reference_text(side: Side) -> str:
    """The reference file of ``side`` (see the module's docstring)."""
    doc = {
        "format": FORMAT, "version": VERSION,
        "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": side.source, "experiments": list(side.experiments), "machine": dict(side.machine),
        "claims": side.claims,
        "points": [{**{"model": k.model, "line": k.line, "batch_size": k.batch_size, "world_size": k.world_size},
                    "status": p.status, "images_per_s": p.images_per_s, "ci": p.ci, "runs": p.runs}
                   for k, p in sorted(side.points.items())],
    }
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120)


def write_reference(side: Side, path: str | Path) -> Path:
    """Write ``side`` as a reference file, whole or not at all."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError("report", "--write-reference", f"{path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise ConfigError("report", "--write-reference", f"{path.parent} is not a folder")
    write_atomically(path, reference_text(side).encode())
    return path


def _refuse(path: Path, key: str, what: str) -> ConfigError:
    return ConfigError(str(path), key, what)


def _point(path: Path, i: int, d: Any) -> tuple[PointKey, SidePoint]:
    """One point of the file, checked field by field."""
    where = f"points[{i}]"
    if not isinstance(d, dict):
        raise _refuse(path, where, "expected a mapping")
    types = {"model": str, "line": str, "batch_size": int, "world_size": int, "status": str, "runs": int}
    for name, kind in types.items():
        if not isinstance(d.get(name), kind) or isinstance(d.get(name), bool):
            raise _refuse(path, f"{where}.{name}", f"expected {kind.__name__}, got {d.get(name)!r}")
    if "images_per_s" not in d or "ci" not in d:
        raise _refuse(path, where, "expected images_per_s and ci (0: no interval)")
    ips, ci = d["images_per_s"], d["ci"]
    for name, value, nullable in (("images_per_s", ips, True), ("ci", ci, False)):
        ok = (value is None and nullable) or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                              and math.isfinite(value) and value >= 0)
        if not ok:
            raise _refuse(path, f"{where}.{name}", f"expected a finite number >= 0, got {value!r}")
    key = PointKey(d["model"], d["line"], d["batch_size"], d["world_size"])
    return key, SidePoint(d["status"], None if ips is None else float(ips), float(ci), d["runs"])


def _load(path: Path) -> dict[str, Any]:
    """The file's mapping, refused (one ConfigError) unless it is a reference of this format and version."""
    if path.stat().st_size > MAX_BYTES:
        raise _refuse(path, "format", f"over {MAX_BYTES >> 20} MiB: not a {FORMAT} file")
    try:
        doc = yaml.safe_load(path.read_bytes())
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise _refuse(path, "format", f"not YAML ({type(exc).__name__}): not a {FORMAT} file") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _refuse(path, "format", f"expected '{FORMAT}': not a reference file that report --write-reference "
                                      "writes")
    if doc.get("version") != VERSION:
        raise _refuse(path, "version", f"{doc.get('version')!r}: this package reads version {VERSION}")
    return doc


def read_reference(path: str | Path) -> Side:
    """A reference file as a side of a comparison; ConfigError naming the file and key when it is not one."""
    path = Path(path)
    doc = _load(path)
    points = doc.get("points")
    if not isinstance(points, list) or not points:
        raise _refuse(path, "points", "expected a non-empty list")
    experiments = doc.get("experiments")
    if not isinstance(experiments, list) or not all(isinstance(e, str) for e in experiments):
        raise _refuse(path, "experiments", "expected a list of names")
    machine = doc.get("machine") or {}
    claims = doc.get("claims") or []
    if not isinstance(machine, dict) or not isinstance(claims, list) or \
            not all(isinstance(c, dict) and {"key", "verdict"} <= set(c) for c in claims):
        raise _refuse(path, "machine/claims", "expected a mapping and a list of {key, verdict, evidence}")
    parsed = dict(_point(path, i, d) for i, d in enumerate(points))
    return Side(str(path), tuple(experiments), parsed,
                [{k: str(c.get(k, "")) for k in ("key", "verdict", "evidence")} for c in claims],
                {f: str(machine.get(f, "-")) for f in MACHINE_FIELDS})


def side_of(path: str | Path) -> Side:
    """A campaign folder or a reference file as a side of a comparison."""
    path = Path(path)
    if path.is_dir():
        return campaign_side(path)
    if path.is_file():
        return read_reference(path)
    raise FileNotFoundError(f"{path}: no such campaign folder or reference file")
