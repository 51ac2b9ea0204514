"""Measurements that print figures: loader throughput (``bench-loader``) and training throughput,
seed-style baseline against the optimized path (``bench``)."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from ..machine.devices import capability
from ..step.autotune import Candidate, choose, precision_candidate
from ..step.paths import BASELINE, PathSpec, TrainPath
from ..workload.data import synthetic_splits
from ..workload.loaders import make_loader


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def bench_device(device: str) -> torch.device:
    """The device a benchmark asked for; a clear input error when it is a GPU that is not there."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from ..spec.config import ConfigError

        raise ConfigError("bench", "--device", "cuda requested but no CUDA device is available")
    return dev


def bench_loader(
    kind: str, device: str = "cpu", batch_size: int = 256, images: int = 10240, epochs: int = 5,
    num_workers: int = 2,
) -> dict[str, Any]:
    """Images/s of one loader with augmentation on: median over ``epochs`` after one warm-up.

    Every batch is materialised on the device (the CUDA stream is synchronised per epoch), so
    the figure is what a training loop would receive.
    """
    dev = bench_device(device)
    splits = synthetic_splits(images, 16)
    loader = make_loader(kind, splits.train, batch_size, dev, num_workers=num_workers)
    rates = []
    for epoch in range(epochs + 1):
        loader.set_epoch(epoch)
        t0 = time.perf_counter()
        n = 0
        checksum = torch.zeros((), device=dev)
        for x, y in loader:
            n += y.shape[0]
            checksum += x[:, 0, 0, 0].sum()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if epoch:  # epoch 0 warms up (workers, pipeline build, allocator)
            rates.append(n / (time.perf_counter() - t0))
    return {
        "loader": kind,
        "device": device,
        "batch_size": batch_size,
        "images_per_epoch": n,
        "epochs_timed": epochs,
        "images_per_s": statistics.median(rates),
        "images_per_s_all": rates,
        "num_workers": num_workers if kind == "torchvision" else 0,
        "machine": machine(),
    }


# ---------------------------------------------------------------------------------------------
# Training throughput: the seed-style baseline against the optimized path, side by side
# ---------------------------------------------------------------------------------------------

#: Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets, by the exact
#: name CUDA reports (less a leading "NVIDIA ").  SXM and PCIe/NVL parts of one chip differ in
#: clocks and power, so a product is never matched by a substring.  TITAN Xp (Pascal) has no
#: tensor cores and no bf16: its fp32 peak is given, the precision the paper trained in.
GPU_PEAK_TFLOPS = {
    "A100-SXM4-40GB": 312.0, "A100-SXM4-80GB": 312.0, "A100-PCIE-40GB": 312.0, "A100 80GB PCIe": 312.0,
    "H100 80GB HBM3": 989.0, "H100 SXM5 80GB": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0,
    "H200": 989.0, "H200 NVL": 835.0,
    "B200": 2250.0,
    "L40S": 362.0,
    "A10": 125.0,
    "GeForce RTX 4090": 165.2,
    "TITAN Xp": 12.1,
}


def gpu_peak_tflops(name: str) -> float | None:
    """The dense bf16 peak of the GPU CUDA calls ``name``, or None when it is not in the table."""
    key = name.strip()
    key = key[len("NVIDIA "):] if key.startswith("NVIDIA ") else key
    return GPU_PEAK_TFLOPS.get(key)


def training_tflops(macs_per_image: float, images_per_s: float) -> float:
    """Training TFLOP/s: forward MACs x 2 FLOP, times 3 for forward + backward (2x forward)."""
    return 3 * 2 * macs_per_image * images_per_s / 1e12


def _peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type == "cuda":
        return gpu_peak_tflops(torch.cuda.get_device_name(device))
    return None




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


def pieces(device: torch.device, compile_mode: str | None) -> dict[str, PathSpec]:
    """The baseline with exactly one optimization switched on, per optimization."""
    best = optimized_spec(device, compile_mode, channels_last=True)
    out = {
        "channels_last": replace(BASELINE, channels_last=True),
        best.precision: replace(BASELINE, precision=best.precision),
        "tensor_loader": replace(BASELINE, loader="torch"),
        f"{best.optimizer}_sgd": replace(BASELINE, optimizer=best.optimizer),
        "no_host_sync": replace(BASELINE, host_sync=False),
    }
    if compile_mode:
        out[f"compile ({compile_mode})"] = replace(BASELINE, compile_mode=compile_mode)
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


def alternate(a: TrainPath, b: TrainPath, steps: int, repeats: int) -> tuple[list[float], list[float]]:
    """images/s of ``a`` and ``b``, measured in turn ``repeats`` times so drift hits both alike."""
    ra, rb = [], []
    for _ in range(repeats):
        ra.append(a.train(steps))
        rb.append(b.train(steps))
    return ra, rb


#: what a first compile trial is expected to take, per convolution layer of the model (CPU) or in all
#: (GPU).  On the 2-core EPYC here, PyramidNet-32 (31 convolutions) compiled in 74-105 s
#: (max-autotune-no-cudagraphs; C++ kernels built by g++), 2.4-3.4 s per layer: the estimate is the
#: middle, and the budget's slack for start-up and exit (5 % + 5 s) absorbs the slow end.
COMPILE_S_PER_CONV_CPU = 2.8
COMPILE_S_CUDA = 90.0


def compile_estimate_s(device_type: str, conv_layers: int) -> float:
    """Seconds a first compile trial is expected to take (later ones: 1.3x the slowest seen)."""
    return COMPILE_S_CUDA if device_type == "cuda" else COMPILE_S_PER_CONV_CPU * conv_layers


def bench_training(device: str = "cpu", depth: int = 32, alpha: float = 48, block: str = "basic",
                   batch_size: int = 64, steps: int | None = None, repeats: int = 3, warmup: int = 3,
                   peak_tflops: float | None = None, num_workers: int = 2, compile: str = "auto",
                   compile_modes: list[str] | None = None, ablate: bool = False,
                   channels_last: bool | None = None, budget_s: float = 180.0, progress: Any = None) -> dict[str, Any]:
    """Seed-style baseline vs the path the chooser builds for this device, model and batch.

    From the baseline, each piece (tensor loader, foreach/fused SGD, no host sync, reduced
    precision where the device has the units, channels_last, then each ``compile`` mode) is tried
    on top of the path chosen so far and kept only if its trial wins (:func:`.autotune.choose`);
    then the baseline and the chosen path alternate ``repeats`` times for the headline, which also
    times the HDF5 writer.  ``steps`` (None: sized so the whole fits ``budget_s``) is the length of
    one measurement; compile trials that the budget cannot hold are skipped with the reason.
    ``channels_last`` True/False forces the memory format instead of trying it.  With
    ``ablate``, each piece alone against the baseline is measured too, beyond the budget.
    """
    from ..workload.model import PyramidNet, count_convolutions, count_macs

    say = progress or (lambda msg: None)
    t_start = time.monotonic()
    dev = bench_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cap = capability(dev)
    say(f"capability: {cap}")
    arch = (depth, alpha, block)
    torch.manual_seed(0)
    init = PyramidNet(*arch).state_dict()
    probe = PyramidNet(*arch)  # counted on, never trained (count_macs runs a forward pass)
    macs = count_macs(probe)
    compile_need_s = compile_estimate_s(dev.type, count_convolutions(probe))
    splits = synthetic_splits(max(4096, batch_size * 64), 16)
    built: dict[PathSpec, TrainPath] = {}

    def path(spec: PathSpec) -> TrainPath:
        # an eager path is warm after its first step (workers started, kernels chosen) and one more;
        # a compiled one gets ``warmup`` steps (recompiles, autotuning)
        if spec not in built:
            built[spec] = TrainPath(spec, arch, init, splits, batch_size, dev, num_workers).warm_up(
                warmup if spec.compile_mode else 1)
        return built[spec]

    with _inductor_cache(fresh=compile != "off") as cache:
        base = path(BASELINE)
        step_s = batch_size / base.train(3)
        candidates = bench_candidates(dev, cap, compile, compile_modes, channels_last)
        if steps is None:
            steps = planned_steps(budget_s, step_s, candidates, repeats, compile_need_s if compile != "off" else 0.0)
        say(f"baseline {1e3 * step_s:.0f} ms/step: {steps} steps per measurement, budget {budget_s:.0f} s")
        # the command's start-up (imports) and exit come out of the budget too
        result = _bench_paths(path, dev, steps, repeats, candidates, channels_last, ablate, say,
                              deadline=t_start + 0.95 * budget_s - 5.0, compile_need_s=compile_need_s)
    result["compile"]["requested"] = compile
    result["compile"]["cache_dir"] = cache
    result["compile"]["estimate_s"] = compile_need_s
    over = time.monotonic() - t_start - budget_s
    if over > 0 and not ablate:
        slowest = max((t["compile_s"] for t in result["compile"]["trials"].values()), default=None)
        say(f"over the budget by {over:.0f} s" + (f": a compile took {slowest:.0f} s, {compile_need_s:.0f} s were "
                                                  "expected" if slowest and slowest > compile_need_s else ""))
    peak = _peak_tflops(dev, peak_tflops)
    achieved = training_tflops(macs, result["optimized_images_per_s"])
    return {
        "device": device, "model": f"PyramidNet-{depth} alpha={alpha:g} {block}", "batch_size": batch_size,
        "capability": cap, **result,
        "training_tflops": achieved, "peak_tflops": peak, "mfu": achieved / peak if peak else None,
        "steps_per_repeat": steps, "budget_s": budget_s,
        "elapsed_s": time.monotonic() - t_start, "machine": machine(),
    }


def bench_candidates(dev: torch.device, cap: dict[str, Any], compile: str, compile_modes: list[str] | None,
                     channels_last: bool | None) -> list[Candidate]:
    """The pieces ``bench`` tries, cheapest first; compile modes last (each costs a compile)."""
    fast_sgd = "fused" if dev.type == "cuda" else "foreach"
    out = [Candidate("tensor_loader", "loader", "torch"),
           Candidate(f"{fast_sgd}_sgd", "optimizer", fast_sgd),
           Candidate("no_host_sync", "host_sync", False),
           precision_candidate(cap, dev)]
    if channels_last is None:
        out.append(Candidate("channels_last", "channels_last", True))
    modes = (compile_modes or compile_candidates(dev)) if compile == "auto" else ([] if compile == "off" else [compile])
    out += [Candidate(f"compile ({m})", "compile_mode", m) for m in modes]
    return out


def planned_steps(budget_s: float, step_s: float, candidates: list[Candidate], repeats: int,
                  compile_need_s: float) -> int:
    """Steps per measurement so that trials and headline fit the budget (3 at least, 12 at most).

    Each tried piece costs up to 2 rounds x 2 measurements, the headline 3 per repeat, the stage
    breakdown 2; the first compile trial's expected time (0: none) and the builds' warm-ups are
    set aside first.
    """
    tried = [c for c in candidates if not c.ruled_out and c.piece != "compile_mode"]
    measurements = 4 * len(tried) + 3 * repeats + 2
    compiling = compile_need_s > 0 and any(c.piece == "compile_mode" for c in candidates)
    if compiling:
        measurements += 4
    left = 0.55 * budget_s - (compile_need_s if compiling else 0.0)
    return int(min(12, max(3, left / max(1, measurements) / step_s)))


@contextmanager
def _inductor_cache(fresh: bool) -> Iterator[str | None]:
    """Cold compile times: inductor's on-disk cache starts empty (unless TORCHINDUCTOR_CACHE_DIR is set)."""
    if not fresh:
        yield None
        return
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        yield os.environ["TORCHINDUCTOR_CACHE_DIR"]
        return
    path = tempfile.mkdtemp(prefix="pyramidrepro-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    try:
        yield "fresh (emptied after the run)"
    finally:
        del os.environ["TORCHINDUCTOR_CACHE_DIR"]
        shutil.rmtree(path, ignore_errors=True)


def _bench_paths(path: Callable[[PathSpec], TrainPath], dev: torch.device, steps: int, repeats: int,
                 candidates: list[Candidate], channels_last: bool | None, ablate: bool,
                 say: Callable[[str], None], deadline: float, compile_need_s: float) -> dict[str, Any]:
    """The measurements of ``bench_training``: the choice, the headline with HDF5 cost, stages, ablation."""
    from ..records.metrics import MetricsWriter

    compile_s: list[float] = []
    rates: dict[PathSpec, list[float]] = {}

    def measure(spec: PathSpec) -> float:
        fresh = spec not in built_specs
        if fresh and spec.compile_mode:
            torch._dynamo.reset()
            say(f"compile ({spec.compile_mode}): compiling ...")
        p = path(spec)
        built_specs.add(spec)
        if fresh and spec.compile_mode:
            compile_s.append(p.first_step_s or 0.0)
            trials[spec.compile_mode] = {"compile_s": p.first_step_s}
        rate = p.train(steps)
        rates.setdefault(spec, []).append(rate)
        if spec.compile_mode in trials:
            trials[spec.compile_mode].setdefault("images_per_s_all", []).append(rate)
        return rate

    def budget_skip(cand: Candidate) -> str | None:
        left = deadline - time.monotonic()
        images = steps * path(BASELINE).batch_size
        base_s = images / max(1e-9, statistics.median(base_rates))
        # the chosen path will be at least as fast as the fastest measured so far
        fast_s = images / max(statistics.median(r) for r in rates.values()) if rates else base_s
        headline = repeats * (base_s + 2 * fast_s) + base_s + fast_s  # + the stage breakdown
        if cand.piece == "compile_mode":
            # the compile, then a round of the trial's own two measurements
            need = (1.3 * max(compile_s) if compile_s else compile_need_s) + base_s + fast_s
            if left - headline < need:
                return (f"budget: {left:.0f} s left of the time budget, a compile trial needs ~{need:.0f} s "
                        "(raise --budget-s to include it)")
        elif left - headline < 4 * base_s:
            return f"budget: {left:.0f} s left of the time budget"
        return None

    built_specs: set[PathSpec] = {BASELINE}
    trials: dict[str, dict[str, Any]] = {}
    base_rates = [path(BASELINE).train(steps)]
    say("choosing the optimized path, piece by piece ...")
    choice = choose(BASELINE, candidates, measure, skip=budget_skip, say=say)
    fast_spec = choice.spec if channels_last is None else replace(choice.spec, channels_last=channels_last)
    for t in trials.values():
        t["images_per_s"] = statistics.median(t.pop("images_per_s_all", [0.0]))

    # -- the headline: baseline vs chosen path, alternated, the chosen path also with the writer ----
    base, fast = path(BASELINE), path(fast_spec)
    round_s = steps * base.batch_size * (2 / statistics.median(base_rates) + 1 / fast.train(steps))
    repeats = max(repeats, min(3 * repeats, int((deadline - time.monotonic()) / round_s) - 2))
    say(f"baseline vs optimized, and the HDF5 writer's cost: {repeats} alternated repeats ...")
    base_all, fast_all, with_w = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        writer = MetricsWriter(Path(tmp) / "metrics.h5", flush_interval_s=2.0)
        w0, loop_s = writer.write_seconds, 0.0
        for _ in range(repeats):
            base_all.append(base.train(steps))
            fast_all.append(fast.train(steps))
            t0 = time.perf_counter()
            with_w.append(fast.train(steps, writer=writer))
            loop_s += time.perf_counter() - t0
        write_s, flushes = writer.write_seconds - w0, writer.flush_count
    stages_base: dict[str, float] = {}
    stages_fast: dict[str, float] = {}
    base.train(steps, stages=stages_base)
    fast.train(steps, stages=stages_fast)
    b, f = statistics.median(base_all), statistics.median(fast_all)
    metrics = {
        "with_writer_images_per_s": statistics.median(with_w),
        "without_writer_images_per_s": f,
        "ab_overhead": statistics.median(x / y - 1 for x, y in zip(fast_all, with_w)),
        "writer_seconds": write_s, "flushes": flushes, "flush_interval_s": 2.0,
        "overhead": write_s / loop_s,
    }

    # -- each piece alone (beyond the budget) ------------------------------------------------
    ablation: dict[str, Any] = {}
    if ablate:
        ruled_out = {c.name: c.ruled_out for c in candidates if c.ruled_out}
        for name, spec in pieces(dev, fast_spec.compile_mode or next(iter(trials), None)).items():
            if name in ruled_out:  # the capability says it loses; measuring it would take minutes
                ablation[name] = {"skipped": ruled_out[name]}
                continue
            say(f"ablation: {name} ...")
            if spec.compile_mode:
                torch._dynamo.reset()
            one = path(spec)
            rb, ro = alternate(base, one, steps, repeats)
            ablation[name] = {"images_per_s": statistics.median(ro), "baseline_images_per_s": statistics.median(rb),
                              "ratio": statistics.median(ro) / statistics.median(rb)}

    kept_modes = fast_spec.compile_mode
    return {
        "baseline_images_per_s": b, "optimized_images_per_s": f, "ratio": f / b,
        "baseline_all": base_all, "optimized_all": fast_all, "repeats": repeats,
        "baseline": BASELINE.describe(), "optimized": fast_spec.describe(),
        "choices": [{**asdict(d), "ratio": d.ratio} for d in choice.decisions],
        "compile": {"mode": kept_modes, "trials": trials,
                    "compile_s": trials[kept_modes]["compile_s"] if kept_modes in trials else None},
        "stage_seconds_per_step": {"baseline": stages_base, "optimized": stages_fast},
        "metrics_overhead": metrics,
        "ablation": ablation,
    }
