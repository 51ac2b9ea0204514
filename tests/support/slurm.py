"""Helpers for the tests on the Slurm test cluster (slurm/dev/cluster.sh, started by ``make test``)."""

from __future__ import annotations

import ast
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from . import ROOT, SMOKE

PREEMPT_JOB = Path(__file__).with_name("preempt_job.py")


#: the states ``sinfo -o %t`` gives a node that takes jobs (a suffix such as ``*`` marks a node not
#: responding, which does not); ``comp``: its last job is still being cleaned up, for seconds
UP_STATES = ("idle", "mix", "alloc", "comp")


@functools.cache
def _cluster() -> tuple[str | None, int]:
    """(why the test cluster cannot serve, or None; how many nodes take jobs), asked once per process:
    a node that a test drains for a while, or one still cleaning up a job, does not skip later tests."""
    if not os.environ.get("SLURM_CONF"):
        return "SLURM_CONF is not set (start it: bash slurm/dev/cluster.sh start; eval $(... env))", 0
    if not shutil.which("sbatch"):
        return "Slurm client tools are not installed", 0
    r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True)
    up = {line.split()[0] for line in r.stdout.splitlines() if line.split()[-1] in UP_STATES}
    if r.returncode != 0 or not up:
        return f"the local Slurm cluster does not answer ({r.stderr.strip()})", 0
    return None, len(up)


def slurm_unavailable(min_nodes: int = 1) -> str | None:
    """Why the Slurm test cluster cannot serve a test that needs ``min_nodes`` nodes, or None."""
    reason, up = _cluster()
    if reason is None and up < min_nodes:
        return f"the local Slurm cluster has {up} node(s) up, these tests need {min_nodes}"
    return reason


def on_node(node: str) -> list[str]:
    """``--set`` arguments that put a job on ``node``."""
    return ["--set", f"cluster.additional_parameters={{nodelist: {node}}}"]


def preempt_and_resume(out: Path, overrides: list[str], after_steps: int = 20,
                       requeue_after: int = 0) -> subprocess.CompletedProcess:
    """Submit the smoke experiment to Slurm with ``overrides``, preempt it once its metrics hold
    ``after_steps`` steps, and wait for the requeued job's answer (``preempt_job.py``); with
    ``requeue_after``, requeue it from outside too once it has resumed and run that many steps."""
    args = [sys.executable, str(PREEMPT_JOB), str(SMOKE), str(out), str(after_steps), json.dumps(overrides),
            *([str(requeue_after)] if requeue_after else [])]
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=400)


def assert_requeue_recorded(r: subprocess.CompletedProcess, out: Path, resumed_from_step: int) -> None:
    """Between the attempts of a ``preempt_and_resume`` job the run said ``interrupted`` (it resumes),
    never ``failed``, and the first attempt's log says where the requeued one resumes."""
    line = r.stdout.split("STATUSES ", 1)[1].splitlines()[0]
    print("statuses from the interrupt on (status, seconds):", line)
    statuses = [status for status, _ in ast.literal_eval(line)]
    assert "interrupted" in statuses and "failed" not in statuses, line
    logs = "".join(p.read_text() for p in (out / ".submitit").rglob("*_log.err"))
    assert f"pyramidrepro: preempted or timed out: requeued, resumes from step {resumed_from_step}" in logs, logs


def sbatch_multinode_template(tmp_path: Path, args: list[str], **env: str) -> dict:
    """``sbatch --wait slurm/ddp_multinode.sbatch ARGS`` on 2 nodes x 1 task (``env`` added to the
    job's environment); asserts it succeeded and returns the run's metrics."""
    from pyramidrepro.records.metrics import read_metrics

    run_dir = tmp_path / "run"
    full_env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", EXP=str(SMOKE),
                    RUN_DIR=str(run_dir), **env)
    r = subprocess.run(["sbatch", "--wait", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=2",
                        "--cpus-per-task=1", f"--output={tmp_path}/slurm-%j.out",
                        str(ROOT / "slurm" / "ddp_multinode.sbatch"), *args],
                       capture_output=True, text=True, cwd=ROOT, env=full_env, timeout=300)
    logs = "".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert r.returncode == 0, r.stdout + r.stderr + logs
    return read_metrics(run_dir / "metrics.h5")
