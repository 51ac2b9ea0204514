"""What is trained and on what: PyramidNet, CIFAR-10 (or synthetic) images, and the loaders
that turn one global permutation per (seed, epoch) into each rank's batches."""

from .._exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "model": ("PyramidNet", "model_info", "count_parameters"),
    "data": ("DataError", "ImageSet", "DataSplits", "load_splits", "epoch_index", "per_rank_batch"),
    "loaders": ("LOADERS", "make_loader", "Shard", "ShardedLoader"),
})
