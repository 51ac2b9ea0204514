import os
import pickle
import shutil

import numpy as np
import pytest

from pyramidrepro.workload.data import (
    OFFICIAL_MD5,
    DataError,
    load_cifar10,
    shard_batches,
)
from support.cifar_format import write_cifar10


def test_reads_the_official_format_from_archive_and_folder(tmp_path):
    sums = write_cifar10(tmp_path / "a", per_batch=12, test=8)
    shutil.rmtree(tmp_path / "a" / "cifar-10-batches-py")  # archive only
    splits = load_cifar10(tmp_path / "a", sums)
    assert splits.train.images.shape == (60, 3, 32, 32) and splits.train.images.dtype == np.uint8
    assert splits.test.labels.shape == (8,) and splits.test.labels.dtype == np.int64
    assert "tar.gz" in splits.source
    sums2 = write_cifar10(tmp_path / "b", per_batch=12, test=8, archive=False)
    from_dir = load_cifar10(tmp_path / "b", sums2)
    assert np.array_equal(from_dir.train.images, splits.train.images)  # same seed, same data
    assert "cifar-10-batches-py" in from_dir.source


def test_rgb_planes_become_chw(tmp_path):
    from support.cifar_format import make_batch

    img = np.zeros((1, 3, 32, 32), dtype=np.uint8)
    img[0, 0] = 10  # R plane
    img[0, 2, 5, 7] = 200  # one B pixel
    blob = make_batch(img, np.array([3]), "x")
    d = pickle.loads(blob, encoding="bytes")
    assert d[b"data"][0, :1024].tolist() == [10] * 1024  # R plane first, as the format says
    from pyramidrepro.workload.data import _batch_arrays, _unpickle

    s = _batch_arrays(_unpickle(blob, "x"), "x")
    assert s.images[0, 0].max() == 10 and s.images[0, 2, 5, 7] == 200 and s.labels[0] == 3


def test_latin1_and_bytes_decodings_agree(tmp_path):
    write_cifar10(tmp_path, per_batch=4, test=4, archive=False)
    blob = (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    a = pickle.loads(blob, encoding="bytes")
    b = pickle.loads(blob, encoding="latin1")
    assert np.array_equal(a[b"data"], b["data"]) and a[b"labels"] == b["labels"]


def test_corrupted_byte_is_refused_before_unpickling(tmp_path):
    sums = write_cifar10(tmp_path, per_batch=4, test=4, archive=False)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    target = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    target.write_bytes(pickle.dumps({"data": Evil()}, protocol=2))  # checksum no longer matches
    with pytest.raises(DataError, match="data_batch_3.*MD5.*refusing"):
        load_cifar10(tmp_path, sums)
    assert not marker.exists()


def test_flipped_byte_in_archive_is_refused(tmp_path):
    sums = write_cifar10(tmp_path, per_batch=4, test=4)
    shutil.rmtree(tmp_path / "cifar-10-batches-py")
    arc = tmp_path / "cifar-10-python.tar.gz"
    raw = bytearray(arc.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    arc.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="MD5"):
        load_cifar10(tmp_path, sums)


def test_official_checksums_apply_without_config(tmp_path):
    write_cifar10(tmp_path, per_batch=4, test=4, archive=False)
    with pytest.raises(DataError, match="does not match"):
        load_cifar10(tmp_path)  # the test data is not the official data
    assert OFFICIAL_MD5["cifar-10-python.tar.gz"] == "c58f30108f718f92721af3b95e74349a"


def test_file_without_a_checksum_is_not_loaded_silently(tmp_path):
    sums = write_cifar10(tmp_path, per_batch=4, test=4, archive=False)
    sums.pop("test_batch")
    with pytest.raises(DataError, match="data.checksums.test_batch"):
        load_cifar10(tmp_path, sums)


def test_unpickler_refuses_foreign_globals(tmp_path):
    from pyramidrepro.workload.data import _unpickle

    with pytest.raises(DataError, match="not allowed"):
        _unpickle(pickle.dumps({"x": os.getcwd}), "evil")


def test_shards_are_disjoint_equal_and_cover_each_epoch():
    n, gb = 1000, 64
    for epoch in range(3):
        a = shard_batches(n, gb, 0, 2, seed=1, epoch=epoch)
        b = shard_batches(n, gb, 1, 2, seed=1, epoch=epoch)
        assert a.shape == b.shape == (n // gb, 32)
        assert not set(a.ravel()) & set(b.ravel())
        assert len(set(a.ravel()) | set(b.ravel())) == (n // gb) * gb
    e0 = shard_batches(n, gb, 0, 2, seed=1, epoch=0)
    assert not np.array_equal(e0, shard_batches(n, gb, 0, 2, seed=1, epoch=1))
    assert np.array_equal(e0, shard_batches(n, gb, 0, 2, seed=1, epoch=0))
    with pytest.raises(ValueError, match="divide"):
        shard_batches(n, 63, 0, 2, seed=0, epoch=0)


def test_training_runs_on_official_format_files(tmp_path, cifar_root, cli):
    from pyramidrepro.records.metrics import read_metrics
    from support import SMOKE, only_run_dir

    root, sums = cifar_root
    out = tmp_path / "out"
    r = cli("run", str(SMOKE), "--set", "data.source=cifar10", "--set", f"data.root={root}",
            "--set", f"data.checksums={sums}", "--set", "train.batch_size=40", "--set", "model.depth=8",
            "--set", "model.alpha=4", "--set", "train.evaluate=true", "--set", "train.max_steps=null",
            "--out", str(out))
    assert r.returncode == 0, r.stderr
    m = read_metrics(only_run_dir(out) / "metrics.h5")
    assert m["attrs"]["status"] == "completed"
    assert m["attrs"]["data_source"].startswith("cifar10")
    assert len(m["epochs"]["test_acc"]) == 1
