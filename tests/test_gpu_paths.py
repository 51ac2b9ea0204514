"""The GPU paths' defects that can be reproduced on CPU: DP precision in worker threads, an OOM on
one DDP rank, combinations torch does not support, the emulated card, MFU peaks, provenance."""

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from pyramidrepro.bench.harness import gpu_peak_tflops
from pyramidrepro.config.errors import ConfigError
from pyramidrepro.config.load import load_config
from pyramidrepro.machine.devices import (
    ALLOCATOR_ENV,
    EXPANDABLE_SEGMENTS,
    GIB,
    emulated_card_cap,
    request_allocator_settings,
)
from pyramidrepro.machine.parallel import wrap_model
from pyramidrepro.records.metrics import read_metrics
from pyramidrepro.step.executor import resolve_optimizer_impl
from pyramidrepro.workload.model import PyramidNet
from support import ROOT, SMOKE, TINY, run_cli


@pytest.mark.parametrize("mode", ["dp", "dp_balanced"])
def test_dp_replica_computes_in_the_configured_dtype_in_a_fresh_thread(mode):
    """DataParallel calls each replica in a worker thread (parallel_apply), where autocast's
    thread-local dtype is not the caller's: the replica itself must enter autocast."""
    model = PyramidNet(8, 4)
    wrapped, _ = wrap_model(model, mode, torch.device("cpu"), allow_cpu_dp=True, autocast_dtype=torch.bfloat16)
    replica = wrapped.module  # what DataParallel replicates onto each GPU
    dtypes = []
    seen = []
    hook = model.fc.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    args = (x, y) if mode == "dp_balanced" else (x,)
    with torch.autocast("cpu", dtype=torch.float16):  # the caller's context must not leak into the thread
        worker = threading.Thread(target=lambda: seen.append(replica(*args)))
        worker.start()
        worker.join()
    hook.remove()
    assert dtypes == [torch.bfloat16]
    if mode == "dp_balanced":  # loss sum, correct, count: in fp32 whatever the replica computed in
        assert seen[0].dtype == torch.float32 and seen[0][0, 2] == 4


def _ddp_run(tmp_path: Path, run_id: str, inject: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    r = run_cli("run", str(SMOKE), "--set", "train.mode=ddp", "--nproc", "2", "--run-id", run_id,
                "--out", str(tmp_path), "--set", "train.max_steps=100000", "--set", "data.synthetic_train_size=256",
                "--set", "train.epochs=100000", "--set", "train.dist_timeout_s=300", *TINY,
                env={"PYRAMIDREPRO_INJECT_OOM": inject}, timeout=120)
    return r, time.monotonic() - t0


def test_oom_on_one_ddp_rank_is_recorded_and_every_rank_leaves(tmp_path):
    """Rank 1 runs out of memory at step 3 of a run that would go on for minutes: rank 0 records
    `oom` with the batch size, and both ranks are gone long before the 300 s collective timeout."""
    r, elapsed = _ddp_run(tmp_path, "oom1", "1:3")
    assert r.returncode == 3, r.stderr[-2000:]  # schema.EXIT_CODES: oom
    m = read_metrics(tmp_path / "smoke" / "oom1" / "metrics.h5")
    assert m["attrs"]["status"] == "oom", m["attrs"]
    assert m["attrs"]["oom_batch_size"] == 64 and m["attrs"]["stop_rank"] == 1
    assert "step 3" in m["attrs"]["error"]
    assert 2 <= len(m["steps"]["step"]) < 20  # rows up to the OOM were kept
    assert elapsed < 60, f"{elapsed:.1f} s: a rank waited for the collective timeout"
    assert "oom (rank 1)" in r.stdout


@pytest.mark.parametrize("nproc,inject", [(1, "0:setup"), (2, "1:setup")])
def test_oom_during_setup_still_leaves_an_oom_record(tmp_path, cli, nproc, inject):
    if nproc == 1:
        r = cli("run", str(SMOKE), "--run-id", "setup", "--out", str(tmp_path), *TINY,
                env={"PYRAMIDREPRO_INJECT_OOM": inject})
        elapsed = 0.0
    else:
        r, elapsed = _ddp_run(tmp_path, "setup", inject)
    assert r.returncode == 3, r.stderr[-2000:]
    m = read_metrics(tmp_path / "smoke" / "setup" / "metrics.h5")
    assert m["attrs"]["status"] == "oom" and m["attrs"]["oom_batch_size"] == 64
    assert m["attrs"]["mode"] == ("ddp" if nproc == 2 else "single") and "setup" in m["attrs"]["error"]
    assert len(m["steps"]["step"]) == 0
    assert (tmp_path / "smoke" / "setup" / "config.yaml").is_file()
    assert elapsed < 60


def test_a_bad_injection_spec_is_an_error_not_a_silent_run(tmp_path, cli):
    r = cli("run", str(SMOKE), "--out", str(tmp_path), *TINY, env={"PYRAMIDREPRO_INJECT_OOM": "rank1"})
    assert r.returncode != 0 and "PYRAMIDREPRO_INJECT_OOM" in r.stderr


@pytest.mark.parametrize("sets,key", [
    (["train.mode=dp", "train.compile=true"], "train.compile"),
    (["train.mode=dp_balanced", "train.compile=true"], "train.compile"),
    (["train.mode=ddp", "train.compile=true", "train.compile_mode=reduce-overhead"], "train.compile_mode"),
])
def test_unsupported_combinations_are_config_errors(cli, sets, key):
    with pytest.raises(ConfigError) as err:
        load_config(SMOKE, sets)
    assert err.value.key == key and str(SMOKE) in str(err.value)
    r = cli("run", str(SMOKE), *[a for s in sets for a in ("--set", s)])
    assert r.returncode == 2 and key in r.stderr and "Traceback" not in r.stderr
    load_config(SMOKE, ["train.mode=ddp", "train.compile=true", "train.compile_mode=default"])  # this one is fine


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


def test_auto_optimizer_is_fused_on_gpus_so_fp16_needs_no_host_sync():
    assert resolve_optimizer_impl("auto", torch.device("cuda", 0)) == "fused"
    assert resolve_optimizer_impl("auto", torch.device("cpu")) == "default"
    assert resolve_optimizer_impl("foreach", torch.device("cuda", 0)) == "foreach"


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


def test_an_image_without_git_records_the_baked_commit(tmp_path):
    """Inside the image the package is a copy with no .git: the build bakes the commit into it."""
    pkg = tmp_path / "site" / "pyramidrepro"
    shutil.copytree(ROOT / "src" / "pyramidrepro", pkg, ignore=shutil.ignore_patterns("__pycache__", "BUILD_COMMIT"))
    r = subprocess.run(["bash", str(ROOT / "containers" / "bake_commit.sh"), str(pkg), str(ROOT)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    baked = (pkg / "BUILD_COMMIT").read_text().strip()
    assert baked.startswith(head)
    env = {k: v for k, v in os.environ.items() if k != "PYRAMIDREPRO_GIT_COMMIT"}
    env["PYTHONPATH"] = str(pkg.parent)
    code = "from pyramidrepro.machine.provenance import git_commit; print(git_commit())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == baked
    bad = subprocess.run(["bash", str(ROOT / "containers" / "bake_commit.sh"), str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no such package folder" in bad.stderr


def test_every_rank_gets_its_cpus_under_srun():
    """Slurm 22.05-23.02 srun does not inherit --cpus-per-task (submitit: test_slurm's dry run)."""
    for script in (ROOT / "slurm").glob("*.sbatch"):
        assert "export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK" in script.read_text(), script
