"""Data loaders: one interface, three implementations, chosen by ``data.loader``.

Every loader takes the **global** batch (what one optimizer step sees over all ranks) and yields
this rank's share of it, ``(images, labels)`` on the training device, normalized float images.
Which samples a rank sees in an epoch is decided once, in :class:`.base.ShardedLoader` (from
:func:`..data.epoch_index`); the implementations only turn those indices into tensors:

* ``torch`` (:mod:`.tensor`): the dataset as one tensor on the device, augmented there;
* ``torchvision`` (:mod:`.torchvision`): Dataset + DataLoader + transforms, the classic path;
* ``dali`` (:mod:`.dali`): an NVIDIA DALI pipeline through DALI's PyTorch iterator (on the GPU, or in
  DALI's CPU-only mode with at most half the process's cores as threads).
"""

from __future__ import annotations

import torch

from ..data import ImageSet
from .base import Shard, ShardedLoader

__all__ = ["LOADERS", "make_loader"]

LOADERS = ("torch", "torchvision", "dali")


def make_loader(kind: str, data: ImageSet, batch_size: int, device: torch.device, *, shard: Shard = Shard(),  # noqa: PLR0913 - keyword-only, one per knob
                train: bool = True, augment: bool = True, num_workers: int = 2,
                channels_last: bool = False) -> ShardedLoader:
    """The loader ``data.loader`` names; ``batch_size`` is the global batch, ``shard`` this rank's share.

    ``channels_last``: the step wants NHWC; DALI then lays its output out so (the others leave the
    conversion to the step)."""
    common = dict(shard=shard, train=train, augment=augment)
    if kind == "torch":
        from .tensor import TensorLoader

        return TensorLoader(data, batch_size, device, **common)
    if kind == "torchvision":
        from .torchvision import TorchvisionLoader

        return TorchvisionLoader(data, batch_size, device, num_workers=num_workers, **common)
    if kind == "dali":
        from .dali import DaliLoader

        return DaliLoader(data, batch_size, device, num_threads=max(1, num_workers), channels_last=channels_last,
                          **common)
    raise ValueError(f"unknown loader {kind!r} (expected one of {', '.join(LOADERS)})")
