"""Dispatch on the real Slurm test cluster (slurm/dev/cluster.sh, started by `make test`); one node per job here,
multi-node jobs in test_multinode.py."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyramidrepro.records.metrics import read_metrics
from support import ON_TEST_CLUSTER, ONCE, ROOT, SMOKE, TINY, run_cli, wait_for_metrics, wait_until
from support.slurm import assert_requeue_recorded, preempt_and_resume

pytestmark = pytest.mark.slurm

JOB = [*TINY, *ON_TEST_CLUSTER]


def _runs(out):
    return {p.parent.name: read_metrics(p) for p in out.glob("smoke/*/metrics.h5")}


def test_single_task_run(tmp_path):
    r = run_cli("submit", str(SMOKE), *ONCE,
                "--cluster", "slurm", "--out", str(tmp_path), "--wait", "--poll", "2", *JOB)
    assert r.returncode == 0, r.stdout + r.stderr
    (m,) = _runs(tmp_path).values()
    assert m["attrs"]["status"] == "completed"
    assert m["attrs"]["slurm_job_id"] and m["attrs"]["slurm_nodelist"]
    assert "submitted" in r.stdout and "submit: 1 runs of 1 points" in r.stdout and ", 0 failed" in r.stdout


def test_two_task_ddp_run(tmp_path):
    r = run_cli("submit", str(SMOKE), *ONCE, "--cluster", "slurm", "--out", str(tmp_path), "--wait", "--poll", "2",
                "--set", "train.mode=ddp", "--set", "cluster.tasks_per_node=2", *JOB)
    assert r.returncode == 0, r.stdout + r.stderr
    (m,) = _runs(tmp_path).values()
    assert m["attrs"]["status"] == "completed" and m["attrs"]["world_size"] == 2
    assert m["attrs"]["backend"] == "gloo" and m["ranks"]["step_time_s"].shape[0] == 2


def test_three_point_sweep_is_one_job_array(tmp_path):
    r = run_cli("submit", str(SMOKE), *ONCE, "--cluster", "slurm", "--out", str(tmp_path), "--wait", "--poll", "2",
                "--set", "sweep={train.batch_size: [32, 64, 128]}", *JOB)
    assert r.returncode == 0, r.stdout + r.stderr
    runs = _runs(tmp_path)
    assert len(runs) == 3
    assert {m["attrs"]["batch_size"] for m in runs.values()} == {32, 64, 128}
    assert len({m["attrs"]["slurm_job_id"] for m in runs.values()}) == 1  # one array job
    assert {m["attrs"]["slurm_array_task_id"] for m in runs.values()} == {"0", "1", "2"}


def test_scancel_is_reported_quickly(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyramidrepro", "submit", str(SMOKE), *ONCE, "--cluster", "slurm", "--out",
         str(tmp_path), "--wait", "--poll", "1", "--set", "train.max_steps=100000", "--set", "train.epochs=1000",
         *JOB],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        (metrics,) = wait_for_metrics(tmp_path, "smoke/*/metrics.h5")
        job_id = read_metrics(metrics)["attrs"]["slurm_job_id"]  # this test's job, whatever else is queued
        subprocess.run(["scancel", job_id], check=True)
        t0 = time.monotonic()
        out, _ = proc.communicate(timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"scancel: --wait returned {proc.returncode} after {elapsed:.1f} s")
    assert proc.returncode != 0
    assert "CANCELLED" in out
    assert elapsed < 30


def test_preempted_job_is_requeued_and_metrics_continue(tmp_path):
    r = preempt_and_resume(tmp_path, ["train.epochs=8"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RESULT {'status': 'completed'" in r.stdout
    (m,) = _runs(tmp_path).values()
    steps = list(m["steps"]["step"])
    assert m["attrs"]["status"] == "completed"
    assert int(m["attrs"]["resumed_from_step"]) > 0  # it did resume from a checkpoint
    assert steps == list(range(1, 8 * 8 + 1))  # no gap, no duplicate step
    assert list(m["epochs"]["epoch"]) == list(range(8))
    assert_requeue_recorded(r, tmp_path, int(m["attrs"]["resumed_from_step"]))


def test_dry_run_shows_the_generated_scripts(tmp_path):
    r = run_cli("submit", str(SMOKE), *ONCE, "--cluster", "slurm", "--out", str(tmp_path), "--dry-run",
                "--set", "sweep={train.batch_size: [32, 64, 128]}", "--set", "train.mode=ddp",
                "--set", "cluster.gpus_per_node=4", "--set", "cluster.nodes=2",
                "--set", "cluster.array_parallelism=2", "--set", "container.image=/img/pyramidrepro.sif",
                "--set", "container.binds=[/scratch]", "--set", "cluster.cpus_per_task=6")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "export SRUN_CPUS_PER_TASK=6" in out  # srun of Slurm 22.05-23.02 does not inherit it
    assert "#SBATCH --array=0-2%2" in out
    assert "#SBATCH --ntasks-per-node=4" in out and "#SBATCH --nodes=2" in out
    assert "#SBATCH --gpus-per-node=4" in out
    assert "apptainer exec --nv --pwd " in out and "--bind /scratch " in out  # an image not here: shown unchecked
    assert ("/img/pyramidrepro.sif /opt/venv/bin/python -I -S /opt/pyramidrepro/src/pyramidrepro/machine/clean_env.py "
            "-u -m submitit.core._submit") in out  # only the pass-through variables reach the job
    assert f"--bind {tmp_path.resolve()}:{tmp_path.resolve()}" in out
    assert "--env PYRAMIDREPRO_CONTAINER_IMAGE=/img/pyramidrepro.sif" in out
    # each task's command starts on the host in the requeue relay (cluster/requeue_relay), copied at submit
    assert re.search(r"/bin/sh \S+/\.submitit/[\w-]+/relay/relay\.sh \S*apptainer exec --nv", out), out
    assert not list(tmp_path.glob("smoke/*")) and not list(tmp_path.rglob("relay.sh"))  # nothing submitted


def test_an_sbatch_template_submitted_from_another_folder_finds_the_package_and_the_experiment(tmp_path):
    """sbatch slurm/single.sbatch from the user's own folder, no venv on PATH: the job finds the
    repository through Slurm's record of the script, the package in its venv, and the relative
    experiment there; the run's folder is under the folder it was submitted from."""
    path = ":".join(p for p in os.environ["PATH"].split(":") if not Path(p, "pyramidrepro").exists())
    env = dict(os.environ, PATH=path, EXP="experiments/smoke.yaml")
    r = subprocess.run(["sbatch", "--parsable", "--gpus-per-node=0", "--cpus-per-task=1",
                        f"--output={tmp_path}/job.out", str(ROOT / "slurm" / "single.sbatch"),
                        "--set", "model.depth=8", "--set", "model.alpha=4", "--set", "devices.device=cpu"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().split(";")[0]
    run_dir = tmp_path / "results" / "runs" / "smoke" / "sbatch-single"
    wait_until(lambda: not subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip(),
               180, f"job {job} ended", poll_s=1)
    log = (tmp_path / "job.out").read_text()
    assert read_metrics(run_dir / "metrics.h5")["attrs"]["status"] == "completed", log


def test_a_run_beside_another_job_on_its_node_records_it_and_the_report_names_the_point(tmp_path):
    """Two jobs on one node: the run records Slurm's view of its node at start and end (the other
    job's CPU), and the report's confounders name the point measured there."""
    blocker = subprocess.run(["sbatch", "--parsable", "-w", "node1", "-c", "1", "-o", "/dev/null",
                              "--wrap", "sleep 300"], capture_output=True, text=True, check=True).stdout.strip()
    try:
        wait_until(lambda: subprocess.run(["squeue", "-h", "-j", blocker, "-o", "%T"], capture_output=True,
                                          text=True).stdout.strip() == "RUNNING", 60, "the other job running", 0.5)
        r = run_cli("submit", str(SMOKE), *ONCE, "--cluster", "slurm", "--out", str(tmp_path), "--wait", "--poll", "1",
                    *JOB, "--set", "cluster.additional_parameters={nodelist: node1}")
    finally:
        subprocess.run(["scancel", blocker])
    assert r.returncode == 0, r.stdout + r.stderr
    (m,) = _runs(tmp_path).values()
    sharing = json.loads(m["attrs"]["node_sharing"])
    for when in ("start", "end"):
        view = sharing[when]
        assert view["node"] == "node1" and view["cpus_own"] == 1 and view["other_cpus"] == 1, sharing
    report = run_cli("report", str(tmp_path / "smoke"))
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "smoke" / "report.md").read_text()
    assert re.search(r"batch 64: 1 of 1 run\(s\) measured on a node other jobs shared \(node1: up to 1 CPU", text), text
