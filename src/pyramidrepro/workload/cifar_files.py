"""CIFAR-10's official "python version" files: their names, where they are published and their MD5s;
the error every problem with them is; MD5s of bytes and files.  Both the reader (:mod:`.data`) and the
fetch (:mod:`.fetch`) build on this module, which imports neither."""

from __future__ import annotations

import hashlib
from pathlib import Path

ARCHIVE_NAME = "cifar-10-python.tar.gz"
ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
META_FILE = "batches.meta"
#: The official checksums, as published with the dataset and used by every major loader.
OFFICIAL_MD5 = {
    ARCHIVE_NAME: "c58f30108f718f92721af3b95e74349a",
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    META_FILE: "5ff9c542aee3614f3951f8cda6e48888",
}


class DataError(RuntimeError):
    """Missing, corrupted or malformed data files."""


def md5_bytes(blob: bytes) -> str:
    return hashlib.md5(blob, usedforsecurity=False).hexdigest()


def md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
