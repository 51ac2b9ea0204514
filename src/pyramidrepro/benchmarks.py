"""Measurements that print figures: loader throughput (``bench-loader``)."""

from __future__ import annotations

import platform
import statistics
import time
from typing import Any

import torch

from .data import make_loader, synthetic_splits


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


def bench_loader(
    kind: str, device: str = "cpu", batch_size: int = 256, images: int = 10240, epochs: int = 5,
    num_workers: int = 2,
) -> dict[str, Any]:
    """Images/s of one loader with augmentation on: median over ``epochs`` after one warm-up.

    Every batch is materialised on the device (the CUDA stream is synchronised per epoch), so
    the figure is what a training loop would receive.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available")
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
        "machine": machine(),
    }


# ---------------------------------------------------------------------------------------------
# Training throughput: the seed-style baseline against the optimized path, side by side
# ---------------------------------------------------------------------------------------------

#: dense bf16 tensor-core peaks (TFLOP/s) of GPUs the report may meet
GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "V100": 125.0,
                   "TITAN Xp": 12.1}


def _peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, val in GPU_PEAK_TFLOPS.items():
            if key in name:
                return val
    return None


def _train_steps(model, loader, opt, steps: int, device, *, bf16: bool, channels_last: bool,
                 sync_every_step: bool, stages: dict[str, float] | None = None) -> float:  # noqa: ANN001
    """Train ``steps`` steps; returns images/s. ``stages`` (if given) gets per-stage seconds."""
    crit = torch.nn.CrossEntropyLoss()
    dtype = torch.bfloat16 if bf16 else None
    it = iter(loader)
    n = 0

    def tick() -> float:
        if stages is not None and device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        a = tick()
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        b = tick()
        with torch.autocast(device.type, dtype=dtype, enabled=bf16):
            loss = crit(model(x).float(), y)
        c = tick()
        loss.backward()
        d = tick()
        opt.step()
        opt.zero_grad(set_to_none=True)
        e = tick()
        if sync_every_step:
            loss.item()
        f = tick()
        n += y.shape[0]
        if stages is not None:
            names = ("data", "forward", "backward", "optimizer", "logging")
            for k, v in zip(names, (b - a, c - b, d - c, e - d, f - e)):
                stages[k] = stages.get(k, 0.0) + v / steps
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def bench_training(device: str = "cpu", depth: int = 32, alpha: float = 48, block: str = "basic",
                   batch_size: int = 64, steps: int = 12, repeats: int = 3, warmup: int = 3,
                   peak_tflops: float | None = None, num_workers: int = 2) -> dict[str, Any]:
    """Seed-style baseline vs optimized path on one model, batch and device, alternated."""
    from .model import PyramidNet, count_macs

    dev = torch.device(device)
    splits = synthetic_splits(max(4096, batch_size * (steps + warmup) * 2), 16)
    base_model = PyramidNet(depth, alpha, block).to(dev)
    macs = count_macs(PyramidNet(depth, alpha, block))
    opt_model = PyramidNet(depth, alpha, block).to(dev).to(memory_format=torch.channels_last)
    opt_model.load_state_dict(base_model.state_dict())
    base_loader = make_loader("torchvision", splits.train, batch_size, dev, num_workers=num_workers)
    fast_loader = make_loader("torch", splits.train, batch_size, dev)
    base_opt = torch.optim.SGD(base_model.parameters(), lr=0.05, momentum=0.9, foreach=False)
    fused = dict(fused=True) if dev.type == "cuda" else dict(foreach=True)
    fast_opt = torch.optim.SGD(opt_model.parameters(), lr=0.05, momentum=0.9, nesterov=True, **fused)
    bf16 = dev.type == "cpu" or torch.cuda.is_bf16_supported()
    kw_base = dict(bf16=False, channels_last=False, sync_every_step=True)
    kw_fast = dict(bf16=bf16, channels_last=True, sync_every_step=False)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    _train_steps(base_model, base_loader, base_opt, warmup, dev, **kw_base)
    _train_steps(opt_model, fast_loader, fast_opt, warmup, dev, **kw_fast)
    base, fast = [], []
    for _ in range(repeats):  # alternate, so drift hits both alike
        base.append(_train_steps(base_model, base_loader, base_opt, steps, dev, **kw_base))
        fast.append(_train_steps(opt_model, fast_loader, fast_opt, steps, dev, **kw_fast))
    stages_base: dict[str, float] = {}
    stages_fast: dict[str, float] = {}
    _train_steps(base_model, base_loader, base_opt, steps, dev, stages=stages_base, **kw_base)
    _train_steps(opt_model, fast_loader, fast_opt, steps, dev, stages=stages_fast, **kw_fast)
    b, f = statistics.median(base), statistics.median(fast)
    peak = _peak_tflops(dev, peak_tflops)
    achieved = 3 * 2 * macs * f / 1e12
    return {
        "device": device, "model": f"PyramidNet-{depth} alpha={alpha:g} {block}", "batch_size": batch_size,
        "baseline_images_per_s": b, "optimized_images_per_s": f, "ratio": f / b,
        "baseline_all": base, "optimized_all": fast,
        "optimized": {"precision": "bf16" if bf16 else "fp32", "channels_last": True, "loader": "torch",
                      "optimizer": "fused SGD" if dev.type == "cuda" else "foreach SGD", "host_sync": "none"},
        "training_tflops": achieved, "peak_tflops": peak, "mfu": achieved / peak if peak else None,
        "stage_seconds_per_step": {"baseline": stages_base, "optimized": stages_fast},
        "machine": machine(),
    }
