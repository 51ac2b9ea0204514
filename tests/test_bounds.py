"""What bounds a point: the three parts timed alone, the label, and the report's column."""

from __future__ import annotations

import time

import pytest

from pyramidrepro.config.load import load_config
from pyramidrepro.config.schema import Summary
from pyramidrepro.records.metrics import read_metrics
from pyramidrepro.step.bottleneck import Bounds, compute_seconds, measure_bounds
from pyramidrepro.training.setup import build_training, open_context
from support import SMOKE, run_cli


class DelayedLoader:
    """The run's own loader, each batch handed over ``delay_s`` late: an input pipeline too slow."""

    def __init__(self, loader, delay_s: float) -> None:
        self.loader, self.delay_s = loader, delay_s

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.loader.set_epoch(epoch, start)

    def __iter__(self):
        for batch in self.loader:
            time.sleep(self.delay_s)
            yield batch


@pytest.fixture(scope="module")
def training(tmp_path_factory):
    out = tmp_path_factory.mktemp("bounds")
    cfg = load_config(SMOKE, ["devices.device=cpu", "model.depth=8", "model.alpha=4", "train.batch_size=32",
                              "data.synthetic_train_size=1024"])
    ctx = open_context(cfg, out / "run", out)
    return build_training(cfg, ctx)


@pytest.mark.slow
def test_a_slow_loader_makes_the_point_input_bound_and_its_rate_is_measured(training):
    x, y = next(iter(training.train_loader))
    # at most 64 images/s, and five times slower than the tiny model computes here and now: a busy
    # 2-core host (the suite runs two processes) once computed under 64 images/s
    delay = max(0.5, 5 * compute_seconds(training.executor, x, y))
    bounds = measure_bounds(training.executor, DelayedLoader(training.train_loader, delay), 32,
                            training.grad_bytes, 25.0, ddp_ranks=1)
    summary = bounds.summary()
    assert summary[Summary.BOUND] == "input"
    assert summary[Summary.INPUT_IMAGES_PER_S] == pytest.approx(32 / delay, rel=0.25)
    assert summary[Summary.COMPUTE_IMAGES_PER_S] > summary[Summary.INPUT_IMAGES_PER_S]
    assert Summary.ALLREDUCE_IMAGES_PER_S not in summary  # one process: nothing to all-reduce


def test_the_same_model_fed_from_memory_is_compute_bound(training):
    bounds = measure_bounds(training.executor, training.train_loader, 32, training.grad_bytes, 25.0, ddp_ranks=1)
    assert bounds.summary()[Summary.BOUND] == "compute"
    assert bounds.input > bounds.compute > 0


def test_the_lowest_rate_names_the_bound_and_missing_parts_are_left_out():
    assert Bounds(900.0, 5000.0, 300.0).summary()[Summary.BOUND] == "communication"
    assert Bounds(900.0, 5000.0, float("nan")).summary() == {
        Summary.COMPUTE_IMAGES_PER_S: 900.0, Summary.INPUT_IMAGES_PER_S: 5000.0, Summary.BOUND: "compute"}


@pytest.mark.slow
def test_a_ddp_run_records_all_three_and_the_report_shows_them(tmp_path, cli):
    done = run_cli("run", str(SMOKE), "--set", "devices.device=cpu", "--set", "train.mode=ddp", "--nproc", "2",
                   "--set", "train.bucket_cap_mb=0.01", "--set", "train.measure_bounds=true", "--out", str(tmp_path),
                   "--run-id", "ddp", "--no-progress")
    assert done.returncode == 0, done.stderr
    summary = read_metrics(tmp_path / "smoke" / "ddp" / "metrics.h5")["summary"]
    rates = {k: float(summary[k]) for k in (Summary.COMPUTE_IMAGES_PER_S, Summary.INPUT_IMAGES_PER_S,
                                             Summary.ALLREDUCE_IMAGES_PER_S)}
    assert all(v > 0 for v in rates.values())
    lowest = min(rates, key=rates.get)
    assert summary[Summary.BOUND] == {Summary.COMPUTE_IMAGES_PER_S: "compute", Summary.INPUT_IMAGES_PER_S: "input",
                                      Summary.ALLREDUCE_IMAGES_PER_S: "communication"}[lowest]
    report = cli("report", str(tmp_path))
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "report.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| ddp | 64 |"))
    assert f"**{summary[Summary.BOUND]}**: " in row
    assert f"{rates[Summary.ALLREDUCE_IMAGES_PER_S]:,.0f}" in row
