"""The campaign's state and its checks before anything queues, and ``reproduce``'s local campaigns
(no cluster: the Slurm path is in test_campaign_slurm.py)."""

import json
import re

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
from pyramidrepro.records.runs import status_of
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


@pytest.mark.slow
def test_reproduce_runs_each_point_through_the_local_executor_and_skips_done_ones(tmp_path, cli):
    """The local campaign is submit --cluster local, one point at a time; a rerun skips results (nan too).
    ``reproduce`` runs in this process: each point is a process of submitit's, as for a user."""
    import yaml

    exp = yaml.safe_load(SMOKE.read_text())
    exp.update(name="tiny", model={"depth": 8, "alpha": 4, "block": "basic"},
               sweep=[{"train.mode": ["single", "ddp"]}, {"train.lr": [1e30], "train.max_steps": [40],
                                                          "data.synthetic_train_size": [2048]}])
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(exp))
    out = tmp_path / "out"
    r = cli("reproduce", "--experiment", str(path), "--out", str(out), "--nproc", "2", "--max-repeats", "1",
            "--min-repeats", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[1/3]" in r.stdout and ": completed in" in r.stdout and ": nan in" in r.stdout
    folders = sorted(p.parent for p in out.glob("tiny/*/metrics.h5"))
    assert [status_of(f) for f in folders] == ["completed", "completed", "nan"]
    assert list((out / ".submitit").iterdir())  # the jobs were submitit's
    assert (out / "tiny" / "report.md").is_file()
    again = cli("reproduce", "--experiment", str(path), "--out", str(out), "--nproc", "2", "--max-repeats", "1",
                "--min-repeats", "1")
    assert again.returncode == 0 and again.stdout.count("already done, skipped") == 3, again.stdout


@pytest.mark.slow
def test_reproduce_repeats_a_point_while_its_interval_is_too_wide(tmp_path, cli):
    """A 0.01 % target cannot be met: each point runs --max-repeats times, in passes (a point's repeat
    comes after every point's first run), and the report pools them; a 100 % target is met at once;
    a rerun finds every repeat done."""
    import yaml

    exp = yaml.safe_load(SMOKE.read_text())
    exp.update(name="rep", model={"depth": 8, "alpha": 4, "block": "basic"}, sweep={"train.max_steps": [12, 14]})
    path = tmp_path / "rep.yaml"
    path.write_text(yaml.safe_dump(exp))
    one_point = tmp_path / "one.yaml"
    one_point.write_text(yaml.safe_dump({**exp, "sweep": {"train.max_steps": [12]}}))
    out = tmp_path / "out"
    args = ["reproduce", "--experiment", str(path), "--out", str(out), "--max-repeats", "2", "--min-repeats", "1"]
    r = cli(*args, "--ci-target", "0.01")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "repeat 2 of at most 2" in r.stdout and "4 runs of 2 points" in r.stdout
    started = [line.split()[1].rstrip(":") for line in r.stdout.splitlines() if line.endswith(": running ...")]
    first, second = sorted(p.parent.name for p in out.glob("rep/*/metrics.h5") if "-r" not in p.parent.name)
    assert started == [first, second, first + "-r2", second + "-r2"]
    row = next(line for line in (out / "rep" / "report.md").read_text().splitlines() if line.startswith("| single |"))
    assert row.rstrip().endswith("| 4 |")  # the repeats column: both points are one line at one batch
    # the report is written after each pass (it says which) and once more at the end; within a pass,
    # again once REPORT_EVERY_S have passed
    assert "reproduce: report (pass 1 of at most 2 done, the campaign goes on)" in r.stdout
    assert "reproduce: report (pass 2 of at most 2 done" in r.stdout
    assert "Campaign: complete after 2 pass(es)" in (out / "rep" / "report.md").read_text()
    from pyramidrepro.cli._campaign import ReportSchedule
    from pyramidrepro.cluster.campaign import Progress

    command = f"pyramidrepro reproduce --out {out}"
    ReportSchedule(out / "rep", command, 2, every_s=3600)(Progress(1, 1, 2))  # too soon: not written
    assert "Campaign: complete after 2 pass(es)" in (out / "rep" / "report.md").read_text()
    ReportSchedule(out / "rep", command, 2, every_s=0)(Progress(1, 1, 2))
    assert "Campaign: pass 1 of at most 2 under way: 1 of 2 points done" in (out / "rep" / "report.md").read_text()
    again = cli(*args, "--ci-target", "0.01")
    assert again.stdout.count("already done, skipped") == 4, again.stdout
    # a 100 % target is met by one run: --min-repeats still runs each point twice
    wide = cli("reproduce", "--experiment", str(one_point), "--out", str(tmp_path / "wide"), "--max-repeats", "2",
               "--min-repeats", "2", "--ci-target", "100")
    assert wide.returncode == 0, wide.stdout + wide.stderr
    assert wide.stdout.count("(repeat 2 of at least 2)") == 1 and "2 runs of 1 points" in wide.stdout
    bad = cli(*args[:4], str(tmp_path / "bad"), "--max-repeats", "2", "--min-repeats", "3")
    assert bad.returncode == 2 and "--min-repeats: must be between 1 and --max-repeats (2), got 3" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_status_reads_a_finished_campaign_a_row_per_point(tmp_path, cli):
    """``status`` on the committed CPU campaign (42 runs, 14 points, 3 passes): every point done, and the
    campaign complete."""
    import shutil

    from pyramidrepro.cluster.campaign_state import CampaignState, Repeats, save_state

    committed = ROOT / "results" / "quick_cpu_2core" / "quick_cpu"
    folder = tmp_path / "quick_cpu"
    shutil.copytree(committed, folder, ignore=shutil.ignore_patterns("*.png", "*.svg", "report.md"))
    runs = sorted(p.name for p in folder.iterdir() if (p / "metrics.h5").is_file())
    passes = [[r for r in runs if re.search(r"-r\d$", r) is None], *([r for r in runs if r.endswith(f"-r{n}")]
                                                                     for n in (2, 3))]
    assert [len(p) for p in passes] == [14, 14, 14]  # a pass per repeat, as the campaign ran them
    save_state(folder, CampaignState("quick_cpu", str(ROOT / "experiments" / "quick_cpu.yaml"), {"name": "quick_cpu"},
                                     Repeats(3, 3, 0.02), "local", passes=passes))
    r = cli("status", str(folder), "--json")
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert len(status["points"]) == 14 and all(p["done"] == 3 for p in status["points"])
    assert all(p["wanted"] == 3 for p in status["points"]), status["points"]
    assert status["waits_for"] == "complete after 3 pass(es)", status["waits_for"]
    table = cli("status", str(folder))
    rows = re.findall(r"^\| p0\d\d-\S+ \| 3/3 \|", table.stdout, re.M)
    assert table.returncode == 0 and len(rows) == 14, table.stdout
