"""The campaign's state and its checks before anything queues (no cluster: the Slurm path is in
test_campaign_slurm.py)."""

import json

import pytest

from pyramidrepro.cluster.campaign_state import (
    CampaignState,
    Repeats,
    Submission,
    load_state,
    save_state,
    state_path,
)
from pyramidrepro.cluster.campaign_view import Kind, classify
from support import ROOT, SMOKE

FIG5 = str(ROOT / "experiments" / "fig5.yaml")


@pytest.mark.parametrize("dry_run", [False, True])
def test_submit_without_the_dataset_is_one_line_and_queues_nothing(cli, tmp_path, dry_run):
    out = tmp_path / "out"
    r = cli("submit", FIG5, "--out", str(out), "--set", f"data.root={tmp_path / 'nodata'}", "--set",
            "data.loader=torch", *(["--dry-run"] if dry_run else []))
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "CIFAR-10 not found under" in r.stderr
    assert f"pyramidrepro data fetch --root {tmp_path / 'nodata'}" in r.stderr
    assert not out.exists() and not (tmp_path / "nodata").exists()


def _state(**kw):
    return CampaignState("smoke", str(SMOKE), {"name": "smoke"}, Repeats(2, 3, 0.02), "slurm", **kw)


def test_the_state_is_written_whole_and_read_back(tmp_path):
    state = _state(passes=[["a", "b"]])
    state.record("a", Submission("12_0", str(tmp_path / ".submitit/x/%j"), "slurm", 1.0, 1))
    save_state(tmp_path, state)
    assert load_state(tmp_path) == state
    assert not [p for p in tmp_path.iterdir() if p.name != "campaign.json"]  # no temporary file left
    assert load_state(tmp_path / "none") is None
    state_path(tmp_path).write_text(json.dumps({"version": 99}))
    with pytest.raises(Exception, match="not a campaign state of version 1"):
        load_state(tmp_path)


def test_a_run_is_waiting_due_or_failed_by_its_job_and_its_folder(tmp_path):
    state = _state(passes=[["a", "b", "c", "d"]])
    for run_id, job in (("a", "1_0"), ("b", "1_1"), ("c", "1_2")):
        state.record(run_id, Submission(job, "f/%j", "slurm", 1.0, 1))
    for _ in range(2):
        state.record("c", Submission("9", "f/%j", "slurm", 2.0, 1))
    queue = {"1_0": ("PENDING", "Priority"), "1_1": ("CANCELLED", "None")}
    views = {r: classify(state, tmp_path, r, queue) for r in "abcd"}
    assert views["a"].kind is Kind.WAITING and views["a"].reason == "Priority"
    assert views["b"].kind is Kind.DUE and "job 1_1 is gone" in views["b"].reason
    assert views["c"].kind is Kind.FAILED and "submitted 3 times" in views["c"].reason
    assert views["d"].kind is Kind.DUE and views["d"].reason == "not submitted yet"
    # the controller not answering: a queued run is neither resubmitted nor given up
    assert classify(state, tmp_path, "b", None).kind is Kind.WAITING
    assert classify(state, tmp_path, "b", queue, frozenset({"b"})).kind is Kind.FAILED


def test_status_and_follow_refuse_a_folder_without_a_campaign(cli, tmp_path):
    for command in ("status", "follow"):
        r = cli(command, str(tmp_path))
        assert r.returncode == 2 and "no campaign.json here" in r.stderr and len(r.stderr.splitlines()) == 1
    save_state(tmp_path / "other", _state(passes=[["a"]]))  # its runs would be in OUT/smoke
    r = cli("status", str(tmp_path / "other"))
    assert r.returncode == 2 and "holds the campaign of experiment 'smoke'" in r.stderr, r.stderr


def test_submit_again_skips_what_is_done_and_rerun_done_starts_afresh(cli, tmp_path):
    """The engine with the debug executor (runs in this process): a second submit finds the run done and
    submits nothing; --rerun-done starts a new campaign that submits it again."""
    args = ["submit", str(SMOKE), "--cluster", "debug", "--out", str(tmp_path), "--min-repeats", "1",
            "--max-repeats", "1", "--set", "model.depth=8", "--set", "model.alpha=4"]
    first = cli(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    (run_dir,) = [p.parent for p in tmp_path.glob("smoke/*/metrics.h5")]
    state = load_state(tmp_path / "smoke")
    assert state.executor == "debug" and state.jobs_submitted() == 1 and state.passes == [[run_dir.name]]
    first_job = state.last_job(run_dir.name)
    again = cli(*args[:6], *args[10:])  # without the repeats flags: the campaign keeps its own rule (1 run)
    assert again.returncode == 0 and f"{run_dir.name}: already done, skipped" in again.stdout, again.stdout
    state = load_state(tmp_path / "smoke")
    assert state.jobs_submitted() == 1 and (state.repeats.minimum, state.repeats.maximum) == (1, 1)
    rerun = cli(*args, "--rerun-done")
    assert rerun.returncode == 0 and "running ..." in rerun.stdout, rerun.stdout + rerun.stderr
    state = load_state(tmp_path / "smoke")  # a new campaign: its one job is the rerun's
    assert state.rerun_done and state.jobs_submitted() == 1 and state.last_job(run_dir.name) != first_job
