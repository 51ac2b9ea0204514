"""The throughput estimator: a settled warm-up, total images over total time, an interval, and claims
that call a difference inside the intervals noise."""

import math
import statistics

import pytest

from pyramidrepro.stats.measure import Estimate, compare, mean_ci, settled_start, throughput


def test_warm_up_extends_past_slow_early_steps_and_never_below_the_floor():
    times = [5.0, 2.0, 1.6, 0.5, 0.52, 0.49, 0.51, 0.5, 0.5]
    assert settled_start(times, floor=1) == 3  # 2.0 and 1.6 are still warming up
    assert settled_start(times, floor=5) == 5
    assert settled_start([0.5] * 10, floor=2) == 2


def test_throughput_is_total_images_over_total_time():
    times = [3.0] + [0.1, 0.3] * 10  # a mean of per-step rates would say 6.67 x 64 ...
    est, start, measured = throughput(times, batch=64, floor=1)
    assert start == 1 and measured == 20 and est.images_per_s == pytest.approx(64 * 20 / 4.0)  # ... the truth is 320
    assert est.samples == 5 and est.ci >= 0


def test_untimed_steps_are_left_out_and_the_first_index_refers_to_the_input():
    nan = float("nan")
    est, start, measured = throughput([nan, nan, 0.5, 0.1, 0.1, 0.1, 0.1], batch=10, floor=1)
    assert (start, measured) == (3, 4) and est.images_per_s == pytest.approx(100.0)


def test_interval_shrinks_with_steady_steps_and_widens_with_jitter():
    steady, _, _ = throughput([0.1] * 40, 32, 2)
    jittery, _, _ = throughput([0.1, 0.1, 0.05, 0.2] * 10, 32, 2)
    assert steady.ci == pytest.approx(0.0, abs=1e-6) and jittery.ci > 0


def test_mean_ci_of_repeats():
    e = mean_ci([100.0, 102.0, 98.0])
    assert e.images_per_s == pytest.approx(100.0) and e.ci == pytest.approx(4.303 * 2 / math.sqrt(3))
    assert mean_ci([5.0]).ci == 0 and math.isnan(mean_ci([]).images_per_s)


def test_compare_calls_overlapping_intervals_noise():
    assert compare(Estimate(110, 4), Estimate(100, 4)) == "higher"
    assert compare(Estimate(105, 4), Estimate(100, 4)) == "noise"
    assert compare(Estimate(90, 4), Estimate(100, 4)) == "lower"
    assert compare(Estimate(101, 0), Estimate(100, 0)) == "higher"  # no interval: a plain comparison


def test_claims_within_noise_when_the_intervals_overlap(tmp_path):
    from pyramidrepro.records.runs import load_runs
    from pyramidrepro.study.claims import check_claims
    from test_report import fake_run

    rows = [("single", 64, 450, 10), ("single", 128, 436, 10), ("ddp", 64, 455, 12), ("ddp", 128, 470, 12)]
    for i, (mode, batch, ips, ci) in enumerate(rows):
        fake_run(tmp_path / "runs", f"r{i}", mode, batch, "completed", ips, gpu=False, cap=None)
        from pyramidrepro.records.metrics import MetricsWriter

        w = MetricsWriter(tmp_path / "runs" / f"r{i}" / "metrics.h5", flush_interval_s=0)
        w.set_summary(images_per_s_ci=ci)
        w.close("completed")
    claims = {c.key: c for c in check_claims(load_runs(tmp_path / "runs"))}
    # DDP 455 +- 12 vs single 450 +- 10: noise; 470 +- 12 vs 436 +- 10: higher -> WITHIN NOISE, not PASS/FAIL
    assert claims["C3"].verdict == "WITHIN NOISE" and "455 ± 12" in claims["C3"].evidence
    assert claims["C4"].verdict == "WITHIN NOISE"  # 455 -> 470 overlaps


def test_figure5_styles_by_mode_and_remedy_and_leaves_out_the_thread_base():
    from pyramidrepro.study.figures import figure5_lines, line_style

    assert line_style("ddp") == {"color": "tab:green", "marker": "^", "linestyle": "-"}
    assert line_style("single+bf16")["linestyle"] == "--" and line_style("single+ckpt")["linestyle"] == ":"
    assert line_style("single+accum2") == {**line_style("single"), "linestyle": "-."}
    assert set(figure5_lines({"single": {}, "single+1thread": {}, "ddp+accum2": {}})) == {"single", "ddp+accum2"}


def test_pooled_repeats_take_the_wider_of_the_window_and_the_run_intervals():
    from pyramidrepro.stats.measure import pool

    # runs that agree: the interval over all their windows
    agree = [[101.0, 99.5, 100.2, 98.7, 100.9], [100.4, 99.1, 101.2, 100.4, 99.8], [99.0, 101.2, 100.5, 99.9, 100.8]]
    pooled = pool([mean_ci(w) for w in agree])
    direct = mean_ci([v for w in agree for v in w])
    assert pooled.images_per_s == pytest.approx(direct.images_per_s)
    assert pooled.ci == pytest.approx(direct.ci) and pooled.samples == 15
    # runs that drift apart, each narrow on its own: Student-t over the three runs (2 degrees of freedom)
    drift = [[101.0, 99.5, 100.2, 98.7, 100.9], [110.0, 109.1, 111.2, 110.4, 109.8], [91.0, 92.2, 90.5, 91.9, 92.8]]
    pooled = pool([mean_ci(w) for w in drift])
    over_runs = mean_ci([statistics.fmean(w) for w in drift])
    assert pooled.ci == pytest.approx(over_runs.ci) and pooled.ci > 2 * mean_ci([v for w in drift for v in w]).ci


def test_pooling_narrows_agreeing_repeats_and_widens_for_disagreeing_ones():
    from pyramidrepro.stats.measure import pool

    one = Estimate(100.0, 4.0, 5)
    assert pool([one]) == one
    assert pool([one, one]).ci < one.ci
    apart = pool([Estimate(100.0, 1.0, 5), Estimate(120.0, 1.0, 5)])
    assert apart.images_per_s == pytest.approx(110.0) and apart.ci > 5 * 1.0  # the runs' spread, not their own


def test_a_point_whose_runs_give_one_window_has_no_interval_and_runs_again():
    """A short run whose warm-up leaves under four steps has one window and ci 0 ("unknown"): against
    any target it is too wide, not met; two pooled runs have an interval and are judged by it."""
    from pyramidrepro.cluster.campaign import needs_repeat, why_repeat
    from pyramidrepro.cluster.campaign_state import Repeats

    one_window = Estimate(100.0, 0.0, 1)
    assert needs_repeat(one_window, 0.5)
    assert not needs_repeat(one_window, None)  # no target: never repeated for width
    assert why_repeat(one_window, 2, Repeats(1, 3, 0.5)) == "no interval from one window: repeat 2 of at most 3"
    narrow, wide = Estimate(100.0, 1.0, 4), Estimate(100.0, 30.0, 4)
    assert not needs_repeat(narrow, 0.05) and needs_repeat(wide, 0.05)
    assert why_repeat(wide, 2, Repeats(1, 3, 0.05)) == "± 30.0 % > 5 %: repeat 2 of at most 3"
    assert why_repeat(narrow, 2, Repeats(1, 3, 0.05)) is None
    assert why_repeat(narrow, 2, Repeats(2, 3, 0.05)) == "repeat 2 of at least 2"
