"""auto values: capability first, then short trials; an option a trial shows slower is left out."""

import json
import time
from dataclasses import replace

import pytest
import torch

from pyramidrepro.records.metrics import read_metrics
from pyramidrepro.spec.config import load_config
from pyramidrepro.step.autotune import Candidate, choose
from pyramidrepro.step.paths import PathSpec, TrainPath
from pyramidrepro.workload.data import synthetic_splits
from pyramidrepro.workload.model import PyramidNet
from support import SMOKE, run_cli

TINY = ["--set", "model.depth=8", "--set", "model.alpha=4"]
#: an AVX2-only CPU's instruction set, on whatever CPU runs the test: torch's kernels and oneDNN
#: both limited to AVX2 (no AVX-512, no bf16 units)
AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _real_measure(slow: PathSpec, delay_s: float, calls: list[PathSpec]):
    """Real training steps on a tiny model; ``slow`` really takes ``delay_s`` longer per measurement."""
    torch.manual_seed(0)
    arch = (8, 4, "basic")
    init = PyramidNet(*arch).state_dict()
    splits = synthetic_splits(512, 16)
    built: dict[PathSpec, TrainPath] = {}

    def measure(spec: PathSpec) -> float:
        calls.append(spec)
        if spec not in built:
            built[spec] = TrainPath(spec, arch, init, splits, 16, torch.device("cpu")).warm_up(1)
        t0 = time.perf_counter()
        built[spec].train(3)
        if spec == slow:
            time.sleep(delay_s)  # the injected slow-down: this option costs that much more, for real
        return 3 * 16 / (time.perf_counter() - t0)

    return measure


def test_the_chooser_leaves_out_an_option_its_trial_shows_slower():
    reference = PathSpec(loader="torch", host_sync=False)
    slowed = replace(reference, channels_last=True)
    calls: list[PathSpec] = []
    ruled_out = Candidate("bf16", "precision", "bf16", ruled_out="capability: no bf16 units")
    choice = choose(reference, [ruled_out, Candidate("channels_last", "channels_last", True)],
                    _real_measure(slowed, 0.5, calls))
    assert choice.spec == reference  # the run keeps fp32 NCHW: never slower than the path without it
    bf16, cl = choice.decisions
    assert not bf16.kept and bf16.reason == "capability: no bf16 units" and bf16.ratio is None
    assert not any(c.precision == "bf16" for c in calls)  # ruled out by capability: never measured
    assert not cl.kept and "slower: left out" in cl.reason and cl.ratio < 0.7
    assert calls.count(slowed) == 1 and calls.count(reference) == 1  # alternated; a decisive round settles it


def test_a_close_trial_gets_a_second_round_and_the_medians_decide():
    reference = PathSpec(loader="torch", host_sync=False)
    trial = replace(reference, channels_last=True)
    rates = {reference: iter([100.0, 100.0]), trial: iter([105.0, 101.0])}  # 1.05x, then 1.01x
    calls: list[PathSpec] = []

    def measure(spec: PathSpec) -> float:
        calls.append(spec)
        return next(rates[spec])

    choice = choose(reference, [Candidate("channels_last", "channels_last", True)], measure)
    assert calls == [reference, trial, reference, trial]  # within 15 % after one round: a second one
    d = choice.decisions[0]
    assert d.kept and abs(d.ratio - 1.03) < 1e-9 and choice.spec == trial  # median 103 vs 100: kept


def test_the_chooser_keeps_an_option_its_trial_shows_faster():
    reference = PathSpec(loader="torch", host_sync=False)
    calls: list[PathSpec] = []
    choice = choose(reference, [Candidate("channels_last", "channels_last", True)],
                    _real_measure(reference, 0.5, calls))  # now the path without it is the slow one
    assert choice.spec == replace(reference, channels_last=True)
    assert choice.decisions[0].kept and choice.decisions[0].ratio > 1.4


def test_auto_on_an_avx2_only_cpu_keeps_fp32_by_capability_and_caches_the_trials(tmp_path):
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
    again = run_cli(*args, "--run-id", "second", env=env)
    assert again.returncode == 0, again.stderr
    assert "cached trials" in again.stdout
    attrs2 = read_metrics(tmp_path / "smoke" / "second" / "metrics.h5")["attrs"]
    assert attrs2["auto_choices"] == attrs["auto_choices"] and attrs2["precision"] == "fp32"
    r = run_cli("report", str(tmp_path), "--out", str(tmp_path / "report"))
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "report" / "report.md").read_text()
    assert "isa AVX2" in text and "fast_bf16 False" in text and "bf16 left out (capability" in text


def test_auto_values_validate_and_dp_never_compiles():
    cfg = load_config(SMOKE, ["train.precision=auto", "train.channels_last=auto", "train.compile=auto"])
    assert (cfg.train.precision, cfg.train.channels_last, cfg.train.compile) == ("auto", "auto", "auto")
    load_config(SMOKE, ["train.mode=dp", "train.compile=auto"])  # auto: the chooser rules compile out
    from pyramidrepro.spec.config import ConfigError

    with pytest.raises(ConfigError) as err:
        load_config(SMOKE, ["train.channels_last=sometimes"])
    assert err.value.key == "train.channels_last" and "'auto'" in str(err.value)
