"""Memory remedies: gradient accumulation equivalences (activation checkpointing: test_model)."""

import pytest
import torch

from pyramidrepro.step.executor import OptimizerSettings, StepSettings, make_executor
from pyramidrepro.workload.data import synthetic_splits
from pyramidrepro.workload.loaders import make_loader
from pyramidrepro.workload.model import PyramidNet
from support import SMOKE, run_cli

CPU = torch.device("cpu")


def _model_after_one_step(accumulation: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = PyramidNet(8, 4)
    # BatchNorm with frozen statistics: the batch splits into micro batches without changing
    # what any layer computes, so k micro batches must equal one batch of k x micro exactly.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    executor = make_executor("single", model, CPU, StepSettings(accumulation_steps=accumulation),
                             OptimizerSettings(lr=0.1, momentum=0.9))
    loader = make_loader("torch", synthetic_splits(64, 8).train, 32, CPU, augment=False)
    x, y = next(iter(loader))
    executor.train_step(x, y)
    return executor.model


def test_accumulation_equals_one_big_batch():
    a = _model_after_one_step(1)
    b = _model_after_one_step(4)
    torch.manual_seed(0)  # the same initial weights
    init = PyramidNet(8, 4)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)
        assert pa.grad is None  # the step ended with zero_grad(set_to_none=True)
    assert any(not torch.equal(pa, p0) for pa, p0 in zip(a.parameters(), init.parameters()))  # it moved


@pytest.mark.slow
def test_ddp_accumulation_with_no_sync_matches_single_process(tmp_path, cli):
    """2 ranks x 2 micro batches (no_sync on the first) == 1 process x 4 micro batches.

    Rank r's half of the batch splits into quarters 2r and 2r+1, the same quarters the single
    process's four micro batches are: every BatchNorm sees the same samples.
    """
    common = ["--set", "data.augment=false", "--set", "train.max_steps=3", "--out", str(tmp_path),
              "--set", "model.depth=8", "--set", "model.alpha=4"]
    r = run_cli("run", str(SMOKE), "--set", "train.mode=ddp", "--nproc", "2", "--run-id", "ddp",
                "--set", "train.accumulation_steps=2", *common)
    assert r.returncode == 0, r.stderr
    r = cli("run", str(SMOKE), "--set", "train.accumulation_steps=4", "--run-id", "single", *common)
    assert r.returncode == 0, r.stderr
    a = torch.load(tmp_path / "smoke" / "ddp" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "smoke" / "single" / "checkpoint.pt", weights_only=True)["model"]
    for k in a:
        if "running_" not in k and "num_batches" not in k:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
