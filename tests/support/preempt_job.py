"""Submit the smoke experiment to the Slurm test cluster, preempt it once its metrics hold some steps,
and follow the requeued job to its answer.

    python preempt_job.py SMOKE OUT AFTER_STEPS OVERRIDES_JSON [REQUEUE_AFTER_STEPS]

Preempting uses submitit's test hook ``job._interrupt()`` (SIGTERM, then USR2, as Slurm does). With
REQUEUE_AFTER_STEPS, once the requeued job has resumed and run that many steps more, it is requeued
once again from outside (``scontrol requeue``, as an admin or a preempting partition does: no warning
signal, the run resumes from its last periodic checkpoint).  Prints ``interrupted``, then
``STATUSES [(status, seconds), ...]`` (how the run's recorded status went from the interrupt on, the
requeues included) and ``RESULT <the job's result>``.
"""

from __future__ import annotations

import glob
import json
import subprocess
import sys
import threading
import time

from pyramidrepro.cluster import dispatch
from pyramidrepro.config.load import load_config
from pyramidrepro.records.metrics import read_metrics

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


def requeue_once_resumed(job, metrics_file: str, more_steps: int) -> None:  # noqa: ANN001 - a submitit job
    """``scontrol requeue`` the job once its run has resumed and gone ``more_steps`` past that step."""
    while not job.done():
        try:
            m = read_metrics(metrics_file, retries=1)
        except OSError:
            m = None
        resumed = int(m["attrs"].get("resumed_from_step", 0)) if m else 0
        if resumed and len(m["steps"]["step"]) >= resumed + more_steps:
            subprocess.run(["scontrol", "requeue", job.job_id], check=True)
            print(f"requeued from outside at step {len(m['steps']['step'])}", flush=True)
            return
        time.sleep(0.2)


def main(smoke: str, out: str, after_steps: int, overrides: list[str], requeue_after: int = 0) -> None:
    cfg = load_config(smoke, [*BASE, *overrides])
    ((_, job),) = dispatch.submit(cfg, "smoke", out)
    files = wait_for_steps(out, after_steps)
    job._interrupt()
    print("interrupted", flush=True)
    if requeue_after:
        threading.Thread(target=requeue_once_resumed, args=(job, files[0], requeue_after), daemon=True).start()
    print("STATUSES", follow_status(job, files[0]))
    print("RESULT", job.results()[0])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]), *map(int, sys.argv[5:6]))
