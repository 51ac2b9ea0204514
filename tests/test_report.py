import csv
import json
from pathlib import Path

import pytest
import yaml

from pyramidrepro.records.metrics import MetricsWriter
from pyramidrepro.records.runs import load_runs
from pyramidrepro.study.claims import check_claims
from pyramidrepro.study.report import build_report
from support import SMOKE, run_cli


def fake_run(root: Path, name: str, mode: str, batch: int, status: str, ips: float | None,
             gpu: bool = True, cap: float | None = 12.0, peaks=(10 * 2**30,), precision="fp32",
             accumulation: int = 1, summary: dict | None = None, **attrs) -> None:
    """A hand-built metrics file, for the claim logic."""
    d = root / name
    d.mkdir(parents=True)
    w = MetricsWriter(d / "metrics.h5", flush_interval_s=0)
    cfg = {"name": "fake", "model": {"depth": 110, "alpha": 270.0},
           "train": {"mode": mode, "batch_size": batch, "precision": precision,
                     "accumulation_steps": accumulation}}
    w.set_attrs(config_yaml=yaml.safe_dump(cfg), mode=mode, batch_size=batch,
                device_name="NVIDIA H100 80GB HBM3" if gpu else "cpu (x86_64, 2 cores)",
                memory_limit_gb=cap if cap else "", data_source="synthetic", precision=precision,
                accumulation_steps=accumulation, world_size=2 if mode != "single" else 1,
                versions=json.dumps({"torch": "2.x"}), git_commit="abc", model="PyramidNet-110 alpha=270 basic")
    w.set_attrs(**attrs)
    if ips is not None:
        w.set_summary(images_per_s=ips, **(summary or {}))
    w.set_ranks(peak_memory_bytes=list(peaks))
    w.close(status)


PAPER_LIKE = [  # shaped like the paper's figure
    ("single", 128, "completed", 300), ("single", 256, "completed", 320), ("single", 512, "oom", None),
    ("single", 1024, "oom", None),
    ("dp", 128, "completed", 200), ("dp", 256, "completed", 260), ("dp", 512, "completed", 310),
    ("ddp", 128, "completed", 500), ("ddp", 256, "completed", 560), ("ddp", 512, "completed", 600),
]


def build(tmp_path, rows, **kw):
    for i, (mode, batch, status, ips) in enumerate(rows):
        fake_run(tmp_path / "runs", f"r{i}", mode, batch, status, ips, **kw)
    return {c.key: c for c in check_claims(load_runs(tmp_path / "runs"))}


def test_all_claims_pass_on_paper_shaped_results(tmp_path):
    claims = build(tmp_path, PAPER_LIKE)
    assert {k: c.verdict for k, c in claims.items()} == {"C1": "PASS", "C2": "PASS", "C3": "PASS", "C4": "PASS"}
    assert "DP@512 / single@256 = 0.97" in claims["C2"].evidence


def test_each_claim_can_fail(tmp_path):
    rows = [r for r in PAPER_LIKE if not (r[0] == "single" and r[1] == 512)]
    rows += [("single", 512, "completed", 330)]  # fits: C1 fails
    rows = [("dp", b, s, 400.0) if m == "dp" else (m, b, s, v) for m, b, s, v in rows]  # DP faster
    rows = [("ddp", 512, "completed", 100.0) if (m, b) == ("ddp", 512) else (m, b, s, v)
            for m, b, s, v in rows]  # DDP shrinks and loses at 512
    claims = build(tmp_path, rows)
    assert {k: c.verdict for k, c in claims.items()} == {"C1": "FAIL", "C2": "FAIL", "C3": "FAIL", "C4": "FAIL"}


def test_claims_not_run_without_the_needed_runs(tmp_path):
    claims = build(tmp_path, [("single", 64, "completed", 100), ("ddp", 64, "completed", 150)],
                   gpu=False, cap=None)
    assert claims["C1"].verdict == "NOT RUN" and "memory_limit_gb" in claims["C1"].evidence
    assert claims["C2"].verdict == "NOT RUN" and "DP" in claims["C2"].evidence
    assert claims["C3"].verdict == "PASS"
    assert claims["C4"].verdict == "NOT RUN"


@pytest.mark.slow
def test_report_from_real_short_runs_marks_running_and_oom(tmp_path, cli):
    out = tmp_path / "runs"
    for mode, batch in (("single", 32), ("single", 64)):
        r = cli("run", str(SMOKE), "--set", f"train.mode={mode}", "--set", f"train.batch_size={batch}",
                "--set", "model.depth=8", "--set", "model.alpha=4", "--out", str(out))
        assert r.returncode == 0, r.stderr
    r = run_cli("run", str(SMOKE), "--set", "train.mode=ddp", "--nproc", "2", "--set", "train.batch_size=64",
                "--set", "model.depth=8", "--set", "model.alpha=4", "--out", str(out))
    assert r.returncode == 0, r.stderr
    # the one-device base of the scaling model: one thread, like each of the two ranks
    r = cli("run", str(SMOKE), "--set", "train.threads=1", "--set", "train.batch_size=32",
            "--set", "model.depth=8", "--set", "model.alpha=4", "--out", str(out))
    assert r.returncode == 0, r.stderr
    fake_run(out / "smoke", "oomrun", "single", 128, "oom", None, gpu=False, cap=None)
    fake_run(out / "smoke", "going", "single", 256, "running", None, gpu=False, cap=None)
    r = cli("report", str(out), "--out", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "(synthetic data)" in text.splitlines()[0]
    assert "| single | 128 | - | oom |" in text and "| ddp | 64 | torch | completed |" in text
    assert "still running" in text and "going" in text
    assert "master" in text  # per-rank memory for the 2-rank run
    for name in ("fig5_throughput.png", "fig5_throughput.svg"):
        assert (tmp_path / "rep" / name).stat().st_size > 1000
    assert "C4:" in r.stdout and "NOT RUN" in r.stdout
    # the scaling model predicted the 2-rank run from the one-thread run and the link it measured
    assert "| ddp | 1 | 2 | 32 |" in text and "Largest prediction error" in text
    assert (tmp_path / "rep" / "scaling.png").stat().st_size > 1000
    assert "HDF5 logging: median" in text


def test_scaling_prediction_in_the_report_by_hand(tmp_path):
    runs = tmp_path / "runs"
    cpu = dict(gpu=False, cap=None)
    fake_run(runs, "one", "single", 32, "completed", 100.0, threads_per_process=1, **cpu)
    fake_run(runs, "two-threads", "single", 32, "completed", 180.0, threads_per_process=2, **cpu)
    fake_run(runs, "ddp", "ddp", 64, "completed", 190.0, local_batch_size=32, threads_per_process=1,
             grad_bytes=4_000_000, bucket_cap_mb=25.0, link_name="measured (gloo, 2 ranks)",
             link_bandwidth_GBps=1.0, link_latency_us=100.0, **cpu)
    res = build_report(runs, tmp_path / "rep")
    # t1 = 32/100 s from the one-thread run only; comm = 4 MB / 1 GB/s + 2 buckets x 2 hops x 100 us
    predicted = 64 / (0.32 + 0.004 + 0.0004)
    (row,) = res["scaling"]
    assert row["predicted"] == pytest.approx(predicted) and row["measured"] == 190.0
    assert row["error"] == pytest.approx((predicted - 190) / 190)
    text = Path(res["report"]).read_text()
    row_text = f"| 100 | 1.00 GB/s, 100 us | {predicted:,.0f} | 190 | {100 * row['error']:+.1f}% |"
    assert f"| ddp | 1 | 2 | 32 {row_text}" in text  # one node, two devices, 32 per device
    assert (tmp_path / "rep" / "scaling.svg").is_file()


def test_scaling_section_says_what_it_needs(tmp_path):
    build(tmp_path, PAPER_LIKE)  # GPU-shaped runs without link measurements
    res = build_report(tmp_path / "runs", tmp_path / "rep")
    assert res["scaling"] == []
    assert "Not drawn: needs a completed multi-rank DDP run" in Path(res["report"]).read_text()


def test_report_on_an_empty_folder_is_a_clear_error(tmp_path, cli):
    r = cli("report", str(tmp_path))
    assert r.returncode == 2 and "no metrics.h5" in r.stderr
    r = cli("report", str(tmp_path / "missing"))
    assert r.returncode == 2 and "no such results folder" in r.stderr


def test_accuracy_runs_are_compared_with_the_paper(tmp_path):
    d = tmp_path / "acc"
    d.mkdir()
    w = MetricsWriter(d / "metrics.h5", flush_interval_s=0)
    w.set_attrs(config_yaml=yaml.safe_dump({"model": {"depth": 110, "alpha": 48.0}, "train": {"mode": "single"}}),
                mode="single", batch_size=128, device_name="cpu", data_source="cifar10 (x)",
                model="PyramidNet-110 alpha=48 basic")
    for e, acc in enumerate([0.5, 0.8, 0.9]):
        w.log_epoch(epoch=e, test_acc=acc, train_loss=1.0)
    w.close("completed")
    res = build_report(tmp_path, tmp_path / "rep")
    text = Path(res["report"]).read_text()
    assert "| PyramidNet-110 alpha=48 basic | 3 | 10.00% | 4.62% |" in text
    assert (tmp_path / "rep" / "accuracy.png").is_file()




def test_remedy_lines_and_largest_batch_figure(tmp_path):
    rows = list(PAPER_LIKE)
    for i, (b, st, ips) in enumerate([(512, "completed", 500.0), (1024, "oom", None)]):
        fake_run(tmp_path / "runs", f"bf{i}", "single", b, st, ips, precision="bf16")
    fake_run(tmp_path / "runs", "acc", "single", 1024, "completed", 290.0, accumulation=4)
    for i, (mode, batch, status, ips) in enumerate(rows):
        fake_run(tmp_path / "runs", f"r{i}", mode, batch, status, ips)
    res = build_report(tmp_path / "runs", tmp_path / "rep")
    text = Path(res["report"]).read_text()
    assert "- single: fits 256, out of memory at 512" in text
    assert "- single+bf16: fits 512, out of memory at 1024" in text
    assert "- single+accum4: fits 1024" in text
    assert "## Images/s at the paper's batch sizes" in text
    assert (tmp_path / "rep" / "largest_batch.png").stat().st_size > 1000


def test_c1_is_decided_from_the_boundary_a_search_found(tmp_path):
    """Probes between 256 and 512 refine the boundary; they count for C1 and stay out of the
    throughput table."""
    for i, (batch, status) in enumerate([(384, "oom"), (320, "completed"), (352, "oom"), (336, "oom")]):
        fake_run(tmp_path / "runs", f"probe{i}", "single", batch, status, 100.0 if status == "completed" else None,
                 boundary_search="{}")
    claims = build(tmp_path, PAPER_LIKE)
    assert claims["C1"].verdict == "PASS"
    assert "completed 320, smallest out of memory 336 (boundary search: 4 probes)" in claims["C1"].evidence
    build_report(tmp_path / "runs", tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| single | 320 |" not in text and "- single: fits 320, out of memory at 336" in text


def test_c1_fails_when_the_boundary_lies_below_the_papers_256(tmp_path):
    rows = [("single", 128, "completed", 300), ("single", 256, "oom", None), ("single", 512, "oom", None)]
    claims = build(tmp_path, rows)
    assert claims["C1"].verdict == "FAIL" and "completed 128, smallest out of memory 256" in claims["C1"].evidence


# ---------------------------------------------------------------------------------------------
# Runs the report cannot make sense of: skipped with the reason, the others still reported
# ---------------------------------------------------------------------------------------------

GOOD = [("single", 128, "completed", 300.0), ("single", 512, "oom", None), ("ddp", 128, "completed", 500.0)]

#: case -> (fake_run arguments of the bad run, the status written over it afterwards, the reason given)
BAD_RUNS = {
    "versions a list": (dict(versions=["torch 2.x"]), None, "its versions attribute is not a JSON object"),
    "negative images/s": (dict(ips=-320.0), None, "its summary's images_per_s is not above 0 (got -320.0)"),
    "batch 0": (dict(batch=0), None, "its batch_size attribute is below 1 (got 0)"),
    "status with a newline": ({}, "completed\n| forged | row |", "its status attribute is not a run status"),
    "status with a right-to-left override": ({}, "\u202edetelpmoc", "its status attribute is not a run status"),
}


def _cells(row: str) -> int:
    """Cells of a markdown table row: its pipes that no backslash escapes, less one."""
    pipes, escaped = 0, False
    for c in row:
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == "|":
            pipes += 1
    return pipes - 1


def assert_tables_whole(text: str) -> None:
    """Every row of every table has its header's cells, and nothing a run recorded split a line."""
    header = None
    for line in text.splitlines():
        header = (header if header is not None else _cells(line)) if line.startswith("|") else None
        assert header is None or _cells(line) == header, line
    assert "\u202e" not in text and not any(line.startswith("| forged") for line in text.splitlines())


def _overwrite(folder: Path, **attrs) -> None:
    """Write ``attrs`` over a finished run's (what ``MetricsWriter.close`` would refuse)."""
    w = MetricsWriter(folder / "metrics.h5", flush_interval_s=0)
    w.set_attrs(**{k: v for k, v in attrs.items() if k != "summary"})
    w.set_summary(**attrs.get("summary", {}))
    w.flush(force=True)


@pytest.mark.parametrize("case", list(BAD_RUNS))
def test_a_run_that_makes_no_sense_is_skipped_with_its_reason(tmp_path, cli, case):
    runs, rep = tmp_path / "runs", tmp_path / "rep"
    for i, row in enumerate(GOOD):
        fake_run(runs, f"good{i}", *row)
    changes, status, reason = BAD_RUNS[case]
    fake_run(runs, "bad", **{**dict(mode="single", batch=256, status="completed", ips=320.0), **changes})
    if status is not None:
        _overwrite(runs / "bad", status=status)
    r = cli("report", str(runs), "--out", str(rep))
    assert r.returncode == 0, r.stderr
    assert f"report: skipping {runs / 'bad' / 'metrics.h5'}: {reason}" in r.stdout
    text = (rep / "report.md").read_text()
    assert "Runs read: 3 from" in text and "; 1 skipped, listed below" in text
    skipped = text.split("## Runs skipped")[1].split("\n## ")[0]
    assert f"bad/metrics.h5: {reason}" in skipped
    # the good runs are reported; the bad one is no point of the table nor of the figure
    assert "| single | 128 | - | completed | 300 |" in text and "| ddp | 128 | - | completed | 500 |" in text
    assert "| single | 512 | - | oom |" in text and "| single | 256 |" not in text and "| single | 0 |" not in text
    assert_tables_whole(text)
    assert sorted(p.name for p in rep.iterdir()) == ["fig5_throughput.png", "fig5_throughput.svg", "largest_batch.png",
                                                    "largest_batch.svg", "points.csv", "report.md",
                                                    "runs.csv"]  # whole files, no temporary
    with open(rep / "points.csv", newline="") as fh:  # the bad run is no point of the table there either
        assert sorted((r["line"], r["batch_size"]) for r in csv.DictReader(fh)) == [
            ("ddp", "128"), ("single", "128"), ("single", "512")]
    assert all((rep / name).stat().st_size > 1000 for name in ("fig5_throughput.png", "fig5_throughput.svg"))


def test_recorded_text_cannot_break_the_report_or_its_figures(tmp_path):
    evil = "x|y\\\n| forged | row |\u202e`$\\frac{$<b>"
    runs = tmp_path / "runs"
    fake_run(runs, "r", "single" + evil, 128, "completed", 300.0, model="PyramidNet " + evil,
             device_name="GPU " + evil, git_commit=evil, experiment=evil, data_source=evil, container_image=evil,
             system=json.dumps({"cpu_model": evil, "env": {"NCCL_X": evil}, "topology": "GPU0\tX\n````\nGPU1\u202e"}))
    _overwrite(runs / "r", summary=dict(bound=evil, compute_images_per_s=900.0))
    w = MetricsWriter(runs / "r" / "metrics.h5", flush_interval_s=0)
    for e, acc in enumerate([0.5, 0.8]):
        w.log_epoch(epoch=e, test_acc=acc)
    w.flush(force=True)
    res = build_report(runs, tmp_path / "rep", command="pyramidrepro report `" + evil)
    text = Path(res["report"]).read_text()
    assert_tables_whole(text)
    assert "| completed | 300 | **" in text and "\\u202e" in text and "\\<b>" in text  # shown escaped, not lost
    assert text.count("## Accuracy") == 1 and "| PyramidNet x\\|y" in text
    assert "`````\nGPU0\tX\n````\nGPU1\\u202e\n`````" in text  # its own fence cannot close its block
    assert (tmp_path / "rep" / "fig5_throughput.png").stat().st_size > 1000
    assert (tmp_path / "rep" / "accuracy.svg").stat().st_size > 1000


def test_memory_caps_with_and_without_an_allocator_cap(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "capped", "single", 128, "completed", 300.0, allocator_cap_bytes=11 * 2**30)
    fake_run(runs, "uncapped", "single", 256, "completed", 320.0)
    text = Path(build_report(runs, tmp_path / "rep")["report"]).read_text()
    assert ("- GPU memory cap: a 12 GiB card emulated, a 12 GiB card emulated (allocator capped at 11.00 GiB)"
            in text)


def test_a_figure_that_fails_to_draw_leaves_no_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    runs, rep = tmp_path / "runs", tmp_path / "rep"
    for i, row in enumerate(GOOD):
        fake_run(runs, f"good{i}", *row)
    rep.mkdir()
    (rep / "fig5_throughput.png").write_bytes(b"an earlier report's")
    savefig = Figure.savefig

    def svg_fails(fig, fname, **kw):
        if kw.get("format") == "svg" or str(fname).endswith(".svg"):
            raise RuntimeError("the svg backend broke")
        return savefig(fig, fname, **kw)

    monkeypatch.setattr(Figure, "savefig", svg_fails)
    with pytest.raises(RuntimeError, match="svg backend"):
        build_report(runs, rep)
    assert [p.name for p in rep.iterdir()] == ["fig5_throughput.png"]  # no svg, no temporary file
    assert (rep / "fig5_throughput.png").read_bytes() == b"an earlier report's"  # not replaced by half a figure


def test_the_loader_of_every_point_and_two_loaders_side_by_side(tmp_path):
    """Every point names its loader; a point fed by DALI and by the tensor loader is two lines side by
    side (with the bound each measured) and the claims read the main loader's lines only."""
    for i, (mode, batch, status, ips) in enumerate(PAPER_LIKE):
        fake_run(tmp_path / "runs", f"r{i}", mode, batch, status, ips, loader="dali",
                 versions=json.dumps({"torch": "2.x", "dali": "2.4.0"}))
    fake_run(tmp_path / "runs", "t256", "single", 256, "completed", 160.0, loader="torch",
             summary={"bound": "input", "compute_images_per_s": 330.0, "input_images_per_s": 170.0})
    res = build_report(tmp_path / "runs", tmp_path / "rep", stage="pass 1 of at most 3 done, the campaign goes on")
    text = Path(res["report"]).read_text()
    assert_tables_whole(text)
    assert "Campaign: pass 1 of at most 3 done, the campaign goes on" in text
    assert "- loader: dali (DALI 2.4.0, GPU): 10 runs; torch: 1 runs" in text
    assert "| single | 256 | dali | completed | 320 |" in text
    assert "| single+torch | 256 | torch | completed | 160 |" in text
    side = text.split("## Loaders side by side")[1].split("##")[0]
    assert "| single | 256 | dali: 320 | - | torch: 160 | **input**: " in side and "| 2.00x |" in side
    assert {c["key"]: c["verdict"] for c in res["claims"]}["C2"] == "PASS"  # single@256 is still dali's 320
