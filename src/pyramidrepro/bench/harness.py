"""Measurements that print figures: loader throughput (``bench-loader``) and training throughput,
seed-style baseline against the optimized path (``bench``)."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch

from ..autotune.chooser import Candidate
from ..machine.devices import capability
from ..workload.data import synthetic_splits
from ..workload.loaders import make_loader
from ..workload.loaders.dali import dali_threads
from .plan import BenchPlan, bench_candidates, compile_estimate_s, planned_steps
from .trials import PathBench, PathBuilder, measure_paths


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def bench_device(device: str) -> torch.device:
    """The device a benchmark asked for; a clear input error when it is a GPU that is not there."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from ..config.errors import ConfigError

        raise ConfigError("bench", "--device", "cuda requested but no CUDA device is available")
    return dev


def bench_loader(
    kind: str, device: str = "cpu", batch_size: int = 256, images: int = 10240, epochs: int = 5,
    num_workers: int = 2,
) -> dict[str, Any]:
    """Images/s of one loader with augmentation on: median over ``epochs`` after one warm-up.

    Every batch is materialised on the device (the CUDA stream is synchronised per epoch), so
    the figure is what a training loop would receive.
    """
    dev = bench_device(device)
    splits = synthetic_splits(images, 16)
    loader = make_loader(kind, splits.train, batch_size, dev, num_workers=num_workers)
    rates = []
    for epoch in range(epochs + 1):
        loader.set_epoch(epoch)
        t0 = time.perf_counter()
        n = 0
        checksum = torch.zeros((), device=dev)
        for x, y in loader:
            n += y.shape[0]
            checksum += x[:, 0, 0, 0].sum()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if epoch:  # epoch 0 warms up (workers, pipeline build, allocator)
            rates.append(n / (time.perf_counter() - t0))
    return {
        "loader": kind,
        "device": device,
        "batch_size": batch_size,
        "images_per_epoch": n,
        "epochs_timed": epochs,
        "images_per_s": statistics.median(rates),
        "images_per_s_all": rates,
        "num_workers": num_workers if kind == "torchvision" else 0,
        "dali_threads": dali_threads(num_workers) if kind == "dali" else 0,
        "machine": machine(),
    }


# ---------------------------------------------------------------------------------------------
# Training throughput: the seed-style baseline against the optimized path, side by side
# ---------------------------------------------------------------------------------------------

#: Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets, by the exact
#: name CUDA reports (less a leading "NVIDIA ").  SXM and PCIe/NVL parts of one chip differ in
#: clocks and power, so a product is never matched by a substring.  TITAN Xp (Pascal) has no
#: tensor cores and no bf16: its fp32 peak is given, the precision the paper trained in.
GPU_PEAK_TFLOPS = {
    "A100-SXM4-40GB": 312.0, "A100-SXM4-80GB": 312.0, "A100-PCIE-40GB": 312.0, "A100 80GB PCIe": 312.0,
    "H100 80GB HBM3": 989.0, "H100 SXM5 80GB": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0,
    "H200": 989.0, "H200 NVL": 835.0,
    "B200": 2250.0,
    "L40S": 362.0,
    "A10": 125.0,
    "GeForce RTX 4090": 165.2,
    "TITAN Xp": 12.1,
}


def gpu_peak_tflops(name: str) -> float | None:
    """The dense bf16 peak of the GPU CUDA calls ``name``, or None when it is not in the table."""
    key = name.strip()
    key = key[len("NVIDIA "):] if key.startswith("NVIDIA ") else key
    return GPU_PEAK_TFLOPS.get(key)


def training_tflops(macs_per_image: float, images_per_s: float) -> float:
    """Training TFLOP/s: forward MACs x 2 FLOP, times 3 for forward + backward (2x forward)."""
    return 3 * 2 * macs_per_image * images_per_s / 1e12


def _peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type == "cuda":
        return gpu_peak_tflops(torch.cuda.get_device_name(device))
    return None


def bench_training(plan: BenchPlan, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Seed-style baseline vs the path the chooser builds for this device, model and batch.

    From the baseline, each piece (tensor loader, foreach/fused SGD, no host sync, reduced
    precision where the device has the units, channels_last, then each ``compile`` mode) is tried
    on top of the path chosen so far and kept only if its trial wins (:func:`..autotune.chooser.choose`);
    then the baseline and the chosen path alternate ``plan.repeats`` times for the headline, which
    also times the HDF5 writer.  ``plan.steps`` (None: sized so the whole fits ``plan.budget_s``) is
    the length of one measurement; compile trials that the budget cannot hold are skipped with the
    reason.  ``progress`` gets a line per phase and per verdict.
    """
    say = progress or (lambda msg: None)
    t_start = time.monotonic()
    dev = bench_device(plan.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cap = capability(dev)
    say(f"capability: {cap}")
    path, macs, convolutions = _bench_model(plan, dev)
    compile_need_s = compile_estimate_s(dev.type, convolutions)
    with _inductor_cache(fresh=plan.compiling) as cache:
        candidates = bench_candidates(plan, dev, cap)
        sized = _with_steps(plan, path, candidates, compile_need_s, say)
        result = measure_paths(PathBench(path, sized, plan.deadline(t_start), compile_need_s, say), candidates)
    result["compile"].update(requested=plan.compile, cache_dir=cache, estimate_s=compile_need_s)
    if not plan.ablate:
        _say_overrun(result, time.monotonic() - t_start - plan.budget_s, compile_need_s, say)
    peak = _peak_tflops(dev, plan.peak_tflops)
    achieved = training_tflops(macs, result["optimized_images_per_s"])
    return {
        "device": plan.device, "model": plan.model_name, "batch_size": plan.batch_size,
        "capability": cap, **result,
        "training_tflops": achieved, "peak_tflops": peak, "mfu": achieved / peak if peak else None,
        "steps_per_repeat": sized.steps, "budget_s": plan.budget_s,
        "elapsed_s": time.monotonic() - t_start, "machine": machine(),
    }


def _bench_model(plan: BenchPlan, dev: torch.device) -> tuple[PathBuilder, float, int]:
    """The plan's paths on one model (seed 0) and data set, its forward MACs per image and its convolutions."""
    from ..workload.model import PyramidNet, count_convolutions, count_macs

    torch.manual_seed(0)
    init = PyramidNet(*plan.arch).state_dict()
    probe = PyramidNet(*plan.arch)  # counted on, never trained (count_macs runs a forward pass)
    macs, convolutions = count_macs(probe), count_convolutions(probe)
    splits = synthetic_splits(max(4096, plan.batch_size * 64), 16)
    return PathBuilder(plan, dev, init, splits), macs, convolutions


def _with_steps(plan: BenchPlan, path: PathBuilder, candidates: list[Candidate], compile_need_s: float,
                say: Callable[[str], None]) -> BenchPlan:
    """The plan with its steps per measurement: as given, else sized from the baseline's step time."""
    step_s = plan.batch_size / path(plan.baseline).train(3)
    steps = plan.steps
    if steps is None:
        steps = planned_steps(plan.budget_s, step_s, candidates, plan.repeats,
                              compile_need_s if plan.compiling else 0.0)
    say(f"baseline {1e3 * step_s:.0f} ms/step: {steps} steps per measurement, budget {plan.budget_s:.0f} s")
    return replace(plan, steps=steps)


def _say_overrun(result: dict[str, Any], over: float, compile_need_s: float, say: Callable[[str], None]) -> None:
    """Say by how much the run went over its budget (if it did), and whether a slow compile was why."""
    if over <= 0:
        return
    slowest = max((t["compile_s"] for t in result["compile"]["trials"].values()), default=None)
    why = (f": a compile took {slowest:.0f} s, {compile_need_s:.0f} s were expected"
           if slowest and slowest > compile_need_s else "")
    say(f"over the budget by {over:.0f} s" + why)


@contextmanager
def _inductor_cache(fresh: bool) -> Iterator[str | None]:
    """Cold compile times: inductor's on-disk cache starts empty (unless TORCHINDUCTOR_CACHE_DIR is set)."""
    if not fresh:
        yield None
        return
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        yield os.environ["TORCHINDUCTOR_CACHE_DIR"]
        return
    path = tempfile.mkdtemp(prefix="pyramidrepro-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    try:
        yield "fresh (emptied after the run)"
    finally:
        del os.environ["TORCHINDUCTOR_CACHE_DIR"]
        shutil.rmtree(path, ignore_errors=True)
