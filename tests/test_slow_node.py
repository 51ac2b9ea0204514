"""The slow-node confounder: a point whose repeats ran on different nodes and disagree beyond their
intervals names the slow node (study.confounders), in the report's provenance too."""

import json
from pathlib import Path

import numpy as np
import yaml

from pyramidrepro.records.metrics import MetricsWriter
from pyramidrepro.records.runs import load_run, load_runs
from pyramidrepro.study.confounders import confounders, slow_nodes
from pyramidrepro.study.report import build_report

TAIL = "(repeats on different nodes disagree beyond their intervals)"


def write_run(root: Path, run_id: str, hosts: tuple[str, ...], ips: float, ci: float, batch: int = 64,
              mode: str = "ddp", **attrs) -> None:
    """A completed run's metrics.h5, written through the package's writer, with its ranks' host names."""
    folder = root / run_id
    folder.mkdir(parents=True)
    w = MetricsWriter(folder / "metrics.h5", flush_interval_s=0)
    cfg = {"name": "e", "model": {"depth": 20, "alpha": 12}, "train": {"mode": mode, "batch_size": batch}}
    w.set_attrs(config_yaml=yaml.safe_dump(cfg), experiment="e", mode=mode, batch_size=batch, world_size=2,
                device_name="cpu (x86_64, 2 cores)", data_source="synthetic", git_commit="a" * 40,
                versions=json.dumps({"torch": "2.x"}), model="PyramidNet-20 alpha=12 basic", **attrs)
    w.set_summary(images_per_s=ips, images_per_s_ci=ci, measured_steps=20)
    if hosts:
        w.set_ranks(hostname=np.array(hosts, dtype=bytes), peak_memory_bytes=[2**30] * len(hosts))
    w.close("completed")


def repeats(root: Path, point: str, runs: list[tuple[tuple[str, ...], float, float]], **kw) -> None:
    """A point's repeats, named as a campaign names them (``<id>``, ``<id>-r2`` ...)."""
    for n, (hosts, ips, ci) in enumerate(runs, start=1):
        write_run(root, point if n == 1 else f"{point}-r{n}", hosts, ips, ci, **kw)


FAST = [(("node1",), 1010.0, 6.0), (("node1",), 1004.0, 6.0), (("node1",), 1016.0, 6.0)]
SLOW = [(("node2",), 812.0, 5.0), (("node2",), 808.0, 5.0), (("node2",), 816.0, 5.0)]


def test_a_slower_node_is_named_with_the_point_and_figures(tmp_path):
    repeats(tmp_path / "e", "p64", FAST + SLOW)
    flags = confounders(load_runs(tmp_path / "e"))
    assert len(flags) == 1, flags
    assert flags[0].startswith("node2 slower than node1 for ddp batch 64: 812 ± ") and flags[0].endswith(TAIL)
    assert " vs 1,010 ± " in flags[0]


def test_nodes_that_agree_within_their_intervals_give_nothing(tmp_path):
    close = [(("node2",), 1000.0, 6.0), (("node2",), 1008.0, 6.0), (("node2",), 1012.0, 6.0)]
    repeats(tmp_path / "e", "p64", FAST + close)
    runs = load_runs(tmp_path / "e")
    assert slow_nodes(runs) == [] and confounders(runs) == []


def test_repeats_all_on_one_node_give_nothing(tmp_path):
    one_node = FAST + [(("node1",), 812.0, 5.0), (("node1",), 808.0, 5.0)]  # spread, but one node
    repeats(tmp_path / "e", "p64", one_node)
    assert confounders(load_runs(tmp_path / "e")) == []


def test_a_node_slow_for_several_points_is_one_line_with_the_count(tmp_path):
    for batch in (64, 128):
        repeats(tmp_path / "e", f"p{batch}", FAST + SLOW, batch=batch)
    flags = confounders(load_runs(tmp_path / "e"))
    assert len(flags) == 1, flags
    assert flags[0].startswith("node2 slower than node1 for 2 points, most at ddp batch ") and TAIL in flags[0]


def test_a_multi_node_run_is_its_set_of_nodes(tmp_path):
    fast = [(("node1", "node2"), ips, ci) for _, ips, ci in FAST]
    slow = [(("node4", "node3"), ips, ci) for _, ips, ci in SLOW]
    repeats(tmp_path / "e", "p64", fast + slow)
    flags = confounders(load_runs(tmp_path / "e"))
    assert len(flags) == 1 and flags[0].startswith("node3+node4 slower than node1+node2 for ddp batch 64"), flags


def test_without_rank_host_names_the_slurm_node_list_is_the_node(tmp_path):
    write_run(tmp_path, "a", (), 100.0, 1.0, slurm_nodelist="node[1-2]", hostname="node1")
    write_run(tmp_path, "b", (), 100.0, 1.0, hostname="node5")
    assert load_run(tmp_path / "a" / "metrics.h5").hosts == ("node[1-2]",)
    assert load_run(tmp_path / "b" / "metrics.h5").hosts == ("node5",)


def test_the_reports_confounders_name_the_slow_node(tmp_path):
    repeats(tmp_path / "e", "p64", FAST + SLOW)
    text = Path(build_report(tmp_path / "e")["report"]).read_text()
    flagged = [line for line in text.splitlines() if line.startswith("- **confounder:** node2 slower than node1")]
    assert len(flagged) == 1 and "ddp batch 64" in flagged[0], text
