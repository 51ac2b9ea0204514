"""auto values: capability first, then short trials; an option a trial shows slower is left out; a trial
the machine disturbed is measured again and never cached; a cached choice the run falls far short of is dropped."""

import json
import os
import time
from dataclasses import replace

import pytest
import torch

from pyramidrepro.autotune.chooser import Candidate, TrialSettings, choose
from pyramidrepro.config.load import load_config
from pyramidrepro.records.metrics import read_metrics
from pyramidrepro.step.paths import PathSpec, TrainPath
from pyramidrepro.workload.data import synthetic_splits
from pyramidrepro.workload.model import PyramidNet
from support import SMOKE, TINY, run_cli

#: an AVX2-only CPU's instruction set, on whatever CPU runs the test: torch's kernels and oneDNN
#: both limited to AVX2 (no AVX-512, no bf16 units)
AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _real_measure(slow: PathSpec, calls: list[PathSpec]):
    """Real training steps on a tiny model; ``slow`` really does three times the work per measurement.
    Timed in this process's CPU seconds, so that other jobs on the machine do not move the figures."""
    torch.manual_seed(0)
    arch = (8, 4, "basic")
    init = PyramidNet(*arch).state_dict()
    splits = synthetic_splits(512, 16)
    built: dict[PathSpec, TrainPath] = {}

    def measure(spec: PathSpec) -> float:
        calls.append(spec)
        if spec not in built:
            built[spec] = TrainPath(spec, arch, init, splits, 16, torch.device("cpu")).warm_up(1)
        t0 = time.process_time()
        built[spec].train(9 if spec == slow else 3)  # the injected slow-down: three steps' work for each step
        return 3 * 16 / (time.process_time() - t0)

    return measure


def test_the_chooser_leaves_out_an_option_its_trial_shows_slower():
    reference = PathSpec(loader="torch", host_sync=False)
    slowed = replace(reference, channels_last=True)
    calls: list[PathSpec] = []
    ruled_out = Candidate("bf16", "precision", "bf16", ruled_out="capability: no bf16 units")
    choice = choose(reference, [ruled_out, Candidate("channels_last", "channels_last", True)],
                    _real_measure(slowed, calls))
    assert choice.spec == reference  # the run keeps fp32 NCHW: never slower than the path without it
    bf16, cl = choice.decisions
    assert not bf16.kept and bf16.reason == "capability: no bf16 units" and bf16.ratio is None
    assert not any(c.precision == "bf16" for c in calls)  # ruled out by capability: never measured
    assert not cl.kept and "slower: left out" in cl.reason and cl.ratio < 0.7
    # a decisive round settles it: the reference before and after the option, once per attempt (a busy
    # machine may have asked for another)
    assert calls.count(slowed) == cl.attempts and calls.count(reference) == 2 * cl.attempts


def _scripted(rates: dict[PathSpec, list[float]], calls: list[PathSpec]):
    """A measure that returns each path's next scripted images/s."""
    left = {spec: iter(r) for spec, r in rates.items()}

    def measure(spec: PathSpec) -> float:
        calls.append(spec)
        return next(left[spec])

    return measure


def test_a_close_trial_gets_a_second_round_and_the_medians_decide():
    reference = PathSpec(loader="torch", host_sync=False)
    trial = replace(reference, channels_last=True)
    calls: list[PathSpec] = []
    measure = _scripted({reference: [100.0, 100.0, 100.0], trial: [105.0, 101.0]}, calls)  # 1.05x, then 1.01x
    choice = choose(reference, [Candidate("channels_last", "channels_last", True)], measure)
    # within 15 % after one round: a second one; the reference before and after each measurement of the option
    assert calls == [reference, trial, reference, trial, reference]
    d = choice.decisions[0]
    assert d.kept and abs(d.ratio - 1.03) < 1e-9 and choice.spec == trial  # median 103 vs 100: kept
    assert d.attempts == 1 and not d.disturbed and choice.predicted_images_per_s == 103.0


def test_a_trial_the_reference_moved_around_is_measured_again():
    """The machine slowed down during the trial (the reference after it at 40 % of before): measured again."""
    reference = PathSpec(loader="torch", host_sync=False)
    trial = replace(reference, channels_last=True)
    calls: list[PathSpec] = []
    said: list[str] = []
    measure = _scripted({reference: [100.0, 40.0, 100.0, 100.0], trial: [150.0, 80.0]}, calls)
    choice = choose(reference, [Candidate("channels_last", "channels_last", True)], measure, say=said.append)
    assert calls == [reference, trial, reference] * 2
    d = choice.decisions[0]
    # alone, the first attempt would have kept it (150 against 70: 2.14x); the steady second one decides
    assert not d.kept and d.attempts == 2 and not d.disturbed and choice.steady
    assert (d.images_per_s_without, d.images_per_s_with) == (100.0, 80.0) and choice.spec == reference
    assert any("not steady (the reference measured 100.0, 40.0 images/s around it): measuring again, attempt 2 of 3"
               in line for line in said)


def test_a_reference_no_noisier_than_the_option_itself_is_steady():
    """Two rounds where the option's own measurements spread more than the reference's: no disturbance."""
    reference = PathSpec(loader="torch", host_sync=False)
    trial = replace(reference, channels_last=True)
    calls: list[PathSpec] = []
    measure = _scripted({reference: [100.0, 112.0, 104.0], trial: [110.0, 94.0]}, calls)  # 12 % vs 17 %
    choice = choose(reference, [Candidate("channels_last", "channels_last", True)], measure,
                    settings=TrialSettings(steady=0.10))
    assert len(calls) == 5 and choice.decisions[0].attempts == 1 and choice.steady


def test_the_chooser_keeps_an_option_its_trial_shows_faster():
    reference = PathSpec(loader="torch", host_sync=False)
    calls: list[PathSpec] = []
    choice = choose(reference, [Candidate("channels_last", "channels_last", True)],
                    _real_measure(reference, calls))  # now the path without it is the slow one
    assert choice.spec == replace(reference, channels_last=True)
    assert choice.decisions[0].kept and choice.decisions[0].ratio > 1.4


@pytest.mark.slow
def test_auto_on_an_avx2_only_cpu_keeps_fp32_by_capability_and_caches_the_trials(tmp_path, cli):
    env = {**AVX2_ONLY, "PYRAMIDREPRO_CACHE_DIR": str(tmp_path / "cache")}
    args = ["run", str(SMOKE), "--out", str(tmp_path), *TINY, "--set", "train.precision=auto",
            "--set", "train.channels_last=auto"]
    r = run_cli(*args, "--run-id", "first", env=env)
    assert r.returncode == 0, r.stderr
    assert "auto: bf16: not tried (capability: no bf16 units on this CPU (AVX2)" in r.stdout
    attrs = read_metrics(tmp_path / "smoke" / "first" / "metrics.h5")["attrs"]
    cap = json.loads(attrs["device_capability"])
    assert cap["isa"] == "AVX2" and cap["fast_bf16"] is False
    assert attrs["precision"] == "fp32"
    choices = {c["piece"]: c for c in json.loads(attrs["auto_choices"])}
    assert set(choices) == {"bf16", "channels_last"} and choices["bf16"]["kept"] is False
    assert "in a trial" in choices["channels_last"]["reason"]  # measured, whichever way it went
    assert bool(attrs["channels_last"]) == choices["channels_last"]["kept"]
    # cached unless the machine was too busy for a steady trial, or for the run to hold up to it
    kept = "auto: not cached" not in r.stdout and "cached choice dropped" not in r.stdout
    again = run_cli(*args, "--run-id", "second", env=env)
    assert again.returncode == 0, again.stderr
    assert ("cached trials" in again.stdout) == kept, (r.stdout, again.stdout)
    attrs2 = read_metrics(tmp_path / "smoke" / "second" / "metrics.h5")["attrs"]
    assert attrs2["precision"] == "fp32"
    if kept:
        reused = json.loads(attrs2["auto_choices"])
        assert all(c["cached"] for c in reused) and not any(c["cached"] for c in choices.values())
        assert [{**c, "cached": False} for c in reused] == json.loads(attrs["auto_choices"])
    r = cli("report", str(tmp_path), "--out", str(tmp_path / "report"))
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "report" / "report.md").read_text()
    assert "isa AVX2" in text and "fast_bf16 False" in text and "bf16 left out (capability" in text


def test_auto_values_validate_and_dp_never_compiles():
    cfg = load_config(SMOKE, ["train.precision=auto", "train.channels_last=auto", "train.compile=auto"])
    assert (cfg.train.precision, cfg.train.channels_last, cfg.train.compile) == ("auto", "auto", "auto")
    load_config(SMOKE, ["train.mode=dp", "train.compile=auto"])  # auto: the chooser rules compile out
    from pyramidrepro.config.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        load_config(SMOKE, ["train.channels_last=sometimes"])
    assert err.value.key == "train.channels_last" and "'auto'" in str(err.value)


def test_the_next_trial_starts_from_the_latest_measurement_and_a_retry_the_budget_cannot_hold_is_not_made():
    reference = PathSpec(loader="torch", host_sync=False)
    cl, bf16 = replace(reference, channels_last=True), replace(reference, precision="bf16")
    foreach = replace(bf16, optimizer="foreach")
    calls: list[PathSpec] = []
    said: list[str] = []
    budget = iter([None, None, "budget: 3 s left", None])  # every trial fits; a retry of the second does not
    measure = _scripted({reference: [100.0, 100.0, 40.0], cl: [50.0], bf16: [200.0, 200.0], foreach: [100.0]}, calls)
    candidates = [Candidate("channels_last", "channels_last", True), Candidate("bf16", "precision", "bf16"),
                  Candidate("foreach", "optimizer", "foreach")]
    choice = choose(reference, candidates, measure, skip=lambda cand: next(budget), say=said.append)
    # channels_last left out: its last reference opens the bf16 trial; bf16 kept: its own measurement the next one's
    assert calls == [reference, cl, reference, bf16, reference, foreach, bf16]
    left_out, bf, fe = choice.decisions
    assert not left_out.kept and not left_out.disturbed and not fe.kept and not fe.disturbed
    assert bf.kept and bf.disturbed and bf.attempts == 1 and "not steady in 1 attempt (" in bf.reason
    assert "bf16: not steady (the reference measured 100.0, 40.0 images/s around it); not measured again " \
           "(budget: 3 s left)" in said
    assert not choice.steady and choice.spec == bf16 and choice.predicted_images_per_s == 200.0


class NoisyNeighbour:
    """The trials' measurements, scripted: channels_last 1.5x the path without it on a quiet machine, and
    every measurement numbered in ``busy`` a third as fast (another job on the cores, which the trial
    cannot tell from the option).  Installed over ``TrainPath`` (no real steps); the run trains for real."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, busy: set[int], base: float = 0.01) -> None:
        self.busy, self.base, self.calls = busy, base, []
        monkeypatch.setattr(TrainPath, "warm_up", lambda path, steps: path)
        monkeypatch.setattr(TrainPath, "train", lambda path, steps, **kw: self.rate(path.spec))

    def rate(self, spec: PathSpec) -> float:
        slowed = 3 if len(self.calls) in self.busy else 1
        self.calls.append(spec)
        return self.base * (1.5 if spec.channels_last else 1.0) / slowed


CL_AUTO = [*TINY, "--set", "train.batch_size=16", "--set", "train.channels_last=auto", "--no-progress"]


def _cache(tmp_path) -> dict:
    path = tmp_path / "cache" / "auto_choices.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _auto_choices(tmp_path, run_id: str) -> dict:
    attrs = read_metrics(tmp_path / "smoke" / run_id / "metrics.h5")["attrs"]
    return {"channels_last": attrs["channels_last"], **json.loads(attrs["auto_choices"])[0]}


def test_a_choice_whose_trial_stays_disturbed_is_used_not_cached_and_a_quiet_run_makes_its_own(
        cli, tmp_path, monkeypatch):
    monkeypatch.setenv("PYRAMIDREPRO_CACHE_DIR", str(tmp_path / "cache"))
    busy = NoisyNeighbour(monkeypatch, busy={2, 5, 8})  # the reference after the option, in every attempt
    r = cli("run", str(SMOKE), "--out", str(tmp_path), *CL_AUTO, "--run-id", "busy")
    assert r.returncode == 0, r.stderr
    assert len(busy.calls) == 9  # reference, option, reference: three attempts
    assert r.stdout.count("channels_last: not steady (") == 2 and "attempt 3 of 3" in r.stdout
    assert "auto: not cached: the machine was not steady during the channels_last trial" in r.stdout
    assert _cache(tmp_path) == {}
    used = _auto_choices(tmp_path, "busy")
    assert used["channels_last"] and used["kept"] and used["disturbed"] and not used["cached"]  # used, flagged
    assert "not steady in 3 attempts" in used["reason"]

    quiet = NoisyNeighbour(monkeypatch, busy=set())
    r = cli("run", str(SMOKE), "--out", str(tmp_path), *CL_AUTO, "--run-id", "quiet")
    assert r.returncode == 0, r.stderr
    assert "auto: choosing channels_last" in r.stdout and "not cached" not in r.stdout
    assert len(quiet.calls) == 3  # its own trial, steady the first time
    [entry] = _cache(tmp_path).values()
    assert entry["spec"]["channels_last"] and entry["predicted_images_per_s"] == pytest.approx(0.015)
    assert not _auto_choices(tmp_path, "quiet")["disturbed"]


def test_a_cached_choice_the_run_falls_far_below_is_dropped_and_retune_measures_again(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("PYRAMIDREPRO_CACHE_DIR", str(tmp_path / "cache"))
    trials = NoisyNeighbour(monkeypatch, busy=set())  # 0.015 images/s predicted: any real run beats it
    r = cli("run", str(SMOKE), "--out", str(tmp_path), *CL_AUTO, "--run-id", "first")
    assert r.returncode == 0, r.stderr
    assert len(trials.calls) == 3 and "dropped" not in r.stdout and not _auto_choices(tmp_path, "first")["cached"]
    # the same entry, as a trial would leave it that saw a machine far faster than the run gets
    path = tmp_path / "cache" / "auto_choices.json"
    table = json.loads(path.read_text())
    [key] = table
    table[key]["predicted_images_per_s"] = 1e9
    path.write_text(json.dumps(table))

    r = cli("run", str(SMOKE), "--out", str(tmp_path), *CL_AUTO, "--run-id", "cached")
    assert r.returncode == 0, r.stderr
    assert len(trials.calls) == 3  # no trial: the cached choice was used, and said so
    assert "(cached trials, " in r.stdout and "1,000,000,000.0 images/s predicted" in r.stdout
    assert "x the 1,000,000,000.0 its cached trials predicted: cached choice dropped, the next run measures again" \
        in r.stdout
    assert _auto_choices(tmp_path, "cached")["cached"] and _cache(tmp_path) == {}

    r = cli("run", str(SMOKE), "--out", str(tmp_path), *CL_AUTO, "--run-id", "retuned")
    assert r.returncode == 0, r.stderr
    assert "auto: choosing channels_last" in r.stdout and len(trials.calls) == 6
    assert _cache(tmp_path)[key]["predicted_images_per_s"] == pytest.approx(0.015) and "dropped" not in r.stdout

    # --retune: the cached entry ignored and measured again, then replaced
    trials.base = 0.02
    r = cli("run", str(SMOKE), "--out", str(tmp_path), *CL_AUTO, "--run-id", "again", "--retune")
    assert r.returncode == 0, r.stderr
    assert "auto: measuring again (--retune): channels_last" in r.stdout and len(trials.calls) == 9
    assert _cache(tmp_path)[key]["predicted_images_per_s"] == pytest.approx(0.03)
    assert "PYRAMIDREPRO_RETUNE" not in os.environ  # the flag held for that run only
    assert "--retune" in cli("run", "--help").stdout


def test_a_piece_free_on_the_device_is_kept_without_a_trial_and_the_next_trial_starts_from_it():
    reference = PathSpec()
    free = Candidate("tensor_loader", "loader", "torch", free="nothing to wait for on a GPU")
    after = replace(reference, loader="torch")
    calls: list[PathSpec] = []
    measure = _scripted({after: [100.0, 100.0, 100.0], replace(after, channels_last=True): [150.0]}, calls)
    choice = choose(reference, [free, Candidate("channels_last", "channels_last", True)], measure)
    assert reference not in calls  # the free piece was never measured against the path without it
    first, second = choice.decisions
    assert first.kept and first.reason == "kept without a trial: nothing to wait for on a GPU" and first.ratio is None
    assert second.kept and second.images_per_s_without == 100.0
    assert choice.spec == replace(after, channels_last=True)


def test_on_a_gpu_bench_keeps_the_free_pieces_and_tries_widths_and_measures_both_baselines():
    from pyramidrepro.bench.plan import BenchPlan, bench_candidates

    cap = {"fast_bf16": True}
    plan = BenchPlan(device="cuda", compile="off")
    gpu = {c.name: c for c in bench_candidates(plan, torch.device("cuda"), cap)}
    assert gpu["tensor_loader"].free and gpu["no_host_sync"].free
    assert not gpu["fused_sgd"].free and not gpu["channels_last"].free
    assert gpu["aligned_widths (x8)"].ruled_out is None and gpu["aligned_widths (x8)"].value == 8
    cpu = {c.name: c for c in bench_candidates(replace(plan, device="cpu"), torch.device("cpu"), cap)}
    assert not any(c.free for c in cpu.values())
    assert cpu["aligned_widths (x8)"].ruled_out.startswith("capability:")
    assert "aligned_widths (x8)" not in {c.name for c in bench_candidates(replace(plan, widths=False),
                                                                         torch.device("cuda"), cap)}
    assert {k: v.precision for k, v in plan.baselines(torch.device("cuda")).items()} == {"fp32": "fp32",
                                                                                          "tf32": "tf32"}
    assert list(plan.baselines(torch.device("cpu"))) == ["fp32"]
    assert replace(plan, baseline_loader="torch").baseline.loader == "torch"


def test_an_aligned_path_trains_from_the_papers_weights():
    torch.manual_seed(0)
    init = PyramidNet(8, 4).state_dict()
    splits = synthetic_splits(64, 16)
    rates = [TrainPath(PathSpec(loader="torch", channel_multiple=m), (8, 4, "basic"), init, splits, 16,
                       torch.device("cpu")).train(2) for m in (1, 8)]
    assert all(r > 0 for r in rates)
