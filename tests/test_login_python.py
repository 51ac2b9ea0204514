"""The login node's Python: the lowest one the package declares runs the login-node commands from a
plain ``pip install .`` (isolated build, the declared build-system alone), and an older one is
refused in one line.  The Pythons are looked up under pyenv and on PATH; a test says which one it
could not find instead of passing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pyramidrepro.cluster.campaign_state import CampaignState, Repeats, save_state
from support import ROOT, SMOKE
from support.images import fake_image
from support.slurm import slurm_unavailable

DECLARED = re.search(r'^requires-python = "(.*)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
LOWEST = tuple(int(v) for v in re.fullmatch(r">=\s*(\d+)\.(\d+)", DECLARED).groups())
CAMPAIGN = ROOT / "results" / "quick_cpu_2core" / "quick_cpu"  # 42 committed runs of one campaign


def _python(major: int, minor: int) -> str | None:
    """An interpreter of exactly ``major.minor``: pyenv's, else one on PATH (never pyenv's shim)."""
    found = [*sorted(Path.home().glob(f".pyenv/versions/{major}.{minor}.*/bin/python")),
             shutil.which(f"python{major}.{minor}")]
    return next((str(p) for p in found if p and ".pyenv/shims" not in str(p)), None)


def _venv(python: str, folder: Path) -> Path:
    subprocess.run([python, "-m", "venv", str(folder)], check=True, timeout=120)
    pip = subprocess.run([folder / "bin" / "python", "-m", "pip", "install", "-q", "--upgrade", "pip"],
                         capture_output=True, text=True, timeout=300)
    if pip.returncode != 0:
        pytest.skip(f"PyPI not reachable from here: {pip.stderr.strip().splitlines()[-1:]}")
    return folder / "bin"


def test_an_older_python_is_refused_in_one_line_by_the_package_and_by_pip(tmp_path):
    older = _python(LOWEST[0], LOWEST[1] - 1)
    if older is None:
        pytest.skip(f"no Python {LOWEST[0]}.{LOWEST[1] - 1} on this machine")
    r = subprocess.run([older, "-m", "pyramidrepro", "validate", str(SMOKE)], capture_output=True, text=True,
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert re.match(r"pyramidrepro: error: needs Python >= 3\.10, this is 3\.\d+\.\d+ \(", r.stderr)
    assert "dnf install python3.11" in r.stderr and "Traceback" not in r.stderr
    bin_ = _venv(older, tmp_path / "venv")
    pip = subprocess.run([bin_ / "python", "-m", "pip", "install", "-q", str(ROOT)], capture_output=True, text=True,
                         timeout=600)
    assert pip.returncode != 0 and "requires a different Python" in pip.stderr, pip.stderr[-2000:]
    assert not (bin_ / "pyramidrepro").exists()


@pytest.mark.slurm
@pytest.mark.skipif(slurm_unavailable() is not None, reason=slurm_unavailable() or "")
def test_the_lowest_declared_python_installs_and_runs_the_login_node_commands(tmp_path):
    lowest = _python(*LOWEST)
    if lowest is None:
        pytest.skip(f"no Python {LOWEST[0]}.{LOWEST[1]} (the lowest {DECLARED} allows) on this machine")
    if shutil.which("bwrap") is None:
        pytest.skip("bwrap is not installed (make tools): submit --container needs a container runtime")
    bin_ = _venv(lowest, tmp_path / "venv")
    pip = subprocess.run([bin_ / "python", "-m", "pip", "install", "-q", str(ROOT)], capture_output=True, text=True,
                         timeout=900, cwd=tmp_path)  # isolated: the build-system table alone builds it
    assert pip.returncode == 0, pip.stderr[-3000:]
    version = subprocess.run([bin_ / "python", "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
    assert version == str(LOWEST)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([bin_ / "pyramidrepro", *args], capture_output=True, text=True, cwd=ROOT, timeout=300)

    r = cli("validate", str(SMOKE))
    assert r.returncode == 0 and "# data: synthetic" in r.stdout, r.stderr
    image = fake_image(tmp_path / "image")  # the dry run checks its layout and the runtime, and starts nothing
    r = cli("submit", str(SMOKE), "--dry-run", "--container", str(image), "--out", str(tmp_path / "dry"))
    assert r.returncode == 0 and "1 point(s) of smoke -> 1 job array(s)" in r.stdout, r.stdout + r.stderr
    assert "#SBATCH --requeue" in r.stdout and "/usr/bin/bwrap" in r.stdout
    report = tmp_path / "quick_cpu"  # the campaign folder is named for its experiment
    shutil.copytree(CAMPAIGN, report, ignore=shutil.ignore_patterns("*.png", "*.svg", "report.md"))
    r = cli("report", str(report))
    assert r.returncode == 0 and (report / "report.md").is_file(), r.stderr
    run_ids = sorted(p.name for p in report.iterdir() if (p / "metrics.h5").is_file())
    save_state(report, CampaignState("quick_cpu", str(ROOT / "experiments" / "quick_cpu.yaml"), {"name": "quick_cpu"},
                                     Repeats(3, 3, 0.02), "local", passes=[run_ids]))
    r = cli("status", str(report), "--json")
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert len(status["points"]) == 14 and all(p["done"] == 3 for p in status["points"])
    assert status["waits_for"].startswith("pass 1 has ended")
