"""Fixtures. Plain helpers are in the ``support`` package beside this file."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support import CliResult, call_main  # noqa: E402


@pytest.fixture
def cifar_root(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A tiny dataset in the official format, and its checksums."""
    from cifar_format import write_cifar10

    sums = write_cifar10(tmp_path / "cifar", per_batch=40, test=40)
    return tmp_path / "cifar", sums


@pytest.fixture
def cli() -> Callable[..., CliResult]:
    """``cli("validate", path)``: the CLI called in this process (no interpreter and torch to start),
    for tests that check an exit code, a message and what was (not) created."""
    return call_main


#: modules whose tests use the one Slurm test cluster or the one image build: under pytest-xdist
#: (``-n 2 --dist loadgroup``) they run in order on one worker, the rest spread over both
SHARED_RESOURCE_MODULES = {"test_slurm", "test_multinode", "test_container", "test_follow_lock",
                           "test_submit_requests"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in SHARED_RESOURCE_MODULES:
            item.add_marker(pytest.mark.xdist_group("cluster"))
