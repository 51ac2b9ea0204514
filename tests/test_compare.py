"""compare: two real campaigns (one slowed down in one point), a campaign against itself and against a
reference file, the committed CPU campaign against a fresh run, the CSV tables, and hostile inputs."""

import csv
import re

import pytest
import yaml

from pyramidrepro.study.compare import compare
from pyramidrepro.study.reference import side_of
from support import ROOT, SMOKE, run_cli
from support.hide import hiding_env

COMMITTED = ROOT / "results" / "quick_cpu_2core" / "quick_cpu"
#: what "the same" allows here: two runs of one point on this 2-core host, busy with the other pytest
#: process, differ by more than the default 5 %; the injected slowdown is far beyond it
TOLERANCE = "50"
#: every step of every run waits this long first: the step's figure is then mostly this fixed wait, which
#: the other pytest process's load on the 2 cores barely moves (a tiny step alone moved 2x under it)
BASE_DELAY_S = "0.2"
DELAY_S = "2.0"  # before every step of the slowed point instead: some 10x slower


def _experiment(tmp_path):
    exp = yaml.safe_load(SMOKE.read_text())
    exp.update(name="cmp", model={"depth": 8, "alpha": 4, "block": "basic"})
    exp["train"].update(max_steps=12, warmup_steps=4, log_every=2)
    path = tmp_path / "cmp.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def _campaign(cli, path, out, batches, env=None):
    """A campaign of ``batches`` through the engine's debug executor: each run in this process (the same
    runs as reproduce's, without a process and torch's import each)."""
    r = cli("submit", str(path), "--cluster", "debug", "--out", str(out), "--min-repeats", "1", "--max-repeats", "1",
            "--set", f"sweep={{train.batch_size: [{', '.join(map(str, batches))}]}}", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return out / "cmp"


@pytest.fixture(scope="module")
def campaigns(tmp_path_factory):
    """REF: three points; NEW: the same three, the one at batch 48 run with a delay before every step.
    Each point's two runs are run one after the other (the other pytest process loads this host
    unevenly over minutes), after a warm-up run that pays this process's first-run costs, and every step
    waits BASE_DELAY_S first, so the host's load moves the figures little."""
    from support import call_main

    tmp = tmp_path_factory.mktemp("campaigns")
    path = _experiment(tmp)
    base = {"PYRAMIDREPRO_INJECT_DELAY": BASE_DELAY_S}
    _campaign(call_main, path, tmp / "warm-up", [16], env=base)
    for batch in (16, 32, 48):
        ref = _campaign(call_main, path, tmp / "ref", [batch], env=base)
        new = _campaign(call_main, path, tmp / "new", [batch],
                        env={"PYRAMIDREPRO_INJECT_DELAY": DELAY_S} if batch == 48 else base)
    return ref, new


@pytest.mark.slow
def test_compare_flags_exactly_the_slowed_point_and_exits_1(campaigns, cli, tmp_path):
    ref, new = campaigns
    r = cli("compare", str(ref), str(new), "--tolerance", TOLERANCE, "--out", str(tmp_path / "c"))
    print(r.stdout)
    assert r.returncode == 1, r.stdout + r.stderr
    text = (tmp_path / "c" / "compare.md").read_text()
    verdicts = dict(re.findall(r"^\| single batch (\d+) .*\*\*(\w+)\*\*", text, re.M))
    assert verdicts == {"16": "same", "32": "same", "48": "slower"}, text
    assert re.search(r"^SLOWER: single batch 48 .*NEW/REF 0\.\d+", r.stdout, re.M)
    assert "compare: 3 point(s): 2 same, 1 slower" in r.stdout
    assert (tmp_path / "c" / "compare_fig5.png").stat().st_size > 0 and (tmp_path / "c" / "compare_fig5.svg").exists()
    assert "## What changed between the machines" in text and "## The paper's claims" in text


@pytest.mark.slow
def test_a_campaign_against_itself_is_the_same_everywhere(campaigns, cli, tmp_path):
    ref, _ = campaigns
    r = cli("compare", str(ref), str(ref), "--out", str(tmp_path / "c"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "compare: 3 point(s): 3 same; same machine fields" in r.stdout


@pytest.mark.slow
def test_a_reference_file_gives_the_campaigns_verdicts_and_one_side_points_fail_only_when_required(
        campaigns, cli, tmp_path):
    ref, new = campaigns
    reference = tmp_path / "ref.yaml"
    r = cli("report", str(ref), "--write-reference", str(reference))
    assert r.returncode == 0 and f"reference: {reference}" in r.stdout, r.stdout + r.stderr
    tolerance = float(TOLERANCE) / 100
    by_folder = compare(side_of(ref), side_of(new), tolerance)
    by_file = compare(side_of(reference), side_of(new), tolerance)
    assert [(row.key, row.verdict) for row in by_file.rows] == [(row.key, row.verdict) for row in by_folder.rows]
    doc = yaml.safe_load(reference.read_text())
    doc["points"] = [p for p in doc["points"] if p["batch_size"] != 16]
    fewer = tmp_path / "fewer.yaml"
    fewer.write_text(yaml.safe_dump(doc))
    listed = cli("compare", str(fewer), str(ref), "--out", str(tmp_path / "c"))
    assert listed.returncode == 0 and "only in NEW: single batch 16" in listed.stdout, listed.stdout
    required = cli("compare", str(fewer), str(ref), "--out", str(tmp_path / "c"), "--require-all")
    assert required.returncode == 1, required.stdout


@pytest.mark.slow
def test_the_csv_tables_hold_the_reports_figures(campaigns):
    ref, _ = campaigns
    report = (ref / "report.md").read_text()
    with open(ref / "points.csv", newline="") as fh:
        points = list(csv.DictReader(fh))
    with open(ref / "runs.csv", newline="") as fh:
        runs = list(csv.DictReader(fh))
    assert len(points) == 3 and len(runs) == 3
    for p in points:
        shown = f"{float(p['images_per_s']):,.0f}" + (f" ± {float(p['ci95']):,.0f}" if float(p["ci95"]) else "")
        assert f"| {p['line']} | {p['batch_size']} | {p['loaders']} | {p['status']} | {shown} |" in report, (p, report)
    assert {r["status"] for r in runs} == {"completed"} and all(float(r["images_per_s"]) > 0 for r in runs)
    assert {int(r["batch_size"]) for r in runs} == {16, 32, 48} and all(r["git_commit"] for r in runs)


def test_the_committed_campaign_against_itself_changes_nothing_and_writes_its_report(cli, tmp_path):
    """The fast path through compare, its report and its figure: no run, the committed campaign twice."""
    out = tmp_path / "c"
    c = cli("compare", str(COMMITTED), str(COMMITTED), "--out", str(out))
    assert c.returncode == 0, c.stdout + c.stderr
    text = (out / "compare.md").read_text()
    assert "| ddp batch 64 (2 rank(s), PyramidNet-20 alpha=24 basic) |" in text and "slower" not in c.stdout
    assert (out / "compare_fig5.png").exists()


@pytest.mark.slow
def test_the_committed_campaign_against_a_fresh_run_names_what_changed(cli, tmp_path):
    fresh = tmp_path / "fresh"
    r = cli("reproduce", "--experiment", str(ROOT / "experiments" / "quick_cpu.yaml"), "--out", str(fresh),
            "--min-repeats", "1", "--max-repeats", "1", "--set", "sweep={train.mode: [single], train.batch_size: [32]}")
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "c"
    c = cli("compare", str(COMMITTED), str(fresh / "quick_cpu"), "--out", str(out))
    print(c.stdout)
    assert c.returncode in (0, 1), c.stderr
    text = (out / "compare.md").read_text()
    assert "| single batch 32 (1 rank(s), PyramidNet-20 alpha=24 basic) |" in text
    assert "only in REF: ddp batch 64" in c.stdout  # the points the fresh run left out are listed
    machine = text.split("## What changed between the machines", 1)[1]
    first = machine.splitlines()[4]  # differences come first
    assert "**differs**" in first and re.search(r"^\| (commit|CPU|loader) \|", first), machine
    assert re.search(r"^\| commit \| \w+ \| \w+", machine, re.M) and (out / "compare_fig5.png").exists()


@pytest.mark.parametrize("case", ["empty folder", "not a reference", "other experiment", "unreadable runs",
                                  "negative tolerance", "nan tolerance"])
@pytest.mark.slow
def test_hostile_inputs_are_one_line_exit_2_and_write_nothing(campaigns, cli, tmp_path, case):
    ref, _ = campaigns
    args = [str(ref), str(ref)]
    if case == "empty folder":
        (tmp_path / "empty").mkdir()
        args = [str(ref), str(tmp_path / "empty")]
    elif case == "not a reference":
        (tmp_path / "x.yaml").write_text("name: smoke\nmodel: {depth: 20}\n")
        args = [str(tmp_path / "x.yaml"), str(ref)]
    elif case == "other experiment":
        doc = yaml.safe_load(compare_reference(cli, ref, tmp_path).read_text())
        doc["experiments"] = ["fig5"]
        (tmp_path / "other.yaml").write_text(yaml.safe_dump(doc))
        args = [str(tmp_path / "other.yaml"), str(ref)]
    elif case == "unreadable runs":
        (tmp_path / "bad" / "run").mkdir(parents=True)
        (tmp_path / "bad" / "run" / "metrics.h5").write_bytes(b"not hdf5")
        args = [str(ref), str(tmp_path / "bad")]
    elif case.endswith("tolerance"):
        args += ["--tolerance", "-5" if case.startswith("negative") else "nan"]
    r = cli("compare", *args, "--out", str(tmp_path / "out"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 or case.endswith("tolerance"), r.stderr
    assert not (tmp_path / "out").exists()


def compare_reference(cli, ref, tmp_path):
    path = tmp_path / "ref.yaml"
    assert cli("report", str(ref), "--write-reference", str(path)).returncode == 0
    return path


@pytest.mark.slow
def test_compare_and_the_tables_need_no_torch(campaigns, tmp_path):
    ref, new = campaigns
    light = hiding_env(tmp_path / "hide", {"torch", "torchvision", "nvidia.dali"})
    r = run_cli("compare", str(ref), str(new), "--tolerance", TOLERANCE, "--out", str(tmp_path / "c"), env=light)
    assert r.returncode == 1 and "compare: 3 point(s): 2 same, 1 slower" in r.stdout, r.stdout + r.stderr
    r = run_cli("report", str(new), "--out", str(tmp_path / "r"), env=light)
    assert r.returncode == 0 and (tmp_path / "r" / "points.csv").is_file(), r.stdout + r.stderr
