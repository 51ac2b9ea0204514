"""The login node: README's cluster quick start run as a user types it, in a venv of the lowest Python
the package declares (torch-free, installed by the declared build-system alone), on the Slurm test
cluster; and an older Python refused in one line.  The Pythons are looked up under pyenv and on
PATH; a test says which one it could not find instead of passing."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from support import ROOT, SMOKE, find_python
from support.quick_start import QuickStart, quick_start_commands

DECLARED = re.search(r'^requires-python = "(.*)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
LOWEST = tuple(int(v) for v in re.fullmatch(r">=\s*(\d+)\.(\d+)", DECLARED).groups())


def _venv(python: str, folder: Path) -> Path:
    subprocess.run([python, "-m", "venv", str(folder)], check=True, timeout=120)
    pip = subprocess.run([folder / "bin" / "python", "-m", "pip", "install", "-q", "--upgrade", "pip"],
                         capture_output=True, text=True, timeout=300)
    if pip.returncode != 0:
        pytest.skip(f"PyPI not reachable from here: {pip.stderr.strip().splitlines()[-1:]}")
    return folder / "bin"


def test_an_older_python_is_refused_in_one_line_by_the_package_and_by_pip(tmp_path):
    older = find_python(LOWEST[0], LOWEST[1] - 1)
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
@pytest.mark.image
def test_the_readme_quick_start_runs_as_written_in_the_lowest_declared_python(tmp_path, image):
    """Every command of README's "On a Slurm cluster" block, in order, in a clone, with only the
    substitutions :class:`support.quick_start.QuickStart` names (this machine's stand-ins for a site)."""
    lowest = find_python(*LOWEST)
    if lowest is None:
        pytest.skip(f"no Python {LOWEST[0]}.{LOWEST[1]} (the lowest {DECLARED} allows) on this machine")
    pip = subprocess.run([lowest, "-m", "pip", "download", "-q", "--no-deps", "-d", str(tmp_path / "probe"), "pip"],
                         capture_output=True, text=True, timeout=120)
    if pip.returncode != 0:
        pytest.skip(f"PyPI not reachable from here: {pip.stderr.strip().splitlines()[-1:]}")
    with QuickStart(tmp_path, lowest, image) as quick:
        for command in quick_start_commands((ROOT / "README.md").read_text()):
            r = quick.run(command)
            assert r.returncode == 0, f"{r.args}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        quick.check_all_substitutions_used()
        said = quick.outputs
        assert "torch" not in quick.installed()  # the login node's install
        assert said["validate"].strip().splitlines()[-1].startswith("# data: CIFAR-10 found under data")
        assert re.search(r"^\| run-\w+ \| [01]/1 \|", said["status"], re.M), said["status"]  # while it runs
        assert "follow: 1 runs of 1 points" in said["follow"], said["follow"]
        quick.check_campaign()
        r = quick.run(f".venv/bin/pyramidrepro submit experiments/fig5.yaml --dry-run --container {quick.sif} "
                      "--set cluster.partition=debug", substitute=False)  # the paper's own campaign
        assert r.returncode == 0 and "#SBATCH --requeue" in r.stdout and "--nv" in r.stdout, r.stdout + r.stderr
