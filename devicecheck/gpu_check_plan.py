"""The device check's plan: every step of devicecheck/gpu_check.py, in order, for one device form.

Kept apart from the runner so that a test can read the ``cuda`` form's plan on a CPU and validate
each run's configuration against a Python without DALI (the device image has none until its pack
is unpacked).  Every run step names its loader (``data.loader=...``) and needs that loader's
package: a run whose package does not import is skipped with the reason, never failed.

Placeholders in a step's arguments, filled in by the runner: ``{runs}`` (the runs' folder) and
``{work}`` (the work folder whose small files come back).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

#: the package each loader imports (workload.requirements.NEEDS, without importing the package here)
LOADER_MODULES = {"torch": "torch", "torchvision": "torchvision", "dali": "nvidia.dali"}
RUN = ("-m", "pyramidrepro", "run")
TORCHRUN_1 = ("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "pyramidrepro", "run")


@dataclass(frozen=True)
class Step:
    """One step: a command (after the Python executable) under a time limit.

    ``expect``: a run's status (its exit code and its ``metrics.h5`` are checked); ``config``: a
    run's experiment and ``--set`` overrides; ``needs``: modules that must import, else the step is
    skipped; ``env``: variables added; ``background``: started before the first step and waited for
    at its place (the CPU form's cold compile overlaps the other steps).
    """

    name: str
    limit_s: int
    argv: tuple[str, ...]
    expect: str | None = None
    config: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    background: bool = False

    @property
    def loader(self) -> str | None:
        """The loader a run step names, None for other steps."""
        sets = [self.config[i + 1] for i, a in enumerate(self.config[:-1]) if a == "--set"]
        named = [s.split("=", 1)[1] for s in sets if s.startswith("data.loader=")]
        return named[-1] if named else None


def run(name: str, limit_s: int, expect: str, config: tuple[str, ...], *, launcher: tuple[str, ...] = RUN,
        extra: tuple[str, ...] = (), env: tuple[tuple[str, str], ...] = (), background: bool = False) -> Step:
    """A ``pyramidrepro run`` step; ``config`` must name its loader, whose package the step then needs."""
    step = Step(name, limit_s, (*launcher, *config, *extra, "--out", "{runs}", "--run-id", name, "--no-progress"),
                expect, config, env=env, background=background)
    if step.loader not in LOADER_MODULES:
        raise ValueError(f"run step {name}: its config must name its loader (--set data.loader=...), "
                         f"one of {', '.join(LOADER_MODULES)}")
    return replace(step, needs=(LOADER_MODULES[step.loader],))


@dataclass(frozen=True)
class Form:
    """The sizes of one device form: the smoke runs, the capacity runs, bench and bench-loader."""

    device: str
    smoke: tuple[str, ...]
    big: tuple[str, ...]
    oom_env: tuple[tuple[str, str], ...]
    bench: tuple[str, ...]
    loader_bench: tuple[str, ...]


def _set(*pairs: str) -> tuple[str, ...]:
    return tuple(arg for pair in pairs for arg in ("--set", pair))


CUDA = Form(
    "cuda",
    smoke=("experiments/smoke.yaml", *_set("devices.device=cuda", "data.loader=torch", "train.max_steps=30",
                                           "train.warmup_steps=5", "train.log_every=10")),
    # the paper's card emulated: the capacity runs take the tensor loader, which the device image has
    big=("experiments/pyramidnet110_a270_single.yaml", *_set(
        "data.source=synthetic", "data.loader=torch", "data.synthetic_train_size=8192",
        "devices.memory_limit_gb=11.91", "train.max_steps=12", "train.warmup_steps=4")),
    oom_env=(),
    bench=("--depth", "110", "--alpha", "270", "--batch-size", "256", "--compile", "auto", "--compile-modes",
           "default", "max-autotune-no-cudagraphs", "--budget-s", "170"),
    loader_bench=("--images", "50000", "--epochs", "3"),
)
_CPU_SMOKE = ("experiments/smoke.yaml", *_set(
    "devices.device=cpu", "data.loader=torch", "model.depth=8", "model.alpha=4", "train.threads=1",
    "train.batch_size=16", "train.max_steps=8", "train.warmup_steps=2", "train.log_every=3"))
# shrunk: a tiny model and batch (fp16 has no fast CPU kernels); the 512 case's OOM is injected (a CPU
# has no allocator cap to hit)
CPU = Form(
    "cpu", smoke=_CPU_SMOKE, big=_CPU_SMOKE, oom_env=(("PYRAMIDREPRO_INJECT_OOM", "0:setup"),),
    bench=("--depth", "8", "--alpha", "4", "--batch-size", "16", "--steps", "3", "--repeats", "2", "--compile", "off"),
    loader_bench=("--images", "2048", "--epochs", "2"),
)
FORMS = {"cuda": CUDA, "cpu": CPU}


def probe(*args: str) -> tuple[str, ...]:
    return ("devicecheck/gpu_check_probes.py", *args)


def plan(device: str, dali_pack: str | None = None) -> list[Step]:
    """Every step for ``device`` (cuda, or cpu: the same steps shrunk), in order of value."""
    f = FORMS[device]
    steps = [Step("dali_unpack", 120, ("devicecheck/dali_pack.py", "unpack", dali_pack, "{work}/dali_site"))
             ] if dali_pack else []  # first: any step after it may use DALI
    steps += [Step("env", 60, probe("env", "{work}/env.json", device)),
              # 1. the paper's card, emulated: 256 fits, 512 does not
              run("cap_b256", 150, "completed", (*f.big, *_set("train.batch_size=256"))),
              run("cap_b512", 150, "oom", (*f.big, *_set("train.batch_size=512")), env=f.oom_env),
              # 2. no host sync in the step loop (fp32 and bf16; fp16 below)
              run("sync_fp32", 90, "completed", (*f.smoke, *_set("train.sync_debug=true"))),
              run("sync_bf16", 90, "completed", (*f.smoke, *_set("train.sync_debug=true", "train.precision=bf16"))),
              # 3. bf16 inside DataParallel's worker threads
              Step("dp_thread_bf16", 60, probe("dp-thread", device)),
              *_ddp_steps(f),
              # 5. DataParallel, the balanced DataParallel, fp16 with its GradScaler (fused SGD: no sync either)
              run("dp", 90, "completed", (*f.smoke, *_set("train.mode=dp", "train.allow_cpu_dp=true"))),
              run("dp_balanced_bf16", 90, "completed", (*f.smoke, *_set(
                  "train.mode=dp_balanced", "train.precision=bf16", "train.allow_cpu_dp=true"))),
              run("fp16_scaler", 90, "completed", (*f.smoke, *_set("train.precision=fp16", "train.sync_debug=true"))),
              _compile_run(f, background=device == "cpu")]
    return [*steps, *_speed_steps(f), *_dali_steps(f),
            Step("report", 90, ("-m", "pyramidrepro", "report", "{runs}", "--out", "{work}/report"),
                 needs=("matplotlib",))]


def _compile_run(f: Form, background: bool) -> Step:
    """6. bf16 + channels_last + torch.compile (default mode) on a small model; on a CPU its cold
    compile (~45 s on 2 cores) overlaps the other steps."""
    return run("compile_bf16", 240, "completed", (*f.smoke, *_set(
        "train.precision=bf16", "train.channels_last=true", "train.compile=true", "train.compile_mode=default")),
        background=background)


def _ddp_steps(f: Form) -> list[Step]:
    """4. DDP: NCCL (gloo on a CPU) with world size 1 under torchrun; two gloo ranks on the one device.
    The slowest-rank reduction of ``measure_bounds`` must run on the device (NCCL)."""
    backend = "nccl" if f.device == "cuda" else "gloo"
    return [run(f"ddp_{backend}_ws1", 120, "completed", (*f.smoke, *_set(
                "train.mode=ddp", f"train.backend={backend}", "train.measure_bounds=true")), launcher=TORCHRUN_1),
            run("ddp_gloo_2ranks", 120, "completed", (*f.smoke, *_set("train.mode=ddp", "train.backend=gloo")),
                extra=("--nproc", "2"))]


def _speed_steps(f: Form) -> list[Step]:
    """7. bench (both baselines, the chosen path, widths and compile trials on a GPU) and, on a GPU,
    the kernel table of PyramidNet-110 alpha=270's step."""
    steps = [Step("bench", 240 if f.device == "cuda" else 180,
                  ("-m", "pyramidrepro", "bench", "--device", f.device, *f.bench, "--json-out", "{work}/bench.json"))]
    if f.device == "cuda":
        steps.append(Step("kernel_table", 150, (
            "benchmarks/step_profile.py", "--device", "cuda", "--depth", "110", "--alpha", "270", "--batch-size",
            "256", "--precision", "bf16", "--compile", "off", "--channel-multiple", "8", "--steps", "2",
            "--repeats", "2", "--json-out", "{work}/kernel_table.json")))
    return steps


def _dali_steps(f: Form) -> list[Step]:
    """8. DALI feeding the device (with sync debug: no host sync per batch; two gloo ranks; bf16 with
    DALI's own channels_last layout), then bench-loader for each loader."""
    dali = (*f.smoke, *_set("data.loader=dali"))
    steps = [run("dali_single_sync", 150, "completed", (*dali, *_set("train.sync_debug=true"))),
             run("dali_gloo_2ranks", 150, "completed", (*dali, *_set("train.mode=ddp", "train.backend=gloo")),
                 extra=("--nproc", "2")),
             run("dali_bf16_channels_last", 150, "completed", (*dali, *_set(
                 "train.precision=bf16", "train.channels_last=true", "train.sync_debug=true")))]
    for kind, module in LOADER_MODULES.items():
        steps.append(Step(f"bench_loader_{kind}", 120, (
            "-m", "pyramidrepro", "bench-loader", "--loader", kind, "--device", f.device, *f.loader_bench,
            "--num-workers", "4"), needs=(module,)))
    return steps
