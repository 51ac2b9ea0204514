"""When one rank fails, every rank stops and rank 0 records why (training/stop_channel.py), driven by
the faults a test injects (training/fault_injection.py): an OOM on one DDP rank, at a step or in setup."""

import subprocess
import time
from pathlib import Path

import pytest

from pyramidrepro.records.metrics import read_metrics
from support import SMOKE, TINY, run_cli


def _ddp_run(tmp_path: Path, run_id: str, inject: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    r = run_cli("run", str(SMOKE), "--set", "train.mode=ddp", "--nproc", "2", "--run-id", run_id,
                "--out", str(tmp_path), "--set", "train.max_steps=100000", "--set", "data.synthetic_train_size=256",
                "--set", "train.epochs=100000", "--set", "train.dist_timeout_s=300", *TINY,
                env={"PYRAMIDREPRO_INJECT_OOM": inject}, timeout=120)
    return r, time.monotonic() - t0


def test_oom_on_one_ddp_rank_is_recorded_and_every_rank_leaves(tmp_path):
    """Rank 1 runs out of memory at step 3 of a run that would go on for minutes: rank 0 records
    `oom` with the batch size, and both ranks are gone long before the 300 s collective timeout."""
    r, elapsed = _ddp_run(tmp_path, "oom1", "1:3")
    assert r.returncode == 3, r.stderr[-2000:]  # schema.EXIT_CODES: oom
    m = read_metrics(tmp_path / "smoke" / "oom1" / "metrics.h5")
    assert m["attrs"]["status"] == "oom", m["attrs"]
    assert m["attrs"]["oom_batch_size"] == 64 and m["attrs"]["stop_rank"] == 1
    assert "step 3" in m["attrs"]["error"]
    assert 2 <= len(m["steps"]["step"]) < 20  # rows up to the OOM were kept
    assert elapsed < 60, f"{elapsed:.1f} s: a rank waited for the collective timeout"
    assert "oom (rank 1)" in r.stdout


@pytest.mark.parametrize("nproc,inject", [(1, "0:setup"), (2, "1:setup")])
def test_oom_during_setup_still_leaves_an_oom_record(tmp_path, cli, nproc, inject):
    if nproc == 1:
        r = cli("run", str(SMOKE), "--run-id", "setup", "--out", str(tmp_path), *TINY,
                env={"PYRAMIDREPRO_INJECT_OOM": inject})
        elapsed = 0.0
    else:
        r, elapsed = _ddp_run(tmp_path, "setup", inject)
    assert r.returncode == 3, r.stderr[-2000:]
    m = read_metrics(tmp_path / "smoke" / "setup" / "metrics.h5")
    assert m["attrs"]["status"] == "oom" and m["attrs"]["oom_batch_size"] == 64
    assert m["attrs"]["mode"] == ("ddp" if nproc == 2 else "single") and "setup" in m["attrs"]["error"]
    assert len(m["steps"]["step"]) == 0
    assert (tmp_path / "smoke" / "setup" / "config.yaml").is_file()
    assert elapsed < 60


def test_a_bad_injection_spec_is_an_error_not_a_silent_run(tmp_path, cli):
    r = cli("run", str(SMOKE), "--out", str(tmp_path), *TINY, env={"PYRAMIDREPRO_INJECT_OOM": "rank1"})
    assert r.returncode != 0 and "PYRAMIDREPRO_INJECT_OOM" in r.stderr
