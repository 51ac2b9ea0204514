"""Fixtures. Plain helpers are in the ``support`` package beside this file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from support import ROOT, CliResult, call_main
from support.slurm import slurm_unavailable


@pytest.fixture
def cifar_root(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A tiny dataset in the official format, and its checksums."""
    from support.cifar_format import write_cifar10

    sums = write_cifar10(tmp_path / "cifar", per_batch=40, test=40)
    return tmp_path / "cifar", sums


@pytest.fixture
def cli() -> Callable[..., CliResult]:
    """``cli("validate", path)``: the CLI called in this process (no interpreter and torch to start),
    for tests that check an exit code, a message and what was (not) created."""
    return call_main


@pytest.fixture(scope="session")
def image() -> Path:
    """The image folder of this checkout: containers/build-local.sh (cold ~7 min, cached seconds)."""
    missing = [t for t in ("mmdebstrap", "bwrap") if subprocess.run(["which", t], capture_output=True).returncode]
    if missing or os.geteuid() != 0:
        pytest.skip(f"building the image needs root and {', '.join(missing) or 'mmdebstrap, bwrap'} "
                    "(`make test` installs them)")
    t0 = time.monotonic()
    r = subprocess.run(["bash", str(ROOT / "containers" / "build-local.sh")], capture_output=True, text=True,
                       env=dict(os.environ, PYTHON=sys.executable), timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    path = Path(r.stdout.strip().splitlines()[-1])
    said = [ln for ln in r.stderr.splitlines() if "dependencies" in ln or "image ready" in ln]
    print(f"\nimage: {path} in {time.monotonic() - t0:.0f} s: {' | '.join(said)}", file=sys.stderr)
    return path


@pytest.fixture(autouse=True)
def _resources_only_where_marked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The markers are the gates: a test marked ``slurm`` (``slurm(nodes=N)``) runs where the test cluster
    has N nodes up and is skipped with the reason elsewhere; any other test runs without ``SLURM_CONF``,
    so one that reaches Slurm unmarked fails.  A test that uses the ``image`` fixture must be marked
    ``image``: ``run_suite.sh`` and ``make test-fast`` select by these markers."""
    if "image" in request.fixturenames and request.node.get_closest_marker("image") is None:
        pytest.fail("this test uses the image fixture: mark it @pytest.mark.image")
    slurm = request.node.get_closest_marker("slurm")
    if slurm is None:
        monkeypatch.delenv("SLURM_CONF", raising=False)
        return
    reason = slurm_unavailable(slurm.kwargs.get("nodes", 1))
    if reason:
        pytest.skip(reason)
