"""The shape of the package: one owner per fact, no import cycles, a run id that ignores where it runs."""

import ast
from pathlib import Path

import pytest

from pyramidrepro.config.load import load_config
from pyramidrepro.config.schema import EXIT_CODES, FINISHED, Status
from pyramidrepro.records.metrics import MetricsWriter, read_metrics
from pyramidrepro.records.runs import is_done, prepare, run_dir_for, status_of
from support import SMOKE

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pyramidrepro"


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, lazily imported ones included."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("pyramidrepro", *path.relative_to(PACKAGE).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                for alias in node.names:
                    target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    if target in modules and target != name:
                        graph[name].add(target)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name in modules and a.name != name)
    return graph


#: the package's layers, lowest first: a module may import its own group and the groups below it,
#: never one above (``cli`` sits on top of all; groups on one line are peers that import neither)
LAYERS = (("config",), ("workload", "stats"), ("machine",), ("records",), ("step",), ("autotune",),
          ("training", "bench"), ("cluster",), ("study",), ("cli",))
LEVEL = {group: level for level, groups in enumerate(LAYERS) for group in groups}


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_groups_import_only_their_own_layer_or_below():
    graph = _import_graph()
    groups = {_group(m) for m in graph} - {"", "__main__"}
    assert groups == set(LEVEL), f"a subpackage is missing from LAYERS: {sorted(groups ^ set(LEVEL))}"
    assert len(groups) >= 6
    upward = [f"{m} -> {d}" for m, deps in graph.items() for d in deps
              if _group(m) in LEVEL and _group(d) in LEVEL and _group(d) != _group(m)
              and LEVEL[_group(d)] >= LEVEL[_group(m)]]
    assert not upward, "imports against the layer order:\n" + "\n".join(sorted(upward))


def _reexports(path: Path) -> list[str]:
    """Names ``path`` passes on from elsewhere: in ``__all__`` but imported, imported ``as`` themselves,
    or served by a module ``__getattr__``."""
    tree = ast.parse(path.read_text())
    imported = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names}
    listed: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
            listed = [e.value for e in node.value.elts]
    found = [f"{name} (in __all__, imported)" for name in listed if name in imported]
    found += [f"{a.name} (imported as itself)" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
              for a in n.names if a.asname == a.name]
    found += ["__getattr__ (served lazily)" for n in tree.body if isinstance(n, ast.FunctionDef)
              and n.name == "__getattr__"]
    return found


def test_every_public_name_has_one_import_path_and_config_stays_free_of_torch():
    """A name is imported from the module that defines it: no facade, no re-export, no lazy export."""
    import subprocess
    import sys

    passed_on = {str(p.relative_to(PACKAGE)): r for p in PACKAGE.rglob("*.py") if (r := _reexports(p))}
    assert not passed_on, f"re-exported names (import them from where they are defined): {passed_on}"
    code = ("import sys, pyramidrepro.config.load as c, pyramidrepro.records.runs, pyramidrepro.stats.measure; "
            "c.load_config(sys.argv[1]); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(SMOKE)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "checking a config imported torch"


def test_no_import_cycles():
    graph = _import_graph()
    assert "pyramidrepro.workload.loaders.dali" in graph and graph["pyramidrepro.workload.loaders.dali"]
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join([*trail, node, nxt])
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_the_status_vocabulary_decides_done_and_exit_codes(tmp_path):
    """nan and oom are results (done; their own non-zero exit codes); failed, interrupted and running are not."""
    assert FINISHED == {Status.COMPLETED, Status.OOM, Status.NAN}
    for status in Status:
        folder = run_dir_for(tmp_path, "exp", status.value)
        prepare(folder, load_config(SMOKE))
        writer = MetricsWriter(folder / "metrics.h5", flush_interval_s=0)
        if status != Status.RUNNING:
            writer.close(status)
        assert status_of(folder) == status
        assert is_done(folder) == (status in FINISHED)
    assert EXIT_CODES == {"completed": 0, "failed": 1, "oom": 3, "nan": 4, "interrupted": 143}
    assert not is_done(tmp_path / "exp" / "never-started")


def test_writer_refuses_a_name_the_schema_does_not_define(tmp_path):
    writer = MetricsWriter(tmp_path / "metrics.h5")
    with pytest.raises(KeyError, match="schema"):
        writer.set_attrs(batchsize=64)
    with pytest.raises(KeyError, match="schema"):
        writer.set_summary(imgs_per_s=1.0)
    writer.set_attrs(batch_size=64)
    writer.close("completed")
    assert read_metrics(tmp_path / "metrics.h5")["attrs"]["batch_size"] == 64


def test_run_id_ignores_where_a_run_executes():
    base = load_config(SMOKE)
    moved = load_config(SMOKE, ["cluster.partition=other", "cluster.time_min=5", "container.image=/x/img.sif",
                                "metrics.flush_interval_s=9"])
    assert moved.digest() == base.digest()
    assert load_config(SMOKE, ["train.batch_size=32"]).digest() != base.digest()
    assert load_config(SMOKE, ["devices.allow_tf32=true"]).digest() != base.digest()


def test_installed_package_finds_its_experiments(tmp_path):
    """``reproduce`` resolves its default campaigns through package data, not the source tree."""
    from pyramidrepro.cli.reproduce import default_experiment

    for n_gpus, name in ((0, "quick_cpu.yaml"), (2, "fig5.yaml")):
        path = Path(default_experiment(n_gpus))
        assert path.name == name and path.is_file()
        assert load_config(path).name


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
