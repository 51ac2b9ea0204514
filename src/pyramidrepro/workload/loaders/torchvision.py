"""The classic path: a per-sample Dataset, torchvision transforms and a DataLoader with workers."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..data import CIFAR10_MEAN, CIFAR10_STD, PAD, ImageSet
from .base import ShardedLoader


class ImageDataset(torch.utils.data.Dataset):
    """torchvision-style per-sample dataset: PIL image -> transforms -> tensor."""

    def __init__(self, data: ImageSet, transform) -> None:  # noqa: ANN001
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        img = Image.fromarray(self.data.images[i].transpose(1, 2, 0))
        return self.transform(img), int(self.data.labels[i])


class TorchvisionLoader(ShardedLoader):
    """Dataset + DataLoader + transforms (the seed-style baseline)."""

    def __init__(self, data: ImageSet, batch_size: int, device: torch.device, *, num_workers: int = 2,
                 **shard: object) -> None:
        from torchvision import transforms as T

        super().__init__(data, batch_size, device, **shard)  # type: ignore[arg-type]
        steps = [T.RandomCrop(32, padding=PAD), T.RandomHorizontalFlip()] if self.train and self.augment else []
        steps += [T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)]
        self.dataset = ImageDataset(data, T.Compose(steps))
        self.num_workers = num_workers
        self.set_epoch(0)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        torch.manual_seed(self.epoch_seed)
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=[b.tolist() for b in self.batches],
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
