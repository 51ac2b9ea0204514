import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyramidrepro.machine.parallel import ModelWithLoss, detect_dist_env, port_from_job_id
from pyramidrepro.machine.slurm_job import expand_nodelist
from pyramidrepro.records.metrics import read_metrics
from pyramidrepro.workload.model import PyramidNet
from support import ROOT, SMOKE, TINY, only_run_dir, run_cli, wait_for_metrics


def _params(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    # BatchNorm running statistics are buffers, not parameters: DDP keeps rank 0's, so they are
    # not part of the comparison.
    return {k: v for k, v in state.items() if "running_" not in k and "num_batches" not in k}


@pytest.mark.slow
def test_two_rank_ddp_matches_the_single_process_run(tmp_path, cli):
    """2 gloo ranks x B/2 == one process with batch B, exactly for this setting.

    BatchNorm normalises each rank's half separately (SyncBatchNorm does not run on CPU), so
    the single-process reference accumulates gradients over the same two halves
    (train.accumulation_steps=2): every BatchNorm sees the same samples as on the ranks, and
    the averaged gradient is the same sum.  Augmentation is off; the seed fixes init and order.
    """
    common = ["--set", "data.augment=false", "--set", "train.max_steps=4", "--out", str(tmp_path), *TINY]
    r = run_cli("run", str(SMOKE), "--set", "train.mode=ddp", "--nproc", "2", "--run-id", "ddp", *common)
    assert r.returncode == 0, r.stderr
    r = cli("run", str(SMOKE), "--set", "train.accumulation_steps=2", "--run-id", "single", *common)
    assert r.returncode == 0, r.stderr
    a, b = _params(tmp_path / "smoke" / "ddp"), _params(tmp_path / "smoke" / "single")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    # and the parameters did move: the comparison is not between two initialisations
    init = torch.load(tmp_path / "smoke" / "ddp" / "checkpoint.pt", weights_only=True)["step"]
    assert init == 4
    m = read_metrics(tmp_path / "smoke" / "ddp" / "metrics.h5")
    assert m["attrs"]["world_size"] == 2 and m["attrs"]["backend"] == "gloo"
    # the link the scaling model needs, measured on this process group
    assert m["attrs"]["link_name"] == "measured (gloo, 2 ranks)"
    assert 0.01 < m["attrs"]["link_bandwidth_GBps"] < 1000 and m["attrs"]["link_latency_us"] >= 0

    assert m["attrs"]["grad_bytes"] == 4 * sum(p.numel() for p in PyramidNet(8, 4).parameters())
    assert m["ranks"]["step_time_s"].shape == (2, 4)
    assert m["ranks"]["peak_memory_bytes"].shape == (2,)
    single = read_metrics(tmp_path / "smoke" / "single" / "metrics.h5")
    torch.testing.assert_close(torch.tensor(m["steps"]["loss"]), torch.tensor(single["steps"]["loss"]),
                               rtol=1e-5, atol=1e-6)


def test_torchrun_launch_works_like_nproc(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "pyramidrepro", "run", str(SMOKE), "--set", "train.mode=ddp", "--out", str(tmp_path), *TINY],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)  # both ranks agreed on one folder
    m = read_metrics(run_dir / "metrics.h5")
    assert m["attrs"]["status"] == "completed" and m["attrs"]["world_size"] == 2
    assert m["ranks"]["step_time_s"].shape[0] == 2


def _children_with_rank(pid: int, rank: int) -> int | None:
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(child)
    return None


@pytest.mark.slow
def test_killed_rank_ends_the_job_nonzero_quickly(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyramidrepro", "run", str(SMOKE), "--nproc", "2", "--out",
         str(tmp_path), "--set", "train.mode=ddp", "--set", "train.max_steps=100000",
         "--set", "train.epochs=10000", "--no-progress", *TINY],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for_metrics(tmp_path)
        time.sleep(2)
        victim = _children_with_rank(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=90)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"killed rank 1: job ended with {proc.returncode} after {elapsed:.1f} s")
    assert proc.returncode != 0
    assert elapsed < 60
    assert "rank 1 ended (signal SIGKILL)" in err


@pytest.mark.slow
def test_consecutive_two_rank_runs_exit_cleanly(tmp_path):
    for i in range(3):
        r = run_cli("run", str(SMOKE), "--nproc", "2", "--set", "train.mode=ddp", "--set",
                    "train.max_steps=2", "--out", str(tmp_path), "--no-progress", *TINY)
        assert r.returncode == 0, f"run {i}: {r.stderr[-2000:]}"
        assert "terminate called" not in r.stderr


def test_global_batch_must_divide_by_ranks(tmp_path, cli):
    r = cli("run", str(SMOKE), "--nproc", "2", "--set", "train.mode=ddp",
                "--set", "train.batch_size=63", "--out", str(tmp_path))
    assert r.returncode == 2 and "train.batch_size" in r.stderr
    r = cli("run", str(SMOKE), "--nproc", "2", "--out", str(tmp_path))
    assert r.returncode == 2 and "train.mode" in r.stderr
    assert not list(tmp_path.iterdir())


def test_dp_on_cpu_is_a_clear_error_unless_allowed(tmp_path, cli):
    r = cli("run", str(SMOKE), "--set", "train.mode=dp", "--out", str(tmp_path))
    assert r.returncode != 0 and "allow_cpu_dp" in r.stderr
    r = cli("run", str(SMOKE), "--set", "train.mode=dp", "--set", "train.allow_cpu_dp=true",
            "--set", "train.max_steps=2", "--out", str(tmp_path / "ok"), *TINY)
    assert r.returncode == 0, r.stderr
    m = read_metrics(only_run_dir(tmp_path / "ok") / "metrics.h5")
    assert m["attrs"]["mode"] == "dp" and m["attrs"]["world_size"] == 1


def test_dp_balanced_loss_and_gradients_match_dp():

    torch.manual_seed(0)
    a = PyramidNet(8, 4)
    b = PyramidNet(8, 4)
    b.load_state_dict(a.state_dict())
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    loss_a = torch.nn.functional.cross_entropy(a(x), y)
    loss_a.backward()
    parts = ModelWithLoss(b)(x, y).sum(0)
    loss_b = parts[0] / parts[2]
    loss_b.backward()
    torch.testing.assert_close(loss_a, loss_b)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-7)


def test_rank_discovery_from_torchrun_and_slurm():
    env = detect_dist_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                           "MASTER_ADDR": "n1", "MASTER_PORT": "1234"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port) == (3, 8, 1, "n1", 1234)
    env = detect_dist_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
                           "SLURM_JOB_NODELIST": "gpu[07-08,10],big1", "SLURM_JOB_ID": "4242",
                           "SLURM_NTASKS_PER_NODE": "2(x4)"})
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (5, 8, 1, 2)
    assert env.master_addr == "gpu07" and env.master_port == port_from_job_id(4242)
    assert env.launcher == "slurm"
    assert detect_dist_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).launcher == "none"
    assert expand_nodelist("a[1-3],b,c[09-10]") == ["a1", "a2", "a3", "b", "c09", "c10"]
    assert port_from_job_id("123_4") != port_from_job_id("123_5")


def test_every_rank_gets_its_cpus_under_srun():
    """Slurm 22.05-23.02 srun does not inherit --cpus-per-task (submitit: test_slurm's dry run)."""
    for script in (ROOT / "slurm").glob("*.sbatch"):
        assert "export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK" in script.read_text(), script
