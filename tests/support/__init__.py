"""Helpers the tests import: the repository's paths, the CLI in a process of its own or in this one,
and waits on a run's files. Fixtures live in conftest.py; the Slurm helpers in :mod:`support.slurm`."""

from __future__ import annotations

import contextlib
import getpass
import io
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "experiments" / "smoke.yaml"
#: the smallest PyramidNet the tests train (depth 8, widening 4): seconds on a CPU
TINY = ("--set", "model.depth=8", "--set", "model.alpha=4")
#: a job's request on the Slurm test cluster: one CPU, a 10-minute limit
ON_TEST_CLUSTER = ("--set", "cluster.cpus_per_task=1", "--set", "cluster.time_min=10")
#: one torch thread per run, as the suite's processes run side by side on 2 cores
ONE_THREAD = ("--set", "train.threads=1")
#: ``submit`` runs every point once (its cluster defaults repeat each at least twice)
ONCE = ("--min-repeats", "1", "--max-repeats", "1")
#: torch.compile's on-disk cache in inductor's own default place, for the tests that compile: they check
#: what is compiled and reported, not how long a cold compile takes (about 45 s of a 2-core CPU each),
#: so a machine that ran the suite once compiles from it, as a user's second run would
INDUCTOR_CACHE = {"TORCHINDUCTOR_CACHE_DIR": str(Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}")}


def run_cli(*args: str, timeout: float = 300, env: dict | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m pyramidrepro ARGS`` in a process of its own and capture its output: for what
    needs a process (signals, launchers, locks, exit codes of a real interpreter)."""
    full_env = dict(os.environ)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "pyramidrepro", *args], capture_output=True, text=True,
        timeout=timeout, env=full_env, cwd=cwd or ROOT,
    )


@dataclass
class CliResult:
    """What ``pyramidrepro ARGS`` did in this process: the same fields as a finished subprocess."""

    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def environment(env: dict[str, str] | None) -> Iterator[None]:
    """``os.environ`` with ``env`` added for the block, as it was afterwards."""
    before = {name: os.environ.get(name) for name in env or {}}
    os.environ.update(env or {})
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def call_main(*args: str, env: dict[str, str] | None = None) -> CliResult:
    """``pyramidrepro ARGS`` through ``pyramidrepro.cli.main`` in this process (argparse's exit too),
    with ``env`` added to the environment meanwhile: a single-process ``run`` too, whose handlers
    and lock are given back when it ends, so the process adds only its start (torch's import)."""
    from pyramidrepro.cli import main

    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch else None
    out, err = io.StringIO(), io.StringIO()
    with environment(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            if threads is not None:  # a run sets its own (train.threads); the suite keeps its
                torch.set_num_threads(threads)
    return CliResult(code, out.getvalue(), err.getvalue())


def only_run_dir(out: Path) -> Path:
    """The one run folder below ``out`` (asserts there is exactly one)."""
    dirs = [p for p in out.glob("*/*") if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def find_python(major: int, minor: int) -> str | None:
    """An interpreter of exactly ``major.minor``: pyenv's, else one on PATH (never pyenv's shim, which
    may refuse a version it does not have selected)."""
    import shutil

    found = [*sorted(Path.home().glob(f".pyenv/versions/{major}.{minor}.*/bin/python")),
             shutil.which(f"python{major}.{minor}")]
    return next((str(p) for p in found if p and ".pyenv/shims" not in str(p)), None)


def wait_until(predicate: Callable[[], T], timeout: float, what: str, poll_s: float = 0.2) -> T:
    """``predicate()``'s first truthy value, asked every ``poll_s`` seconds; AssertionError saying
    ``what`` was not seen when ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not seen within {timeout:g} s")
        time.sleep(poll_s)


def wait_for_metrics(out: Path, pattern: str = "*/*/metrics.h5", timeout: float = 120) -> list[Path]:
    """Wait until a run below ``out`` has written its metrics file; returns the files found."""
    return wait_until(lambda: list(out.glob(pattern)), timeout, f"a {pattern} below {out}")
