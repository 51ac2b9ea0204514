"""The step executor: one training step of one parallel mode behind one interface.

An executor owns the model as it is trained (wrapped for the mode, optionally compiled), the
precision (autocast, and a GradScaler for fp16), the loss, backward with gradient accumulation,
and the optimizer.  The training loop and ``bench`` only call :meth:`StepExecutor.train_step`
(or its three parts, to time them apart) and never look at the mode:

* ``single`` and ``dp`` (:class:`StepExecutor`): the module returns logits; DataParallel scatters,
  gathers the logits on the master GPU and the loss is computed there;
* ``dp_balanced`` (:class:`BalancedDPExecutor`): each replica computes its own loss and returns
  three numbers, so the master gathers scalars, not logits;
* ``ddp`` (:class:`DDPExecutor`): gradients are all-reduced once per step; the micro batches of
  an accumulated step skip the all-reduce (``no_sync``) but the last.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..machine.parallel import wrap_model

#: ``train.precision`` -> the autocast dtype (None: fp32, no autocast)
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_optimizer_impl(requested: str, device: torch.device) -> str:
    """``auto``: fused SGD on GPUs, torch's default on CPU.

    Fused is also what keeps fp16 free of a host sync: ``GradScaler.step`` hands the inf check
    to an optimizer that supports it, and otherwise reads ``found_inf`` on the host every step.
    """
    if requested != "auto":
        return requested
    return "fused" if device.type == "cuda" else "default"


@dataclass(frozen=True)
class OptimizerSettings:
    """SGD with (Nesterov) momentum; ``impl``: auto | default | plain | foreach | fused."""

    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    impl: str = "auto"

    def build(self, params: Any, device: torch.device) -> torch.optim.Optimizer:
        kwargs: dict[str, Any] = dict(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                                      nesterov=self.nesterov and self.momentum > 0)
        impl = resolve_optimizer_impl(self.impl, device)
        if impl == "fused":
            kwargs["fused"] = True
        elif impl in ("foreach", "plain"):
            kwargs["foreach"] = impl == "foreach"
        return torch.optim.SGD(params, **kwargs)


@dataclass(frozen=True)
class StepSettings:
    """How a step computes: precision, memory format, compile, accumulation, and the DDP/DP knobs."""

    precision: str = "fp32"
    channels_last: bool = False
    compile_mode: str | None = None
    accumulation_steps: int = 1
    allow_cpu_dp: bool = False
    gradient_as_bucket_view: bool = True
    static_graph: bool = False
    bucket_cap_mb: float = 25.0


class StepExecutor:
    """``single`` and ``dp``: forward, loss, backward (accumulated), optimizer step."""

    mode = "single"

    def __init__(self, model: nn.Module, device: torch.device, settings: StepSettings,
                 optimizer: OptimizerSettings, mode: str | None = None) -> None:
        self.device, self.settings = device, settings
        self.mode = mode or self.mode
        self.autocast_dtype = AUTOCAST_DTYPES[settings.precision]
        if settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model  # the bare model: weights, evaluation, checkpoints
        self.module, self.gpu_ids = wrap_model(
            model, self.mode, device, allow_cpu_dp=settings.allow_cpu_dp,
            gradient_as_bucket_view=settings.gradient_as_bucket_view, static_graph=settings.static_graph,
            bucket_cap_mb=settings.bucket_cap_mb, autocast_dtype=self.autocast_dtype,
        )
        self.forward = torch.compile(self.module, mode=settings.compile_mode) if settings.compile_mode else self.module
        self.optimizer = optimizer.build(model.parameters(), device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
        self.criterion = nn.CrossEntropyLoss()

    # -- the parts of a step (timed apart by bench) ------------------------------------------
    def autocast(self) -> AbstractContextManager:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.settings.channels_last else x

    def forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss, correct count) of one (micro) batch, under the configured precision."""
        with self.autocast():
            logits = self.forward(x)
            return self.criterion(logits.float(), y), (logits.argmax(1) == y).sum()

    def backward(self, loss: torch.Tensor, micro_batches: int = 1) -> None:
        self.scaler.scale(loss / micro_batches).backward()

    def optimizer_step(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def micro_batch_context(self, last: bool) -> AbstractContextManager:
        """What wraps a micro batch's forward and backward (DDP: skip the all-reduce but on the last)."""
        return nullcontext()

    # -- the step ---------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on this rank's batch; returns (mean loss, correct count) on the device."""
        x = self.prepare(x)
        k = self.settings.accumulation_steps
        xs, ys = (x.chunk(k), y.chunk(k)) if k > 1 else ((x,), (y,))
        total_loss = torch.zeros((), device=self.device)
        total_correct = torch.zeros((), device=self.device)
        for i, (xi, yi) in enumerate(zip(xs, ys)):
            with self.micro_batch_context(last=i == len(xs) - 1):
                loss, n_correct = self.forward_loss(xi, yi)
                self.backward(loss, len(xs))
            total_loss += loss.detach() / len(xs)
            total_correct += n_correct.detach()
        self.optimizer_step()
        return total_loss, total_correct

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluation: the bare model's fp32 logits (this rank's share; no wrapper, no compile)."""
        with self.autocast():
            return self.model(self.prepare(x)).float()

    def train(self, on: bool = True) -> None:
        self.model.train(on)

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])


class BalancedDPExecutor(StepExecutor):
    """``dp_balanced``: every replica returns (loss sum, correct, count); the master sums scalars."""

    mode = "dp_balanced"

    def forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            parts = self.forward(x, y).sum(0)
        return parts[0] / parts[2], parts[1]


class DDPExecutor(StepExecutor):
    """``ddp``: one gradient all-reduce per optimizer step, overlapped with backward by DDP."""

    mode = "ddp"

    def micro_batch_context(self, last: bool) -> AbstractContextManager:
        return nullcontext() if last else self.module.no_sync()


EXECUTORS: dict[str, type[StepExecutor]] = {
    "single": StepExecutor, "dp": StepExecutor, "dp_balanced": BalancedDPExecutor, "ddp": DDPExecutor,
}


def make_executor(mode: str, model: nn.Module, device: torch.device, settings: StepSettings,
                  optimizer: OptimizerSettings) -> StepExecutor:
    """The executor of ``train.mode``; ``model`` is on ``device`` already."""
    if mode not in EXECUTORS:
        raise ValueError(f"unknown train.mode {mode!r} (expected one of {', '.join(EXECUTORS)})")
    return EXECUTORS[mode](model, device, settings, optimizer, mode=mode)
