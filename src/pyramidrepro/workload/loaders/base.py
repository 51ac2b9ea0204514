"""What every loader shares: the interface the loop drives and the per-epoch shard of each rank."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..data import ImageSet, epoch_index, per_rank_batch


def device_order(batches: list[np.ndarray], device: torch.device) -> tuple[torch.Tensor, list[int]]:
    """An epoch's batches as one index tensor on ``device`` and the bounds of each batch in it.

    One non-blocking copy from pinned memory on a GPU: nothing in the epoch waits for the host."""
    bounds = np.cumsum([0] + [len(b) for b in batches]).tolist()
    flat = torch.from_numpy(np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64))
    if device.type == "cuda":
        flat = flat.pin_memory()
    return flat.to(device, non_blocking=True), bounds


class BatchLoader(Protocol):
    """What the training loop needs of a loader."""

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int, start: int = 0) -> None: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass(frozen=True)
class Shard:
    """Which share of every epoch a loader yields: rank ``rank`` of ``world_size``, shuffled by ``seed``."""

    rank: int = 0
    world_size: int = 1
    seed: int = 0


class ShardedLoader:
    """What every loader shares: the global batch, this rank's batches of an epoch, the resume offset.

    Subclasses turn ``self.batches`` (arrays of sample indices) into tensors in ``__iter__`` and
    may react to a new epoch in :meth:`epoch_selected`; they call ``set_epoch(0)`` when built.
    """

    def __init__(self, data: ImageSet, batch_size: int, device: torch.device, *, shard: Shard = Shard(),
                 train: bool = True, augment: bool = True) -> None:
        self.data, self.device = data, device
        self.global_batch, self.local_batch = batch_size, per_rank_batch(batch_size, shard.world_size)
        self.rank, self.world_size, self.seed = shard.rank, shard.world_size, shard.seed
        self.train, self.augment = train, augment
        self.epoch = 0
        self.batches: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select ``epoch``'s batches for this rank; ``start`` skips batches already trained (resume)."""
        self.epoch = epoch
        self.batches = epoch_index(len(self.data), self.global_batch, self.rank, self.world_size,
                                   self.seed, epoch, self.train)[start:]
        self.epoch_selected()

    def epoch_selected(self) -> None:
        """Hook: the epoch's batches are chosen (reseed, move the order to the device ...)."""

    @property
    def epoch_seed(self) -> int:
        """A seed for this (seed, epoch, rank): augmentation draws differ per epoch and rank."""
        return hash((self.seed, self.epoch, self.rank)) & 0x7FFFFFFF
