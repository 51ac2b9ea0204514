import json

import pytest

from support import INDUCTOR_CACHE, run_cli


@pytest.mark.slow
def test_bench_runs_both_paths_and_prints_figures(tmp_path):
    out = tmp_path / "bench.json"
    r = run_cli("bench", "--depth", "8", "--alpha", "4", "--batch-size", "16", "--steps", "3", "--repeats", "1",
                "--peak-tflops", "1.0", "--compile", "auto", "--compile-modes", "default", "--ablate",
                "--budget-s", "900", "--json-out", str(out), timeout=600, env=INDUCTOR_CACHE)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["baseline_images_per_s"] > 0 and data["optimized_images_per_s"] > 0
    assert abs(data["ratio"] - data["optimized_images_per_s"] / data["baseline_images_per_s"]) < 1e-9
    assert 0 < data["mfu"] < 1
    for path in ("baseline", "optimized"):
        assert set(data["stage_seconds_per_step"][path]) == {"data", "forward", "backward", "optimizer", "logging"}
    # the baseline is the seed's way of training; the optimized path holds exactly the pieces kept
    assert data["baseline"] == {"precision": "fp32", "channels_last": False, "loader": "torchvision",
                                "optimizer": "plain", "host_sync": True, "compile": "off", "channel_multiple": 1}
    choices = {c["name"]: c for c in data["choices"]}
    assert list(choices) == ["tensor_loader", "no_host_sync", "foreach_sgd", "bf16", "channels_last",
                             "aligned_widths (x8)", "compile (default)"]
    widths = choices["aligned_widths (x8)"]  # a CPU has no tensor cores: not measured
    assert not widths["kept"] and widths["reason"].startswith("capability:") and widths["ratio"] is None
    # the ratio names its baseline: true fp32 (a CPU has no TF32 to compare with)
    assert data["ratio_over"] == "the seed-style loop in true fp32 (TF32 off)"
    assert data["baseline_tf32_images_per_s"] is None and data["ratio_over_tf32"] is None
    assert data["capability"]["isa"] and isinstance(data["capability"]["fast_bf16"], bool)
    opt = data["optimized"]
    assert opt["loader"] == ("torch" if choices["tensor_loader"]["kept"] else "torchvision")
    assert opt["optimizer"] == ("foreach" if choices["foreach_sgd"]["kept"] else "plain")
    assert opt["host_sync"] is not choices["no_host_sync"]["kept"]
    assert opt["channels_last"] is choices["channels_last"]["kept"]
    for c in choices.values():
        if c["ratio"] is not None:  # measured: kept exactly when it won by more than the margin
            assert c["kept"] == (c["ratio"] > 1.02), c
    if data["capability"]["fast_bf16"]:
        assert opt["precision"] == ("bf16" if choices["bf16"]["kept"] else "fp32")
    else:
        assert choices["bf16"]["reason"].startswith("capability:") and opt["precision"] == "fp32"
    # compile: tried (the budget holds it), its time reported apart, kept only if it won
    c = data["compile"]
    assert set(c["trials"]) == {"default"} and c["trials"]["default"]["compile_s"] > 0
    assert c["mode"] == ("default" if choices["compile (default)"]["kept"] else None)
    assert opt["compile"] == (c["mode"] or "off")
    # HDF5 writer cost: its own time and the with/without comparison
    m = data["metrics_overhead"]
    assert 0 <= m["overhead"] < 1 and m["writer_seconds"] > 0
    assert m["with_writer_images_per_s"] > 0 and m["without_writer_images_per_s"] > 0
    # each piece alone against the baseline
    assert set(data["ablation"]) == {"channels_last", "bf16", "tensor_loader", "foreach_sgd", "no_host_sync",
                                     "compile (default)"}
    for name, a in data["ablation"].items():
        if "skipped" in a:  # only what the capability rules out goes unmeasured
            assert name == "bf16" and a["skipped"].startswith("capability:") and not data["capability"]["fast_bf16"]
        else:
            assert a["images_per_s"] > 0 and a["ratio"] > 0
    text = r.stdout
    assert json.loads(text[: text.index("\n}\n") + 2]) == data
    assert "baseline + channels_last" in text and "HDF5 logging" in text
    assert text.splitlines()[-1].startswith("ratio ") and "over the true-fp32 baseline" in text.splitlines()[-1]
    assert "ratios over the seed-style loop in true fp32 (TF32 off)" in text
    assert "compile (default): compiling" in r.stderr and "capability:" in r.stderr  # progress on stderr
    assert data["elapsed_s"] > 0 and data["budget_s"] == 900


@pytest.mark.slow
def test_on_an_avx2_only_cpu_bench_never_measures_bf16(tmp_path):
    """Without bf16 units, bf16 is ~10x slower: neither the chooser nor the ablation spends minutes on it."""
    out = tmp_path / "bench.json"
    r = run_cli("bench", "--depth", "8", "--alpha", "4", "--batch-size", "16", "--steps", "3", "--repeats", "1",
                "--compile", "off", "--ablate", "--json-out", str(out),
                env={"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["capability"]["isa"] == "AVX2" and data["capability"]["fast_bf16"] is False
    bf16 = next(c for c in data["choices"] if c["name"] == "bf16")
    assert not bf16["kept"] and bf16["reason"].startswith("capability: no bf16 units") and bf16["ratio"] is None
    assert data["optimized"]["precision"] == "fp32"
    assert data["ablation"]["bf16"]["skipped"].startswith("capability:")
    assert "baseline + bf16" in r.stdout and "not measured (capability" in r.stdout


@pytest.mark.slow
def test_bench_skips_a_compile_trial_the_budget_cannot_hold(tmp_path):
    out = tmp_path / "bench.json"
    r = run_cli("bench", "--depth", "8", "--alpha", "4", "--batch-size", "16", "--repeats", "1",
                "--compile", "auto", "--budget-s", "20", "--json-out", str(out))
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    compiles = [c for c in data["choices"] if c["name"].startswith("compile")]
    assert compiles and all(not c["kept"] and c["reason"].startswith("budget:") for c in compiles)
    assert data["compile"]["trials"] == {} and data["optimized"]["compile"] == "off"
    assert 3 <= data["steps_per_repeat"] <= 12
    assert "raise --budget-s" in r.stderr


def test_bench_rejects_bad_input_with_exit_2(cli):
    r = cli("bench", "--steps", "0")
    assert r.returncode == 2 and "--steps" in r.stderr
    r = cli("bench", "--compile", "turbo")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = cli("bench", "--budget-s", "0")
    assert r.returncode == 2 and "--budget-s" in r.stderr and "Traceback" not in r.stderr
    import torch

    if not torch.cuda.is_available():
        for cmd in ("bench", "bench-loader"):
            r = cli(cmd, "--device", "cuda")
            assert r.returncode == 2 and "no CUDA device" in r.stderr and "Traceback" not in r.stderr


def test_the_budget_leaves_out_a_trial_the_headline_would_not_have_time_for():
    """With the baseline at 640 images/s and 64-image steps, a measurement of 10 steps takes 1 s and the
    headline after the trials about 11 s: a compile trial (~100 s until one has compiled) fits only in a
    budget with room for both; a plain trial needs four measurements' room."""
    import time

    import torch

    from pyramidrepro.bench.plan import BenchPlan, bench_candidates
    from pyramidrepro.bench.trials import PathBench

    plan = BenchPlan(steps=10, batch_size=64, repeats=3, compile="default")
    candidates = {c.piece: c for c in bench_candidates(plan, torch.device("cpu"), {"fast_bf16": False})}

    def bench(seconds_left: float) -> PathBench:
        return PathBench(path=None, plan=plan, deadline=time.monotonic() + seconds_left, compile_need_s=100.0,
                         say=print, base_rates=[640.0])

    assert "raise --budget-s" in bench(60).budget_skip(candidates["compile_mode"])
    assert bench(200).budget_skip(candidates["compile_mode"]) is None
    assert bench(12).budget_skip(candidates["channels_last"]).startswith("budget:")
    assert bench(30).budget_skip(candidates["channels_last"]) is None
