"""``submit --wait`` polls the way admins allow, waits on pending reasons that clear, and says where a
failed job logged; the run-folder lock is a POSIX record lock that holds between processes and nodes;
a job cancelled with scancel leaves its run ``interrupted``.

The Slurm tests use the 3-node test cluster (slurm/dev/cluster.sh) and skip without it; their jobs are
named ``followlock`` so that tests counting ``smoke`` jobs never see them."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyramidrepro.cluster import follow
from pyramidrepro.cluster.follow import BACKOFF, MAX_POLL_S, NODES_EVERY, QUIET_S, NeverStartWatch, PollClock
from pyramidrepro.cluster.slurm_queue import Node, Request, never_starts, waits_for
from pyramidrepro.records import lock as lock_module
from pyramidrepro.records.lock import LOCK_NAME, RunFolderError, RunLock
from pyramidrepro.records.metrics import read_metrics
from support import ON_TEST_CLUSTER, ONCE, ONE_THREAD, ROOT, SMOKE, TINY, run_cli, wait_for_metrics, wait_until
from support.slurm import slurm_unavailable

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

HOLD = ("import os, sys, time\n"
        "from pyramidrepro.records.lock import RunLock\n"
        "RunLock(sys.argv[1]).acquire()\n"
        "open(sys.argv[2], 'w').write(f'{os.getpid()}')\n"
        "time.sleep(120)\n")
#: starts HOLD in a new session and exits at once: the holder is left to init, no parent shared with us
DETACH = ("import subprocess, sys\n"
          "subprocess.Popen([sys.executable, '-c', sys.argv[1], *sys.argv[2:]], start_new_session=True,\n"
          "                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n")
TRY = ("import sys\n"
       "from pyramidrepro.records.lock import RunLock\n"
       "RunLock(sys.argv[1]).acquire()\n")


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: state, parent, ... ([] once the process is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _gone(pid: int, timeout: float = 10) -> bool:
    """Whether ``pid`` ended (reaped, or a zombie) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _stat(pid)[:1] in ([], ["Z"]):
            return True
        time.sleep(0.05)
    return False


def test_the_lock_holds_between_processes_that_share_no_parent(tmp_path):
    folder, ready = tmp_path / "run", tmp_path / "holder.pid"
    subprocess.run([sys.executable, "-c", DETACH, HOLD, str(folder), str(ready)], check=True, timeout=30)
    wait_until(lambda: ready.exists() and ready.read_text(), 30, "the holder's pid", poll_s=0.05)
    holder = int(ready.read_text())
    try:
        lock = folder / LOCK_NAME
        inode = os.stat(lock).st_ino
        held = [ln for ln in Path("/proc/locks").read_text().splitlines() if f":{inode} " in ln]
        assert len(held) == 1 and "POSIX" in held[0] and "WRITE" in held[0] and f" {holder} " in held[0], held
        contender = subprocess.Popen([sys.executable, "-c", TRY, str(folder)], stderr=subprocess.PIPE, text=True)
        _, err = contender.communicate(timeout=60)
        parent = int(_stat(holder)[1])
        print(f"holder {holder} (parent {parent}), contender {contender.pid} (parent {os.getpid()})")
        assert parent not in (os.getpid(), contender.pid)  # neither the other's parent nor sharing ours
        assert contender.returncode != 0 and "in use by a run that is still going" in err, err
        with pytest.raises(RunFolderError, match="in use"):  # and from this process, a third one
            RunLock(folder).acquire()
    finally:
        os.kill(holder, signal.SIGKILL)
    assert _gone(holder)
    r = subprocess.run([sys.executable, "-c", TRY, str(folder)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr  # the OS dropped the lock with its owner


def test_a_second_lock_in_the_same_process_is_refused_and_does_not_drop_the_first(tmp_path):
    first = RunLock(tmp_path).acquire()
    try:
        with pytest.raises(RunFolderError, match="in use"):
            RunLock(tmp_path).acquire()
        r = subprocess.run([sys.executable, "-c", TRY, str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "in use" in r.stderr  # the refused attempt closed nothing of ours
    finally:
        first.release()
    RunLock(tmp_path).acquire().release()


def test_a_file_system_without_locks_is_said_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    def no_locks(fd, how):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(lock_module.fcntl, "lockf", no_locks)
    held = RunLock(tmp_path).acquire()
    held.release()
    err = capsys.readouterr().err
    assert "gives no locks (No locks available); a second run into this folder would not be refused" in err


# ---------------------------------------------------------------------------------------------
# On the Slurm test cluster
# ---------------------------------------------------------------------------------------------

reason = slurm_unavailable(min_nodes=3)
needs_slurm = pytest.mark.skipif(reason is not None, reason=reason or "")
NAME = "followlock"
JOB = ["--set", f"name={NAME}", *TINY, *ON_TEST_CLUSTER, *ONE_THREAD]
LONG = ["--set", "train.max_steps=100000", "--set", "train.epochs=1000", "--set", "train.checkpoint_every_s=2"]
TOOLS = ("squeue", "sinfo", "scontrol", "sacct")


def _on(node: str) -> list[str]:
    return ["--set", f"cluster.additional_parameters={{nodelist: {node}}}"]


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


@pytest.mark.slurm
@needs_slurm
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
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=drain", "reason=test_follow_lock"], check=True)


def _resume(node: str) -> None:
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)


@pytest.mark.slurm
@needs_slurm
def test_a_job_pending_on_a_drained_node_is_reported_not_cancelled_and_runs_when_it_returns(tmp_path):
    node = "node3"
    proc = None
    try:
        _drain(node)  # the only node the job may use
        proc = subprocess.Popen([sys.executable, "-m", "pyramidrepro", "submit", str(SMOKE), *ONCE,
                                 "--cluster", "slurm",
                                 "--out", str(tmp_path), "--wait", "--poll", "1", *JOB, *_on(node),
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


@pytest.mark.slurm
@needs_slurm
def test_a_second_run_from_another_node_is_refused_and_scancel_leaves_the_run_interrupted(tmp_path):
    r = run_cli("submit", str(SMOKE), *ONCE, "--cluster", "slurm", "--out", str(tmp_path), *JOB, *LONG, *_on("node1"),
                timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    job_id = r.stdout.split("submitted ", 1)[1].split(":")[0]
    try:
        (metrics,) = wait_for_metrics(tmp_path, f"{NAME}/*/metrics.h5", timeout=60)
        run_dir = metrics.parent
        second = subprocess.run(
            ["srun", "-w", "node2", "-N1", "-n1", "-c1", "-J", NAME, "-t", "5", sys.executable, "-m", "pyramidrepro",
             "run", str(SMOKE), "--out", str(tmp_path), "--run-id", run_dir.name, "--no-progress", *JOB, *LONG],
            cwd=ROOT, capture_output=True, text=True, timeout=90)
        said = [ln for ln in second.stderr.splitlines() if ln.startswith("pyramidrepro")]
        print("second run, on node2:", second.returncode, second.stderr)
        assert second.returncode != 0 and len(said) == 1 and "in use by a run that is still going" in said[0]
        assert read_metrics(metrics)["attrs"]["status"] == "running"
        subprocess.run(["scancel", job_id], check=True)
        deadline = time.monotonic() + 30
        while read_metrics(metrics)["attrs"]["status"] == "running" and time.monotonic() < deadline:
            time.sleep(0.3)
    finally:
        _cancel_ours()
    time.sleep(7)  # past the test cluster's KillWait (5 s): the job is gone, SIGKILL included
    attrs = read_metrics(metrics)["attrs"]
    assert attrs["status"] == "interrupted" and "cancelled (scancel)" in attrs["error"], attrs["error"]
    assert attrs["hostname"] == "node1" and attrs["finished_at"]
    assert Path(attrs["job_stdout"]).is_file() and Path(attrs["job_stderr"]).is_file()
    assert f"/{job_id}/{job_id}_0_log" in attrs["job_stderr"]
