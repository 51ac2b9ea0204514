"""The suite's markers say what each test needs, so a run can select by them (``run_suite.sh``,
``make test-fast``): a test that uses the image carries ``image``, one that reaches the Slurm test
cluster carries ``slurm`` (the guard in conftest.py takes ``SLURM_CONF`` away from every other test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support import ROOT

#: a fixture, and the marker every test that uses it must carry
FIXTURE_MARKERS = {"image": "image"}
#: the markers the suite selects by (pyproject.toml declares them)
MARKERS = {"slurm", "image", "slow", "device_check"}


def unmarked(items: list[dict]) -> list[str]:
    """Tests that use a fixture of :data:`FIXTURE_MARKERS` without its marker."""
    return [f"{i['id']} uses {fixture} without @pytest.mark.{marker}" for i in items
            for fixture, marker in FIXTURE_MARKERS.items() if fixture in i["fixtures"] and marker not in i["markers"]]


def test_every_test_that_uses_the_image_carries_its_marker_and_the_markers_select(tmp_path):
    report = tmp_path / "items.json"
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "support.marker_report",
                        "-p", "no:cacheprovider", "tests"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYRAMIDREPRO_MARKER_REPORT=str(report)))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    items = json.loads(report.read_text())
    assert len(items) > 600 and not unmarked(items), unmarked(items)
    used = {m for i in items for m in i["markers"]} & MARKERS
    assert used == MARKERS, f"no test carries {MARKERS - used}"
    fast = [i for i in items if not set(i["markers"]) & MARKERS]
    assert len(fast) > len(items) / 2  # the fast tier is most of the suite, by count


def test_a_test_using_the_image_without_its_marker_is_named():
    items = [{"id": "t.py::a", "fixtures": ["image", "tmp_path"], "markers": ["slurm"]},
             {"id": "t.py::b", "fixtures": ["image"], "markers": ["image"]}]
    assert unmarked(items) == ["t.py::a uses image without @pytest.mark.image"]


def test_an_unmarked_test_cannot_reach_the_slurm_cluster():
    assert "SLURM_CONF" not in os.environ  # taken away by the guard, whether a cluster is up or not


@pytest.mark.slurm
def test_a_slurm_test_runs_where_the_cluster_answers():
    r = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "debug" in r.stdout, r.stderr
