"""The OOM boundary search: the algorithm against every threshold, then real probes under a CPU cap."""

from __future__ import annotations

import json
import math

import pytest

from pyramidrepro.cluster.batch_search import search
from pyramidrepro.config.schema import Attr, Status
from pyramidrepro.machine.devices import ONEDNN_NO_PRIMITIVE, is_out_of_memory
from pyramidrepro.records.metrics import read_metrics
from support import SMOKE


def exhaustive(threshold: int, limit: int, resolution: int) -> tuple[int | None, int | None]:
    """What trying every multiple of ``resolution`` up to ``limit`` finds when batches <= threshold fit."""
    batches = range(resolution, limit + 1, resolution)
    fit = [b for b in batches if b <= threshold]
    fail = [b for b in batches if b > threshold]
    return (max(fit) if fit else None), (min(fail) if fail else None)


@pytest.mark.parametrize("resolution,start", [(1, 1), (1, 16), (8, 8), (8, 64), (16, 16), (16, 256)])
def test_search_agrees_with_an_exhaustive_scan_at_every_threshold(resolution, start):
    limit = 1000 // resolution * resolution
    for threshold in range(0, limit + 40):
        tried: list[int] = []

        def fits(batch: int, threshold: int = threshold, tried: list[int] = tried) -> bool:
            tried.append(batch)
            return batch <= threshold

        assert search(fits, start, limit, resolution) == exhaustive(threshold, limit, resolution), threshold
        assert len(tried) == len(set(tried)), f"a batch was probed twice: {tried}"
        assert all(b % resolution == 0 and resolution <= b <= limit for b in tried)
        assert len(tried) <= 2 * math.ceil(math.log2(limit / resolution)) + 2, (threshold, tried)


def test_search_refuses_what_it_cannot_search():
    for start, limit, resolution in [(0, 64, 1), (12, 64, 8), (128, 64, 1), (16, 64, 0)]:
        with pytest.raises(ValueError):
            search(lambda b: True, start, limit, resolution)


def test_failed_allocations_of_every_kind_count_as_out_of_memory():
    import resource

    import torch

    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                                         "can't allocate memory: you tried to allocate 8388608 bytes."))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    onednn = RuntimeError("could not create a primitive")  # its scratchpad not allocated, under RLIMIT_DATA
    assert not is_out_of_memory(onednn)  # uncapped: some other oneDNN failure, a bug to show
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (1 << 44, hard))  # 16 TiB: a cap that changes nothing here
    try:
        assert is_out_of_memory(onednn)
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


@pytest.mark.slow
def test_boundary_finds_the_largest_batch_under_a_cpu_cap_and_resumes(tmp_path, cli):
    """Real probes (fresh processes) under RLIMIT_DATA: the batch found fits, the next step fails,
    the report uses the probes for the largest batch only, and a second search reruns nothing.
    The search itself, which only starts the probes, runs in this process."""
    out, found_json = tmp_path / "runs", tmp_path / "boundary.json"
    args = ["boundary", str(SMOKE), "--set", "devices.device=cpu", "--set", "devices.memory_limit_gb=1.3",
            "--set", "data.synthetic_train_size=2048", "--start", "64", "--resolution", "64", "--max-batch", "512",
            "--out", str(out), "--json-out", str(found_json)]
    done = cli(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    [found] = json.loads(found_json.read_text())
    fit, fail = found["largest_fit"], found["smallest_failure"]
    assert fit is not None and fail is not None and fail - fit == 64, done.stdout
    probes = {p["batch_size"]: p for p in found["probes"]}
    assert probes[fit]["status"] == Status.COMPLETED and probes[fit]["peak_memory_bytes"]
    assert probes[fail]["status"] == Status.OOM
    assert all(p["status"] == (Status.COMPLETED if b <= fit else Status.OOM) for b, p in probes.items())
    assert f"largest batch that fits {fit}, first that fails {fail}" in done.stdout
    metrics = read_metrics(probes[fail]["run_dir"] + "/metrics.h5")["attrs"]
    assert metrics[Attr.STATUS] == Status.OOM and metrics[Attr.OOM_BATCH_SIZE] == fail
    said = metrics[Attr.ERROR]  # the C allocator's words, or oneDNN's when its scratchpad did not fit
    assert ("can't allocate memory" in said or ONEDNN_NO_PRIMITIVE in said) and json.loads(
        metrics[Attr.BOUNDARY_SEARCH]) == {}
    assert metrics[Attr.ALLOCATOR_CAP_BYTES] > 0

    report = cli("report", str(out), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "report" / "report.md").read_text()
    assert f"- single: fits {fit}, out of memory at {fail} (boundary search: {len(probes)} probes)" in text
    assert "| single |" not in text  # probes are too short to be throughput points

    again = cli(*args)
    assert again.returncode == 0, again.stderr
    [second] = json.loads(found_json.read_text())
    assert (second["largest_fit"], second["smallest_failure"], second["probes_run"]) == (fit, fail, 0)


@pytest.mark.parametrize("extra,key", [([], "devices.memory_limit_gb"),
                                       (["--set", "devices.memory_limit_gb=2", "--resolution", "0"], "--resolution")])
def test_boundary_refuses_a_search_it_cannot_do_safely(tmp_path, extra, key, cli):
    done = cli("boundary", str(SMOKE), "--set", "devices.device=cpu", *extra, "--out", str(tmp_path))
    assert done.returncode == 2 and key in done.stderr and "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir())
