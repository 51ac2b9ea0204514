"""The run-folder lock (records/lock.py): a POSIX record lock that holds between processes that share
no parent and between nodes, refuses a second holder in one process without dropping the first, and
lets a run go on (saying so) on a file system without locks; a job cancelled with scancel while it
holds the lock leaves its run ``interrupted``.

The Slurm test uses the 3-node test cluster; its jobs are named ``runlock``."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyramidrepro.records import lock as lock_module
from pyramidrepro.records.lock import LOCK_NAME, RunFolderError, RunLock
from pyramidrepro.records.metrics import read_metrics
from support import ON_TEST_CLUSTER, ONCE, ONE_THREAD, ROOT, SMOKE, TINY, run_cli, wait_for_metrics, wait_until
from support.slurm import on_node

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

NAME = "runlock"
JOB = ["--set", f"name={NAME}", *TINY, *ON_TEST_CLUSTER, *ONE_THREAD]
LONG = ["--set", "train.max_steps=100000", "--set", "train.epochs=1000", "--set", "train.checkpoint_every_s=2"]


@pytest.mark.slurm(nodes=3)
def test_a_second_run_from_another_node_is_refused_and_scancel_leaves_the_run_interrupted(tmp_path):
    r = run_cli("submit", str(SMOKE), *ONCE, "--cluster", "slurm", "--out", str(tmp_path), *JOB, *LONG,
                *on_node("node1"), timeout=60)
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
        wait_until(lambda: read_metrics(metrics)["attrs"]["status"] != "running", 30, "the run's end recorded")
    finally:
        subprocess.run(["scancel", "-n", NAME], capture_output=True)
    time.sleep(7)  # past the test cluster's KillWait (5 s): the job is gone, SIGKILL included
    attrs = read_metrics(metrics)["attrs"]
    assert attrs["status"] == "interrupted" and "cancelled (scancel)" in attrs["error"], attrs["error"]
    assert attrs["hostname"] == "node1" and attrs["finished_at"]
    assert Path(attrs["job_stdout"]).is_file() and Path(attrs["job_stderr"]).is_file()
    assert f"/{job_id}/{job_id}_0_log" in attrs["job_stderr"]
