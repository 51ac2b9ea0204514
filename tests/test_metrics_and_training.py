import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from pyramidrepro.records.metrics import EPOCH_FIELDS, STEP_FIELDS, MetricsWriter, read_metrics
from support import ROOT, SMOKE, TINY, only_run_dir, wait_until


def test_run_writes_the_documented_layout_and_no_progress_bar_without_a_tty(tmp_path, cli):
    out = tmp_path / "out"
    r = cli("run", str(SMOKE), "--out", str(out), *TINY, "--set", "train.evaluate=true",
            "--set", "train.max_steps=null")
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr  # no progress bar redraws
    assert "epoch 1/1" in r.stdout
    run_dir = only_run_dir(out)
    assert str(run_dir / "metrics.h5") in r.stdout
    assert (run_dir / "config.yaml").is_file()
    with h5py.File(run_dir / "metrics.h5", "r") as f:
        for key in ("status", "config_yaml", "git_commit", "versions", "hostname", "device_name",
                    "world_size", "mode", "data_source", "started_at", "finished_at"):
            assert key in f.attrs, key
        assert f.attrs["status"] == "completed"
        assert f.attrs["data_source"] == "synthetic" and f.attrs["mode"] == "single"
        lengths = {f["steps"][k].shape[0] for k in STEP_FIELDS}
        assert lengths == {8}  # 512 samples // 64
        assert list(f["steps/step"][:]) == list(range(1, 9))
        assert all(f["epochs"][k].shape == (1,) for k in EPOCH_FIELDS)
        assert f["summary"].attrs["images_per_s"] > 0
        assert f["summary"].attrs["peak_memory_bytes"] > 0
        # time inside the HDF5 writer during the loop, and its share of the loop's step time
        assert f["summary"].attrs["metrics_write_s"] > 0
        assert 0 < f["summary"].attrs["metrics_overhead"] < 1
        assert 0 <= f["summary"].attrs["final_test_acc"] <= 1
        assert f["steps"]["step"].maxshape == (None,) and f["steps"]["step"].chunks
        assert f["ranks/step_time_s"].shape == (1, 8)


def test_metrics_readable_mid_run_and_after_sigkill(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyramidrepro", "run", str(SMOKE), "--out", str(out),
         "--set", "train.max_steps=100000", "--set", "train.epochs=1000",
         "--set", "metrics.flush_interval_s=0.2", "--set", "model.alpha=4", "--set", "model.depth=8"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        def ten_rows() -> dict | None:
            files = list(out.glob("*/*/metrics.h5"))
            m = read_metrics(files[0]) if files else {}
            return m if len(m.get("steps", {}).get("step", [])) >= 10 else None

        m = wait_until(ten_rows, 90, "10 rows while the run goes")
        seen = len(m["steps"]["step"])
        assert m["attrs"]["status"] == "running"
        assert list(m["steps"]["step"]) == list(range(1, seen + 1))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    after = read_metrics(next(out.glob("*/*/metrics.h5")))
    assert after["attrs"]["status"] == "running"  # never finished, but readable
    n = len(after["steps"]["step"])
    assert n >= seen
    assert {len(after["steps"][k]) for k in STEP_FIELDS} == {n}
    assert list(after["steps"]["step"]) == list(range(1, n + 1))


def test_writer_rewind_drops_rows_past_a_checkpoint(tmp_path):
    w = MetricsWriter(tmp_path / "m.h5", flush_interval_s=100)
    for s in range(1, 11):
        w.log_step(step=s, epoch=(s - 1) // 5, loss=1.0)
    w.log_epoch(epoch=0, train_loss=1.0)
    w.log_epoch(epoch=1, train_loss=1.0)
    w.rewind(last_step=5, completed_epochs=1)
    m = read_metrics(tmp_path / "m.h5")
    assert list(m["steps"]["step"]) == [1, 2, 3, 4, 5] and list(m["epochs"]["epoch"]) == [0]


def test_a_new_metrics_file_appears_with_its_identity(tmp_path):
    """A reader that finds the file (a report, a test waiting on a job) finds the run's identity in it:
    the file is renamed into place with the attributes given, before any flush."""
    w = MetricsWriter(tmp_path / "m.h5", flush_interval_s=100, attrs={"slurm_job_id": "42", "mode": "single"})
    attrs = read_metrics(tmp_path / "m.h5")["attrs"]
    assert (attrs["status"], attrs["slurm_job_id"], attrs["mode"]) == ("running", "42", "single")
    w.close("completed")


@pytest.mark.slow
def test_learns_a_small_task_to_90_percent_on_cpu(tmp_path, cli):
    out = tmp_path / "out"
    start = time.monotonic()
    r = cli("run", str(SMOKE), "--out", str(out),
                "--set", "data.synthetic_learnable=true", "--set", "data.synthetic_train_size=2048",
                "--set", "data.synthetic_test_size=512", "--set", "train.evaluate=true",
                "--set", "train.max_steps=null", "--set", "train.epochs=3",
                "--set", "train.lr=0.05", "--set", "model.depth=8", "--set", "model.alpha=8")
    elapsed = time.monotonic() - start
    assert r.returncode == 0, r.stderr
    m = read_metrics(only_run_dir(out) / "metrics.h5")
    acc = float(m["summary"]["final_test_acc"])
    print(f"learning test: test accuracy {acc:.3f} in {elapsed:.1f} s")
    assert acc >= 0.90  # the time is printed, not asserted: it is the host's speed, not a behaviour


def test_non_finite_loss_stops_with_status_nan(tmp_path, cli):
    out = tmp_path / "out"
    r = cli("run", str(SMOKE), "--out", str(out), *TINY, "--set", "train.lr=1e30",
                "--set", "train.max_steps=40", "--set", "train.epochs=10",
                "--set", "data.synthetic_train_size=2048")
    assert r.returncode == 4, r.stderr  # schema.EXIT_CODES: nan
    m = read_metrics(only_run_dir(out) / "metrics.h5")
    assert m["attrs"]["status"] == "nan"
    assert 1 <= int(m["attrs"]["nan_step"]) <= 40
    assert not np.isfinite(m["steps"]["loss"][-1])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_runs_on_cpu(tmp_path, cli, precision):
    out = tmp_path / "out"
    r = cli("run", str(SMOKE), "--out", str(out), *TINY, "--set", f"train.precision={precision}",
                "--set", "train.channels_last=true", "--set", "train.max_steps=3")
    assert r.returncode == 0, r.stderr
    m = read_metrics(only_run_dir(out) / "metrics.h5")
    assert m["attrs"]["status"] == "completed" and m["attrs"]["precision"] == precision
    assert np.isfinite(m["steps"]["loss"]).all()


def test_rerun_into_a_finished_run_resumes_at_its_end(tmp_path, cli):
    args = ["run", str(SMOKE), "--out", str(tmp_path), "--run-id", "same", "--set", "train.max_steps=null",
            "--set", "train.epochs=2", *TINY]
    assert cli(*args).returncode == 0
    first = read_metrics(tmp_path / "smoke" / "same" / "metrics.h5")
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    again = read_metrics(tmp_path / "smoke" / "same" / "metrics.h5")
    assert again["attrs"]["status"] == "completed" and int(again["attrs"]["resumed_from_step"]) == 16
    assert list(again["steps"]["step"]) == list(first["steps"]["step"]) == list(range(1, 17))
    assert list(again["epochs"]["epoch"]) == [0, 1]
