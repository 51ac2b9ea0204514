import json

from conftest import run_cli


def test_bench_runs_both_paths_and_prints_figures(tmp_path):
    out = tmp_path / "bench.json"
    r = run_cli("bench", "--depth", "8", "--alpha", "4", "--batch-size", "16", "--steps", "3", "--repeats", "1",
                "--peak-tflops", "1.0", "--compile", "auto", "--compile-modes", "default", "--ablate",
                "--json-out", str(out))
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["baseline_images_per_s"] > 0 and data["optimized_images_per_s"] > 0
    assert abs(data["ratio"] - data["optimized_images_per_s"] / data["baseline_images_per_s"]) < 1e-9
    assert 0 < data["mfu"] < 1
    for path in ("baseline", "optimized"):
        assert set(data["stage_seconds_per_step"][path]) == {"data", "forward", "backward", "optimizer", "logging"}
    # the baseline is the seed's way of training; the optimized path switches every piece on
    assert data["baseline"] == {"precision": "fp32", "channels_last": False, "loader": "torchvision",
                                "optimizer": "plain", "host_sync": True, "compile": "off"}
    assert data["optimized"]["compile"] == "default" and data["optimized"]["host_sync"] is False
    # compile: measured per mode, its time reported apart
    c = data["compile"]
    assert c["mode"] == "default" and set(c["trials"]) == {"default"} and c["compile_s"] > 0
    # HDF5 writer cost: its own time and the with/without comparison
    m = data["metrics_overhead"]
    assert 0 <= m["overhead"] < 1 and m["writer_seconds"] > 0
    assert m["with_writer_images_per_s"] > 0 and m["without_writer_images_per_s"] > 0
    # each piece alone against the baseline
    assert set(data["ablation"]) == {"channels_last", "bf16", "tensor_loader", "foreach_sgd", "no_host_sync",
                                     "compile (default)"}
    assert all(a["images_per_s"] > 0 and a["ratio"] > 0 for a in data["ablation"].values())
    text = r.stdout
    assert json.loads(text[: text.index("\n}\n") + 2]) == data
    assert "baseline + channels_last" in text and "HDF5 logging" in text
    assert text.splitlines()[-1].startswith("ratio ")
    assert "compile: trying mode default" in r.stderr  # progress goes to stderr


def test_bench_rejects_bad_input_with_exit_2():
    r = run_cli("bench", "--steps", "0")
    assert r.returncode == 2 and "--steps" in r.stderr
    r = run_cli("bench", "--compile", "turbo")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    import torch

    if not torch.cuda.is_available():
        for cmd in ("bench", "bench-loader"):
            r = run_cli(cmd, "--device", "cuda")
            assert r.returncode == 2 and "no CUDA device" in r.stderr and "Traceback" not in r.stderr
