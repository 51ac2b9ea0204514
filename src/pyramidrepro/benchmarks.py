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
