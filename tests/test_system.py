"""The system a run describes from inside its job, and one test per confounder flag that trips it."""

import dataclasses
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from pyramidrepro.machine.system import describe_system
from pyramidrepro.records.metrics import MetricsWriter
from pyramidrepro.records.runs import RunRecord
from pyramidrepro.study.confounders import SHM_MIN_BYTES, confounders
from pyramidrepro.study.report import build_report
from support import ROOT


def test_describe_system_on_this_cpu():
    s = describe_system(torch.device("cpu"), 2, environ={"NCCL_DEBUG": "INFO", "PATH": "/bin", "CUDA_X": "1"})
    assert s["cpus_given"] >= 1 and s["cpu_affinity"] and s["local_world_size"] == 2
    assert s["env"] == {"CUDA_X": "1", "NCCL_DEBUG": "INFO"}  # only the variables that shape a run
    assert s["dev_shm_bytes"] is None or s["dev_shm_bytes"] > 0
    assert "gpu_count" not in s


def test_default_threads_follow_omp_num_threads_else_the_cpus_given_not_the_machine():
    """A Slurm task or a cpuset narrows the affinity mask, not ``os.cpu_count()``: a run on 1 CPU of a larger
    machine takes 1 thread, and an OMP_NUM_THREADS that a job script set is taken as it is."""
    import os
    import shutil
    import subprocess
    import sys

    from pyramidrepro.machine.system import cpu_affinity, default_threads

    given = len(cpu_affinity())
    assert default_threads(1, environ={}) == given and default_threads(2, environ={}) == max(1, given // 2)
    assert default_threads(2, environ={"OMP_NUM_THREADS": "3"}) == 3
    assert default_threads(1, environ={"OMP_NUM_THREADS": "2,1"}) == given  # a nested list is not a count
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        pytest.skip("needs taskset and two CPUs")
    code = "from pyramidrepro.machine.system import default_threads; print(default_threads(1, {}))"
    one_cpu = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True)
    assert one_cpu.stdout.strip() == "1", one_cpu.stderr


def _run(**changes) -> RunRecord:
    base = RunRecord(path="x", experiment="e", mode="single", line="single", batch_size=64, status="completed",
                     images_per_s=100.0, peak_memory=[], device_name="cpu (x, 2 cores)", world_size=1,
                     data_source="synthetic", memory_limit_gb=None, precision="fp32", git_commit="a" * 40,
                     versions={"torch": "2.14"}, container_image="", finished_at="", model="m",
                     system={"cpus_given": 2, "local_world_size": 1, "dev_shm_bytes": 8 << 30, "env": {}})
    return dataclasses.replace(base, **changes)


TRAPS = {
    "/dev/shm": dict(backend="nccl", gpu=True, system={"dev_shm_bytes": 64 << 20, "env": {}}),
    "NCCL_P2P_DISABLE": dict(system={"env": {"NCCL_P2P_DISABLE": "1"}}),
    "TF32 on": dict(allow_tf32=True),
    "mixed GPU models": None,  # two runs on different GPUs
    "threads over the cores": dict(threads=2, system={"cpus_given": 2, "local_world_size": 2, "env": {}}),
    "commits": None,  # two runs from different commits
    "versions": None,
}


@pytest.mark.parametrize("trap", list(TRAPS))
def test_each_confounder_flag_trips_on_its_trap_alone(trap):
    clean = [_run(), _run(path="y")]
    assert confounders(clean) == []
    if trap == "mixed GPU models":
        runs = [_run(gpu=True, device_name="NVIDIA H100 80GB HBM3"),
                _run(gpu=True, device_name="NVIDIA A100-SXM4-80GB")]
    elif trap == "commits":
        runs = [_run(), _run(git_commit="b" * 40)]
    elif trap == "versions":
        runs = [_run(), _run(versions={"torch": "2.11"})]
    else:
        runs = [_run(), _run(**TRAPS[trap])]
    flags = confounders(runs)
    assert len(flags) == 1 and trap in flags[0], flags


def test_a_large_shm_with_nccl_is_fine():
    assert confounders([_run(backend="nccl", system={"dev_shm_bytes": SHM_MIN_BYTES, "env": {}})]) == []


def test_report_shows_the_system_and_the_flags(tmp_path):
    cfg = {"name": "e", "model": {"depth": 20, "alpha": 12}, "train": {"mode": "single", "batch_size": 64}}
    for i, commit in enumerate(["a" * 40, "b" * 40]):
        folder = tmp_path / "e" / f"r{i}"
        folder.mkdir(parents=True)
        w = MetricsWriter(folder / "metrics.h5", flush_interval_s=0)
        w.set_attrs(config_yaml=yaml.safe_dump(cfg), mode="single", batch_size=64 * (i + 1), git_commit=commit,
                    device_name="cpu (x, 2 cores)", data_source="synthetic",
                    system=describe_system(torch.device("cpu"), environ={"NCCL_P2P_DISABLE": "1"}))
        w.set_summary(images_per_s=100.0)
        w.close("completed")
    text = (tmp_path / "e" / "report.md").read_text() if build_report(tmp_path / "e") else ""
    assert "- system: " in text and "cores given" in text and "NCCL_P2P_DISABLE=1" in text
    assert "**confounder:** runs from 2 commits" in text and "**confounder:** NCCL_P2P_DISABLE=1" in text


def test_an_image_without_git_records_the_baked_commit(tmp_path):
    """Inside the image the package is a copy with no .git: the build bakes the commit into it."""
    pkg = tmp_path / "site" / "pyramidrepro"
    shutil.copytree(ROOT / "src" / "pyramidrepro", pkg, ignore=shutil.ignore_patterns("__pycache__", "BUILD_COMMIT"))
    r = subprocess.run(["bash", str(ROOT / "containers" / "bake_commit.sh"), str(pkg), str(ROOT)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    baked = (pkg / "BUILD_COMMIT").read_text().strip()
    assert baked.startswith(head)
    env = {k: v for k, v in os.environ.items() if k != "PYRAMIDREPRO_GIT_COMMIT"}
    env["PYTHONPATH"] = str(pkg.parent)
    code = "from pyramidrepro.machine.provenance import git_commit; print(git_commit())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == baked
    bad = subprocess.run(["bash", str(ROOT / "containers" / "bake_commit.sh"), str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no such package folder" in bad.stderr
