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

