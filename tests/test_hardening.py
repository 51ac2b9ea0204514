"""Nothing lost, nothing merged: run folders have one owner, reruns never append duplicates, a full
disk keeps what was written, signals end runs with a status, ranks die with their launcher."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from pyramidrepro.config.load import load_config
from pyramidrepro.records.lock import RunFolderError, RunLock
from pyramidrepro.records.metrics import read_metrics
from pyramidrepro.records.runs import new_run_id
from support import ROOT, SMOKE, TINY, run_cli, wait_for_metrics, wait_until

LONG = ["--set", "train.max_steps=100000", "--set", "train.epochs=10000", "--set", "data.synthetic_train_size=4096"]


def _as_from_a_terminal() -> None:
    """Ctrl-C's default disposition: a suite started in the background (``cmd &``) has SIGINT
    ignored, and a child would inherit that and never see the Ctrl-C the tests send."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pyramidrepro", "run", str(SMOKE), "--no-progress", *TINY, *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_as_from_a_terminal)


def _wait_steps(path: Path, n: int, timeout: float = 120) -> None:
    wait_until(lambda: path.is_file() and len(read_metrics(path)["steps"]["step"]) >= n, timeout, f"{path}: {n} steps")


@pytest.mark.slow
def test_second_writer_is_refused_and_sigterm_ends_the_first_as_interrupted(tmp_path):
    first = _start("--out", str(tmp_path), "--run-id", "same", *LONG, "--set", "metrics.flush_interval_s=0.2")
    metrics = tmp_path / "smoke" / "same" / "metrics.h5"
    try:
        _wait_steps(metrics, 3)
        config_before = (tmp_path / "smoke" / "same" / "config.yaml").read_bytes()
        second = run_cli("run", str(SMOKE), "--out", str(tmp_path), "--run-id", "same", "--no-progress", *TINY, *LONG)
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip().count("\n") == 0 and "in use by a run that is still going" in second.stderr
        assert (tmp_path / "smoke" / "same" / "config.yaml").read_bytes() == config_before
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 143, err
    assert err.strip().splitlines()[-1] == "pyramidrepro: interrupted (SIGTERM)" and "Traceback" not in err
    m = read_metrics(metrics)
    assert m["attrs"]["status"] == "interrupted" and m["attrs"]["finished_at"]
    steps = list(m["steps"]["step"])
    assert steps == list(range(1, len(steps) + 1))  # one writer: no step twice


@pytest.mark.parametrize("sig,stop_before,status,code", [
    ("TERM", 12, "interrupted", 143),  # step 11 done, its row still on the device (rows go out in pairs)
    ("TERM", 11, "interrupted", 143),  # step 10 done and its row out
    ("KILL", 12, "running", -9),       # rows 9-10 out of the loop but not yet flushed (a 1000 s interval)
])
def test_a_stop_inside_a_logging_window_resumes_from_a_recorded_step(tmp_path, cli, sig, stop_before, status, code):
    """Wherever a stop lands in a logging window (``log_every`` 2), the checkpoint stands on a step
    whose row is on disk, so the resumed run has every step once: 10 here, the last one recorded."""
    args = ["run", str(SMOKE), "--out", str(tmp_path), "--run-id", "w", "--no-progress", *TINY,
            "--set", "train.max_steps=null", "--set", "train.epochs=2", "--set", "train.checkpoint_every_s=1e-9",
            "--set", "metrics.flush_interval_s=1000"]
    stopped = run_cli(*args, env={"PYRAMIDREPRO_INJECT_SIGNAL": f"0:{stop_before}:{sig}"})
    assert stopped.returncode == code, stopped.stderr
    metrics = tmp_path / "smoke" / "w" / "metrics.h5"
    assert read_metrics(metrics)["attrs"]["status"] == status
    resumed = cli(*args)  # the stop needed a process of its own (a signal to itself); the resume does not
    assert resumed.returncode == 0, resumed.stderr
    m = read_metrics(metrics)
    assert m["attrs"]["status"] == "completed" and int(m["attrs"]["resumed_from_step"]) == 10
    assert list(m["steps"]["step"]) == list(range(1, 17))  # 2 epochs of 8 steps: no gap, no step twice
    assert list(m["epochs"]["epoch"]) == [0, 1]


def test_a_malformed_signal_injection_is_refused_with_the_form_expected(tmp_path, cli):
    r = cli("run", str(SMOKE), "--out", str(tmp_path), "--no-progress", *TINY,
                env={"PYRAMIDREPRO_INJECT_SIGNAL": "0:3:HUP"})
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("pyramidrepro: error: environment: PYRAMIDREPRO_INJECT_SIGNAL: '0:3:HUP': "
                                "expected RANK:STEP:NAME, NAME one of TERM, INT, KILL")
    assert not list(tmp_path.rglob("*"))  # refused before the run folder was made


def test_rerun_without_checkpoint_starts_afresh_and_keeps_the_old_metrics(tmp_path, cli):
    args = ["--out", str(tmp_path), "--run-id", "r", "--set", "train.checkpoint_every_s=null",
            "--set", "train.max_steps=4"]
    folder = tmp_path / "smoke" / "r"
    assert cli("run", str(SMOKE), "--no-progress", *TINY, *args).returncode == 0
    (folder / "checkpoint.pt").unlink()  # as if killed before its first checkpoint
    with h5py.File(folder / "metrics.h5", "a") as f:
        f.attrs["status"] = "running"
        f.attrs["error"] = "stale"
    r = cli("run", str(SMOKE), "--no-progress", *TINY, *args)
    assert r.returncode == 0, r.stderr
    assert "kept as metrics.1.h5" in r.stdout
    fresh, old = read_metrics(folder / "metrics.h5"), read_metrics(folder / "metrics.1.h5")
    assert list(fresh["steps"]["step"]) == list(old["steps"]["step"]) == [1, 2, 3, 4]
    assert fresh["attrs"]["status"] == "completed" and fresh["attrs"]["error"] == ""


def test_refused_resume_leaves_the_run_as_it_was(tmp_path, cli):
    args = ["--out", str(tmp_path), "--run-id", "r", "--set", "train.max_steps=3", "--no-progress", *TINY]
    assert cli("run", str(SMOKE), *args).returncode == 0
    folder = tmp_path / "smoke" / "r"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    r = cli("run", str(SMOKE), *args, "--set", "train.lr=0.5")
    assert r.returncode == 2 and "different config" in r.stderr and r.stderr.strip().count("\n") == 0
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_default_run_ids_do_not_collide_within_a_second():
    cfg = load_config(SMOKE)
    assert len({new_run_id(cfg) for _ in range(50)}) == 50


def test_the_lock_is_released_when_its_owner_dies(tmp_path):
    code = (f"from pyramidrepro.records.lock import RunLock; RunLock({str(tmp_path)!r}).acquire(); "
            "import time; time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait until the holder has it
            try:
                RunLock(tmp_path).acquire().release()
            except RunFolderError:
                break
            time.sleep(0.1)
        with pytest.raises(RunFolderError, match="in use"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    RunLock(tmp_path).acquire().release()  # the OS released it with the process


def test_ranks_die_with_a_killed_launcher(tmp_path):
    launcher = _start("--out", str(tmp_path), "--set", "train.mode=ddp", "--nproc", "2", *LONG)
    try:
        wait_for_metrics(tmp_path)
        ranks = [int(p) for p in Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()]
        assert len(ranks) == 2
        launcher.kill()
        launcher.wait()
        wait_until(lambda: not any(_alive(p) for p in ranks), 10, "every rank gone with its launcher")
    finally:
        if launcher.poll() is None:
            launcher.kill()


@pytest.mark.parametrize("sig,code,said", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_a_stop_signal_to_the_launcher_stops_every_rank_at_the_next_step(tmp_path, sig, code, said):
    """The launcher passes SIGINT / SIGTERM to its ranks at once: they stop at the next step boundary, the
    run says interrupted, and the launcher's exit code says the same (not after the 10 s grace period)."""
    launcher = _start("--out", str(tmp_path), "--set", "train.mode=ddp", "--nproc", "2", *LONG,
                      "--set", "train.log_every=1", "--set", "metrics.flush_interval_s=0")
    try:
        metrics = wait_for_metrics(tmp_path)[0]
        _wait_steps(metrics, 3)
        ranks = [int(p) for p in Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()]
        assert len(ranks) == 2
        at_signal = int(read_metrics(metrics)["steps"]["step"][-1])
        launcher.send_signal(sig)
        wait_until(lambda: not any(_alive(p) for p in ranks), 5, "every rank gone after the launcher's signal", 0.05)
        _, err = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == code, err
    assert err.strip().splitlines()[-1] == f"pyramidrepro: interrupted ({said})" and "Traceback" not in err, err
    m = read_metrics(metrics)
    assert m["attrs"]["status"] == "interrupted" and m["attrs"]["finished_at"], m["attrs"]
    steps = list(m["steps"]["step"])
    assert steps == list(range(1, len(steps) + 1))
    # the step under way at the signal, and one more should the signal land just past a step boundary
    assert steps[-1] <= at_signal + 2, f"{steps[-1] - at_signal} steps recorded after the signal"


def test_a_rank_notes_a_stop_signal_once_and_a_late_second_one_forces_it():
    """A rank acts on SIGINT / SIGTERM at its next step boundary: the signal is noted (the terminal's Ctrl-C
    and the launcher's copy of it are one stop), and only a second one seconds later raises at once."""
    from pyramidrepro.machine.interrupts import FORCE_AFTER_S, DeferredStop, RunInterrupted

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    stop = DeferredStop()
    stop.install()
    try:
        assert signal.getsignal(signal.SIGTERM) != before[signal.SIGTERM] and stop.pending() is None  # safe to send
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        assert isinstance(stop.pending(), RunInterrupted) and str(stop.pending()) == "SIGTERM"
        stop.received_at -= FORCE_AFTER_S + 1
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        assert {sig: signal.getsignal(sig) for sig in before} == before
    finally:
        stop.restore()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MiB tmpfs (needs root; skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(disk: Path, leave_bytes: int) -> None:
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave_bytes))


def test_full_disk_keeps_the_rows_already_written(small_disk, cli):
    """The disk fills while a run writes: it ends with one line, its flushed rows stay readable, no temporaries,
    and the room it held for its last write records it failed."""
    run = _start("--out", str(small_disk), "--run-id", "r", "--set", "metrics.flush_interval_s=0", *LONG)
    folder = small_disk / "smoke" / "r"
    try:
        _wait_steps(folder / "metrics.h5", 3)
        _fill(small_disk, 900_000)  # less than one append's reserve
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no space left on device writing" in lines[0] and str(folder) in lines[0], err
    m = read_metrics(folder / "metrics.h5")  # still readable, every flushed step intact
    steps = list(m["steps"]["step"])
    assert len(steps) >= 3 and steps == list(range(1, len(steps) + 1)) and np.isfinite(m["steps"]["loss"]).all()
    assert m["attrs"]["status"] == "failed" and m["attrs"]["finished_at"], m["attrs"]
    assert "no space left on device writing" in m["attrs"]["error"]
    assert not [p.name for p in folder.iterdir() if "tmp" in p.name or "reserve" in p.name]

    fresh = cli("run", str(SMOKE), "--out", str(small_disk), "--run-id", "new", "--no-progress", *TINY)
    assert fresh.returncode == 1 and "no space left on device writing" in fresh.stderr, fresh.stderr
    assert fresh.stderr.strip().count("\n") == 0
    assert not [p for p in (small_disk / "smoke" / "new").iterdir() if "tmp" in p.name or p.suffix == ".h5"]


def test_the_final_status_is_written_in_the_room_the_reserve_held(tmp_path, monkeypatch):
    """On a disk of a few MiB (its files are what ``tmp_path`` holds) that fills up, closing gives back the
    reserve and writes the rows left and the status; rows that do not fit even then are dropped, and a run
    that would have completed is recorded failed."""
    from pyramidrepro.records.metrics import FINAL_WRITE_RESERVE_BYTES, MetricsWriter

    capacity = {"bytes": 8 << 20}

    def used() -> int:
        return sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())

    monkeypatch.setattr(shutil, "disk_usage",
                        lambda _: shutil._ntuple_diskusage(capacity["bytes"], used(), capacity["bytes"] - used()))
    for status, rows_after_full in (("failed", 5), ("completed", 300_000)):
        folder = tmp_path / status
        folder.mkdir()
        w = MetricsWriter(folder / "metrics.h5", flush_interval_s=0, reserve_bytes=FINAL_WRITE_RESERVE_BYTES)
        reserve = folder / ".metrics.h5.reserve"
        assert reserve.stat().st_size == FINAL_WRITE_RESERVE_BYTES
        for step in (1, 2, 3):
            w.log_step(step=step, epoch=0, loss=1.0)
        capacity["bytes"] = used() + 900_000  # full: less free than the margin every write keeps
        w.flush_interval_s = 1e9
        for step in range(4, 4 + rows_after_full):
            w.log_step(step=step, epoch=0, loss=1.0)
        with pytest.raises(OSError, match="no space left on device writing"):
            w.flush(force=True)
        if status == "failed":  # the rows left fit in the room of the reserve
            w.close(status, error="OSError: no space left")
            assert list(read_metrics(folder / "metrics.h5")["steps"]["step"]) == list(range(1, 9))
        else:  # they do not: the status alone, and the error goes on
            with pytest.raises(OSError, match="no space left on device writing"):
                w.close(status)
            m = read_metrics(folder / "metrics.h5")
            assert list(m["steps"]["step"]) == [1, 2, 3] and "300000 rows lost" in m["attrs"]["error"]
        m = read_metrics(folder / "metrics.h5")
        assert m["attrs"]["status"] == "failed" and m["attrs"]["finished_at"]
        assert not reserve.exists()
        capacity["bytes"] = 8 << 20


def test_reader_takes_a_consistent_snapshot(tmp_path):
    path = tmp_path / "metrics.h5"
    with h5py.File(path, "w") as f:  # as a reader may see a file mid-append: one dataset longer
        g = f.create_group("steps")
        g["step"] = np.arange(1, 6)
        g["loss"] = np.ones(4)
        f.create_group("summary")
        f.attrs["status"] = "running"
    m = read_metrics(path)
    assert list(m["steps"]["step"]) == [1, 2, 3, 4] and len(m["steps"]["loss"]) == 4


@pytest.mark.parametrize("status,code", [("oom", 3), ("nan", 4)])
def test_a_finished_run_that_did_not_complete_exits_non_zero(tmp_path, cli, status, code):
    sets = (["--set", "train.lr=1e30", "--set", "train.max_steps=40", "--set", "data.synthetic_train_size=2048",
             "--set", "train.epochs=10"] if status == "nan" else ["--set", "train.max_steps=4"])
    env = {"PYRAMIDREPRO_INJECT_OOM": "0:2"} if status == "oom" else None
    r = cli("run", str(SMOKE), "--out", str(tmp_path), "--no-progress", *TINY, *sets, env=env)
    assert r.returncode == code, r.stderr
    folder = next(tmp_path.glob("smoke/*"))
    assert read_metrics(folder / "metrics.h5")["attrs"]["status"] == status
    assert os.listdir(folder)


def test_ctrl_c_is_one_line_and_the_run_says_interrupted(tmp_path):
    run = _start("--out", str(tmp_path), "--run-id", "c", *LONG, "--set", "metrics.flush_interval_s=0.2")
    metrics = tmp_path / "smoke" / "c" / "metrics.h5"
    try:
        _wait_steps(metrics, 2)
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130 and err.strip().splitlines() == ["pyramidrepro: interrupted (Ctrl-C)"], err
    assert read_metrics(metrics)["attrs"]["status"] == "interrupted"
