import json

from conftest import run_cli


def test_bench_runs_both_paths_and_prints_figures():
    r = run_cli("bench", "--depth", "8", "--alpha", "4", "--batch-size", "16", "--steps", "2", "--repeats", "1",
                "--peak-tflops", "1.0")
    assert r.returncode == 0, r.stderr
    text = r.stdout
    data = json.loads(text[: text.rindex("}") + 1])
    assert data["baseline_images_per_s"] > 0 and data["optimized_images_per_s"] > 0
    assert abs(data["ratio"] - data["optimized_images_per_s"] / data["baseline_images_per_s"]) < 1e-9
    assert 0 < data["mfu"] < 1
    for path in ("baseline", "optimized"):
        assert set(data["stage_seconds_per_step"][path]) == {"data", "forward", "backward", "optimizer", "logging"}
    assert "ratio" in text.splitlines()[-1]
