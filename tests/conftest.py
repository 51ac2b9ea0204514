from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.yaml"
sys.path.insert(0, str(Path(__file__).parent))


def run_cli(*args: str, timeout: float = 300, env: dict | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m pyramidrepro ARGS`` and capture its output."""
    full_env = dict(os.environ)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "pyramidrepro", *args], capture_output=True, text=True,
        timeout=timeout, env=full_env, cwd=cwd or ROOT,
    )


@pytest.fixture
def cifar_root(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A tiny dataset in the official format, and its checksums."""
    from cifar_format import write_cifar10

    sums = write_cifar10(tmp_path / "cifar", per_batch=40, test=40)
    return tmp_path / "cifar", sums


def slurm_unavailable(min_nodes: int = 1) -> str | None:
    """Why the Slurm test cluster (slurm/dev/cluster.sh, started by `make test`) cannot serve, or None."""
    import shutil

    if not os.environ.get("SLURM_CONF"):
        return "SLURM_CONF is not set (start it: bash slurm/dev/cluster.sh start; eval $(... env))"
    if not shutil.which("sbatch"):
        return "Slurm client tools are not installed"
    r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True)
    up = {line.split()[0] for line in r.stdout.splitlines() if line.split()[-1] in ("idle", "mix", "alloc")}
    if r.returncode != 0 or not up:
        return f"the local Slurm cluster does not answer ({r.stderr.strip()})"
    if len(up) < min_nodes:
        return f"the local Slurm cluster has {len(up)} node(s) up, these tests need {min_nodes}"
    return None


def preempt_and_resume(out: Path, overrides: list[str], after_steps: int = 20) -> subprocess.CompletedProcess:
    """Submit the smoke experiment to Slurm with ``overrides``, preempt it (submitit's test hook
    ``job._interrupt()``: SIGTERM, then USR2) once its metrics hold ``after_steps`` steps, and wait
    for the requeued job's answer, printed as ``RESULT {...}``."""
    code = f"""
import glob, time
from pyramidrepro.spec.config import load_config
from pyramidrepro import dispatch
from pyramidrepro.records.metrics import read_metrics
cfg = load_config({str(SMOKE)!r}, ['train.max_steps=null', 'model.depth=8', 'model.alpha=4',
    'cluster.executor=slurm', 'cluster.cpus_per_task=1', 'cluster.time_min=10', 'train.checkpoint_every_s=1',
    *{overrides!r}])
(job,) = dispatch.submit(cfg, 'smoke', {str(out)!r})
deadline = time.time() + 180
while time.time() < deadline:
    files = glob.glob({str(out)!r} + '/smoke/*/metrics.h5')
    if files and len(read_metrics(files[0])['steps']['step']) >= {after_steps}:
        break
    time.sleep(0.3)
job._interrupt()
print('interrupted', flush=True)
statuses, t0 = [], time.time()  # how the run's status goes from the interrupt on (the requeue included)
while not job.done():
    try:
        status = read_metrics(files[0], retries=1)['attrs']['status']
    except OSError:
        status = None
    if status and (not statuses or statuses[-1][0] != status):
        statuses.append((status, round(time.time() - t0, 2)))
    time.sleep(0.05)
print('STATUSES', statuses)
print('RESULT', job.results()[0])
"""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=400)


def assert_requeue_recorded(r: subprocess.CompletedProcess, out: Path, resumed_from_step: int) -> None:
    """Between the attempts of a ``preempt_and_resume`` job the run said ``interrupted`` (it resumes),
    never ``failed``, and the first attempt's log says where the requeued one resumes."""
    line = r.stdout.split("STATUSES ", 1)[1].splitlines()[0]
    print("statuses from the interrupt on (status, seconds):", line)
    statuses = [status for status, _ in ast.literal_eval(line)]
    assert "interrupted" in statuses and "failed" not in statuses, line
    logs = "".join(p.read_text() for p in (out / ".submitit").rglob("*_log.err"))
    assert f"pyramidrepro: preempted or timed out: requeued, resumes from step {resumed_from_step}" in logs, logs


def wait_for_metrics(out: Path, pattern: str = "*/*/metrics.h5", timeout: float = 120) -> list[Path]:
    """Wait until a run below ``out`` has written its metrics file; returns the files found."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = list(out.glob(pattern))
        if files:
            return files
        time.sleep(0.2)
    raise AssertionError(f"no {pattern} below {out} after {timeout} s")


def only_run_dir(out: Path) -> Path:
    dirs = [p for p in out.glob("*/*") if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


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
