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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .data import make_loader, synthetic_splits


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
        from .config import ConfigError

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


def _peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type == "cuda":
        return gpu_peak_tflops(torch.cuda.get_device_name(device))
    return None


@dataclass(frozen=True)
class PathSpec:
    """One way to train: the seed-style baseline, the optimized path, or baseline plus one piece."""

    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 adds a GradScaler)
    channels_last: bool = False
    loader: str = "torchvision"  # torchvision (DataLoader with workers) | torch (device-resident tensors)
    optimizer: str = "plain"  # plain | foreach | fused SGD
    host_sync: bool = True  # loss.item() every step
    compile_mode: str | None = None  # None: eager

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["compile"] = self.compile_mode or "off"
        del d["compile_mode"]
        return d


BASELINE = PathSpec()


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


STAGES = ("data", "forward", "backward", "optimizer", "logging")


class TrainPath:
    """A model, loader and optimizer set up as ``spec`` says, on ``device``, from ``init`` weights."""

    def __init__(self, spec: PathSpec, arch: tuple[int, float, str], init: dict[str, torch.Tensor],
                 splits: Any, batch_size: int, device: torch.device, num_workers: int = 2,
                 log_every: int = 20) -> None:
        from .model import PyramidNet

        self.spec, self.device, self.batch_size, self.log_every = spec, device, batch_size, log_every
        model = PyramidNet(*arch).to(device)
        model.load_state_dict(init)
        if spec.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.forward = torch.compile(model, mode=spec.compile_mode) if spec.compile_mode else model
        self.loader = make_loader(spec.loader, splits.train, batch_size, device, num_workers=num_workers)
        impl = {"plain": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, **impl[spec.optimizer])
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[spec.precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=spec.precision == "fp16")
        self.crit = torch.nn.CrossEntropyLoss()
        self._it = iter(self.loader)
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

    def _next(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return next(self._it)
        except StopIteration:
            self.epoch += 1
            self.loader.set_epoch(self.epoch)
            self._it = iter(self.loader)
            return next(self._it)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train(self, steps: int, stages: dict[str, float] | None = None, writer: Any = None) -> float:
        """Train ``steps`` steps; returns images/s.

        ``stages`` (if given) collects per-stage seconds per step (with a device sync between
        stages, so only for locating costs).  Losses stay on the device and are drained every
        ``log_every`` steps, as the Trainer does; ``writer`` (a MetricsWriter) then gets the rows.
        """
        pending: list[torch.Tensor] = []
        use_scaler = self.spec.precision == "fp16"

        def tick() -> float:
            if stages is not None:
                self._sync()
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

        self._sync()
        t0 = time.perf_counter()
        n = 0
        for _ in range(steps):
            a = tick()
            x, y = self._next()
            if self.spec.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            b = tick()
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                loss = self.crit(self.forward(x).float(), y)
            c = tick()
            if use_scaler:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
            d = tick()
            if use_scaler:
                self.scaler.step(self.opt)
                self.scaler.update()
            else:
                self.opt.step()
            self.opt.zero_grad(set_to_none=True)
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
        self._sync()
        return n / (time.perf_counter() - t0)


def compile_candidates(device: torch.device) -> list[str]:
    """torch.compile modes worth measuring on this device (CUDA graphs only exist on GPUs)."""
    modes = ["default", "max-autotune-no-cudagraphs"]
    return modes + ["reduce-overhead"] if device.type == "cuda" else modes


def alternate(a: TrainPath, b: TrainPath, steps: int, repeats: int) -> tuple[list[float], list[float]]:
    """images/s of ``a`` and ``b``, measured in turn ``repeats`` times so drift hits both alike."""
    ra, rb = [], []
    for _ in range(repeats):
        ra.append(a.train(steps))
        rb.append(b.train(steps))
    return ra, rb


def bench_training(device: str = "cpu", depth: int = 32, alpha: float = 48, block: str = "basic",
                   batch_size: int = 64, steps: int = 12, repeats: int = 3, warmup: int = 3,
                   peak_tflops: float | None = None, num_workers: int = 2, compile: str = "off",
                   compile_modes: list[str] | None = None, ablate: bool = False,
                   channels_last: bool | None = None, progress: Any = None) -> dict[str, Any]:
    """Seed-style baseline vs optimized path on one model, batch and device, alternated.

    ``compile``: off, a torch.compile mode, or auto (each of ``compile_modes`` is compiled and
    measured; the fastest wins).  Compile time is reported apart and never enters images/s.
    Also measured: the HDF5 writer's cost (with vs without, and its own time) and, with
    ``ablate``, each optimization alone against the baseline.
    """
    from .model import PyramidNet, count_macs

    say = progress or (lambda msg: None)
    dev = bench_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    arch = (depth, alpha, block)
    torch.manual_seed(0)
    init = PyramidNet(*arch).state_dict()
    macs = count_macs(PyramidNet(*arch))
    splits = synthetic_splits(max(4096, batch_size * (steps + warmup) * 2), 16)

    def build(spec: PathSpec) -> TrainPath:
        return TrainPath(spec, arch, init, splits, batch_size, dev, num_workers).warm_up(warmup)

    with _inductor_cache(fresh=compile != "off") as cache:
        result = _bench_paths(build, dev, steps, repeats, compile, compile_modes, channels_last, ablate, say)
    result["compile"]["cache_dir"] = cache
    peak = _peak_tflops(dev, peak_tflops)
    f = result["optimized_images_per_s"]
    achieved = 3 * 2 * macs * f / 1e12
    return {
        "device": device, "model": f"PyramidNet-{depth} alpha={alpha:g} {block}", "batch_size": batch_size,
        **result,
        "training_tflops": achieved, "peak_tflops": peak, "mfu": achieved / peak if peak else None,
        "steps_per_repeat": steps, "repeats": repeats,
        "machine": machine(),
    }


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


def _bench_paths(build: Callable[[PathSpec], TrainPath], dev: torch.device, steps: int, repeats: int,
                 compile: str, compile_modes: list[str] | None, channels_last: bool | None, ablate: bool,
                 say: Callable[[str], None]) -> dict[str, Any]:
    """The measurements of ``bench_training``: compile modes, headline, stages, HDF5 cost, ablation."""
    from .metrics import MetricsWriter

    # -- torch.compile: which mode, at what compile cost ------------------------------------
    compile_report: dict[str, Any] = {"requested": compile}
    chosen = None if compile == "off" else compile
    if compile == "auto":
        trials = {}
        for mode in compile_modes or compile_candidates(dev):
            say(f"compile: trying mode {mode} ...")
            torch._dynamo.reset()
            p = build(optimized_spec(dev, mode, channels_last))
            rate = statistics.median(p.train(steps) for _ in range(2))
            trials[mode] = {"compile_s": p.first_step_s, "images_per_s": rate}
            say(f"compile: {mode}: {p.first_step_s:.1f} s to compile, {rate:,.0f} images/s")
            del p
        chosen = max(trials, key=lambda m: trials[m]["images_per_s"])
        compile_report["trials"] = trials
    if chosen:
        torch._dynamo.reset()
    compile_report["mode"] = chosen

    # -- the headline: baseline vs optimized, alternated -------------------------------------
    say("baseline vs optimized ...")
    fast_spec = optimized_spec(dev, chosen, channels_last)
    base = build(BASELINE)
    fast = build(fast_spec)
    if chosen:  # auto: the trial's compile was the cold one; this one may hit the compile caches
        trial = compile_report.get("trials", {}).get(chosen)
        compile_report["compile_s"] = trial["compile_s"] if trial else fast.first_step_s
        compile_report["final_compile_s"] = fast.first_step_s
    base_all, fast_all = alternate(base, fast, steps, repeats)
    stages_base: dict[str, float] = {}
    stages_fast: dict[str, float] = {}
    base.train(steps, stages=stages_base)
    fast.train(steps, stages=stages_fast)
    b, f = statistics.median(base_all), statistics.median(fast_all)

    # -- HDF5 logging cost on the optimized path: with vs without the writer ------------------
    say("HDF5 logging overhead ...")
    with tempfile.TemporaryDirectory() as tmp:
        writer = MetricsWriter(Path(tmp) / "metrics.h5", flush_interval_s=2.0)
        with_w, without_w, loop_s = [], [], 0.0
        w0 = writer.write_seconds
        for _ in range(2 * repeats):
            t0 = time.perf_counter()
            with_w.append(fast.train(steps, writer=writer))
            loop_s += time.perf_counter() - t0
            without_w.append(fast.train(steps))
        write_s = writer.write_seconds - w0
        flushes = writer.flush_count
    metrics = {
        "with_writer_images_per_s": statistics.median(with_w),
        "without_writer_images_per_s": statistics.median(without_w),
        "ab_overhead": statistics.median(x / y - 1 for x, y in zip(without_w, with_w)),
        "writer_seconds": write_s, "flushes": flushes, "flush_interval_s": 2.0,
        "overhead": write_s / loop_s,
    }

    # -- each piece on its own ---------------------------------------------------------------
    ablation: dict[str, Any] = {}
    if ablate:
        del fast
        for name, spec in pieces(dev, chosen).items():
            say(f"ablation: {name} ...")
            if spec.compile_mode:
                torch._dynamo.reset()
            one = build(spec)
            rb, ro = alternate(base, one, steps, repeats)
            ablation[name] = {"images_per_s": statistics.median(ro), "baseline_images_per_s": statistics.median(rb),
                              "ratio": statistics.median(ro) / statistics.median(rb)}
            del one

    return {
        "baseline_images_per_s": b, "optimized_images_per_s": f, "ratio": f / b,
        "baseline_all": base_all, "optimized_all": fast_all,
        "baseline": BASELINE.describe(), "optimized": fast_spec.describe(),
        "compile": compile_report,
        "stage_seconds_per_step": {"baseline": stages_base, "optimized": stages_fast},
        "metrics_overhead": metrics,
        "ablation": ablation,
    }
