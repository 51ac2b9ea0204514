"""Rank 0's record of a run in ``metrics.h5``: what the run is, its rows, its figures, its outcome.

On the other ranks every call does nothing, so callers need not ask which rank they are.
"""

from __future__ import annotations

import errno
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..config.experiment import ExperimentConfig
from ..config.schema import END_ATTRIBUTES, Attr, Status
from .metrics import FINAL_WRITE_RESERVE_BYTES, MetricsWriter
from .runs import METRICS_NAME, prepare


class RunRecorder:
    """Opens the run folder and ``metrics.h5`` (rank 0), buffers rows, writes the final status once.

    The final status may be written from the stop watcher's thread while the loop still runs
    (:mod:`..training.stop_channel`): :meth:`finish` takes a lock and writes only the first outcome.
    The writer holds disk for that last write (:class:`.metrics.SpaceReserve`), so a run the full disk
    stopped ends ``failed``.
    """

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, is_main: bool) -> None:
        self.cfg, self.run_dir, self.is_main = cfg, Path(run_dir), is_main
        self.writer: MetricsWriter | None = None
        self.finished_with: str | None = None
        self.noted = False  # note_end wrote a status the run has not replaced yet
        self.lock = threading.Lock()

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS_NAME

    def open(self, identity: dict[str, Any], resuming: bool = False) -> None:
        """Rank 0: the run folder, its config.yaml, and metrics.h5 holding ``identity`` (status running).

        A rerun that resumes from a checkpoint continues the existing metrics (the loop rewinds them
        to the checkpoint, and how the earlier attempt ended is cleared).  Without a checkpoint the
        metrics start afresh; an earlier file is kept beside as ``metrics.N.h5``, never appended to.
        """
        if not self.is_main or self.writer is not None:
            return
        prepare(self.run_dir, self.cfg)
        if self.metrics_path.exists() and not resuming:
            kept = next(self.run_dir / f"metrics.{n}.h5" for n in range(1, 10**6)
                        if not (self.run_dir / f"metrics.{n}.h5").exists())
            self.metrics_path.rename(kept)
            print(f"{self.metrics_path}: an earlier attempt without a checkpoint; its metrics kept as {kept.name}",
                  flush=True)
        attrs = {Attr.STATUS: Status.RUNNING, **identity, **dict.fromkeys(END_ATTRIBUTES, "")}
        self.writer = MetricsWriter(self.metrics_path, flush_interval_s=self.cfg.metrics.flush_interval_s,
                                    reserve_bytes=FINAL_WRITE_RESERVE_BYTES, attrs=attrs)
        self.writer.flush(force=True)  # a resumed file's attributes

    # -- what the loop records ----------------------------------------------------------------
    def set_attrs(self, flush: bool = False, **attrs: Any) -> None:
        if self.writer is not None:
            self.writer.set_attrs(**attrs)
            if flush:
                self.writer.flush(force=True)

    def flush(self) -> None:
        """Write the buffered rows now."""
        if self.writer is not None:
            self.writer.flush(force=True)

    def set_summary(self, **figures: Any) -> None:
        if self.writer is not None:
            self.writer.set_summary(**figures)

    def set_ranks(self, **arrays: Any) -> None:
        if self.writer is not None:
            self.writer.set_ranks(**arrays)

    def log_step(self, **row: Any) -> None:
        if self.writer is not None:
            self.writer.log_step(**row)

    def log_epoch(self, **row: Any) -> None:
        if self.writer is not None:
            self.writer.log_epoch(**row)

    def rewind(self, step: int, completed_epochs: int) -> None:
        """A resumed run drops the rows past its checkpoint."""
        if self.writer is not None:
            self.writer.rewind(step, completed_epochs)

    @property
    def write_seconds(self) -> float:
        """Seconds spent inside the writer so far (0 on ranks that do not write)."""
        return self.writer.write_seconds if self.writer is not None else 0.0

    # -- the outcome --------------------------------------------------------------------------
    def note_end(self, status: str, info: dict[str, Any]) -> None:
        """Record ``status`` now while the run goes on, as the outcome if nothing follows (a kill may);
        the run's own outcome replaces it.  From any thread but one inside the writer (it waits for it)."""
        with self.lock:
            if not self.is_main or self.finished_with is not None or self.writer is None:
                return
            self.noted = True
            try:
                self.writer.set_attrs(**{Attr.STATUS: Status(status).value,
                                         Attr.FINISHED_AT: time.strftime("%Y-%m-%dT%H:%M:%S%z")}, **info)
                self.writer.flush(force=True)
            except OSError as exc:
                print(f"pyramidrepro: could not record status {status} in {self.metrics_path}: {exc}",
                      file=sys.stderr, flush=True)

    def finish(self, status: str, info: dict[str, Any], identity: dict[str, Any]) -> bool:
        """Write the final status (rank 0, once); a run stopped before setup still gets its file.

        Returns whether this call wrote it all.  A full disk that keeps a completed run from recording
        every row raises OSError(ENOSPC): the record says ``failed``, and so must the run.
        """
        with self.lock:
            if not self.is_main or self.finished_with is not None:
                return False
            self.finished_with = status
            if self.noted:  # what note_end said is replaced, its error included
                info = {Attr.ERROR: "", **info}
            try:
                self.open(identity)
                assert self.writer is not None
                self.writer.close(status, **info)
            except OSError as exc:  # a full disk: the rows flushed so far stay intact
                if exc.errno != errno.ENOSPC:
                    print(f"pyramidrepro: could not record status {status} in {self.metrics_path}: {exc}",
                          file=sys.stderr, flush=True)
                elif status == Status.COMPLETED:
                    raise
                return False  # (the run's own error line says no space left)
            return True
