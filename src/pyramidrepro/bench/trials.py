"""The measurements of ``bench``, phase by phase: the pieces chosen by trial within the time budget,
the headline (baseline and chosen path alternated, the chosen path also with the HDF5 writer), the
per-stage times and, with ``ablate``, each piece alone against the baseline."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..autotune.chooser import Candidate, Choice, choose
from ..step.paths import PathSpec, TrainPath
from .plan import BenchPlan, pieces

#: the HDF5 writer's flush interval in the headline, as a run's Trainer uses it
WRITER_FLUSH_S = 2.0
#: what ``ratio`` divides by; on GPUs ``ratio_over_tf32`` divides by the same loop in PyTorch's TF32 default
RATIO_OVER = "the seed-style loop in true fp32 (TF32 off)"


@dataclass
class PathBuilder:
    """Each path of one plan, built and warmed up once: same model, initial weights, data and device."""

    plan: BenchPlan
    dev: torch.device
    init: dict[str, torch.Tensor]
    splits: Any
    built: dict[PathSpec, TrainPath] = field(default_factory=dict)

    def __contains__(self, spec: PathSpec) -> bool:
        return spec in self.built

    def __call__(self, spec: PathSpec) -> TrainPath:
        # an eager path is warm after its first step (workers started, kernels chosen) and one more;
        # a compiled one gets ``warmup`` steps (recompiles, autotuning)
        if spec not in self.built:
            p = self.plan
            self.built[spec] = TrainPath(spec, p.arch, self.init, self.splits, p.batch_size, self.dev,
                                         p.num_workers).warm_up(p.warmup if spec.compile_mode else 1)
        return self.built[spec]


@dataclass
class PathBench:
    """One ``bench`` run's measurements so far, and whether the time left holds another trial.

    ``plan.steps`` is set (steps per measurement); ``trials`` holds each compile mode's compile
    time and images/s.
    """

    path: PathBuilder
    plan: BenchPlan
    deadline: float
    compile_need_s: float
    say: Callable[[str], None]
    base_rates: list[float] = field(default_factory=list)
    rates: dict[PathSpec, list[float]] = field(default_factory=dict)
    trials: dict[str, dict[str, Any]] = field(default_factory=dict)
    compile_s: list[float] = field(default_factory=list)

    @property
    def steps(self) -> int:
        """Steps per measurement: the plan a bench runs has them sized."""
        assert self.plan.steps is not None
        return self.plan.steps

    def measure(self, spec: PathSpec) -> float:
        """images/s of one measurement on ``spec``; a compile mode's first one records its compile time."""
        fresh = spec not in self.path
        if fresh and spec.compile_mode:
            torch._dynamo.reset()
            self.say(f"compile ({spec.compile_mode}): compiling ...")
        p = self.path(spec)
        if fresh and spec.compile_mode:
            self.compile_s.append(p.first_step_s or 0.0)
            self.trials[spec.compile_mode] = {"compile_s": p.first_step_s}
        rate = p.train(self.steps)
        self.rates.setdefault(spec, []).append(rate)
        if spec.compile_mode in self.trials:
            self.trials[spec.compile_mode].setdefault("images_per_s_all", []).append(rate)
        return rate

    def budget_skip(self, cand: Candidate) -> str | None:
        """Why ``cand`` is left untried (the trial and the headline after it would not fit), or None."""
        left = self.deadline - time.monotonic()
        base_s, fast_s = self._measurement_seconds()
        headline = self.plan.repeats * (base_s + 2 * fast_s) + base_s + fast_s  # + the stage breakdown
        if cand.piece == "compile_mode":
            # the compile, then a round of the trial's own two measurements
            need = (1.3 * max(self.compile_s) if self.compile_s else self.compile_need_s) + base_s + fast_s
            if left - headline < need:
                return (f"budget: {left:.0f} s left of the time budget, a compile trial needs ~{need:.0f} s "
                        "(raise --budget-s to include it)")
        elif left - headline < 4 * base_s:
            return f"budget: {left:.0f} s left of the time budget"
        return None

    def _measurement_seconds(self) -> tuple[float, float]:
        """Seconds of one measurement on the baseline, and on the fastest path measured so far."""
        images = self.steps * self.plan.batch_size
        base_s = images / max(1e-9, statistics.median(self.base_rates))
        # the chosen path will be at least as fast as the fastest measured so far
        fast_s = images / max(statistics.median(r) for r in self.rates.values()) if self.rates else base_s
        return base_s, fast_s


@dataclass
class Headline:
    """The baseline and the chosen path alternated ``repeats`` times, the chosen path also with the writer."""

    repeats: int
    base_all: list[float] = field(default_factory=list)
    fast_all: list[float] = field(default_factory=list)
    tf32_all: list[float] = field(default_factory=list)  # GPUs: the baseline in PyTorch's TF32 default
    with_writer: list[float] = field(default_factory=list)
    loop_s: float = 0.0
    write_s: float = 0.0
    flushes: int = 0

    def writer_overhead(self) -> dict[str, Any]:
        """The HDF5 writer's cost: its own seconds and the with/without comparison."""
        return {
            "with_writer_images_per_s": statistics.median(self.with_writer),
            "without_writer_images_per_s": statistics.median(self.fast_all),
            "ab_overhead": statistics.median(x / y - 1 for x, y in zip(self.fast_all, self.with_writer)),
            "writer_seconds": self.write_s, "flushes": self.flushes, "flush_interval_s": WRITER_FLUSH_S,
            "overhead": self.write_s / self.loop_s,
        }


def alternate(a: TrainPath, b: TrainPath, steps: int, repeats: int) -> tuple[list[float], list[float]]:
    """images/s of ``a`` and ``b``, measured in turn ``repeats`` times so drift hits both alike."""
    ra, rb = [], []
    for _ in range(repeats):
        ra.append(a.train(steps))
        rb.append(b.train(steps))
    return ra, rb


def measure_paths(bench: PathBench, candidates: list[Candidate]) -> dict[str, Any]:
    """The measurements of ``bench_training``: the choice, the headline with HDF5 cost, stages, ablation."""
    choice, fast_spec = choose_fast_path(bench, candidates)
    head = run_headline(bench, fast_spec)
    stages = stage_seconds(bench, fast_spec)
    ablation: dict[str, Any] = {}
    if bench.plan.ablate:
        mode = fast_spec.compile_mode or next(iter(bench.trials), None)
        ablation = ablate(bench, candidates, mode, head.repeats)
    b, f = statistics.median(head.base_all), statistics.median(head.fast_all)
    tf32 = statistics.median(head.tf32_all) if head.tf32_all else None
    kept_mode, trials = fast_spec.compile_mode, bench.trials
    return {
        "baseline_images_per_s": b, "optimized_images_per_s": f, "ratio": f / b,
        "ratio_over": RATIO_OVER,
        "baseline_tf32_images_per_s": tf32, "baseline_tf32_all": head.tf32_all,
        "ratio_over_tf32": f / tf32 if tf32 else None,
        "baseline_all": head.base_all, "optimized_all": head.fast_all, "repeats": head.repeats,
        "baseline": bench.plan.baseline.describe(), "optimized": fast_spec.describe(),
        "choices": [d.to_dict() for d in choice.decisions],
        "compile": {"mode": kept_mode, "trials": trials,
                    "compile_s": trials[kept_mode]["compile_s"] if kept_mode in trials else None},
        "stage_seconds_per_step": stages,
        "metrics_overhead": head.writer_overhead(),
        "ablation": ablation,
    }


def choose_fast_path(bench: PathBench, candidates: list[Candidate]) -> tuple[Choice, PathSpec]:
    """The pieces kept by trial from the baseline, and the path they make (its memory format forced
    when the plan says); each compile trial's images/s becomes the median of its measurements."""
    bench.base_rates.append(bench.path(bench.plan.baseline).train(bench.steps))
    bench.say("choosing the optimized path, piece by piece ...")
    choice = choose(bench.plan.baseline, candidates, bench.measure, skip=bench.budget_skip, say=bench.say)
    forced = bench.plan.channels_last
    fast_spec = choice.spec if forced is None else replace(choice.spec, channels_last=forced)
    for t in bench.trials.values():
        t["images_per_s"] = statistics.median(t.pop("images_per_s_all", [0.0]))
    return choice, fast_spec


def headline_repeats(bench: PathBench, base: TrainPath, fast: TrainPath) -> int:
    """The plan's repeats, up to 3x as many while the time left holds them (with two rounds to spare)."""
    steps, repeats = bench.steps, bench.plan.repeats
    round_s = steps * base.batch_size * (2 / statistics.median(bench.base_rates) + 1 / fast.train(steps))
    return max(repeats, min(3 * repeats, int((bench.deadline - time.monotonic()) / round_s) - 2))


def run_headline(bench: PathBench, fast_spec: PathSpec) -> Headline:
    """Baseline vs the chosen path, alternated, the chosen path also with the HDF5 writer."""
    from ..records.metrics import MetricsWriter

    base, fast, steps = bench.path(bench.plan.baseline), bench.path(fast_spec), bench.steps
    tf32 = bench.path(b) if (b := bench.plan.baselines(bench.path.dev).get("tf32")) else None
    head = Headline(headline_repeats(bench, base, fast))
    bench.say(f"baseline{' (fp32 and TF32)' if tf32 else ''} vs optimized, and the HDF5 writer's cost: "
              f"{head.repeats} alternated repeats ...")
    with tempfile.TemporaryDirectory() as tmp:
        writer = MetricsWriter(Path(tmp) / "metrics.h5", flush_interval_s=WRITER_FLUSH_S)
        w0 = writer.write_seconds
        for _ in range(head.repeats):
            head.base_all.append(base.train(steps))
            if tf32 is not None:
                head.tf32_all.append(tf32.train(steps))
            head.fast_all.append(fast.train(steps))
            t0 = time.perf_counter()
            head.with_writer.append(fast.train(steps, writer=writer))
            head.loop_s += time.perf_counter() - t0
        head.write_s, head.flushes = writer.write_seconds - w0, writer.flush_count
    return head


def stage_seconds(bench: PathBench, fast_spec: PathSpec) -> dict[str, dict[str, float]]:
    """Seconds per step in each stage, baseline and chosen path (one device-synced measurement each)."""
    out: dict[str, dict[str, float]] = {"baseline": {}, "optimized": {}}
    bench.path(bench.plan.baseline).train(bench.steps, stages=out["baseline"])
    bench.path(fast_spec).train(bench.steps, stages=out["optimized"])
    return out


def ablate(bench: PathBench, candidates: list[Candidate], compile_mode: str | None, repeats: int) -> dict[str, Any]:
    """Each piece alone against the baseline, alternated ``repeats`` times (beyond the budget)."""
    ruled_out = {c.name: c.ruled_out for c in candidates if c.ruled_out}
    out: dict[str, Any] = {}
    for name, spec in pieces(bench.plan.baseline, bench.path.dev, compile_mode).items():
        if name in ruled_out:  # the capability says it loses; measuring it would take minutes
            out[name] = {"skipped": ruled_out[name]}
        else:
            out[name] = piece_alone(bench, name, spec, repeats)
    return out


def piece_alone(bench: PathBench, name: str, spec: PathSpec, repeats: int) -> dict[str, float]:
    """images/s of the baseline with one piece on, against the baseline's own."""
    bench.say(f"ablation: {name} ...")
    if spec.compile_mode:
        torch._dynamo.reset()
    rb, ro = alternate(bench.path(bench.plan.baseline), bench.path(spec), bench.steps, repeats)
    return {"images_per_s": statistics.median(ro), "baseline_images_per_s": statistics.median(rb),
            "ratio": statistics.median(ro) / statistics.median(rb)}
