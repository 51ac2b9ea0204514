"""The device's settings (machine/devices.py) that can be checked on a CPU: the emulated card's cap, the
allocator's request, the MFU peaks, TF32 and the optimizer recorded."""

import os
import subprocess
import sys

import pytest

from pyramidrepro.bench.harness import gpu_peak_tflops
from pyramidrepro.config.load import load_config
from pyramidrepro.machine.devices import (
    ALLOCATOR_ENV,
    EXPANDABLE_SEGMENTS,
    GIB,
    emulated_card_cap,
    request_allocator_settings,
)
from pyramidrepro.records.metrics import read_metrics
from support import SMOKE, TINY


def test_the_emulated_card_subtracts_what_lives_outside_the_allocator():
    titan_xp = 12196 * 2**20 / GIB  # 11.91 GiB
    h100 = 80 * GIB
    outside = 600 * 2**20  # context + NCCL, as mem_get_info shows beyond the reserved pool
    reserved = 20 * 2**20
    cap = emulated_card_cap(titan_xp, h100, h100 - outside - reserved, reserved)
    assert cap.outside_allocator_bytes == outside
    assert cap.allocator_cap_bytes == 12196 * 2**20 - outside
    assert cap.fraction == pytest.approx((12196 - 600) / (80 * 1024))
    attrs = cap.attributes()
    assert attrs["memory_limit_gb"] == pytest.approx(titan_xp) and attrs["gpu_total_memory_bytes"] == h100
    with pytest.raises(ValueError, match="more than this GPU"):
        emulated_card_cap(96, h100, h100, 0)
    with pytest.raises(ValueError, match="nothing for the allocator"):
        emulated_card_cap(0.5, h100, h100 - GIB, 0)


def test_expandable_segments_are_asked_for_unless_the_environment_chose(monkeypatch):
    for name in ALLOCATOR_ENV:
        monkeypatch.delenv(name, raising=False)
    request_allocator_settings(False)
    assert not any(os.environ.get(name) for name in ALLOCATOR_ENV)
    request_allocator_settings(True)
    assert os.environ[ALLOCATOR_ENV[0]] == EXPANDABLE_SEGMENTS
    monkeypatch.delenv(ALLOCATOR_ENV[0])
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")  # the user's choice stands
    request_allocator_settings(True)
    assert ALLOCATOR_ENV[0] not in os.environ


def test_the_allocator_reads_the_request_made_after_torch_is_imported():
    """The run asks after ``import torch`` and before CUDA's first use; PyTorch must still see it."""
    code = ("import torch\nfrom pyramidrepro.machine.devices import allocator_settings, request_allocator_settings\n"
            "request_allocator_settings(True)\nprint(allocator_settings())")
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == EXPANDABLE_SEGMENTS


def test_mfu_peaks_match_exact_products_only():
    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0  # SXM
    assert gpu_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_peak_tflops("NVIDIA H100 NVL") == 835.0
    assert gpu_peak_tflops("NVIDIA H200") == 989.0
    assert gpu_peak_tflops("NVIDIA A100-SXM4-80GB") == gpu_peak_tflops("NVIDIA A100 80GB PCIe") == 312.0
    assert gpu_peak_tflops("NVIDIA B200") == 2250.0 and gpu_peak_tflops("NVIDIA A10") == 125.0
    assert gpu_peak_tflops("NVIDIA L40S") == 362.0 and gpu_peak_tflops("NVIDIA GeForce RTX 4090") == 165.2
    assert gpu_peak_tflops("NVIDIA TITAN Xp") == gpu_peak_tflops("TITAN Xp") == 12.1
    assert gpu_peak_tflops("NVIDIA A100X") is None and gpu_peak_tflops("NVIDIA H100 Something New") is None


def test_runs_record_tf32_and_optimizer_and_the_report_shows_tf32(tmp_path, cli):
    r = cli("run", str(SMOKE), "--run-id", "a", "--out", str(tmp_path), *TINY)
    assert r.returncode == 0, r.stderr
    attrs = read_metrics(tmp_path / "smoke" / "a" / "metrics.h5")["attrs"]
    assert attrs["optimizer_impl"] == "default" and attrs["allow_tf32"] == ""  # no TF32 on a CPU
    assert load_config(SMOKE).devices.allow_tf32 is False  # off unless asked: the paper's card had none
    r = cli("report", str(tmp_path), "--out", str(tmp_path / "report"))
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "report" / "report.md").read_text()
    assert "- TF32 on GPUs: n/a (no GPU runs)" in text
