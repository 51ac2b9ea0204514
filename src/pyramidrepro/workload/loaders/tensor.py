"""The device-resident loader: the whole uint8 dataset as one tensor, batches augmented on the device."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from ..data import CIFAR10_MEAN, CIFAR10_STD, PAD, ImageSet
from .base import ShardedLoader, device_order


def normalize_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) so that ``uint8 * scale + shift`` is the normalized image, shaped 1x3x1x1."""
    mean = torch.tensor(CIFAR10_MEAN, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return 1.0 / (255.0 * std), -mean / std


def random_crop_flip(
    images: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random 32x32 crop with 4-pixel zero padding and a random horizontal flip, batched.

    ``images`` is uint8 B x 3 x 32 x 32 on any device; the offsets and flips are drawn on that
    device (``generator`` must live there too), so nothing waits for the host.  Returns the
    augmented batch and the offsets (dy, dx in -4..4) and flip flags used, so tests can check
    the distribution.
    """
    b, _, h, w = images.shape
    dev = images.device
    offs = torch.randint(0, 2 * PAD + 1, (2, b), generator=generator, device=dev)
    flips = torch.rand(b, generator=generator, device=dev) < 0.5
    padded = F.pad(images, (PAD, PAD, PAD, PAD))
    # every 32x32 window of the padded images as a view: B x C x 9 x 9 x H x W (no copy) ...
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)
    # ... from which one window per image is gathered: B x C x H x W
    out = windows[torch.arange(b, device=dev), :, offs[0], offs[1]]
    out = torch.where(flips[:, None, None, None], out.flip(3), out)
    return out, offs - PAD, flips


class TensorLoader(ShardedLoader):
    """The whole uint8 dataset as one tensor on the training device; batches augmented on it.

    No worker processes: indexing, crop, flip and normalization are a few vectorized tensor ops
    per batch, on the GPU when training runs there.  Nothing in an epoch waits for the host: the
    random draws come from a generator on the device, and the epoch's sample order reaches the
    device in one non-blocking copy from pinned memory when the epoch is selected.
    """

    def __init__(self, data: ImageSet, batch_size: int, device: torch.device, **shard: object) -> None:
        super().__init__(data, batch_size, device, **shard)  # type: ignore[arg-type]
        self.images = torch.from_numpy(data.images).to(device)
        self.labels = torch.from_numpy(data.labels).to(device)
        self.scale, self.shift = normalize_constants(device)
        self.generator = torch.Generator(device=device)
        self.bounds: list[int] = [0]
        self.order = torch.zeros(0, dtype=torch.int64, device=device)
        self.set_epoch(0)

    def epoch_selected(self) -> None:
        self.generator.manual_seed(self.epoch_seed)
        self.order, self.bounds = device_order(self.batches, self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for lo, hi in zip(self.bounds, self.bounds[1:]):
            idx = self.order[lo:hi]
            x = self.images.index_select(0, idx)
            if self.train and self.augment:
                x, _, _ = random_crop_flip(x, self.generator)
            yield torch.addcmul(self.shift, x.float(), self.scale), self.labels.index_select(0, idx)
