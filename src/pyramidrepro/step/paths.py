"""Training paths: one way to train (precision, memory format, loader, optimizer, host sync,
compile, channel widths), set up and timed on its own model copy.  ``bench`` and the ``auto``
chooser measure them.

On a GPU ``fp32`` is true fp32 (TF32 off, as runs keep it by default) and ``tf32`` is fp32 tensors
with TF32 tensor-core math, PyTorch's own default for cuDNN convolutions: a seed-style loop that
never touched the setting ran in TF32.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..machine.devices import set_tf32
from ..workload.loaders import make_loader
from .executor import OptimizerSettings, StepSettings, make_executor


@dataclass(frozen=True)
class PathSpec:
    """One way to train: the seed-style baseline, the optimized path, or baseline plus one piece."""

    precision: str = "fp32"  # fp32 | tf32 (GPU: TF32 math) | bf16 | fp16 (autocast; fp16 adds a GradScaler)
    channels_last: bool = False
    loader: str = "torchvision"  # torchvision (DataLoader with workers) | torch (device-resident tensors)
    optimizer: str = "plain"  # plain | foreach | fused | default SGD (executor.OptimizerSettings.impl)
    host_sync: bool = True  # loss.item() every step
    compile_mode: str | None = None  # None: eager
    channel_multiple: int = 1  # 8: the model's widths rounded up for tensor cores (workload.model)

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["compile"] = self.compile_mode or "off"
        del d["compile_mode"]
        return d


BASELINE = PathSpec()
#: the seed-style loop as PyTorch runs it on a GPU when nobody sets TF32: cuDNN convolutions in TF32
BASELINE_TF32 = PathSpec(precision="tf32")


STAGES = ("data", "forward", "backward", "optimizer", "logging")


class TrainPath:
    """A model, loader and step executor set up as ``spec`` says, on ``device``, from ``init`` weights.

    The step is the training loop's own (:class:`.executor.StepExecutor`, single mode); what a path
    adds is the seed-style habits the baseline keeps: a host sync every step, the DataLoader.
    """

    def __init__(self, spec: PathSpec, arch: tuple[int, float, str], init: dict[str, torch.Tensor],
                 splits: Any, batch_size: int, device: torch.device, num_workers: int = 2,
                 log_every: int = 20) -> None:
        from ..workload.model import PyramidNet

        self.spec, self.device, self.batch_size, self.log_every = spec, device, batch_size, log_every
        model = PyramidNet(*arch, channel_multiple=spec.channel_multiple).to(device)
        model.load_state_dict(init)  # the paper's widths; an aligned model takes them into its leading channels
        precision = "fp32" if spec.precision == "tf32" else spec.precision
        self.executor = make_executor(
            "single", model, device,
            StepSettings(precision=precision, channels_last=spec.channels_last, compile_mode=spec.compile_mode),
            OptimizerSettings(lr=0.01, momentum=0.9, nesterov=True, impl=spec.optimizer),
        )
        self.loader = make_loader(spec.loader, splits.train, batch_size, device, num_workers=num_workers,
                                  channels_last=spec.channels_last)
        self.batches = iter(self.loader)
        self.epoch = 0
        self.step_count = 0
        self.first_step_s: float | None = None

    def warm_up(self, steps: int) -> TrainPath:
        """Time the first step (it compiles, starts workers, autotunes convolutions), then ``steps`` more."""
        t0 = time.perf_counter()
        self.train(1)
        self.first_step_s = time.perf_counter() - t0
        self.train(steps)
        return self

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return next(self.batches)
        except StopIteration:
            self.epoch += 1
            self.loader.set_epoch(self.epoch)
            self.batches = iter(self.loader)
            return next(self.batches)

    def sync(self) -> None:
        """Wait for the device; on a GPU also set this path's math (paths of one bench alternate,
        and TF32 is a process-wide switch)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            set_tf32(self.spec.precision == "tf32")

    def train(self, steps: int, stages: dict[str, float] | None = None, writer: Any = None) -> float:
        """Train ``steps`` steps; returns images/s.

        ``stages`` (if given) collects per-stage seconds per step (with a device sync between
        stages, so only for locating costs).  Losses stay on the device and are drained every
        ``log_every`` steps, as the Trainer does; ``writer`` (a MetricsWriter) then gets the rows.
        """
        pending: list[torch.Tensor] = []
        ex = self.executor

        def tick() -> float:
            if stages is not None:
                self.sync()
            return time.perf_counter()

        def drain() -> None:
            if not pending:
                return
            losses = torch.stack(pending).float().cpu().tolist()
            if writer is not None:
                first = self.step_count - len(losses) + 1
                for i, loss in enumerate(losses):
                    writer.log_step(step=first + i, epoch=self.epoch, loss=loss, lr=0.01)
            pending.clear()

        self.sync()
        t0 = time.perf_counter()
        n = 0
        for _ in range(steps):
            a = tick()
            x, y = self.next_batch()
            x = ex.prepare(x)
            b = tick()
            loss, _ = ex.forward_loss(x, y)
            c = tick()
            ex.backward(loss)
            d = tick()
            ex.optimizer_step()
            e = tick()
            self.step_count += 1
            if self.spec.host_sync:
                loss.item()
            pending.append(loss.detach())
            if self.step_count % self.log_every == 0:
                drain()
            f = tick()
            n += y.shape[0]
            if stages is not None:
                for k, v in zip(STAGES, (b - a, c - b, d - c, e - d, f - e)):
                    stages[k] = stages.get(k, 0.0) + v / steps
        drain()
        self.sync()
        return n / (time.perf_counter() - t0)
