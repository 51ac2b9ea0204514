"""``submit --wait`` polls the way admins allow, waits on pending reasons that clear, and says where a
failed job logged (cluster/follow.py).

The Slurm tests use the 3-node test cluster (slurm/dev/cluster.sh) and skip without it; their jobs are
named ``follow`` so that tests counting ``smoke`` jobs never see them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyramidrepro.cluster import follow
from pyramidrepro.cluster.follow import BACKOFF, MAX_POLL_S, NODES_EVERY, QUIET_S, NeverStartWatch, PollClock
from pyramidrepro.cluster.slurm_queue import Node, Request, never_starts, waits_for
from support import ON_TEST_CLUSTER, ONCE, ONE_THREAD, ROOT, SMOKE, TINY, run_cli
from support.slurm import on_node

NODES = [Node("node1", 2, 2, 23000, "idle", ("debug",)), Node("node2", 2, 2, 23000, "drain", ("debug",)),
         Node("big1", 64, 8, 512000, "down", ("big",))]


# ---------------------------------------------------------------------------------------------
# What is final and what is waited on
# ---------------------------------------------------------------------------------------------


def test_only_what_no_admin_action_changes_is_final():
    req = Request(1, 1, 1)
    for clears in ("ReqNodeNotAvail, UnavailableNodes:node2", "ReqNodeNotAvail, May be reserved for other job",
                   "JobHeldAdmin", "Reservation", "Resources", "Priority", "QOSMaxJobsPerUserLimit"):
        assert never_starts(clears, req, NODES) is None, clears
    assert "admin returns a drained" in waits_for("ReqNodeNotAvail, UnavailableNodes:node2")
    assert "scontrol release" in waits_for("JobHeldAdmin")
    assert never_starts("PartitionTimeLimit", req, NODES) == "PartitionTimeLimit"
    assert never_starts("DependencyNeverSatisfied", req, NODES) == "DependencyNeverSatisfied"
    # big1 is down, and it still counts: an admin may return it
    assert never_starts("Resources", Request(1, 8, 8, 8), NODES) is None
    assert never_starts("Resources", Request(1, 8, 16), NODES).startswith("Resources: needs 128 CPUs")
    assert never_starts("Resources", Request(1, 8, 16), []) is None  # sinfo not read: no verdict


def test_polls_slow_down_only_after_a_quiet_while_and_a_change_resets_them():
    clock = PollClock(2.0, quiet_since=0.0)
    assert clock.next_interval(changed=True, now=0.0) == 2.0
    assert clock.next_interval(changed=False, now=QUIET_S - 1) == 2.0
    assert clock.next_interval(changed=False, now=QUIET_S) == 2.0 * BACKOFF
    for _ in range(30):
        last = clock.next_interval(changed=False, now=QUIET_S + 60)
    assert last == MAX_POLL_S
    assert clock.next_interval(changed=True, now=QUIET_S + 61) == 2.0
    assert PollClock(600.0).next_interval(changed=False) == 600.0  # never shorter than asked


def test_the_watch_reports_a_clearing_reason_once_and_asks_sinfo_and_scontrol_seldom(monkeypatch):
    calls = {"sinfo": 0, "scontrol": 0}

    def node_sizes():
        calls["sinfo"] += 1
        return NODES

    def job_request(jid):
        calls["scontrol"] += 1
        return Request(1, 1, 1, partition="short")

    monkeypatch.setattr(follow, "node_sizes", node_sizes)
    monkeypatch.setattr(follow, "job_request", job_request)
    watch = NeverStartWatch(confirm_s=0)
    drained = "ReqNodeNotAvail, UnavailableNodes:node2"
    queue = {f"81_{i}": ("PENDING", drained) for i in range(3)}
    never, lines = watch.check(queue)
    assert never == {} and lines == [f"[wait] 81_0, 81_1, 81_2 pending ({drained}; node2 drain): waits for "
                                     f"{waits_for(drained)}"]
    for _ in range(2 * NODES_EVERY):
        assert watch.check(queue) == ({}, [])  # the same reason again: nothing said
    assert calls == {"sinfo": 1, "scontrol": 0}  # the nodes for the one line; no request needed to wait
    queue["81_1"] = ("RUNNING", "None")
    queue["81_2"] = ("PENDING", "Priority")
    assert watch.check(queue)[1] == ["[wait] 81_2 pending (Priority): waits for jobs of higher priority to start first"]
    never, _ = watch.check({"82_0": ("PENDING", "PartitionTimeLimit"), "82_1": ("PENDING", "PartitionTimeLimit")})
    assert never == {j: "PartitionTimeLimit; request: 1 node(s) x 1 task(s) x 1 CPU(s), partition short"
                     for j in ("82_0", "82_1")}
    assert calls["scontrol"] == 1  # the elements of one array share one request
    busy = {f"80_{i}": ("PENDING", "Resources") for i in range(3)}
    for _ in range(3 * NODES_EVERY):
        watch.check(busy)
    assert calls == {"sinfo": 4, "scontrol": 2}  # the sizes once per NODES_EVERY polls, the request once


def test_the_end_names_the_logs_of_each_job_that_ended_badly(tmp_path, capsys):
    class Job:
        def __init__(self, job_id: str, logs: bool) -> None:
            self.job_id = job_id
            self.paths = type("Paths", (), {"stdout": tmp_path / f"{job_id}.out", "stderr": tmp_path / f"{job_id}.err"})
            for path in (self.paths.stdout, self.paths.stderr) if logs else ():
                path.write_text("")

    done = follow.Follow([Job("7_0", True), Job("7_1", True), Job("7_2", False)], on_never="cancel")
    done.outcome = {"7_0": "COMPLETED", "7_1": "FAILED on node3 (task 0: Killed): the job ended before rank 0 "
                    "returned a result", "7_2": "NEVER STARTS (cancelled): PartitionTimeLimit"}
    assert done.report(sys.stdout) == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "7_0: COMPLETED"
    assert lines[1].endswith(f"; logs: {tmp_path}/7_1.out {tmp_path}/7_1.err")
    assert lines[2] == "7_2: NEVER STARTS (cancelled): PartitionTimeLimit"  # it never started: no log


# ---------------------------------------------------------------------------------------------
# The run-folder lock
# ---------------------------------------------------------------------------------------------

NAME = "follow"
JOB = ["--set", f"name={NAME}", *TINY, *ON_TEST_CLUSTER, *ONE_THREAD]
LONG = ["--set", "train.max_steps=100000", "--set", "train.epochs=1000", "--set", "train.checkpoint_every_s=2"]
TOOLS = ("squeue", "sinfo", "scontrol", "sacct")


def _logging_tools(folder: Path) -> Path:
    """A folder of wrappers named like Slurm's tools that log ``TOOL HOST TIME`` and run the real one."""
    folder.mkdir()
    log = folder / "calls.log"
    for tool in TOOLS:
        real = subprocess.run(["which", tool], capture_output=True, text=True, check=True).stdout.strip()
        wrapper = folder / tool
        wrapper.write_text(f'#!/bin/sh\necho "{tool} $(hostname) $(date +%s.%N)" >> {log}\nexec {real} "$@"\n')
        wrapper.chmod(0o755)
    return log


def _calls(log: Path, tool: str) -> list[float]:
    host = os.uname().nodename
    lines = [ln.split() for ln in log.read_text().splitlines()] if log.exists() else []
    return [float(t) for name, h, t in lines if name == tool and h == host]


def _cancel_ours() -> None:
    """Cancel this file's jobs (after a test that failed, or left one running on purpose)."""
    subprocess.run(["scancel", "-n", NAME], capture_output=True)


@pytest.mark.slurm(nodes=3)
def test_wait_asks_squeue_once_per_poll_and_no_more_often(tmp_path):
    poll = 2.0
    log = _logging_tools(tmp_path / "bin")
    env = {"PATH": f"{log.parent}:{os.environ['PATH']}"}
    t0 = time.time()
    try:
        r = run_cli("submit", str(SMOKE), *ONCE, "--cluster", "slurm", "--out", str(tmp_path / "out"), "--wait",
                    "--poll", str(poll), "--no-preflight", *JOB, "--set", "sweep={train.batch_size: [16, 32, 48]}",
                    "--set", "train.max_steps=6", env=env, timeout=120)
    except BaseException:
        _cancel_ours()
        raise
    elapsed = time.time() - t0
    if r.returncode != 0:
        _cancel_ours()
    assert r.returncode == 0, r.stdout + r.stderr
    squeue, sinfo, sacct = (_calls(log, t) for t in ("squeue", "sinfo", "sacct"))
    gaps = [b - a for a, b in zip(squeue, squeue[1:])]
    print(f"3-job array, --poll {poll}: {len(squeue)} squeue calls in {elapsed:.1f} s, gaps "
          f"{[round(g, 2) for g in gaps]}; sinfo {len(sinfo)}, sacct {len(sacct)}")
    assert squeue and min(gaps, default=poll) >= poll - 0.05  # one call per poll, none sooner
    assert len(squeue) <= elapsed / poll + 1
    assert len(sinfo) <= 1 + len(squeue) // NODES_EVERY and not sacct
    assert "[wait] 3/3 done" in r.stdout and "elapsed" in r.stdout and "submit: 3 runs of 3 points" in r.stdout


def _drain(node: str) -> None:
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=drain", "reason=test_follow"], check=True)


def _resume(node: str) -> None:
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)


@pytest.mark.slurm(nodes=3)
def test_a_job_pending_on_a_drained_node_is_reported_not_cancelled_and_runs_when_it_returns(tmp_path):
    node = "node3"
    proc = None
    try:
        _drain(node)  # the only node the job may use
        proc = subprocess.Popen([sys.executable, "-m", "pyramidrepro", "submit", str(SMOKE), *ONCE,
                                 "--cluster", "slurm",
                                 "--out", str(tmp_path), "--wait", "--poll", "1", *JOB, *on_node(node),
                                 "--set", "train.max_steps=4"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        seen = []
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen.append(line)
            if "pending (ReqNodeNotAvail" in line or not line:
                break
        report = seen[-1]
        time.sleep(3)  # longer than the never-start watch's confirmation: it must not cancel
        _resume(node)
        out, _ = proc.communicate(timeout=50)
    finally:
        _resume(node)
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is None or proc.returncode != 0:  # a job that completed may still be ending: left alone
            _cancel_ours()
    text = "".join(seen) + out
    print(text)
    assert f"UnavailableNodes:{node}; {node} dr" in report and "waits for its nodes to come back" in report, text
    assert "NEVER STARTS" not in text and proc.returncode == 0
    assert "submit: 1 runs of 1 points" in text and ", 0 failed" in text
