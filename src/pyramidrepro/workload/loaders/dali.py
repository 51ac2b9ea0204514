"""NVIDIA DALI pipeline for CIFAR-10, driven through DALI's own PyTorch plugin.

The pipeline takes this rank's batches from an external source, in the order every loader uses
(:func:`..data.epoch_index`: one global permutation per (seed, epoch), cut into rank shards), so
DALI's reader-side sharding (``shard_id`` / ``num_shards``) is not involved.  It applies a random
crop 32 with 4-pixel zero padding (integer offsets -4..4 in each axis, uniform), a random
horizontal flip and per-channel normalization, giving float CHW images.
:class:`~nvidia.dali.plugin.pytorch.DALIGenericIterator` turns its outputs into torch tensors and
ends each epoch when the source is exhausted.

On a GPU the pipeline runs on the training device (``device_id`` = its index, the local rank),
the uint8 dataset, the labels and the epoch's sample order stay resident there, and batches and
labels come out on the device: nothing per batch goes through the host.  On a CPU it runs in
DALI's CPU-only mode with :func:`dali_threads` worker threads.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import CIFAR10_MEAN, CIFAR10_STD, PAD, ImageSet
from ..requirements import DALI_MISSING
from .base import ShardedLoader, device_order

INSTALL_HINT = f"data.loader: {DALI_MISSING}"
OUTPUTS = ["images", "labels"]


def _import_dali():  # noqa: ANN202
    try:
        import nvidia.dali as dali
        from nvidia.dali import fn, types
        from nvidia.dali.plugin import pytorch as plugin
    except ImportError as exc:
        raise RuntimeError(f"{INSTALL_HINT} ({exc})") from None
    return dali, fn, types, plugin


def dali_version() -> str | None:
    """The installed DALI version, or None.  Read from the ``__version__`` line of DALI's own
    ``__init__.py`` when DALI is not imported yet: every run records it, and importing DALI costs a
    run that does not use it 0.6 s (measured on a 2-core AMD EPYC)."""
    if (module := sys.modules.get("nvidia.dali")) is not None:
        return module.__version__
    try:
        spec = importlib.util.find_spec("nvidia.dali")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    try:
        found = re.search(r"""^__version__ = ['"]([^'"]+)['"]""", Path(spec.origin).read_text(), re.MULTILINE)
    except OSError:
        found = None
    if found:
        return found.group(1)
    try:  # a layout that does not write it so: ask the module
        import nvidia.dali as dali
    except ImportError:
        return None
    return dali.__version__


def dali_threads(requested: int, cores: int | None = None) -> int:
    """CPU threads for the pipeline: at most ``requested``, and at most half the cores this process
    may use (at least one), since the training step runs on the others."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(requested, cores // 2))


class DaliLoader(ShardedLoader):
    """CIFAR-10 batches through a DALI pipeline and DALI's PyTorch iterator; the same interface as
    the other loaders.

    DALI asks its source for a batch ahead of use.  A new epoch therefore first retires the old
    order (the source then ends the epoch at once), drains what DALI had already prepared, and
    only then resets the iterator, which prepares the new epoch's first batches.
    """

    def __init__(self, data: ImageSet, batch_size: int, device: torch.device, *, num_threads: int = 2,
                 channels_last: bool = False, **shard: Any) -> None:
        dali, fn, types, plugin = _import_dali()
        super().__init__(data, batch_size, device, **shard)
        self.on_gpu = device.type == "cuda"
        #: HWC out of DALI, viewed as NCHW with channels_last strides: the layout the step wants, no copy
        self.channels_last = channels_last
        images = np.ascontiguousarray(data.images.transpose(0, 2, 3, 1))
        if self.on_gpu:
            self.images, self.labels = torch.from_numpy(images).to(device), torch.from_numpy(data.labels).to(device)
        else:
            self.images, self.labels = images, data.labels
        #: fresh: nothing asked of DALI yet; active: DALI may hold batches of the current order;
        #: exhausted: the order was read to its end and the iterator waits for a reset
        self.state = "fresh"
        self.set_epoch(0)
        pipe = self._pipeline(dali, fn, types, dali_threads(num_threads))
        self.iterator = plugin.DALIGenericIterator(
            [pipe], OUTPUTS, auto_reset=False, prepare_first_batch=False,
            last_batch_policy=plugin.LastBatchPolicy.PARTIAL)

    def _pipeline(self, dali, fn, types, num_threads: int):  # noqa: ANN001, ANN202
        device_id = None
        if self.on_gpu:
            device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        do_augment = self.train and self.augment

        @dali.pipeline_def(batch_size=self.local_batch, num_threads=num_threads, device_id=device_id,
                           seed=(self.seed * 1000003 + self.rank) & 0x7FFFFFFF, prefetch_queue_depth=2)
        def pipeline():  # noqa: ANN202
            images, labels = fn.external_source(
                source=self._source, num_outputs=2, batch=True, batch_info=True, layout=["HWC", None],
                dtype=[types.UINT8, types.INT64], ndim=[3, 0], device="gpu" if self.on_gpu else "cpu",
                cuda_stream=torch.cuda.current_stream(self.device).cuda_stream if self.on_gpu else None)
            if do_augment:
                anchor = fn.random.uniform(values=[float(v) for v in range(-PAD, PAD + 1)], shape=[2])
                images = fn.slice(images, anchor, [32.0, 32.0], axes=[0, 1], normalized_anchor=False,
                                  normalized_shape=False, out_of_bounds_policy="pad", fill_values=0)
                mirror = fn.random.coin_flip(probability=0.5)
            else:
                mirror = 0
            images = fn.crop_mirror_normalize(
                images, mirror=mirror, mean=[255.0 * m for m in CIFAR10_MEAN],
                std=[255.0 * s for s in CIFAR10_STD], output_layout="HWC" if self.channels_last else "CHW",
                dtype=types.FLOAT)
            return images, labels

        return pipeline()

    def _source(self, info: Any) -> tuple[Any, Any]:
        """Batch ``info.iteration`` of the current order (on the device in GPU mode)."""
        if info.iteration + 1 >= len(self.bounds):
            raise StopIteration
        idx = self.order[self.bounds[info.iteration]:self.bounds[info.iteration + 1]]
        if self.on_gpu:  # gathered on the device, copied by DALI on the same stream: no host sync
            return self.images.index_select(0, idx), self.labels.index_select(0, idx)
        return self.images[idx], self.labels[idx]

    def epoch_selected(self) -> None:
        if self.state == "active":
            self.bounds = [0]  # the source ends the old epoch at its next call ...
            self._drain()  # ... after the batches DALI had prepared
        order, self.bounds = device_order(self.batches, self.device)
        self.order = order if self.on_gpu else order.numpy()
        if self.state == "exhausted":
            self._restart()

    def _restart(self) -> None:
        self.iterator.reset()  # prepares the current order's first batches
        self.state = "active"

    def _drain(self) -> None:
        for _ in self._batches():
            pass

    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        self.state = "active"
        try:
            while True:
                yield next(self.iterator)[0]
        except StopIteration:
            self.state = "exhausted"

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.state == "exhausted":  # iterated to the end before: the same order once more
            self._restart()
        for out in self._batches():
            images = out["images"].permute(0, 3, 1, 2) if self.channels_last else out["images"]
            yield images, out["labels"].reshape(-1).to(self.device, non_blocking=True)
