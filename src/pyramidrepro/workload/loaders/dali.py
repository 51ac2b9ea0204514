"""NVIDIA DALI pipeline for CIFAR-10, fed from the in-memory arrays (external source).

Random crop 32 with 4-pixel zero padding (integer offsets -4..4 in each axis, uniform), random
horizontal flip, per-channel normalization, float CHW output.  Runs on the GPU (``device_id`` = the
training device) when training runs there, and in DALI's CPU-only mode (``device_id=None``)
otherwise.  Batches come back as torch tensors on the training device.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..data import CIFAR10_MEAN, CIFAR10_STD, PAD, ImageSet
from .base import ShardedLoader

INSTALL_HINT = (
    "data.loader: dali needs NVIDIA DALI: pip install 'pyramidrepro[dali]' "
    "(nvidia-dali-cuda130, matching torch's CUDA 13 build)"
)


def _import_dali():  # noqa: ANN202
    try:
        import nvidia.dali as dali
        from nvidia.dali import fn, types
    except ImportError as exc:
        raise RuntimeError(f"{INSTALL_HINT} ({exc})") from None
    return dali, fn, types


def dali_version() -> str | None:
    """The installed DALI version, or None."""
    try:
        import nvidia.dali as dali
    except ImportError:
        return None
    return dali.__version__


class DaliLoader(ShardedLoader):
    """CIFAR-10 batches through a DALI pipeline; the same interface as the other loaders."""

    def __init__(self, data: ImageSet, batch_size: int, device: torch.device, *, num_threads: int = 2,
                 **shard: object) -> None:
        dali, fn, types = _import_dali()
        super().__init__(data, batch_size, device, **shard)  # type: ignore[arg-type]
        self.images_hwc = np.ascontiguousarray(data.images.transpose(0, 2, 3, 1))
        self.labels = data.labels
        seed, rank = self.seed, self.rank
        self.set_epoch(0)
        on_gpu = device.type == "cuda"
        device_id = None
        if on_gpu:
            device_id = device.index if device.index is not None else torch.cuda.current_device()
        mean = [255.0 * m for m in CIFAR10_MEAN]
        std = [255.0 * s for s in CIFAR10_STD]
        do_augment = self.train and self.augment

        @dali.pipeline_def(
            batch_size=self.local_batch, num_threads=num_threads, device_id=device_id,
            seed=(seed * 1000003 + rank) & 0x7FFFFFFF, prefetch_queue_depth=2,
        )
        def pipeline():  # noqa: ANN202
            images, labels = fn.external_source(
                source=self._source, num_outputs=2, batch=True, batch_info=True,
                layout=["HWC", None],
            )
            if on_gpu:
                images = images.gpu()
            if do_augment:
                offsets = [float(v) for v in range(-PAD, PAD + 1)]
                anchor = fn.random.uniform(values=offsets, shape=[2])
                images = fn.slice(
                    images, anchor, [32.0, 32.0], axes=[0, 1], normalized_anchor=False,
                    normalized_shape=False, out_of_bounds_policy="pad", fill_values=0,
                )
                mirror = fn.random.coin_flip(probability=0.5)
            else:
                mirror = 0
            images = fn.crop_mirror_normalize(
                images, mirror=mirror, mean=mean, std=std, output_layout="CHW",
                dtype=types.FLOAT,
            )
            return images, labels

        self.pipe = pipeline()
        self.pipe.build()

    def _source(self, info) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
        if info.iteration >= len(self.batches):
            raise StopIteration
        idx = self.batches[info.iteration]
        return self.images_hwc[idx], self.labels[idx]

    def _images_to_torch(self, tl) -> torch.Tensor:  # noqa: ANN001
        """Copy a float32 DALI batch out of the pipeline's buffers into a torch tensor."""
        tensor = tl.as_tensor()
        if self.device.type == "cuda":
            from nvidia.dali.plugin.pytorch import feed_ndarray

            out = torch.empty(tensor.shape(), dtype=torch.float32, device=self.device)
            feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream(self.device))
            return out
        return torch.from_numpy(np.array(tensor))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            while True:
                images, labels = self.pipe.run()
                x = self._images_to_torch(images)
                y = torch.from_numpy(np.array(labels.as_tensor())).reshape(-1)  # labels stay on CPU
                yield x, y.to(self.device, non_blocking=True)
        except StopIteration:
            self.pipe.reset()
