"""Multi-node jobs on the real Slurm test cluster: 3 nodes, each a network namespace with its own
hostname and address (slurm/dev/cluster.sh, started by `make test`), gloo DDP across them."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyramidrepro.machine.slurm_job import expand_nodelist
from pyramidrepro.records.metrics import read_metrics
from pyramidrepro.records.runs import load_run
from support import ON_TEST_CLUSTER, ONCE, ONE_THREAD, ROOT, SMOKE, TINY, run_cli, wait_for_metrics, wait_until
from support.slurm import assert_requeue_recorded, preempt_and_resume, sbatch_multinode_template

pytestmark = pytest.mark.slurm(nodes=3)

CLUSTER = ["bash", str(ROOT / "slurm" / "dev" / "cluster.sh")]
JOB = [*TINY, *ON_TEST_CLUSTER, *ONE_THREAD]
DDP_ACROSS = ["--set", "train.mode=ddp", "--set", "train.batch_size=32"]


def _only_metrics(out: Path) -> dict:
    (path,) = out.glob("*/*/metrics.h5")
    return read_metrics(path)


def _ranks_in(node: str, marker: str) -> list[int]:
    """PIDs inside a test-cluster node whose command line contains ``marker``."""
    pids = subprocess.run([*CLUSTER, "node-pids", node], capture_output=True, text=True).stdout.split()
    found = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline and "slurmstepd" not in cmdline:
            found.append(int(pid))
    return found


@pytest.mark.parametrize(("per_node", "loader"), [(1, "dali"), (2, "torch")])
def test_ddp_across_two_nodes(tmp_path, per_node, loader):
    r = run_cli("submit", str(SMOKE), *ONCE,
                "--cluster", "slurm", "--out", str(tmp_path), "--wait", "--poll", "2", *JOB,
                *DDP_ACROSS, "--set", "cluster.nodes=2", "--set", f"cluster.tasks_per_node={per_node}",
                "--set", f"data.loader={loader}")
    assert r.returncode == 0, r.stdout + r.stderr
    m = _only_metrics(tmp_path)
    a = m["attrs"]
    assert a["status"] == "completed" and a["backend"] == "gloo" and a["loader"] == loader
    assert a["world_size"] == 2 * per_node
    assert expand_nodelist(a["slurm_nodelist"]) == ["node1", "node2"]
    assert m["ranks"]["hostname"] == ["node1"] * per_node + ["node2"] * per_node  # rank order: node by node
    step_times = m["ranks"]["step_time_s"]
    assert step_times.shape[0] == 2 * per_node and (step_times > 0).all()  # every rank on both nodes timed
    assert a["link_bandwidth_GBps"] > 0  # the ring's link, measured across the nodes
    assert load_run(m["path"]).nodes == 2


def test_each_loader_gives_two_ranks_on_two_nodes_disjoint_shares_that_cover_the_epoch(tmp_path):
    """DALI as the tensor loader: with one rank on each of two nodes (gloo, the package's own rank
    layout), the samples of one epoch split into two disjoint halves that cover it."""
    out = tmp_path / "shards.json"
    r = subprocess.run(["srun", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=2", "--time=5",
                        sys.executable, str(ROOT / "tests" / "support" / "shard_job.py"), str(out), "dali", "torch"],
                       capture_output=True, text=True, timeout=240, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    assert r.returncode == 0, r.stdout + r.stderr
    shards = json.loads(out.read_text())
    assert len(set(shards["hosts"])) == 2, shards["hosts"]  # one rank per node
    for kind in ("dali", "torch"):
        rank0, rank1 = shards[kind]
        assert len(rank0) == len(rank1) == 512 and not set(rank0) & set(rank1), kind
        assert sorted(rank0 + rank1) == list(range(1024)), kind
    assert shards["dali"] == shards["torch"]  # one global order per (seed, epoch), whatever the loader


def test_plain_sbatch_template_lands_the_same_result(tmp_path):
    m = sbatch_multinode_template(tmp_path, [*JOB, "--set", "train.batch_size=32"])
    a = m["attrs"]
    assert a["status"] == "completed" and a["mode"] == "ddp" and a["world_size"] == 2
    assert expand_nodelist(a["slurm_nodelist"]) == ["node1", "node2"]
    assert m["ranks"]["hostname"] == ["node1", "node2"]
    assert a["slurm_job_id"] and a["link_bandwidth_GBps"] > 0


def test_a_rank_killed_on_one_node_ends_the_job_fast(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyramidrepro", "submit", str(SMOKE), *ONCE,
         "--cluster", "slurm", "--out", str(tmp_path),
         "--wait", "--poll", "1", *JOB, "--set", "train.mode=ddp", "--set", "train.batch_size=48",
         "--set", "cluster.nodes=3", "--set", "cluster.tasks_per_node=1",
         "--set", "train.max_steps=100000", "--set", "train.epochs=1000"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_metrics(tmp_path, "smoke/*/metrics.h5", timeout=120)  # rank 0 set up: every rank is in
        victims = _ranks_in("node3", "submitit.core._submit")
        assert victims, "no rank found in node3"
        for pid in victims:
            os.kill(pid, 9)
        t0 = time.monotonic()
        wait_until(lambda: not any(_ranks_in(n, "submitit.core._submit") for n in ("node1", "node2", "node3")), 30,
                   "every rank gone after one was killed")
        ranks_gone = time.monotonic() - t0
        out, _ = proc.communicate(timeout=90)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"kill -9 of node3's rank: every rank gone after {ranks_gone:.1f} s, --wait returned "
          f"{proc.returncode} after {elapsed:.1f} s")
    assert proc.returncode != 0, out
    assert "FAILED on node3" in out, out
    assert elapsed < 60


def test_requeue_across_nodes_resumes_with_contiguous_steps(tmp_path):
    r = preempt_and_resume(tmp_path, ["train.epochs=4", "train.mode=ddp", "train.batch_size=32", "train.threads=1",
                                      "cluster.nodes=2", "cluster.tasks_per_node=1"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RESULT {'status': 'completed'" in r.stdout
    m = _only_metrics(tmp_path)
    steps = list(m["steps"]["step"])
    assert m["attrs"]["status"] == "completed" and m["attrs"]["world_size"] == 2
    assert int(m["attrs"]["resumed_from_step"]) > 0  # it did resume from rank 0's checkpoint
    assert steps == list(range(1, len(steps) + 1)) and len(steps) == 4 * 16  # no gap, no duplicate step
    assert m["ranks"]["hostname"] == ["node1", "node2"]
    assert_requeue_recorded(r, tmp_path, int(m["attrs"]["resumed_from_step"]))


UNSATISFIABLE = [*JOB, "--set", "train.mode=ddp", "--set", "cluster.tasks_per_node=2", "--set",
                 "cluster.cpus_per_task=2"]  # 4 CPUs on one node; every node has 2


def _queued(name: str = "smoke") -> list[str]:
    r = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i %T"], capture_output=True, text=True, check=True)
    return r.stdout.splitlines()


def test_preflight_refuses_what_no_node_can_hold(tmp_path):
    r = run_cli("submit", str(SMOKE), *ONCE, "--cluster", "slurm", "--out", str(tmp_path), "--wait", *UNSATISFIABLE)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "cluster" in r.stderr and "no node can run 1 node(s) x 2 task(s) x 2 CPU(s)" in r.stderr
    assert "needs 4 CPUs" in r.stderr and "the largest node has 2 CPUs" in r.stderr
    assert not list(tmp_path.glob("smoke/*")) and _queued() == []  # nothing submitted


def test_a_request_sbatch_refuses_is_one_clear_line(tmp_path):
    r = run_cli("submit", str(SMOKE), *ONCE, "--cluster", "slurm", "--out", str(tmp_path), "--wait", "--no-preflight",
                *UNSATISFIABLE)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "cluster: sbatch refused 1 node(s) x 2 task(s) x 2 CPU(s): " in r.stderr
    assert "Requested node configuration is not available" in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.glob("smoke/*")) and _queued() == []


#: accepted by sbatch, then pending for ever: the short partition allows 5 minutes a job
OVER_THE_LIMIT = [*JOB, "--set", "cluster.partition=short", "--set", "cluster.time_min=10"]


@pytest.mark.parametrize("choice", ["cancel", "keep"])
def test_a_job_that_can_never_start_ends_the_wait(tmp_path, choice):
    t0 = time.monotonic()
    r = run_cli("submit", str(SMOKE), *ONCE, "--cluster", "slurm", "--out", str(tmp_path), "--wait", "--poll", "1",
                "--never-starts", choice, *OVER_THE_LIMIT, timeout=120)
    elapsed = time.monotonic() - t0
    print(f"request over the partition's limit ({choice}): --wait exited {r.returncode} after {elapsed:.1f} s")
    assert r.returncode == 1, r.stdout + r.stderr
    line = next((x for x in r.stdout.splitlines() if "NEVER STARTS" in x), r.stdout)
    assert "PartitionTimeLimit; request: 1 node(s) x 1 task(s) x 1 CPU(s)" in line and "partition short" in line
    job_id = line.split(":")[0]
    queued = [q for q in _queued() if q.startswith(job_id + " ")]
    if choice == "cancel":
        assert "(cancelled)" in line and not queued
    else:
        assert "(left queued)" in line and queued == [f"{job_id} PENDING"]
        subprocess.run(["scancel", job_id], check=True)
    assert elapsed < 60  # not the 120 s timeout of run_cli: the wait ended on the reason, not on a clock
