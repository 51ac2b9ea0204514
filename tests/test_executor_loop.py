"""The step executor and the training loop through their public seams (no CLI, no subprocess)."""

import math
import threading

import numpy as np
import pytest
import torch

from pyramidrepro.config.load import load_config
from pyramidrepro.config.schema import Status
from pyramidrepro.machine.parallel import wrap_model
from pyramidrepro.records.metrics import read_metrics
from pyramidrepro.records.recorder import RunRecorder
from pyramidrepro.records.runs import is_done, status_of
from pyramidrepro.step.executor import EXECUTORS, OptimizerSettings, StepSettings, make_executor, resolve_optimizer_impl
from pyramidrepro.training.checkpoint import Checkpoints, Position
from pyramidrepro.training.loop import LoopSettings, TrainingLoop
from pyramidrepro.workload.data import synthetic_splits
from pyramidrepro.workload.loaders import make_loader
from pyramidrepro.workload.model import PyramidNet
from support import SMOKE

CPU = torch.device("cpu")


def _executor(mode: str, **settings) -> object:
    torch.manual_seed(0)
    return make_executor(mode, PyramidNet(8, 4), CPU, StepSettings(allow_cpu_dp=True, **settings),
                         OptimizerSettings(lr=0.05, momentum=0.9))


@pytest.mark.parametrize("mode", ["dp", "dp_balanced"])
def test_every_dp_executor_takes_the_single_step(mode):
    """One interface: the balanced DP's per-replica loss must move the weights as the single step does."""
    x = torch.randn(16, 3, 32, 32)
    y = torch.randint(0, 10, (16,))
    single, other = _executor("single"), _executor(mode)
    loss_a, correct_a = single.train_step(x, y)
    loss_b, correct_b = other.train_step(x, y)
    torch.testing.assert_close(loss_a, loss_b)
    assert int(correct_a) == int(correct_b)
    for (name, pa), pb in zip(single.model.named_parameters(), other.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)


def test_unknown_mode_names_the_choices():
    with pytest.raises(ValueError, match="single, dp, dp_balanced, ddp"):
        make_executor("pipeline", PyramidNet(8, 4), CPU, StepSettings(), OptimizerSettings())
    assert set(EXECUTORS) == {"single", "dp", "dp_balanced", "ddp"}


def test_executor_state_round_trips_through_a_checkpoint(tmp_path):
    a = _executor("single", precision="bf16")
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    a.train_step(x, y)
    Checkpoints(tmp_path, "cfg1", a, writes=True).save(Position(0, 1, 1))
    b = _executor("single", precision="bf16")
    at = Checkpoints(tmp_path, "cfg1", b, writes=True).load()
    assert at == Position(0, 1, 1)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    torch.testing.assert_close(a.train_step(x, y)[0], b.train_step(x, y)[0])
    with pytest.raises(RuntimeError, match="different config"):
        Checkpoints(tmp_path, "cfg2", b, writes=True).load()


def test_a_save_interrupted_by_a_nested_save_of_the_same_step_still_leaves_that_step(tmp_path, monkeypatch):
    """A preemption hook that saves while the loop is inside its own save of the same step, and a kill
    before the loop's save ends: checkpoint.pt holds that step, and ``saved`` says only what is on disk."""
    import pyramidrepro.training.checkpoint as checkpoint_module

    checkpoints = Checkpoints(tmp_path, "cfg1", _executor("single"), writes=True)
    checkpoints.save(Position(0, 16, 0))
    real_save, calls = torch.save, []

    def save_then_get_signalled(state, path):  # noqa: ANN001
        calls.append(path)
        if len(calls) == 1:  # the loop's own save: the hook runs in the middle, then the process is killed
            checkpoints.save(Position(0, 24, 0))
            raise SystemExit("killed by the scheduler")
        real_save(state, path)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_then_get_signalled)
    with pytest.raises(SystemExit):
        checkpoints.save(Position(0, 24, 0))
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    assert len(calls) == 2 and calls[0] != calls[1]  # the nested save wrote its own file
    assert checkpoints.saved == Position(0, 24, 0)
    assert Checkpoints(tmp_path, "cfg1", _executor("single"), writes=True).load() == Position(0, 24, 0)
    assert not list(tmp_path.glob("*.tmp"))


def _loop(cfg, run_dir, executor=None) -> tuple[TrainingLoop, RunRecorder, Checkpoints]:
    splits = synthetic_splits(cfg.data.synthetic_train_size, 64, seed=cfg.train.seed)
    executor = executor or make_executor("single", PyramidNet(8, 4), CPU, StepSettings(),
                                         OptimizerSettings(lr=cfg.effective_lr, momentum=0.9))
    recorder = RunRecorder(cfg, run_dir, is_main=True)
    recorder.open({})
    checkpoints = Checkpoints(run_dir, cfg.digest(), executor, writes=True)
    loader = make_loader("torch", splits.train, cfg.train.batch_size, CPU)
    loop = TrainingLoop(LoopSettings.from_config(cfg), executor, loader, None, recorder, checkpoints)
    return loop, recorder, checkpoints


def test_loop_records_every_step_and_continues_from_its_checkpoint_position(tmp_path):
    cfg = load_config(SMOKE, ["train.max_steps=5", "train.log_every=2", "train.epochs=3"])
    loop, recorder, checkpoints = _loop(cfg, tmp_path / "run")
    assert loop.total_steps == 5 and loop.steps_per_epoch == 8
    status, info = loop.run(Position())
    recorder.finish(status, info, {})
    assert status == Status.COMPLETED and loop.position == checkpoints.saved == Position(0, 5, 5)
    m = read_metrics(tmp_path / "run" / "metrics.h5")
    assert list(m["steps"]["step"]) == [1, 2, 3, 4, 5]
    assert m["summary"]["measured_steps"] == 3  # the 2 warm-up steps are not measured
    assert is_done(tmp_path / "run")

    # asked for 10 steps, a loop started where that checkpoint stands goes on from step 6, across an epoch end
    cfg10 = load_config(SMOKE, ["train.max_steps=10", "train.log_every=2", "train.epochs=3"])
    assert cfg10.digest() != cfg.digest()
    loop2, recorder2, checkpoints2 = _loop(cfg10, tmp_path / "run2")
    loop2.run(checkpoints.saved)
    recorder2.finish(Status.COMPLETED, {}, {})
    steps = read_metrics(tmp_path / "run2" / "metrics.h5")
    assert list(steps["steps"]["step"]) == [6, 7, 8, 9, 10]
    assert list(steps["epochs"]["epoch"]) == [0]  # epoch 0 ended at step 8
    assert checkpoints2.saved == Position(1, 10, 2)


def test_loop_stops_with_nan_and_the_status_is_a_result(tmp_path):
    cfg = load_config(SMOKE, ["train.lr=1e30", "train.max_steps=40", "train.epochs=10",
                              "data.synthetic_train_size=2048", "train.log_every=1"])
    loop, recorder, _ = _loop(cfg, tmp_path / "run")
    status, info = loop.run(Position())
    assert status == Status.NAN and 1 <= info["nan_step"] <= 40
    assert recorder.finish(status, info, {}) and not recorder.finish(Status.FAILED, {}, {})  # written once
    assert status_of(tmp_path / "run") == "nan" and is_done(tmp_path / "run")
    losses = read_metrics(tmp_path / "run" / "metrics.h5")["steps"]["loss"]
    assert not math.isfinite(losses[-1]) and np.isfinite(losses[:-1]).all()


@pytest.mark.parametrize("mode", ["dp", "dp_balanced"])
def test_dp_replica_computes_in_the_configured_dtype_in_a_fresh_thread(mode):
    """DataParallel calls each replica in a worker thread (parallel_apply), where autocast's
    thread-local dtype is not the caller's: the replica itself must enter autocast."""
    model = PyramidNet(8, 4)
    wrapped, _ = wrap_model(model, mode, torch.device("cpu"), allow_cpu_dp=True, autocast_dtype=torch.bfloat16)
    replica = wrapped.module  # what DataParallel replicates onto each GPU
    dtypes = []
    seen = []
    hook = model.fc.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    args = (x, y) if mode == "dp_balanced" else (x,)
    with torch.autocast("cpu", dtype=torch.float16):  # the caller's context must not leak into the thread
        worker = threading.Thread(target=lambda: seen.append(replica(*args)))
        worker.start()
        worker.join()
    hook.remove()
    assert dtypes == [torch.bfloat16]
    if mode == "dp_balanced":  # loss sum, correct, count: in fp32 whatever the replica computed in
        assert seen[0].dtype == torch.float32 and seen[0][0, 2] == 4


def test_auto_optimizer_is_fused_on_gpus_so_fp16_needs_no_host_sync():
    assert resolve_optimizer_impl("auto", torch.device("cuda", 0)) == "fused"
    assert resolve_optimizer_impl("auto", torch.device("cpu")) == "default"
    assert resolve_optimizer_impl("foreach", torch.device("cuda", 0)) == "foreach"
