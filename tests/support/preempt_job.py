"""Submit the smoke experiment to the Slurm test cluster, preempt it once its metrics hold some steps,
and follow the requeued job to its answer.

    python preempt_job.py SMOKE OUT AFTER_STEPS OVERRIDES_JSON

Preempting uses submitit's test hook ``job._interrupt()`` (SIGTERM, then USR2, as Slurm does). Prints
``interrupted``, then ``STATUSES [(status, seconds), ...]`` (how the run's recorded status went from
the interrupt on, the requeue included) and ``RESULT <the job's result>``.
"""

from __future__ import annotations

import glob
import json
import sys
import time

from pyramidrepro.cluster import dispatch
from pyramidrepro.records.metrics import read_metrics
from pyramidrepro.spec.config import load_config

BASE = ["train.max_steps=null", "model.depth=8", "model.alpha=4", "cluster.executor=slurm", "cluster.cpus_per_task=1",
        "cluster.time_min=10", "train.checkpoint_every_s=1"]


def wait_for_steps(out: str, after_steps: int, timeout_s: float = 180) -> list[str]:
    """The run's metrics files once the first holds ``after_steps`` steps (or the timeout passed)."""
    deadline, files = time.time() + timeout_s, []
    while time.time() < deadline:
        files = glob.glob(out + "/smoke/*/metrics.h5")
        if files and len(read_metrics(files[0])["steps"]["step"]) >= after_steps:
            break
        time.sleep(0.3)
    return files


def follow_status(job, metrics_file: str) -> list[tuple[str, float]]:  # noqa: ANN001 - a submitit job
    """The run's recorded status each time it changes, until the job is done."""
    statuses: list[tuple[str, float]] = []
    t0 = time.time()
    while not job.done():
        try:
            status = read_metrics(metrics_file, retries=1)["attrs"]["status"]
        except OSError:
            status = None
        if status and (not statuses or statuses[-1][0] != status):
            statuses.append((status, round(time.time() - t0, 2)))
        time.sleep(0.05)
    return statuses


def main(smoke: str, out: str, after_steps: int, overrides: list[str]) -> None:
    cfg = load_config(smoke, [*BASE, *overrides])
    (job,) = dispatch.submit(cfg, "smoke", out)
    files = wait_for_steps(out, after_steps)
    job._interrupt()
    print("interrupted", flush=True)
    print("STATUSES", follow_status(job, files[0]))
    print("RESULT", job.results()[0])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]))
