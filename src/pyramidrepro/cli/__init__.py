"""Command-line interface: ``pyramidrepro COMMAND ...`` (``--help`` on each command)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from ..spec.config import COMPILE_MODES, ConfigError, load_config
from ..spec.schema import EXIT_BAD_INPUT, EXIT_CODES, Attr, Status

MAX_LOCAL_RANKS = 256


def check_runnable(cfg, source: str) -> None:  # noqa: ANN001
    """ConfigError, before anything is created, when this machine cannot run ``cfg``."""
    from ..machine.devices import machine_problem

    problem = machine_problem(cfg)
    if problem:
        raise ConfigError(source, *problem)


def container_override(args: argparse.Namespace) -> list[str]:
    """``--container PATH`` as the override it stands for."""
    return [f"container.image={args.container}"] if getattr(args, "container", None) else []


def version_text() -> str:
    """The package's version and commit, and, inside an image, what the image was built from."""
    from .. import __version__
    from ..machine.container import image_info
    from ..machine.provenance import git_commit

    text = f"pyramidrepro {__version__} (commit {git_commit()}, Python {sys.executable})"
    info = image_info()
    if info:
        text += (f"\nimage: commit {info.get('commit', '?')}, recipe {info.get('recipe', '?')}, "
                 f"built {info.get('built', '?')}")
    return text


class VersionAction(argparse.Action):
    """``--version``, worked out only when asked for (it runs git)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version, commit and image, then exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        print(version_text())
        parser.exit()


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_config(args.experiment, [*args.set, *container_override(args)])
    if not 1 <= args.nproc <= MAX_LOCAL_RANKS:
        raise ConfigError("run", "--nproc", f"must be between 1 and {MAX_LOCAL_RANKS}, got {args.nproc}")
    if cfg.sweep:
        raise ConfigError(args.experiment, "sweep", "`run` runs one experiment and this file sweeps several: "
                          f"`pyramidrepro reproduce --experiment {args.experiment}` runs them here, "
                          "`pyramidrepro submit` on a cluster")
    if args.nproc > 1 and cfg.train.mode != "ddp":
        raise ConfigError(args.experiment, "train.mode",
                          f"--nproc {args.nproc} needs train.mode: ddp (got {cfg.train.mode})")
    from ..workload.data import check_data_available, per_rank_batch

    try:
        per_rank_batch(cfg.train.batch_size, max(args.nproc, int(os.environ.get("WORLD_SIZE", "1"))))
    except ValueError as exc:
        raise ConfigError(args.experiment, "train.batch_size", str(exc)) from None
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError("run", "--out", f"{args.out} is a file; give a folder for the results")
    check_runnable(cfg, args.experiment)
    from ..machine.container import resolve, run_in_image
    from ..records import runs

    check_data_available(cfg.data)
    box = resolve(cfg, args.experiment)
    if box:  # the same command, in the image (where container.image is the image it is in)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        paths = [args.out, cfg.data.root, Path(args.experiment).parent]
        paths += [Path(args.run_dir).parent] if args.run_dir else []
        return run_in_image(box, paths, ["-m", "pyramidrepro", *args.argv])
    from ..training.train import Trainer

    run_dir = Path(args.run_dir) if args.run_dir else None
    if args.run_id is not None:
        try:
            run_dir = runs.run_dir_for(args.out, cfg.name, runs.check_run_id(args.run_id))
        except ValueError as exc:
            raise ConfigError("run", "--run-id", str(exc).removeprefix("--run-id: ")) from None
    probe_of = {Attr.BOUNDARY_SEARCH: args.boundary_search} if args.boundary_search is not None else {}
    if args.nproc > 1:
        from ..machine.parallel import launch_local

        run_dir = run_dir or runs.run_dir_for(args.out, cfg.name, runs.new_run_id(cfg))
        rank_args = ["--boundary-search", args.boundary_search] if probe_of else []
        return launch_local(cfg, run_dir, args.nproc, progress=not args.no_progress, rank_args=rank_args)
    trainer = Trainer(cfg, run_dir, extra_attrs=probe_of, progress=False if args.no_progress else None,
                      out_dir=args.out, handle_signals=True)
    code = EXIT_CODES.get(trainer.run(), 1)
    if trainer.distributed:  # a DDP rank: skip interpreter teardown (see exit_rank)
        from ..machine.parallel import exit_rank

        exit_rank(code)
    return code


def cmd_validate(args: argparse.Namespace) -> int:
    from ..spec.config import expand_sweep

    cfg = load_config(args.experiment, args.set)
    points = expand_sweep(cfg, args.experiment)
    print(cfg.to_yaml(), end="")
    if cfg.sweep:
        print(f"# sweep: {len(points)} points")
        for run_id, _ in points:
            print(f"#   {run_id}")
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    from ..spec.architecture import check_size
    from ..workload.model import model_info

    try:
        check_size(args.depth, args.alpha, args.block, args.widening)
    except ValueError as exc:
        raise ConfigError("--depth", "model.depth", str(exc)) from None
    print(json.dumps(model_info(args.depth, args.alpha, args.block, args.widening), indent=2))
    return 0


def cmd_bench_loader(args: argparse.Namespace) -> int:
    from ..study.benchmarks import bench_loader

    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--images", args.images, args.batch_size),
                             ("--epochs", args.epochs, 1), ("--num-workers", args.num_workers, 0)):
        if value < low:
            raise ConfigError("bench-loader", flag, f"must be >= {low}, got {value}")
    print(json.dumps(bench_loader(args.loader, args.device, args.batch_size, args.images,
                                  args.epochs, args.num_workers), indent=2))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..study.report import build_report

    result = build_report(args.results, args.out, command=" ".join(["pyramidrepro", *sys.argv[1:]]))
    for c in result["claims"]:
        print(f"{c['key']}: {c['verdict']:8s} {c['evidence']}")
    print(f"report: {result['report']} ({result['runs']} runs)")
    return 0


def _scaling_base(args: argparse.Namespace) -> tuple[str, float, int, int, float, bool]:
    """(model, one-device step s, batch per device, gradient bytes, step jitter s, gpu) for ``scaling``."""
    from ..stats.scaling import grad_bytes_of
    from ..workload.model import PyramidNet

    if args.run:
        from ..records.runs import load_run

        path = Path(args.run)
        path = path / "metrics.h5" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such metrics file")
        try:
            r = load_run(path)
        except OSError:
            raise ConfigError(str(path), "", "not a readable metrics file") from None
        if r.status != Status.COMPLETED or not r.images_per_s:
            raise ConfigError(str(path), "status", f"needs a completed run with images_per_s (got {r.status})")
        if r.world_size != 1:
            raise ConfigError(str(path), "world_size", f"needs a one-device run, got {r.world_size} devices")
        depth, alpha, block = r.depth, r.alpha, r.block
        batch, step_s, jitter, gpu = r.batch_size, r.batch_size / r.images_per_s, r.step_time_std_s or 0.0, r.gpu
        grad = r.grad_bytes or 0
    else:
        if not args.step_time_ms or not args.batch_per_device:
            raise ConfigError("scaling", "--step-time-ms/--batch-per-device",
                              "give both (a measured one-device step), or --run METRICS_FILE")
        depth, alpha, block = args.depth, args.alpha, args.block
        batch, step_s, jitter, gpu, grad = args.batch_per_device, args.step_time_ms / 1e3, 0.0, True, 0
    if not grad:
        grad = grad_bytes_of(PyramidNet(depth, alpha, block))
    if args.jitter_ms is not None:
        jitter = args.jitter_ms / 1e3
    return f"PyramidNet-{depth} alpha={alpha:g} {block}", step_s, batch, grad, jitter, gpu


def cmd_scaling(args: argparse.Namespace) -> int:
    from ..stats.scaling import ddp_buckets, default_overlap, parse_link, predict

    try:
        intra = parse_link(args.intra)
        inters = [parse_link(x) for x in args.inter]
    except ValueError as exc:
        raise ConfigError("scaling", "--intra/--inter", str(exc)) from None
    if any(n < 1 for n in args.devices) or args.per_node < 1:
        raise ConfigError("scaling", "--devices/--per-node", "must be >= 1")
    model, step_s, batch, grad, jitter, gpu = _scaling_base(args)
    overlap = args.overlap if args.overlap is not None else default_overlap(gpu)
    table = {}
    for inter in inters:
        table[inter.name] = [predict(step_s, batch, grad, n, intra=intra, inter=inter, devices_per_node=args.per_node,
                                     bucket_cap_mb=args.bucket_cap_mb, overlap=overlap, step_jitter_s=jitter).__dict__
                             for n in args.devices]
    if args.json:
        print(json.dumps({"model": model, "step_s": step_s, "batch_per_device": batch, "grad_bytes": grad,
                          "step_jitter_s": jitter, "overlap": overlap, "intra": intra.__dict__,
                          "devices_per_node": args.per_node, "predictions": table}, indent=2))
        return 0
    print(f"{model}: {batch} images per device, one device {1e3 * step_s:.1f} ms/step ({batch / step_s:,.0f} img/s),"
          f" gradients {grad / 1e6:.1f} MB in {len(ddp_buckets(grad, args.bucket_cap_mb))} buckets,"
          f" overlap {overlap:g}, jitter {1e3 * jitter:.1f} ms")
    print(f"within a node: {intra.name}, {args.per_node} devices per node")
    print(f"{'devices':>7s} {'nodes':>5s} " + " ".join(f"{name[:24]:>24s}" for name in table))
    for i, n in enumerate(args.devices):
        cells = [f"{t[i]['images_per_s']:>14,.0f} img/s {100 * t[i]['efficiency']:3.0f}%" for t in table.values()]
        print(f"{n:7d} {next(iter(table.values()))[i]['nodes']:5d} " + " ".join(f"{c:>24s}" for c in cells))
    return 0


def _hardware() -> tuple[str, int]:
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ("cuda" if n else "cpu"), n


def default_experiment(n_gpus: int) -> str:
    """The campaign ``reproduce`` runs when none is given: shipped with the package (pyramidrepro.experiments)."""
    from importlib.resources import files

    return str(files("pyramidrepro.experiments") / ("fig5.yaml" if n_gpus else "quick_cpu.yaml"))


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Pick the campaign for the hardware present, run it, write the report."""
    from ..cluster.campaign import run_campaign
    from ..study.report import build_report
    from ..workload.data import DataError, check_data_available

    kind, n_gpus = _hardware()
    experiment = args.experiment or default_experiment(n_gpus)
    overrides = [*args.set, *container_override(args)]
    cfg = load_config(experiment, overrides)
    if cfg.data.source == "cifar10":
        try:
            check_data_available(cfg.data)
            print(f"reproduce: CIFAR-10 found under {cfg.data.root}")
        except DataError:
            print(f"reproduce: CIFAR-10 not found under {cfg.data.root}: using synthetic data "
                  "(throughput does not depend on the pixels; the report says so)")
            overrides.append("data.source=synthetic")
    if n_gpus and n_gpus < 2:
        print("reproduce: one GPU: DP and DDP lines need 2 GPUs; running the single-GPU line")
        overrides.append("sweep={train.mode: [single], train.batch_size: [32, 64, 128, 256, 512, 1024]}")
    cfg = load_config(experiment, overrides)
    ranks = args.nproc or (n_gpus if n_gpus else 2)
    print(f"reproduce: {experiment} on {kind}" + (f" ({n_gpus} GPUs)" if n_gpus else "")
          + f", DDP with {ranks} ranks, results in {args.out}", flush=True)
    t0 = time.monotonic()
    if not 0 < args.ci_target <= 100:
        raise ConfigError("reproduce", "--ci-target", f"must be a percentage in (0, 100], got {args.ci_target:g}")
    if not 1 <= args.max_repeats <= 20:
        raise ConfigError("reproduce", "--max-repeats", f"must be between 1 and 20, got {args.max_repeats}")
    if not 1 <= args.min_repeats <= args.max_repeats:
        raise ConfigError("reproduce", "--min-repeats", f"must be between 1 and --max-repeats ({args.max_repeats}), "
                                                         f"got {args.min_repeats}")
    results = run_campaign(cfg, experiment, args.out, ranks, ci_target=args.ci_target / 100,
                           max_repeats=args.max_repeats, min_repeats=args.min_repeats)
    out_dir = Path(args.out) / cfg.name
    report = build_report(out_dir, out_dir, command=f"pyramidrepro reproduce --out {args.out}")
    failed = [r for r in results if "exit" in r[1]]
    print(f"reproduce: {len(results)} runs of {len({re.sub(r'-r[0-9]+$', '', r[0]) for r in results})} points in "
          f"{time.monotonic() - t0:.0f} s, {len(failed)} failed")
    for c in report["claims"]:
        print(f"  {c['key']}: {c['verdict']:8s} {c['evidence']}")
    print(f"reproduce: report at {report['report']}")
    return 1 if failed else 0


def cmd_boundary(args: argparse.Namespace) -> int:
    """The largest batch under the memory cap, per line of the experiment, by doubling and bisection."""
    from ..cluster.boundary import ProbeError, find_boundaries
    from ..records.storage import write_atomically

    cfg = load_config(args.experiment, args.set)
    kind, n_gpus = _hardware()
    if cfg.devices.memory_limit_gb is None and (kind == "cpu" or cfg.devices.device == "cpu"):
        raise ConfigError(args.experiment, "devices.memory_limit_gb",
                          "a search on a CPU needs a cap, or it would fill the machine's memory "
                          "(e.g. --set devices.memory_limit_gb=2)")
    for name in ("resolution", "start", "max_batch"):
        if getattr(args, name) < 1:
            raise ConfigError("boundary", f"--{name.replace('_', '-')}", f"must be >= 1, got {getattr(args, name)}")
    check_runnable(cfg, args.experiment)
    nproc = args.nproc or (n_gpus if n_gpus else 2)
    try:
        found = find_boundaries(args.experiment, args.set, args.out, nproc, args.resolution, args.start,
                                args.max_batch)
    except ValueError as exc:
        raise ConfigError(args.experiment, "train.batch_size", str(exc)) from None
    except ProbeError as exc:
        print(f"pyramidrepro: boundary: {exc}", file=sys.stderr)
        return 1
    if args.json_out:
        write_atomically(Path(args.json_out), (json.dumps([b.to_dict() for b in found], indent=2) + "\n").encode())
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from ..cluster import dispatch

    overrides = [*args.set, *container_override(args)]
    if args.cluster:
        overrides.append(f"cluster.executor={args.cluster}")
    cfg = load_config(args.experiment, overrides)
    jobs = dispatch.submit(cfg, args.experiment, args.out, dry_run=args.dry_run, check_nodes=not args.no_preflight)
    if args.dry_run or not args.wait:
        return 0
    bad = dispatch.wait(jobs, poll_s=args.poll, on_never=args.never_starts)
    print(f"submit: {len(jobs) - bad}/{len(jobs)} job(s) completed")
    return 1 if bad else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ..study.benchmarks import bench_training

    if (args.steps is not None and args.steps < 1) or args.repeats < 1 or args.batch_size < 1:
        raise ConfigError("bench", "--steps/--repeats/--batch-size", "must be >= 1")
    if args.budget_s <= 0:
        raise ConfigError("bench", "--budget-s", f"must be > 0, got {args.budget_s:g}")
    t0 = time.monotonic()
    r = bench_training(args.device, args.depth, args.alpha, args.block, args.batch_size, args.steps,
                       args.repeats, peak_tflops=args.peak_tflops, compile=args.compile,
                       compile_modes=args.compile_modes, ablate=args.ablate,
                       channels_last={"auto": None, "on": True, "off": False}[args.channels_last],
                       budget_s=args.budget_s,
                       progress=lambda msg: print(f"bench [{time.monotonic() - t0:5.0f} s] {msg}",
                                                  file=sys.stderr, flush=True))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(r, indent=2) + "\n")
    print(json.dumps(r, indent=2))
    print(format_bench(r))
    return 0


def format_bench(r: dict) -> str:
    """The human-readable table under ``bench``'s JSON."""
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (give --peak-tflops)"
    cap = r["capability"]
    rows = [f"{r['model']}, batch {r['batch_size']}, {r['device']} ({r['machine'].get('gpu', r['machine']['cpu'])})",
            "capability: " + ", ".join(f"{k} {v}" for k, v in cap.items() if k != "device"),
            "pieces, each tried on top of the path chosen so far:"]
    rows += [f"  {c['name']:22s} {'kept' if c['kept'] else 'left out':9s} {c['reason']}" for c in r["choices"]]
    rows += [f"{'path':34s} {'images/s':>10s} {'vs baseline':>12s}",
            f"{'baseline (seed-style)':34s} {r['baseline_images_per_s']:10,.1f} {1.0:11.2f}x",
            f"{'optimized':34s} {r['optimized_images_per_s']:10,.1f} {r['ratio']:11.2f}x"]
    for name, a in r["ablation"].items():
        if "skipped" in a:
            rows.append(f"{'  baseline + ' + name:34s} not measured ({a['skipped']})")
        else:
            rows.append(f"{'  baseline + ' + name:34s} {a['images_per_s']:10,.1f} {a['ratio']:11.2f}x")
    c = r["compile"]
    for mode, t in c.get("trials", {}).items():
        rows.append(f"compile mode {mode}: {t['images_per_s']:,.1f} images/s, {t['compile_s']:.1f} s to compile")
    if c.get("mode"):
        rows.append(f"compile: {c['mode']} chosen ({c['compile_s']:.1f} s to compile, not in images/s)")
    rows.append(f"{r['steps_per_repeat']} steps per measurement, {r['repeats']} alternated repeats, "
                f"{r['elapsed_s']:.0f} s of a {r['budget_s']:.0f} s budget")
    st = r["stage_seconds_per_step"]
    rows.append("ms per step      " + " ".join(f"{k:>9s}" for k in st["baseline"]))
    for path in ("baseline", "optimized"):
        rows.append(f"{path:16s} " + " ".join(f"{1e3 * v:9.2f}" for v in st[path].values()))
    m = r["metrics_overhead"]
    rows.append(f"HDF5 logging: {100 * m['overhead']:.2f}% of step time in the writer "
                f"({m['flushes']} flushes); with vs without: {100 * m['ab_overhead']:+.2f}%")
    rows.append(f"ratio {r['ratio']:.2f}x   MFU {mfu}")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    from ..stats.scaling import LINKS

    parser = argparse.ArgumentParser(
        prog="pyramidrepro",
        description=(
            "Reproduce the PyramidNet / CIFAR-10 throughput study (single GPU, DataParallel, "
            "DistributedDataParallel): run experiments, dispatch them to Slurm, report."
        ),
    )
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_container_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--container", metavar="IMAGE",
                       help="run inside this image (sets container.image): an Apptainer .sif, or a folder "
                            "built by `make image`, run with Apptainer when installed, else bwrap")

    def add_model_args(p: argparse.ArgumentParser, depth: int, alpha: float, what: str = "the PyramidNet") -> None:
        p.add_argument("--depth", type=int, default=depth, help=f"depth of {what} (default {depth})")
        p.add_argument("--alpha", type=float, default=alpha, help=f"widening factor alpha (default {alpha:g})")
        p.add_argument("--block", choices=["basic", "bottleneck"], default="basic")

    def add_config_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("experiment", help="experiment YAML file (see experiments/)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.batch_size=256 "
                            "(VALUE is YAML: lists and mappings work); repeatable")

    p = sub.add_parser("run", help="run one experiment here (one process, or --nproc ranks)",
                       description="Run one experiment on this machine and write "
                                   "OUT/<experiment>/<run id>/metrics.h5 and config.yaml.")
    add_config_args(p)
    p.add_argument("--out", default="results/runs", help="results folder (default: results/runs)")
    p.add_argument("--run-id", help="name of the run folder (default: time stamp + config hash)")
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--boundary-search", help=argparse.SUPPRESS)  # set by `boundary` on its probes
    p.add_argument("--nproc", type=int, default=1,
                   help="spawn N DDP ranks on this machine (train.mode must be ddp)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_container_arg(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="validate an experiment and print the resolved config")
    add_config_args(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("model-info", help="parameters and forward MACs of a PyramidNet variant")
    add_model_args(p, depth=110, alpha=48)
    p.add_argument("--widening", choices=["additive", "multiplicative"], default="additive")
    p.set_defaults(func=cmd_model_info)

    p = sub.add_parser("bench-loader", help="images/s of a data loader (median of epochs), JSON")
    p.add_argument("--loader", choices=["torch", "torchvision", "dali"], default="torch")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--images", type=int, default=10240, help="synthetic images per epoch")
    p.add_argument("--epochs", type=int, default=5, help="epochs timed (after one warm-up)")
    p.add_argument("--num-workers", type=int, default=2, help="workers (torchvision loader)")
    p.set_defaults(func=cmd_bench_loader)
    p = sub.add_parser("bench", help="seed-style baseline vs optimized training path, side by side",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train the same model, batch and device two ways: the seed-style baseline "
                                   "(fp32, NCHW, eager, torchvision DataLoader, loss.item() every step, plain SGD) "
                                   "and the path chosen for this machine: from the baseline, each piece (tensor "
                                   "loader, foreach/fused SGD, no host sync, bf16 where the device has bf16 units, "
                                   "channels_last, torch.compile modes) is tried on top of the path so far and kept "
                                   "only if its trial wins; pieces the capability rules out are not tried. Then the "
                                   "two alternate for the headline. Prints the capability, every piece's verdict, "
                                   "JSON and a table: images/s, the ratio, MFU, per-stage times, the HDF5 logging "
                                   "cost and, with --ablate, each piece alone. Finishes within --budget-s.",
                       epilog="MFU = 3 x forward MACs x 2 FLOP x images/s / peak (dense bf16 peak of known "
                              "GPUs; --peak-tflops otherwise).\nExample: pyramidrepro bench --device cuda "
                              "--depth 110 --alpha 270 --batch-size 256")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    add_model_args(p, depth=32, alpha=48)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per measurement (default: sized to fit --budget-s, 3 to 12)")
    p.add_argument("--budget-s", type=float, default=180.0,
                   help="time budget in seconds (default 180): compile trials it cannot hold are skipped "
                        "with the reason, and the default steps are sized to it")
    p.add_argument("--repeats", type=int, default=3,
                   help="alternated repeats of the headline, at least (more while the budget has room); medians "
                        "are reported (default 3)")
    p.add_argument("--peak-tflops", type=float, help="device peak for MFU (known GPUs are looked up)")
    p.add_argument("--compile", default="auto",
                   choices=["off", "auto", *COMPILE_MODES],
                   help="torch.compile for the optimized path: off, a mode, or auto = measure each of "
                        "--compile-modes and keep the fastest (default: auto)")
    p.add_argument("--compile-modes", nargs="+", metavar="MODE",
                   help="candidates for --compile auto (default: default max-autotune-no-cudagraphs, "
                        "plus reduce-overhead on CUDA)")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                   help="memory format of the optimized path (auto: channels_last on GPUs, NCHW on CPUs)")
    p.add_argument("--ablate", action="store_true", help="also measure each optimization alone vs the baseline")
    p.add_argument("--json-out", metavar="FILE", help="also write the JSON result to FILE")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("scaling", help="predict DDP throughput on N devices / nodes from one device's step",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Ring all-reduce model: t_N = t_1 + exposed(sum over DDP buckets of 2(N-1)/N x "
                                   "bytes / bandwidth + 2(N-1) x latency) + jitter x E[max of N normals]; "
                                   "images/s = N x batch / t_N. The one-device step comes from a run "
                                   "(--run) or is given (--step-time-ms, --batch-per-device).",
                       epilog="Links: " + ", ".join(f"{k} ({v.name})" for k, v in LINKS.items())
                              + "; or NAME=GBps[:latency_us].\nExample: pyramidrepro scaling --run "
                                "results/runs/fig5/p000-.../metrics.h5 --inter 100g 400g")
    p.add_argument("--run", metavar="METRICS", help="a completed one-device run (metrics.h5 or its folder)")
    p.add_argument("--step-time-ms", type=float, help="one device's step time (instead of --run)")
    p.add_argument("--batch-per-device", type=int, help="the batch that step time is for")
    add_model_args(p, depth=110, alpha=270, what="the model whose gradient bytes count (without --run)")
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--per-node", type=int, default=8, help="devices per node (default 8)")
    p.add_argument("--intra", default="nvlink4", help="link within a node (default nvlink4)")
    p.add_argument("--inter", nargs="+", default=["100g", "200g", "400g"], help="links between nodes")
    p.add_argument("--bucket-cap-mb", type=float, default=25.0)
    p.add_argument("--overlap", type=float, help="share of backward that hides communication "
                                                  "(default: 1 for GPU runs, 0 for CPU runs)")
    p.add_argument("--jitter-ms", type=float, help="step-time standard deviation (default: from --run, else 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=cmd_scaling)

    p = sub.add_parser("submit", help="submit an experiment (and its sweep) through submitit",
                       description="Expand the sweep and submit every point through submitit: one Slurm "
                                   "job array per task layout (cluster.executor: slurm), local processes "
                                   "(local) or in this process (debug). Results: OUT/<experiment>/<run id>/.")
    add_config_args(p)
    p.add_argument("--out", default="results/runs", help="results folder (default: results/runs)")
    p.add_argument("--cluster", choices=["slurm", "local", "debug"], help="override cluster.executor")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script(s) and points; submit nothing")
    p.add_argument("--wait", action="store_true", help="follow the jobs; exit non-zero if any failed")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between state checks with --wait")
    p.add_argument("--never-starts", choices=["cancel", "keep"], default="cancel",
                   help="with --wait, a Slurm job pending for a reason that never clears (PartitionConfig, "
                        "a per-job limit, its nodes down, more than any node has) ends the wait with the "
                        "reason: cancel it (default) or keep it queued")
    p.add_argument("--no-preflight", action="store_true",
                   help="submit even what sinfo says no node can hold (by default that is refused, exit 2)")
    add_container_arg(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("boundary", help="the largest batch that fits under the memory cap, by search",
                       description="Per line of EXPERIMENT (each mode and remedy of its sweep, the batch "
                                   "left out): double the batch until a probe runs out of memory, then "
                                   "bisect to --resolution.  Each probe is a short run in its own process "
                                   "(3 steps) under OUT/<experiment>/boundary-b<batch>-<line>; the "
                                   "report reads them for its largest-batch figure and claim C1.  On a "
                                   "CPU, devices.memory_limit_gb caps the process's memory (RLIMIT_DATA).")
    add_config_args(p)
    p.add_argument("--out", default="results/runs", help="results folder (default: results/runs)")
    p.add_argument("--start", type=int, default=16, help="first batch tried (default: 16)")
    p.add_argument("--max-batch", type=int, default=8192,
                   help="largest batch tried (default: 8192, or the training set's size)")
    p.add_argument("--resolution", type=int, default=1,
                   help="stop when the fitting and failing batches are this close (default: 1; "
                        "DDP lines round up to a multiple of their ranks)")
    p.add_argument("--nproc", type=int, help="DDP ranks of a ddp line (default: GPUs present, or 2 on CPU)")
    p.add_argument("--json-out", help="also write the boundaries and every probe as JSON here")
    p.set_defaults(func=cmd_boundary)

    p = sub.add_parser("report", help="figure 5, claims and tables from a folder of runs",
                       description="Read every metrics.h5 below RESULTS and write report.md plus "
                                   "fig5_throughput.png/.svg (and accuracy plots if any).")
    p.add_argument("results", help="folder holding runs (searched recursively)")
    p.add_argument("--out", help="where to write the report (default: RESULTS)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("reproduce", help="run the campaign sized for this machine, then report",
                       description="CPU only: experiments/quick_cpu.yaml (single vs 2-rank gloo DDP, "
                                   "small PyramidNet). GPUs: experiments/fig5.yaml under a 12 GB cap.")
    p.add_argument("--out", default="results/local", help="results folder (default: results/local)")
    p.add_argument("--experiment", help="campaign file (default: chosen by the hardware)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--nproc", type=int, help="DDP ranks (default: GPUs present, or 2 on CPU)")
    p.add_argument("--ci-target", type=float, default=2.0, metavar="PERCENT",
                   help="repeat a point while its images/s 95 %% interval is wider than +-PERCENT of the mean "
                        "(default: 2)")
    p.add_argument("--max-repeats", type=int, default=3, help="runs of one point at most (default: 3)")
    p.add_argument("--min-repeats", type=int, default=3,
                   help="runs of every point at least, a pass apart: one run's interval cannot see how much "
                        "the machine drifts between runs (default: 3)")
    add_container_arg(p)
    p.set_defaults(func=cmd_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The CLI; a problem the user can fix is one line on stderr (bad input: exit 2), never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"pyramidrepro: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM in a run (its status says interrupted)
        from ..training.train import RunInterrupted

        term = isinstance(exc, RunInterrupted)
        print(f"pyramidrepro: interrupted ({'SIGTERM' if term else 'Ctrl-C'})", file=sys.stderr, flush=True)
        return 143 if term else 130
    except Exception as exc:  # data, run-folder and disk problems
        import errno

        from ..records.runs import RunFolderError
        from ..workload.data import DataError

        if isinstance(exc, (DataError, FileNotFoundError, RunFolderError)):
            print(f"pyramidrepro: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            print(f"pyramidrepro: error: {exc.strerror or exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

