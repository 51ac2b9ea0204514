"""How a point's throughput is estimated: total images over total time after a settled warm-up,
with a 95 % confidence interval, and how two estimates are compared (a difference inside the
intervals is noise, not a finding)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

#: two-sided 95 % Student-t quantiles by degrees of freedom (1..30); beyond 30 the normal's 1.96
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)
#: a step slower than this factor of the settled median still counts as warm-up
SETTLE_FACTOR = 1.3
WINDOWS = 5


def t95(dof: int) -> float:
    return _T95[dof - 1] if 1 <= dof <= len(_T95) else 1.96


def settled_start(step_times: Sequence[float], floor: int) -> int:
    """The first step to measure: at least ``floor`` (the configured warm-up), and past every early
    step slower than SETTLE_FACTOR x the median of the steps after it (compiles, autotuning, caches)."""
    times = list(step_times)
    start = min(max(0, floor), len(times))
    while len(times) - start > 3 and times[start] > SETTLE_FACTOR * statistics.median(times[start + 1:]):
        start += 1
    return start


@dataclass(frozen=True)
class Estimate:
    """images/s with the half-width of its 95 % confidence interval (0: unknown)."""

    images_per_s: float
    ci: float = 0.0
    samples: int = 1  # windows of one run, or runs of one point

    @property
    def low(self) -> float:
        return self.images_per_s - self.ci

    @property
    def high(self) -> float:
        return self.images_per_s + self.ci


def mean_ci(values: Sequence[float]) -> Estimate:
    """Mean and Student-t 95 % half-width of independent estimates (repeats of one point)."""
    vals = [v for v in values if v and math.isfinite(v)]
    if not vals:
        return Estimate(float("nan"), 0.0, 0)
    if len(vals) == 1:
        return Estimate(vals[0], 0.0, 1)
    return Estimate(statistics.fmean(vals), t95(len(vals) - 1) * statistics.stdev(vals) / math.sqrt(len(vals)),
                    len(vals))


def windows_of(measured_steps: int) -> int:
    """How many contiguous windows a run's interval is taken over (1: too few steps for one)."""
    k = min(WINDOWS, measured_steps // 2)
    return k if k >= 2 else 1


def pool(runs: Sequence[Estimate]) -> Estimate:
    """Repeats of one point as one estimate: every run's windows pooled.

    The mean weights each run by its windows.  The interval is the wider of two: Student-t over
    all windows (its variance the windows' spread within each run plus the runs' spread about the
    mean; each run's window spread is recovered from its own interval), and Student-t over the
    runs' own figures.  Windows of one run share the machine's state at that time, so when the
    machine drifts between runs only the runs are independent samples, and the second interval,
    with runs - 1 degrees of freedom, is the honest one.
    """
    runs = [r for r in runs if r.images_per_s and math.isfinite(r.images_per_s)]
    if len(runs) <= 1:
        return runs[0] if runs else Estimate(float("nan"), 0.0, 0)
    n = sum(r.samples for r in runs)
    mean = sum(r.samples * r.images_per_s for r in runs) / n
    within = sum((r.samples - 1) * (r.ci * math.sqrt(r.samples) / t95(r.samples - 1)) ** 2
                 for r in runs if r.samples > 1)
    between = sum(r.samples * (r.images_per_s - mean) ** 2 for r in runs)
    sd = math.sqrt((within + between) / (n - 1))
    over_runs = mean_ci([r.images_per_s for r in runs]).ci
    return Estimate(mean, max(t95(n - 1) * sd / math.sqrt(n), over_runs), n)


def throughput(step_times: Sequence[float], batch: int, floor: int) -> tuple[Estimate, int, int]:
    """A run's images/s: total images / total time over the settled steps, with a 95 % interval from
    WINDOWS contiguous windows (each its own total / total).

    Steps without a time (NaN) are left out.  Returns the estimate, the index in ``step_times`` of
    the first step measured, and how many steps were measured.
    """
    timed = [i for i, t in enumerate(step_times) if math.isfinite(t) and t > 0]
    times = [step_times[i] for i in timed]
    start = settled_start(times, floor)
    if start >= len(times):  # too few steps for a warm-up: measure them all
        start = 0
    measured = times[start:]
    first = timed[start] if timed else len(step_times)
    rate = batch * len(measured) / sum(measured)
    k = windows_of(len(measured))
    if k < 2:
        return Estimate(rate, 0.0, 1), first, len(measured)
    size = len(measured) // k
    windows = [measured[i * size:(i + 1) * size] for i in range(k)]
    spread = mean_ci([batch * len(w) / sum(w) for w in windows])
    return Estimate(rate, spread.ci, k), first, len(measured)


def compare(a: Estimate, b: Estimate) -> str:
    """'higher', 'lower' or 'noise': whether ``a`` exceeds ``b`` beyond both intervals."""
    if a.low > b.high:
        return "higher"
    if a.high < b.low:
        return "lower"
    return "noise"
