"""The OOM boundary by search: the largest batch that fits under the memory cap.

The batch doubles from a start until a probe runs out of memory, then the search bisects between
the last batch that fit and the first that did not, down to a resolution.  Each probe is a short
``pyramidrepro run`` in a fresh process, so a failed allocation cannot poison the next probe's
allocator.  Each probe also leaves a run folder (``metrics.h5``: status and peak memory) with the
``boundary_search`` attribute.  The report reads those folders for the largest-batch figure and
claim C1, and keeps them out of the throughput figures.  A probe folder that has already
finished is read again, not rerun, so an interrupted search resumes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config.experiment import ExperimentConfig
from ..config.load import load_config
from ..config.schema import EXIT_CODES, Status
from ..config.sweep import point_slug, sweep_points
from ..records.runs import is_done, run_dir_for

#: a probe runs this many steps (the first is warm-up: peaks are the steady state's after it)
PROBE_STEPS = 3


class ProbeError(RuntimeError):
    """A probe ended neither completed nor out of memory: the search cannot tell what fits."""


def search(fits: Callable[[int], bool], start: int, limit: int, resolution: int = 1) -> tuple[int | None, int | None]:
    """(largest batch that fits, smallest that does not) among multiples of ``resolution`` <= ``limit``.

    Doubling from ``start`` (halving when ``start`` already fails), then bisection; ``fits`` is
    called once per batch tried.  Assumes memory grows with the batch.
    """
    if resolution < 1 or start < resolution or start % resolution or limit < start:
        raise ValueError(f"search: need resolution >= 1 dividing start, start <= limit (got start {start}, "
                         f"limit {limit}, resolution {resolution})")
    if fits(start):
        fit, fail = _double(fits, start, limit, resolution)
    else:
        fit, fail = _halve(fits, start, resolution)
    if fit is None or fail is None:
        return fit, fail
    return _bisect(fits, fit, fail, resolution)


def _double(fits: Callable[[int], bool], fit: int, limit: int, resolution: int) -> tuple[int, int | None]:
    """From a batch that fits, double until one fails or ``limit`` is reached: (last fit, first failure)."""
    while fit < limit:
        batch = min(2 * fit, limit // resolution * resolution)
        if batch <= fit:
            break
        if not fits(batch):
            return fit, batch
        fit = batch
    return fit, None


def _halve(fits: Callable[[int], bool], fail: int, resolution: int) -> tuple[int | None, int]:
    """From a batch that fails, halve until one fits or ``resolution`` fails: (first fit, last failure)."""
    while fail > resolution:
        batch = max(resolution, fail // 2 // resolution * resolution)
        if fits(batch):
            return batch, fail
        fail = batch
    return None, fail


def _bisect(fits: Callable[[int], bool], fit: int, fail: int, resolution: int) -> tuple[int, int]:
    """Narrow (fit, fail) down to ``resolution`` apart."""
    while fail - fit > resolution:
        middle = (fit + fail) // 2 // resolution * resolution
        if middle <= fit:
            middle = fit + resolution
        if fits(middle):
            fit = middle
        else:
            fail = middle
    return fit, fail


@dataclass
class Probe:
    """One batch tried: its outcome and the peaks its run recorded."""

    batch_size: int
    status: str
    peak_memory_bytes: list[int]
    peak_reserved_bytes: list[int]
    seconds: float
    run_dir: str
    reused: bool = False  # read from an earlier search's finished folder


@dataclass
class Boundary:
    """What one search found for one line (a mode and its remedies)."""

    line: dict[str, Any]  # the sweep point without its batch size ({} for a file without a sweep)
    memory_limit_gb: float | None
    resolution: int
    largest_fit: int | None
    smallest_failure: int | None
    probes: list[Probe] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "probes_run": sum(not p.reused for p in self.probes)}


def probe_overrides(cfg: ExperimentConfig, batch: int) -> list[str]:
    """The ``--set`` values that make one point a short probe at ``batch``."""
    steps_per_epoch = max(1, training_set_size(cfg) // batch)
    epochs = -(-PROBE_STEPS // steps_per_epoch)
    return [f"train.batch_size={batch}", f"train.max_steps={PROBE_STEPS}", "train.warmup_steps=1",
            f"train.epochs={epochs}", "train.evaluate=false", "train.checkpoint_every_s=null",
            f"train.log_every={PROBE_STEPS}"]


class BoundarySearch:
    """Runs the probes of one line as ``pyramidrepro run`` processes and records what they found."""

    def __init__(self, experiment: str, overrides: list[str], cfg: ExperimentConfig, line: dict[str, Any],
                 out: str | Path, nproc: int = 1, log: Callable[[str], None] = print) -> None:
        self.experiment, self.overrides, self.cfg, self.line = experiment, overrides, cfg, line
        self.out, self.nproc, self.log = Path(out), nproc, log
        self.probes: list[Probe] = []

    def run_id(self, batch: int) -> str:
        slug = point_slug(self.line)
        return f"boundary-b{batch:06d}" + (f"-{slug}" if slug else "")

    def fits(self, batch: int) -> bool:
        probe = self.probe(batch)
        self.probes.append(probe)
        took = "an earlier run" if probe.reused else f"{probe.seconds:.1f} s"
        self.log(f"  batch {batch:>6}: {probe.status:9s} {_peaks(probe)} ({took})")
        return probe.status == Status.COMPLETED

    def probe(self, batch: int) -> Probe:
        run_id = self.run_id(batch)
        folder = run_dir_for(self.out, self.cfg.name, run_id)
        reused = is_done(folder)
        t0 = time.monotonic()
        if not reused:
            sets = [*self.overrides, *(f"{k}={json.dumps(v)}" for k, v in self.line.items()),
                    *probe_overrides(self.cfg, batch)]
            command = [sys.executable, "-m", "pyramidrepro", "run", self.experiment,
                       *(a for s in sets for a in ("--set", s)), "--out", str(self.out), "--run-id", run_id,
                       "--no-progress", "--boundary-search", json.dumps(self.line, sort_keys=True)]
            if self.nproc > 1:
                command += ["--nproc", str(self.nproc)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode not in (EXIT_CODES[Status.COMPLETED], EXIT_CODES[Status.OOM]):
                tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-6:])
                raise ProbeError(f"the probe at batch {batch} exited {done.returncode}, neither completed nor "
                                 f"out of memory ({folder}):\n{tail}")
        return read_probe(folder, batch, time.monotonic() - t0, reused)

    def result(self, resolution: int, start: int, limit: int) -> Boundary:
        fit, fail = search(self.fits, start, limit, resolution)
        return Boundary(self.line, self.cfg.devices.memory_limit_gb, resolution, fit, fail, self.probes)


def lines_of(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """The lines a sweep holds (its points without their batch size), each once, in order."""
    lines: list[dict[str, Any]] = []
    for point in sweep_points(cfg):
        line = {k: v for k, v in point.items() if k != "train.batch_size"}
        if line not in lines:
            lines.append(line)
    return lines


def find_boundaries(experiment: str, overrides: list[str], out: str | Path, nproc: int, resolution: int,
                    start: int, limit: int, log: Callable[[str], None] = print) -> list[Boundary]:
    """Search each line of ``experiment`` in turn; a DDP line steps by multiples of its ``nproc`` ranks."""
    base = load_config(experiment, overrides)
    found = []
    for line in lines_of(base):
        cfg = load_config(experiment, [*overrides, "sweep={}", *(f"{k}={json.dumps(v)}" for k, v in line.items())])
        ranks = nproc if cfg.train.mode == "ddp" else 1
        step = -(-resolution // ranks) * ranks
        top = min(limit, training_set_size(cfg)) // step * step
        first = max(step, start // step * step)
        if top < first:
            raise ValueError(f"boundary: no batch between {first} and {top} (the training set or --max-batch)")
        log(f"boundary: {point_slug(line) or cfg.name}: from batch {first}, up to {top}, resolution {step}"
            + (f", {ranks} DDP ranks" if ranks > 1 else ""))
        searcher = BoundarySearch(experiment, [*overrides, "sweep={}"], cfg, line, out, ranks, log)
        boundary = searcher.result(step, first, top)
        log(f"boundary: {point_slug(line) or cfg.name}: largest batch that fits {boundary.largest_fit or 'none'}, "
            f"first that fails {boundary.smallest_failure or 'none up to ' + str(top)} "
            f"({len(boundary.probes)} probes)")
        found.append(boundary)
    return found


def training_set_size(cfg: ExperimentConfig) -> int:
    return cfg.data.synthetic_train_size if cfg.data.source == "synthetic" else 50_000  # CIFAR-10's training split


def read_probe(folder: Path, batch: int, seconds: float, reused: bool) -> Probe:
    """A probe's outcome from its run folder's metrics.h5."""
    from ..config.schema import Summary
    from ..records.metrics import read_metrics

    metrics = read_metrics(folder / "metrics.h5")
    status = metrics["attrs"].get("status", "")
    if status not in (Status.COMPLETED, Status.OOM):
        raise ProbeError(f"the probe at batch {batch} recorded status {status!r} in {folder}/metrics.h5")
    summary = metrics["summary"]

    def peaks(key: str) -> list[int]:
        value = summary.get(key)
        return [] if value is None else [int(v) for v in (value if hasattr(value, "__len__") else [value])]

    return Probe(batch, status, peaks(Summary.PEAK_MEMORY_BYTES), peaks(Summary.PEAK_RESERVED_BYTES),
                 round(seconds, 2), str(folder), reused)


def _peaks(probe: Probe) -> str:
    """Peak allocated and reserved GiB per GPU (one figure, the peak RSS, on a CPU)."""
    if not probe.peak_memory_bytes:
        return ""
    allocated = "/".join(f"{v / 2**30:.2f}" for v in probe.peak_memory_bytes)
    if probe.peak_reserved_bytes == probe.peak_memory_bytes:
        return f"peak {allocated} GiB"
    reserved = "/".join(f"{v / 2**30:.2f}" for v in probe.peak_reserved_bytes)
    return f"peak {allocated} GiB allocated, {reserved} GiB reserved"
