import subprocess
import sys

import numpy as np
import pytest
import torch

from pyramidrepro.records.metrics import read_metrics
from pyramidrepro.workload.data import CIFAR10_MEAN, CIFAR10_STD, ImageSet
from pyramidrepro.workload.loaders import make_loader
from pyramidrepro.workload.loaders.base import Shard
from support import ROOT, SMOKE, only_run_dir, run_cli

LOADERS = ["torch", "torchvision", "dali"]
CPU = torch.device("cpu")
STEP = 7  # pixel value = 1 + STEP * coordinate: 0 only ever comes from the zero padding


def coordinate_images(n: int) -> ImageSet:
    """Images whose red channel encodes the row and green the column; label = sample index."""
    img = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    img[:, 0] = (1 + STEP * np.arange(32))[None, :, None]
    img[:, 1] = (1 + STEP * np.arange(32))[None, None, :]
    img[:, 2] = (np.arange(n) % 251)[:, None, None]
    return ImageSet(img, np.arange(n, dtype=np.int64))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return torch.round((x * std + mean) * 255).clamp(0, 255).to(torch.uint8).numpy()


def decode(img: np.ndarray) -> tuple[int, int, bool]:
    """(dy, dx, flipped) of one augmented coordinate image."""
    r, g = img[0].astype(int), img[1].astype(int)
    i, j = np.argwhere((r > 0) & (g > 0))[0]
    dy = (r[i, j] - 1) // STEP - i
    row = g[i]
    valid = row[row > 0]
    flipped = len(valid) > 1 and valid[1] < valid[0]
    col_src = (g[i, j] - 1) // STEP
    dx = col_src - ((31 - j) if flipped else j)
    return int(dy), int(dx), bool(flipped)


@pytest.mark.parametrize("kind", LOADERS)
def test_shapes_dtypes_ranges(kind):
    data = coordinate_images(256)
    loader = make_loader(kind, data, 64, CPU, num_workers=0)
    loader.set_epoch(0)
    batches = list(loader)
    assert len(batches) == len(loader) == 4
    lo = min((0 - m) / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD))
    hi = max((1 - m) / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD))
    for x, y in batches:
        assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32 and x.device == CPU
        assert y.shape == (64,) and y.dtype == torch.int64
        assert lo - 1e-4 <= float(x.min()) and float(x.max()) <= hi + 1e-4


@pytest.mark.parametrize("kind", LOADERS)
def test_crop_offsets_uniform_and_flips_half(kind):
    data = coordinate_images(2048)
    loader = make_loader(kind, data, 256, CPU, num_workers=0, shard=Shard(seed=3))
    loader.set_epoch(0)
    dys, dxs, flips = [], [], []
    for x, _ in loader:
        for img in to_uint8(x):
            dy, dx, f = decode(img)
            dys.append(dy)
            dxs.append(dx)
            flips.append(f)
    for offs in (dys, dxs):
        counts = np.bincount(np.asarray(offs) + 4, minlength=9)
        assert len(counts) == 9 and set(offs) == set(range(-4, 5))
        expected = len(offs) / 9
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 26.1, (kind, counts)  # chi-square, 8 degrees of freedom, p = 0.001
    assert 0.45 < np.mean(flips) < 0.55


def test_without_augmentation_all_loaders_agree():
    rng = np.random.default_rng(0)
    data = ImageSet(rng.integers(0, 256, (300, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 300))
    outs = {}
    for kind in LOADERS:
        loader = make_loader(kind, data, 100, CPU, augment=False, num_workers=0, shard=Shard(seed=5))
        loader.set_epoch(2)
        outs[kind] = list(loader)
    for kind in ("torchvision", "dali"):
        for (xa, ya), (xb, yb) in zip(outs["torch"], outs[kind]):
            torch.testing.assert_close(xa, xb, rtol=0, atol=1e-6)
            assert torch.equal(ya, yb)


def test_dali_lays_out_channels_last_itself_with_the_same_values():
    """The step's NHWC comes straight from DALI's HWC output: a view, no copy in the step."""
    rng = np.random.default_rng(1)
    data = ImageSet(rng.integers(0, 256, (128, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 128))
    outs = {}
    for channels_last in (False, True):
        loader = make_loader("dali", data, 64, CPU, num_workers=0, shard=Shard(seed=2), channels_last=channels_last)
        loader.set_epoch(1)
        outs[channels_last] = list(loader)
    for (xa, ya), (xb, yb) in zip(outs[False], outs[True]):
        assert xb.shape == xa.shape == (64, 3, 32, 32)
        assert xb.is_contiguous(memory_format=torch.channels_last) and not xb.is_contiguous()
        assert xb.contiguous(memory_format=torch.channels_last).data_ptr() == xb.data_ptr()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("kind", LOADERS)
def test_two_shards_disjoint_cover_and_reshuffle(kind):
    data = coordinate_images(512)
    seen = {}
    for epoch in (0, 1):
        ids = []
        for rank in (0, 1):
            loader = make_loader(kind, data, 64, CPU, shard=Shard(rank, 2, seed=11), num_workers=0)
            loader.set_epoch(epoch)
            ids.append(np.concatenate([y.numpy() for _, y in loader]))
            assert len(loader) == 512 // 64
        assert not set(ids[0]) & set(ids[1])
        assert sorted(np.concatenate(ids)) == list(range(512))
        seen[epoch] = ids[0]
    assert not np.array_equal(seen[0], seen[1])
    again = make_loader(kind, data, 64, CPU, shard=Shard(0, 2, seed=11), num_workers=0)
    again.set_epoch(1)
    assert np.array_equal(np.concatenate([y.numpy() for _, y in again]), seen[1])


@pytest.mark.parametrize("kind", LOADERS)
def test_an_epoch_left_early_does_not_leak_into_the_next(kind):
    """DALI prepares batches ahead: after a partly read epoch (a max_steps run, a resume), the next
    epoch and a resumed one yield exactly the samples of a fresh loader's, in its order."""
    data = coordinate_images(512)
    fresh = make_loader(kind, data, 64, CPU, shard=Shard(1, 2, seed=4), num_workers=0)
    fresh.set_epoch(1)
    want = [y.numpy() for _, y in fresh]
    loader = make_loader(kind, data, 64, CPU, shard=Shard(1, 2, seed=4), num_workers=0)
    loader.set_epoch(0)
    next(iter(loader))
    loader.set_epoch(1)
    assert [list(y.numpy()) for _, y in loader] == [list(w) for w in want]
    assert [list(y.numpy()) for _, y in loader] == [list(w) for w in want]  # once more, same order
    loader.set_epoch(1, start=2)
    assert [list(y.numpy()) for _, y in loader] == [list(w) for w in want[2:]]


def test_every_run_records_the_dali_version_without_importing_dali():
    code = ("import sys\n"
            "from pyramidrepro.machine.provenance import versions\n"
            "recorded = versions()['dali']\n"
            "assert 'nvidia.dali' not in sys.modules, 'imported'\n"
            "import nvidia.dali\n"
            "assert recorded == nvidia.dali.__version__ == versions()['dali'], recorded\n"
            "sys.modules['nvidia.dali'] = None  # as if it were not installed\n"
            "from pyramidrepro.workload.loaders.dali import dali_version\n"
            "assert dali_version() is None\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_dali_missing_is_a_clear_error():
    code = (
        "import sys; sys.modules['nvidia.dali'] = None\n"
        "import torch\n"
        "from pyramidrepro.workload.data import synthetic_splits\n"
        "from pyramidrepro.workload.loaders import make_loader\n"
        "make_loader('dali', synthetic_splits(64, 8).train, 32, torch.device('cpu'))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0
    assert "pip install 'pyramidrepro[dali]'" in r.stderr and "--set data.loader=torch" in r.stderr


@pytest.mark.parametrize("command", [
    ["reproduce", "--out", "{tmp}/out"],
    ["submit", str(ROOT / "experiments" / "fig5.yaml"), "--dry-run", "--out", "{tmp}/out"],
    ["submit", str(ROOT / "experiments" / "quick_cpu.yaml"), "--cluster", "local", "--out", "{tmp}/out"],
])
def test_a_dali_campaign_without_dali_stops_before_anything_with_the_fix(tmp_path, cli, monkeypatch, command):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # as if not installed
    r = cli(*(arg.replace("{tmp}", str(tmp_path)) for arg in command))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "data.loader: dali needs NVIDIA DALI: pip install 'pyramidrepro[dali]'" in r.stderr
    assert "--set data.loader=torch" in r.stderr and not (tmp_path / "out").exists()
    monkeypatch.delitem(sys.modules, "nvidia.dali")
    ok = cli(*(arg.replace("{tmp}", str(tmp_path)) for arg in command[:2]), "--dry-run", "--out", str(tmp_path / "x"),
             "--set", "data.loader=torch", "--set", "data.source=synthetic") if command[0] == "submit" else None
    assert ok is None or ok.returncode == 0, ok.stderr  # the override named in the fix is enough


@pytest.mark.parametrize("kind", ["dali", "torch"])
def test_training_end_to_end_through_the_cli(tmp_path, cli, kind):
    """DALI's pipeline runs in a process of its own (its worker threads stay out of the suite's)."""
    args = ["run", str(SMOKE), "--set", f"data.loader={kind}", "--set", "train.max_steps=null",
            "--set", "train.evaluate=true", "--set", "model.depth=8", "--set", "model.alpha=4", "--out", str(tmp_path)]
    r = run_cli(*args) if kind == "dali" else cli(*args)
    assert r.returncode == 0, r.stderr
    m = read_metrics(only_run_dir(tmp_path) / "metrics.h5")
    assert m["attrs"]["status"] == "completed" and m["attrs"]["loader"] == kind
    assert len(m["steps"]["step"]) == 8 and len(m["epochs"]["test_acc"]) == 1


def test_bench_loader_prints_json(cli):
    import json

    r = cli("bench-loader", "--loader", "torch", "--images", "1024", "--epochs", "2")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["images_per_s"] > 0 and len(d["images_per_s_all"]) == 2 and "machine" in d
