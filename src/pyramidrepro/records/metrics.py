"""Per-run metrics in one HDF5 file, written as the run goes.

Layout (every name, what it holds and its documented line are declared once in :mod:`..config.schema`,
which renders the table in docs/architecture.md):

* root attributes (``schema.Attr``): ``status`` (``schema.Status``), ``config_yaml``, ``git_commit``,
  ``versions`` (JSON), ``hostname``, ``device_name``, ``world_size``, ``mode`` ...;
* group ``steps``: equal-length 1-D datasets ``schema.STEP_FIELDS``;
* group ``epochs``: ``schema.EPOCH_FIELDS``;
* group ``summary`` (attributes, ``schema.Summary``): ``images_per_s``, ``peak_memory_bytes`` ...;
* group ``ranks``: ``step_time_s`` [rank, step], ``hostname`` [rank], ``peak_memory_bytes`` [rank or GPU].

Rows are buffered in memory and appended every ``flush_interval_s`` seconds by opening the file,
extending the resizable datasets and closing it again.  Between flushes the file on disk is
closed and consistent, so it can be read mid-run and survives ``kill -9`` with every row flushed
so far.  The writer is thread-safe: a run may be closed from its stop watcher (:mod:`..training.stop_channel`).

A full disk stops the appends (nothing half-written: :func:`.storage.ensure_space` comes first), but
the final status still gets written: a writer made with ``reserve_bytes`` holds that much disk in a
file beside ``metrics.h5`` (:class:`SpaceReserve`) and deletes it to make room for the last write.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from enum import Enum
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..config.schema import EPOCH_FIELDS, RANK_FIELDS, STEP_FIELDS, Attr, Status, Summary, check_names
from .storage import SPACE_RESERVE_BYTES, ensure_space

_INT_FIELDS = {"step", "epoch"}
CHUNK = 1024  # rows per HDF5 chunk
CHUNK_BYTES = 8 * CHUNK
#: the disk a run holds for its final write: the margin every write keeps, and as much again for the write
FINAL_WRITE_RESERVE_BYTES = 2 * SPACE_RESERVE_BYTES


def _attr_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, Enum):
        return value.value
    return value


class SpaceReserve:
    """A file that holds room on the disk for one last write; deleting it makes that room."""

    def __init__(self, path: Path, nbytes: int) -> None:
        self.path, self.nbytes = path, nbytes

    def hold(self) -> None:
        """Take the room, with random bytes (a compressing file system cannot shrink them);
        OSError(ENOSPC) naming the file when the disk has not got it."""
        self.release()
        if not self.nbytes:
            return
        ensure_space(self.path.parent, self.nbytes, self.path)
        try:
            with open(self.path, "wb") as fh:
                fh.write(os.urandom(self.nbytes))
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


class MetricsWriter:
    """Appends rows to ``metrics.h5``; only the process that owns the file creates one.

    ``reserve_bytes``: disk held for :meth:`close` (``.metrics.h5.reserve`` beside the file, taken before
    the file is made and given back by :meth:`close`).  ``attrs``: root attributes a new file holds from
    the moment it appears (a reader never finds it without them); an existing one gets them at the
    first flush.
    """

    def __init__(self, path: str | Path, flush_interval_s: float = 2.0, reserve_bytes: int = 0,
                 attrs: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.flush_interval_s = flush_interval_s
        self._steps: dict[str, list] = {k: [] for k in STEP_FIELDS}
        self._epochs: dict[str, list] = {k: [] for k in EPOCH_FIELDS}
        self._attrs: dict[str, Any] = {}
        self._summary: dict[str, Any] = {}
        self._ranks: dict[str, np.ndarray] = {}
        self._last_flush = time.monotonic()
        self._lock = threading.RLock()
        self.set_attrs(**(attrs or {}))
        self.flush_count = 0
        self.write_seconds = 0.0  # inside every call the training loop makes (buffering included)
        self.reserve = SpaceReserve(self.path.with_name(f".{self.path.name}.reserve"), reserve_bytes)
        self.reserve.hold()
        if not self.path.exists():
            tmp = self.path.with_suffix(".h5.tmp")
            try:
                self._create(tmp)
                tmp.replace(self.path)
                self._attrs.clear()  # in the file already
            except BaseException:
                self.reserve.release()
                raise
            finally:
                tmp.unlink(missing_ok=True)

    def _create(self, tmp: Path) -> None:
        ensure_space(tmp.parent, CHUNK_BYTES * (len(STEP_FIELDS) + len(EPOCH_FIELDS)), self.path)
        with h5py.File(tmp, "w", locking=False) as f:
            for group, fields in (("steps", STEP_FIELDS), ("epochs", EPOCH_FIELDS)):
                g = f.create_group(group)
                for name in fields:
                    dtype = np.int64 if name in _INT_FIELDS else np.float64
                    g.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(CHUNK,))
            f.create_group("summary")
            f.attrs[Attr.STATUS] = Status.RUNNING.value
            for k, v in self._attrs.items():
                f.attrs[k] = _attr_value(v)

    # -- buffering ---------------------------------------------------------------------------
    def log_step(self, **row: Any) -> None:
        t0 = time.perf_counter()
        with self._lock:
            for k in STEP_FIELDS:
                self._steps[k].append(row.get(k, np.nan))
            self._flush(force=False)
        self.write_seconds += time.perf_counter() - t0

    def log_epoch(self, **row: Any) -> None:
        t0 = time.perf_counter()
        with self._lock:
            for k in EPOCH_FIELDS:
                self._epochs[k].append(row.get(k, np.nan))
            self._flush(force=True)
        self.write_seconds += time.perf_counter() - t0

    def set_attrs(self, **attrs: Any) -> None:
        """Root attributes, written at the next flush; names from ``schema.Attr`` only."""
        check_names(attrs, Attr, str(self.path))
        with self._lock:
            self._attrs.update(attrs)

    def set_summary(self, **attrs: Any) -> None:
        """The run's figures (``summary`` group); names from ``schema.Summary`` only."""
        check_names(attrs, Summary, str(self.path))
        with self._lock:
            self._summary.update(attrs)

    def set_ranks(self, **arrays: np.ndarray) -> None:
        """Per-rank arrays (``ranks`` group): ``schema.RANK_FIELDS``."""
        unknown = set(arrays) - set(RANK_FIELDS)
        if unknown:
            raise KeyError(f"{self.path}: {sorted(unknown)} are not ranks datasets (schema.RANK_FIELDS)")
        with self._lock:
            self._ranks.update({k: np.asarray(v) for k, v in arrays.items()})

    # -- writing -----------------------------------------------------------------------------
    def flush(self, force: bool = False) -> None:
        """Append buffered rows if ``flush_interval_s`` has passed (or ``force``)."""
        t0 = time.perf_counter()
        self._flush(force)
        self.write_seconds += time.perf_counter() - t0

    def _flush(self, force: bool) -> None:
        with self._lock:
            self._append(force)

    def _bytes_needed(self) -> int:
        """A bound on what the next append adds to the file: the rows, a new chunk per dataset, the attributes."""
        rows = sum(len(v) for v in self._steps.values()) + sum(len(v) for v in self._epochs.values())
        attrs = sum(len(str(v)) for v in (*self._attrs.values(), *self._summary.values()))
        ranks = sum(a.nbytes for a in self._ranks.values())
        chunks = CHUNK_BYTES * (len(STEP_FIELDS) + len(EPOCH_FIELDS)) if rows else 0
        return 8 * rows + chunks + 4 * attrs + 2 * ranks

    def _append(self, force: bool) -> None:
        """Append the buffer; with too little free disk nothing is touched (the rows flushed so far stay
        intact and the buffer is kept) and OSError(ENOSPC) names the file."""
        now = time.monotonic()
        if not force and now - self._last_flush < self.flush_interval_s:
            return
        ensure_space(self.path.parent, self._bytes_needed(), self.path)
        with h5py.File(self.path, "a", locking=False) as f:
            for group, buf in (("steps", self._steps), ("epochs", self._epochs)):
                n_new = len(next(iter(buf.values())))
                if not n_new:
                    continue
                for name, values in buf.items():
                    ds = f[group][name]
                    old = ds.shape[0]
                    ds.resize((old + n_new,))
                    ds[old:] = np.asarray(values, dtype=ds.dtype)
                    values.clear()
            for k, v in self._attrs.items():
                f.attrs[k] = _attr_value(v)
            for k, v in self._summary.items():
                f["summary"].attrs[k] = _attr_value(v)
            if self._ranks:
                g = f.require_group("ranks")
                for k, v in self._ranks.items():
                    if k in g:
                        del g[k]
                    g.create_dataset(k, data=v)
                self._ranks.clear()
        self._attrs.clear()
        self._summary.clear()
        self._last_flush = now
        self.flush_count += 1

    def rewind(self, last_step: int, completed_epochs: int) -> None:
        """Drop rows past a checkpoint: steps > ``last_step`` and epochs >= ``completed_epochs``.

        A resumed run then continues its metrics with no gap and no duplicate step.
        """
        with self._lock:
            self._append(force=True)
            self._truncate(last_step, completed_epochs)

    def _truncate(self, last_step: int, completed_epochs: int) -> None:
        with h5py.File(self.path, "a", locking=False) as f:
            keep = int(np.count_nonzero(f["steps/step"][:] <= last_step))
            for name in STEP_FIELDS:
                f["steps"][name].resize((keep,))
            keep_e = int(np.count_nonzero(f["epochs/epoch"][:] < completed_epochs))
            for name in EPOCH_FIELDS:
                f["epochs"][name].resize((keep_e,))

    def close(self, status: Status | str, **attrs: Any) -> None:
        """Write everything left, the final status and ``finished_at``; give back the reserve.

        On a full disk the reserve makes room for it.  Rows that do not fit even then are dropped and
        the status is written alone (a run that would have completed is recorded ``failed``: its rows
        are not all there), and OSError(ENOSPC) follows.
        """
        with self._lock:
            self.set_attrs(**{Attr.STATUS: Status(status).value,
                              Attr.FINISHED_AT: time.strftime("%Y-%m-%dT%H:%M:%S%z")}, **attrs)
            try:
                self._flush_final()
            finally:
                self.reserve.release()

    def _flush_final(self) -> None:
        """Everything left; on a full disk again in the room of the reserve, then without the rows."""
        full = self._flush_unless_full()
        if full is None:
            return
        self.reserve.release()
        if self._flush_unless_full() is None:
            return
        dropped = self._drop_rows()
        if self._attrs.get(Attr.STATUS) == Status.COMPLETED.value:
            self._attrs.update({Attr.STATUS: Status.FAILED.value, Attr.ERROR: f"{full.strerror} ({dropped} rows lost)"})
        self.flush(force=True)
        raise full

    def _flush_unless_full(self) -> OSError | None:
        """Write the buffer now; the ENOSPC error when the disk has no room for it (nothing touched)."""
        try:
            self.flush(force=True)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            return exc
        return None

    def _drop_rows(self) -> int:
        """Forget the buffered rows and per-rank arrays; how many rows there were."""
        dropped = len(self._steps[STEP_FIELDS[0]]) + len(self._epochs[EPOCH_FIELDS[0]])
        for buf in (*self._steps.values(), *self._epochs.values()):
            buf.clear()
        self._ranks.clear()
        return dropped


def _decoded(values: np.ndarray) -> np.ndarray | list[str]:
    """A dataset as read; byte strings (the ranks' host names) as ``str``."""
    return [v.decode() for v in values] if values.dtype.kind == "S" else values


def read_metrics(path: str | Path, retries: int = 5) -> dict[str, Any]:
    """Read a metrics file (possibly of a run still going) into plain Python/numpy objects."""
    last_exc: Exception | None = None
    for attempt in range(retries):
        try:
            with h5py.File(path, "r", locking=False) as f:
                out: dict[str, Any] = {"path": str(path), "attrs": {}, "summary": {}}
                for k, v in f.attrs.items():
                    out["attrs"][k] = v.decode() if isinstance(v, bytes) else v
                for group in ("steps", "epochs", "ranks"):
                    if group in f:
                        out[group] = {k: _decoded(f[group][k][()]) for k in f[group]}
                for group in ("steps", "epochs"):  # a read during an append: the rows every field has
                    if out.get(group):
                        n = min(len(v) for v in out[group].values())
                        out[group] = {k: v[:n] for k, v in out[group].items()}
                if "summary" in f:
                    out["summary"] = {
                        k: (v.decode() if isinstance(v, bytes) else v)
                        for k, v in f["summary"].attrs.items()
                    }
                return out
        except (OSError, KeyError, ValueError, IndexError) as exc:  # a write in progress: try again shortly
            last_exc = exc
            time.sleep(0.1 * (attempt + 1))
    raise OSError(f"{path}: could not read metrics ({last_exc})")
