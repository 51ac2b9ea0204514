"""The local campaign behind ``reproduce``: ``submit --cluster local``, one point at a time.

Every sweep point is submitted through submitit's local executor (:mod:`.dispatch`), the same
job a Slurm array runs, and waited for before the next starts, so each point has the machine to
itself and a crash or an out-of-memory point ends that point only.  Points whose run is done
(:func:`.runs.is_done`) are skipped, so an interrupted campaign picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import io
import sys
import time
from pathlib import Path
from typing import TextIO

from . import dispatch
from .config import ExperimentConfig, expand_sweep
from .runs import is_done, run_dir_for, status_of
from .schema import EXIT_CODES, FINISHED, Status


def local_point(cfg: ExperimentConfig, ddp_ranks: int) -> ExperimentConfig:
    """A point as the local executor runs it: DDP with ``ddp_ranks`` processes on this machine."""
    cluster = dataclasses.replace(cfg.cluster, executor="local", tasks_per_node=ddp_ranks, nodes=1)
    return dataclasses.replace(cfg, cluster=cluster)


def run_campaign(cfg: ExperimentConfig, source: str, out: str | Path, ddp_ranks: int,
                 stream: TextIO = sys.stdout) -> list[tuple[str, str, float]]:
    """Run every sweep point here, in turn; returns (run id, outcome, seconds) per point.

    The outcome is the run's status, with `` (exit N)`` added when its job did not end cleanly.
    """
    points = expand_sweep(cfg, source)
    results = []
    total_t0 = time.monotonic()
    for i, (run_id, point_cfg) in enumerate(points, 1):
        folder = run_dir_for(out, cfg.name, run_id)
        label = f"[{i}/{len(points)}] {run_id}"
        if is_done(folder):
            print(f"{label}: already done, skipped", file=stream, flush=True)
            results.append((run_id, "skipped", 0.0))
            continue
        print(f"{label}: running ...", file=stream, flush=True)
        t0 = time.monotonic()
        job = dispatch.submit(cfg, source, out, stream=io.StringIO(),
                              points=[(run_id, local_point(point_cfg, ddp_ranks))])[0]
        error = ""
        try:
            job.results()
        except Exception as exc:  # noqa: BLE001 - the point failed; the campaign goes on
            error = "\n".join(str(exc).strip().splitlines()[-5:])
        status = status_of(folder) or Status.FAILED
        code = 0 if status in FINISHED and not error else EXIT_CODES.get(status, 1) or 1
        outcome = status if code == 0 else f"{status} (exit {code})"
        print(f"{label}: {outcome} in {time.monotonic() - t0:.1f} s "
              f"(elapsed {time.monotonic() - total_t0:.0f} s)", file=stream, flush=True)
        if error:
            print(f"    {error}", file=stream, flush=True)
        results.append((run_id, outcome, time.monotonic() - t0))
    return results
