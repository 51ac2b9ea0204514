"""What ``bench`` measures and for how long: the plan, the pieces it tries, the paths it compares and
the steps per measurement that fit the time budget."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from ..autotune.chooser import Candidate, precision_candidate, widths_candidate
from ..step.paths import BASELINE, BASELINE_TF32, PathSpec


@dataclass(frozen=True)
class BenchPlan:
    """One ``bench`` run: model, batch and device, the length of a measurement, what is tried, the budget.

    ``steps`` None: sized so the whole fits ``budget_s``.  ``compile``: off, a mode, or auto (each
    of ``compile_modes``, default :func:`compile_candidates`).  ``channels_last`` True/False forces
    the memory format instead of trying it.  ``widths``: try tensor-core widths (GPUs only).
    ``ablate``: each piece alone too, beyond the budget.  ``baseline_loader``: the seed-style
    DataLoader, or ``torch`` where torchvision is not installed (the baseline then says so).
    """

    device: str = "cpu"
    depth: int = 32
    alpha: float = 48
    block: str = "basic"
    batch_size: int = 64
    steps: int | None = None
    repeats: int = 3
    warmup: int = 3
    peak_tflops: float | None = None
    num_workers: int = 2
    compile: str = "auto"
    compile_modes: tuple[str, ...] | None = None
    ablate: bool = False
    channels_last: bool | None = None
    widths: bool = True
    budget_s: float = 180.0
    baseline_loader: str = "torchvision"

    @property
    def arch(self) -> tuple[int, float, str]:
        """The model's (depth, alpha, block), as PyramidNet takes them."""
        return (self.depth, self.alpha, self.block)

    @property
    def model_name(self) -> str:
        return f"PyramidNet-{self.depth} alpha={self.alpha:g} {self.block}"

    @property
    def compiling(self) -> bool:
        """Whether any compile mode may be tried."""
        return self.compile != "off"

    @property
    def baseline(self) -> PathSpec:
        """The seed-style loop: true fp32 (TF32 off on GPUs), NCHW, eager, host sync, plain SGD."""
        return replace(BASELINE, loader=self.baseline_loader)

    def baselines(self, device: torch.device) -> dict[str, PathSpec]:
        """The baselines the headline measures: true fp32, and on GPUs PyTorch's TF32 default too."""
        out = {"fp32": self.baseline}
        if device.type == "cuda":
            out["tf32"] = replace(BASELINE_TF32, loader=self.baseline_loader)
        return out

    def deadline(self, t_start: float) -> float:
        """When the measurements must end: the command's start-up (imports) and exit come out of the budget too."""
        return t_start + 0.95 * self.budget_s - 5.0


def optimized_spec(device: torch.device, compile_mode: str | None, channels_last: bool | None = None) -> PathSpec:
    """Every piece on: bf16 (fp16 on GPUs without bf16), the device-resident tensor loader, fused
    (GPU) / foreach (CPU) SGD, no host sync in the step loop, optional compile; channels_last by
    default on GPUs only (tensor cores want NHWC).  On the 2-core CPU here channels_last helped fp32
    eager in some runs (0.98x to 1.25x over three ``bench --ablate`` runs), slowed bf16 eager (281 vs
    394 images/s) and made no difference once compiled."""
    bf16 = device.type == "cpu" or torch.cuda.is_bf16_supported()
    if channels_last is None:
        channels_last = device.type == "cuda"
    return PathSpec("bf16" if bf16 else "fp16", channels_last, "torch",
                    "fused" if device.type == "cuda" else "foreach", False, compile_mode)


def pieces(baseline: PathSpec, device: torch.device, compile_mode: str | None) -> dict[str, PathSpec]:
    """The baseline with exactly one optimization switched on, per optimization."""
    best = optimized_spec(device, compile_mode, channels_last=True)
    out = {
        "channels_last": replace(baseline, channels_last=True),
        best.precision: replace(baseline, precision=best.precision),
        "tensor_loader": replace(baseline, loader="torch"),
        f"{best.optimizer}_sgd": replace(baseline, optimizer=best.optimizer),
        "no_host_sync": replace(baseline, host_sync=False),
    }
    if compile_mode:
        out[f"compile ({compile_mode})"] = replace(baseline, compile_mode=compile_mode)
    return out


def compile_candidates(device: torch.device) -> list[str]:
    """torch.compile modes worth measuring on this device, in the order they are tried.

    CUDA graphs only exist on GPUs.  On CPUs, where a 3-minute budget holds one compile trial,
    max-autotune-no-cudagraphs goes first: on both 2-core CPUs measured so far it compiled faster
    (27 vs 67 s; 71 vs 75-100 s) and ran faster than default; the trial still decides.
    """
    if device.type == "cuda":
        return ["default", "max-autotune-no-cudagraphs", "reduce-overhead"]
    return ["max-autotune-no-cudagraphs", "default"]


#: what a first compile trial is expected to take, per convolution layer of the model (CPU) or in all
#: (GPU).  On the 2-core EPYC here, PyramidNet-32 (31 convolutions) compiled in 74-105 s
#: (max-autotune-no-cudagraphs; C++ kernels built by g++), 2.4-3.4 s per layer: the estimate is the
#: middle, and the budget's slack for start-up and exit (5 % + 5 s) absorbs the slow end.
COMPILE_S_PER_CONV_CPU = 2.8
COMPILE_S_CUDA = 90.0


def compile_estimate_s(device_type: str, conv_layers: int) -> float:
    """Seconds a first compile trial is expected to take (later ones: 1.3x the slowest seen)."""
    return COMPILE_S_CUDA if device_type == "cuda" else COMPILE_S_PER_CONV_CPU * conv_layers


#: why a piece cannot cost anything on a GPU, so the chooser keeps it there without a trial
FREE_ON_GPU = {
    "tensor_loader": "on a GPU the batches are sliced from device memory: nothing to wait for",
    "no_host_sync": "on a GPU a loss.item() per step only stalls the launch queue",
}


def bench_candidates(plan: BenchPlan, dev: torch.device, cap: dict[str, Any]) -> list[Candidate]:
    """The pieces ``bench`` tries, cheapest first; compile modes last (each costs a compile).

    On a GPU the pieces that cannot cost anything there (:data:`FREE_ON_GPU`) are kept without a
    trial; widths, memory format, precision and compile are tried."""
    fast_sgd = "fused" if dev.type == "cuda" else "foreach"
    free = FREE_ON_GPU if dev.type == "cuda" else {}
    out = [Candidate("tensor_loader", "loader", "torch", free=free.get("tensor_loader")),
           Candidate("no_host_sync", "host_sync", False, free=free.get("no_host_sync")),
           Candidate(f"{fast_sgd}_sgd", "optimizer", fast_sgd),
           precision_candidate(cap, dev)]
    if plan.channels_last is None:
        out.append(Candidate("channels_last", "channels_last", True))
    if plan.widths:
        out.append(widths_candidate(dev))
    out += [Candidate(f"compile ({m})", "compile_mode", m) for m in _compile_modes(plan, dev)]
    return out


def _compile_modes(plan: BenchPlan, dev: torch.device) -> list[str]:
    if plan.compile == "auto":
        return list(plan.compile_modes or compile_candidates(dev))
    return [] if plan.compile == "off" else [plan.compile]


def planned_steps(budget_s: float, step_s: float, candidates: list[Candidate], repeats: int,
                  compile_need_s: float) -> int:
    """Steps per measurement so that trials and headline fit the budget (3 at least, 12 at most).

    Each tried piece costs up to 2 rounds x 2 measurements, the headline 3 per repeat, the stage
    breakdown 2; the first compile trial's expected time (0: none) and the builds' warm-ups are
    set aside first.
    """
    tried = [c for c in candidates if not c.ruled_out and not c.free and c.piece != "compile_mode"]
    measurements = 4 * len(tried) + 3 * repeats + 2
    compiling = compile_need_s > 0 and any(c.piece == "compile_mode" for c in candidates)
    if compiling:
        measurements += 4
    left = 0.55 * budget_s - (compile_need_s if compiling else 0.0)
    return int(min(12, max(3, left / max(1, measurements) / step_s)))
