"""benchmarks/step_profile.py end to end on a tiny model: the profiler groups and oneDNN's own
per-kind times (read from its verbose log) must all come out, positive."""

import re
import subprocess
import sys

from support import ROOT


def test_step_profile_splits_the_step_and_reads_onednn_times():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "step_profile.py"), "--depth", "8", "--alpha", "12",
         "--batch-size", "8", "--steps", "1", "--repeats", "1", "--compile", "off"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    row = re.compile(r"(baseline \(seed-style\)|optimized)\s+[0-9.]+")
    table = [line for line in out.stdout.splitlines() if row.match(line)]
    assert len(table) == 2, out.stdout
    for line in table:
        numbers = [float(v) for v in re.findall(r"\s([0-9]+\.[0-9])", line)]
        assert len(numbers) == 4 and all(v > 0 for v in numbers), line  # conv fwd, conv bwd, the rest, wall
    assert re.search(r"bound: baseline step / optimized convolutions = [0-9.]+x", out.stdout)
    kinds = [line for line in out.stdout.splitlines() if "forward_training" in line]
    assert len(kinds) == 2, out.stdout
    for line in kinds:
        for kind in ("forward_training", "backward_data", "backward_weights"):
            ms = re.search(rf"{kind} ([0-9]+) ms \(([0-9]+) GFLOP/s\)", line)
            assert ms and float(ms.group(2)) > 0, line


def _step_profile_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("step_profile", ROOT / "benchmarks" / "step_profile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_kernel_table_puts_each_kernel_in_its_class_and_shares_add_up():
    """Kernel names as cuDNN, ATen, Triton and the fused optimizer print them on an H100."""
    sp = _step_profile_module()
    named = {
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64": "convolution",
        "sm90_xmma_wgrad_implicit_gemm_indexed_bf16bf16_bf16f32_f32_nhwckrsc_nhwc": "convolution",
        "cudnn::bn_fw_tr_1C11_kernel_NCHW<float, float, int, 512, true, 1>": "batch norm",
        "void at::native::batch_norm_backward_reduce_kernel<float, float, float, int>": "batch norm",
        "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>": "elementwise",
        "triton_poi_fused_add_relu_threshold_backward_12": "compiled",
        "Memcpy HtoD (Pageable -> Device)": "copy",
        "void cudnn::engines_precompiled::nchwToNhwcKernel<float, float, float, false, true>": "copy",
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedSgdMathFunctor>": "optimizer",
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize64x64x64": "matmul",
        "void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float>": "other",
    }
    assert {name: sp.kernel_class(name) for name in named} == named
    kernels = [(name, 2.0 * (i + 1), 3) for i, name in enumerate(named)]
    table = sp.kernel_table(kernels, steps=2)
    assert abs(sum(row["share"] for row in table.values()) - 1) < 1e-9
    assert abs(sum(row["ms_per_step"] for row in table.values()) - sum(ms for _, ms, _ in kernels) / 2) < 1e-9
    assert table["convolution"]["launches_per_step"] == 3.0 and len(table["convolution"]["top"]) == 2
    ms = [row["ms_per_step"] for row in table.values()]
    assert ms == sorted(ms, reverse=True)  # the costliest class first


def test_step_profile_on_cuda_without_a_gpu_says_so_in_one_line():
    import torch

    if torch.cuda.is_available():
        return
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_profile.py"), "--device", "cuda"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and out.stderr.strip() == "step_profile: --device cuda, but no CUDA device is available"
