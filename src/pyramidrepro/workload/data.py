"""CIFAR-10 data: the reader of the official "python version" files, synthetic data, and sharding.

The files' names and MD5s are in :mod:`.cifar_files`; getting them onto a disk in :mod:`.fetch`.

The reader verifies MD5 checksums **before** anything is unpickled and then unpickles with a
restricted unpickler that only admits what a CIFAR batch contains (a dict, lists, numpy arrays).
Sharding decides which samples each rank sees per epoch; the loaders (:mod:`.loaders`) turn that
into tensors.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cifar_files import (  # DataError and the files' facts have their home there; importers find them here too
    ARCHIVE_NAME,
    ARCHIVE_URL,
    BATCHES_DIR,
    OFFICIAL_MD5,
    TEST_FILES,
    TRAIN_FILES,
    DataError,
    md5_bytes,
    md5_file,
)

#: Per-channel mean and standard deviation of the CIFAR-10 training images, on a 0..1 scale.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
PAD = 4


@dataclass
class ImageSet:
    """A split held in memory: uint8 images N x 3 x 32 x 32 (RGB, CHW) and int64 labels."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DataSplits:
    train: ImageSet
    test: ImageSet
    source: str  # "cifar10 (<path>)" or "synthetic"


# ---------------------------------------------------------------------------------------------
# Official-format reader
# ---------------------------------------------------------------------------------------------


class _CifarUnpickler(pickle.Unpickler):
    """Admits only the globals that a CIFAR batch file needs (numpy array reconstruction)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle API
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR file")
        return super().find_class(module, name)


def _unpickle(blob: bytes, name: str) -> dict:
    """Unpickle a Python-2-era CIFAR pickle; keys come back as str whatever the encoding gave."""
    try:
        obj = _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any failure is a malformed file
        raise DataError(f"{name}: not a CIFAR pickle ({exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{name}: expected a dict, got {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _batch_arrays(d: dict, name: str) -> ImageSet:
    if "data" not in d or ("labels" not in d and "fine_labels" not in d):
        raise DataError(f"{name}: missing keys 'data'/'labels' (has {sorted(d)})")
    data = d["data"]
    if isinstance(data, (bytes, str)):
        raise DataError(f"{name}: 'data' is not an array")
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{name}: 'data' has shape {data.shape}, expected N x 3072")
    labels = np.asarray(d.get("labels", d.get("fine_labels")), dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise DataError(f"{name}: {labels.shape[0]} labels for {data.shape[0]} images")
    return ImageSet(data.reshape(-1, 3, 32, 32), labels)


def _concat(parts: list[ImageSet]) -> ImageSet:
    return ImageSet(
        np.ascontiguousarray(np.concatenate([p.images for p in parts])),
        np.concatenate([p.labels for p in parts]),
    )


def _missing_message(root: Path) -> str:
    return (
        f"CIFAR-10 not found under {root}: on a machine with internet (a login node) run "
        f"`pyramidrepro data fetch --root {root}`, which compute nodes then read; or put the official "
        f"archive {ARCHIVE_NAME} ({ARCHIVE_URL}) or its extracted folder {BATCHES_DIR}/ in {root}/ yourself; "
        "or use data.source: synthetic (data.download: true fetches it when a run starts, only where that "
        "machine is online)"
    )


def download_cifar10(root: Path) -> Path:
    """Fetch the official archive into ``root`` (``data.download: true``): its MD5 checked before it is
    kept, and a failure leaves nothing behind (:func:`.fetch.fetch_archive`)."""
    from .fetch import fetch_archive

    try:
        return fetch_archive(root)
    except DataError as exc:
        raise DataError(f"{exc}. {_missing_message(root)}") from None


def load_cifar10(
    root: str | Path, checksums: dict[str, str] | None = None, download: bool = False
) -> DataSplits:
    """Load CIFAR-10 from ``root`` (the archive, the batches folder, or a folder holding either).

    ``checksums`` (file name -> MD5) replaces the official table, for data in the official
    format that is not the official archive; every file is verified before it is unpickled.
    """
    root = Path(root)
    table = dict(checksums) if checksums else dict(OFFICIAL_MD5)
    batches = next(
        (d for d in (root / BATCHES_DIR, root) if (d / TRAIN_FILES[0]).is_file()), None
    )
    archive = next(
        (a for a in (root / ARCHIVE_NAME, root) if a.is_file() and a.name.endswith("tar.gz")),
        None,
    )
    if batches is None and archive is None and download:
        archive = download_cifar10(root)
    if batches is not None:
        blobs = {}
        for name in TRAIN_FILES + TEST_FILES:
            path = batches / name
            if not path.is_file():
                raise DataError(f"{path}: missing. " + _missing_message(root))
            blobs[name] = path.read_bytes()
        _verify(blobs, table, batches)
        where = batches
    elif archive is not None:
        if ARCHIVE_NAME in table or archive.name in table:
            expect = table.get(archive.name, table.get(ARCHIVE_NAME))
            digest = md5_file(archive)
            if digest != expect:
                raise DataError(
                    f"{archive}: MD5 {digest} does not match the expected {expect}; "
                    "refusing to unpickle it (re-download the archive, or give its checksum "
                    "in data.checksums if it is your own data in the official format)"
                )
            archive_verified = True
        else:
            archive_verified = False
        try:
            blobs = _read_archive(archive)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise DataError(f"{archive}: not a readable tar.gz archive ({type(exc).__name__}: "
                            f"{str(exc)[:80]}); download it again") from None
        missing = [n for n in TRAIN_FILES + TEST_FILES if n not in blobs]
        if missing:
            raise DataError(f"{archive}: archive lacks {', '.join(missing)}")
        if not archive_verified:
            _verify(blobs, table, archive)
        where = archive
    else:
        raise DataError(_missing_message(root))
    train = _concat([_batch_arrays(_unpickle(blobs[n], n), n) for n in TRAIN_FILES])
    test = _concat([_batch_arrays(_unpickle(blobs[n], n), n) for n in TEST_FILES])
    return DataSplits(train, test, f"cifar10 ({where})")


def _read_archive(archive: Path) -> dict[str, bytes]:
    blobs = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            base = os.path.basename(member.name)
            if member.isfile() and base in TRAIN_FILES + TEST_FILES:
                fh = tar.extractfile(member)
                assert fh is not None
                blobs[base] = fh.read()
    return blobs


def _verify(blobs: dict[str, bytes], table: dict[str, str], where: Path) -> None:
    for name, blob in blobs.items():
        expect = table.get(name)
        if expect is None:
            raise DataError(
                f"{where}/{name}: no checksum to verify it against; "
                f"give one in data.checksums.{name} (verification is never skipped)"
            )
        digest = md5_bytes(blob)
        if digest != expect.lower():
            raise DataError(
                f"{where}/{name}: MD5 {digest} does not match the expected {expect}; "
                "refusing to unpickle it"
            )


# ---------------------------------------------------------------------------------------------
# Synthetic data
# ---------------------------------------------------------------------------------------------


def synthetic_splits(
    train_size: int, test_size: int, num_classes: int = 10, seed: int = 0, learnable: bool = False
) -> DataSplits:
    """CIFAR-shaped uint8 data made in memory.

    ``learnable=False``: uniform noise with random labels (for throughput).  ``learnable=True``:
    each class is a smooth colour template plus noise, which a small network learns in seconds.
    """
    rng = np.random.default_rng(seed)
    if not learnable:
        def make(n: int) -> ImageSet:
            return ImageSet(
                rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8),
                rng.integers(0, num_classes, size=n).astype(np.int64),
            )
        return DataSplits(make(train_size), make(test_size), "synthetic")
    coarse = rng.uniform(0, 255, size=(num_classes, 3, 4, 4))
    templates = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)

    def make_learnable(n: int) -> ImageSet:
        labels = rng.integers(0, num_classes, size=n).astype(np.int64)
        noise = rng.normal(0, 40, size=(n, 3, 32, 32))
        images = np.clip(templates[labels] * 0.7 + 38 + noise, 0, 255).astype(np.uint8)
        return ImageSet(images, labels)

    return DataSplits(make_learnable(train_size), make_learnable(test_size), "synthetic")


def locate_cifar10(root: Path) -> tuple[str, Path] | None:
    """Where the loader reads CIFAR-10 under ``root``, without reading it: ("folder", the folder of the
    batch files) before ("archive", the tar.gz); None when neither is there."""
    for folder in (root / BATCHES_DIR, root):
        if (folder / TRAIN_FILES[0]).is_file():
            return "folder", folder
    for archive in (root / ARCHIVE_NAME, root):
        if archive.is_file() and archive.name.endswith("tar.gz"):
            return "archive", archive
    return None


def check_data_available(data_cfg) -> None:  # noqa: ANN001
    """Fail early (before any run folder exists) when CIFAR-10 files are not where promised."""
    if data_cfg.source != "cifar10" or data_cfg.download:
        return
    root = Path(data_cfg.root)
    if root.is_file() and not root.name.endswith("tar.gz"):
        raise DataError(f"data.root {root} is a file; give the folder holding CIFAR-10 (or the tar.gz archive)")
    if locate_cifar10(root) is None:
        raise DataError(_missing_message(root))


def dataset_state(data_cfg) -> str:  # noqa: ANN001
    """One line on where the data of a ``data`` section stands on this machine (``validate`` prints it);
    it looks for the files only, reads none (their MD5s are checked when a run loads them)."""
    if data_cfg.source != "cifar10":
        return data_cfg.source
    root = Path(data_cfg.root)
    try:
        return _cifar10_state(root, data_cfg.download)
    except OSError as exc:  # a folder this user may not look into, a name too long
        return f"CIFAR-10 under {root} cannot be looked for ({exc.strerror or exc})"


def _cifar10_state(root: Path, download: bool) -> str:
    fetch = f"pyramidrepro data fetch --root {root} (on a machine with internet)"
    if root.is_file() and not root.name.endswith("tar.gz"):
        return f"CIFAR-10 missing: data.root {root} is a file, not a folder"
    found = locate_cifar10(root)
    if found is None:
        online = "; or data.download: true, where the run's machine is online" if download else ""
        return f"CIFAR-10 missing under {root}: {fetch}{online}"
    kind, path = found
    if kind == "archive":
        return f"CIFAR-10 found under {root} (archive {path.name})"
    lacking = [name for name in TRAIN_FILES + TEST_FILES if not (path / name).is_file()]
    where = f"folder {BATCHES_DIR}" if path != root else "batch files"
    if lacking:
        return f"CIFAR-10 incomplete under {root} ({where} lacks {', '.join(lacking)}): {fetch}"
    return f"CIFAR-10 found under {root} ({where})"


def load_splits(data_cfg, num_classes: int = 10, seed: int = 0) -> DataSplits:  # noqa: ANN001
    """The train/test splits that a ``data`` config section names."""
    if data_cfg.source == "synthetic":
        return synthetic_splits(
            data_cfg.synthetic_train_size,
            data_cfg.synthetic_test_size,
            num_classes,
            seed,
            data_cfg.synthetic_learnable,
        )
    return load_cifar10(data_cfg.root, data_cfg.checksums, data_cfg.download)


# ---------------------------------------------------------------------------------------------
# Sharding: one global permutation per (seed, epoch), equal batch counts on every rank
# ---------------------------------------------------------------------------------------------


def per_rank_batch(global_batch: int, world_size: int) -> int:
    """The batch one rank computes per step: the global batch split evenly (ValueError otherwise)."""
    if global_batch < 1 or global_batch % world_size:
        raise ValueError(f"the global batch {global_batch} does not divide by the world size {world_size}")
    return global_batch // world_size


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The global order of the ``n`` samples in ``epoch``: the same on every rank."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch]).permutation(n)


def shard_batches(
    n: int, global_batch: int, rank: int, world_size: int, seed: int, epoch: int,
    shuffle: bool = True,
) -> np.ndarray:
    """Indices for this rank, shaped [num_batches, global_batch // world_size].

    Policy for the last partial batch: dropped (every rank then runs the same number of steps,
    and every step sees exactly ``global_batch`` samples).  Global batch ``b`` is split into
    ``world_size`` consecutive slices, so the union over ranks of step ``s`` is exactly the
    batch a single process with the same global batch sees at step ``s``.
    """
    local = per_rank_batch(global_batch, world_size)
    num_batches = n // global_batch
    if num_batches == 0:
        raise ValueError(f"dataset of {n} samples is smaller than one global batch of {global_batch}")
    perm = epoch_permutation(n, seed, epoch, shuffle)[: num_batches * global_batch]
    return perm.reshape(num_batches, world_size, local)[:, rank]


def eval_shard(n: int, rank: int, world_size: int) -> np.ndarray:
    """Evaluation indices for this rank: a strided share; together the ranks cover all ``n``."""
    return np.arange(rank, n, world_size)


def epoch_index(
    n: int, global_batch: int, rank: int, world_size: int, seed: int, epoch: int, train: bool,
) -> list[np.ndarray]:
    """This rank's batches of sample indices for ``epoch``, as every loader iterates them.

    Training: :func:`shard_batches` of the global batch.  Evaluation: this rank's
    :func:`eval_shard` in order, in chunks of the per-rank batch (the last one may be short).
    """
    if train:
        return list(shard_batches(n, global_batch, rank, world_size, seed, epoch))
    idx = eval_shard(n, rank, world_size)
    local = per_rank_batch(global_batch, world_size)
    return [idx[i : i + local] for i in range(0, len(idx), local)]
