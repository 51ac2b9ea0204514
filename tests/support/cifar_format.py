"""Write tiny CIFAR-10 data in the exact official "python version" format, for the tests.

The official files were written by Python 2's cPickle: dict keys and the array's raw bytes are
Python 2 ``str`` objects (BINSTRING opcodes), and the array is rebuilt through
``numpy.core.multiarray._reconstruct``.  ``Py2Pickler`` emits exactly that, so the real reader
(``encoding="bytes"`` and ``encoding="latin1"`` alike) is what the tests exercise.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

BATCH_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


class Py2Pickler(pickle._Pickler):  # the pure-Python pickler lets us choose opcodes
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):  # noqa: ANN001, ANN201
        module = getattr(obj, "__module__", "")
        qual = name or obj.__qualname__
        if module.startswith("numpy._core"):
            module = module.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + module.encode() + b"\n" + qual.encode() + b"\n")
        self.memoize(obj)

    dispatch[type(len)] = save_global  # builtin functions such as _reconstruct


def py2_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def make_batch(images: np.ndarray, labels: np.ndarray, label: str) -> bytes:
    """One batch file: keys as Python 2 str, data uint8 N x 3072 (R, G, B planes)."""
    return py2_pickle({
        b"batch_label": label.encode(),
        b"labels": [int(v) for v in labels],
        b"data": np.ascontiguousarray(images.reshape(len(images), 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    })


def write_cifar10(root: Path, per_batch: int = 20, test: int = 20, seed: int = 0,
                  archive: bool = True) -> dict[str, str]:
    """Write a tiny dataset under ``root``; returns {file name: MD5} for ``data.checksums``."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    sums = {}
    for name in BATCH_FILES:
        n = test if name == "test_batch" else per_batch
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n)
        blob = make_batch(images, labels, f"{name} of 5")
        (folder / name).write_bytes(blob)
        sums[name] = hashlib.md5(blob).hexdigest()
    meta = py2_pickle({b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer",
                                         b"dog", b"frog", b"horse", b"ship", b"truck"],
                       b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    (folder / "batches.meta").write_bytes(meta)
    sums["batches.meta"] = hashlib.md5(meta).hexdigest()
    if archive:
        tar_path = root / "cifar-10-python.tar.gz"
        with tarfile.open(tar_path, "w:gz") as tar:
            tar.add(folder, arcname="cifar-10-batches-py")
        sums["cifar-10-python.tar.gz"] = hashlib.md5(tar_path.read_bytes()).hexdigest()
    return sums
