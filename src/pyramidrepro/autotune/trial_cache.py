"""The cache of ``auto`` trials: one JSON table per user, one entry per key (what a trial's outcome
depends on: device, model, batch, torch ...), so later runs on the same machine skip the trials.

Entries are plain dicts (:meth:`.chooser.Choice.to_dict`, kept by :mod:`.run_values`); this module
knows nothing of what is in them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

RETUNE_ENV = "PYRAMIDREPRO_RETUNE"  # set (not 0): the auto values are measured again, their cached trials replaced


def retune_requested() -> bool:
    """Whether ``$PYRAMIDREPRO_RETUNE`` (``run --retune``) asks for fresh trials instead of cached ones."""
    return os.environ.get(RETUNE_ENV, "") not in ("", "0")


def cache_dir() -> Path:
    """Where trial results are kept: $PYRAMIDREPRO_CACHE_DIR, else $XDG_CACHE_HOME/pyramidrepro."""
    if os.environ.get("PYRAMIDREPRO_CACHE_DIR"):
        return Path(os.environ["PYRAMIDREPRO_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pyramidrepro"


def cache_file() -> Path:
    return cache_dir() / "auto_choices.json"


def _table() -> dict[str, Any]:
    try:
        table = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}  # no cache yet, or an unreadable one: it starts afresh
    return table if isinstance(table, dict) else {}


def read_entry(key: str) -> dict[str, Any] | None:
    """The entry kept under ``key``, or None."""
    entry = _table().get(key)
    return entry if isinstance(entry, dict) else None


def _rewrite(change: Callable[[dict[str, Any]], bool]) -> None:
    """Apply ``change`` to the table and write it back (atomically) when it says it changed something."""
    path = cache_file()
    table = _table()
    if not change(table):
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1))
        tmp.replace(path)
    except OSError as exc:  # a read-only home: the choice still holds for this run
        print(f"pyramidrepro: could not update the cached auto choices in {path}: {exc}", flush=True)


def write_entry(key: str, entry: dict[str, Any]) -> None:
    """Keep ``entry`` under ``key`` (replacing what was there)."""

    def put(table: dict[str, Any]) -> bool:
        table[key] = entry
        return True

    _rewrite(put)


def drop_entry(key: str, entry: dict[str, Any] | None = None) -> bool:
    """Remove ``key``'s entry (only if it is still ``entry``, when given: a newer one stays); whether it did."""
    dropped: list[bool] = []

    def remove(table: dict[str, Any]) -> bool:
        if key in table and (entry is None or table[key] == json.loads(json.dumps(entry))):
            del table[key]
            dropped.append(True)
        return bool(dropped)

    _rewrite(remove)
    return bool(dropped)
