"""Command-line interface: ``pyramidrepro COMMAND ...`` (``--help`` on each command)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .config import ConfigError, load_config

EXIT_BAD_INPUT = 2


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_config(args.experiment, args.set)
    if args.nproc > 1 and cfg.train.mode != "ddp":
        raise ConfigError(args.experiment, "train.mode",
                          f"--nproc {args.nproc} needs train.mode: ddp (got {cfg.train.mode})")
    if cfg.train.batch_size % max(args.nproc, int(os.environ.get("WORLD_SIZE", "1"))):
        raise ConfigError(args.experiment, "train.batch_size",
                          f"{cfg.train.batch_size} does not divide by the {args.nproc} ranks")
    from .data import check_data_available
    from .train import STATUS_EXIT_CODES, Trainer, default_run_dir

    check_data_available(cfg.data)
    run_dir = None
    if args.run_dir:
        run_dir = Path(args.run_dir)
    elif args.run_id:
        run_dir = Path(args.out) / cfg.name / args.run_id
    if args.nproc > 1:
        run_dir = run_dir or default_run_dir(cfg, args.out)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
        from .parallel import launch_local

        argv = ["run", str(run_dir / "config.yaml"), "--run-dir", str(run_dir)]
        if args.no_progress:
            argv.append("--no-progress")
        return launch_local(argv, args.nproc)
    trainer = Trainer(cfg, run_dir, progress=False if args.no_progress else None, out_dir=args.out)
    status = trainer.run()
    code = STATUS_EXIT_CODES.get(status, 1)
    if trainer.backend is not None:  # a DDP rank: skip interpreter teardown (see exit_rank)
        from .parallel import exit_rank

        exit_rank(code)
    return code


def cmd_validate(args: argparse.Namespace) -> int:
    from .config import expand_sweep

    cfg = load_config(args.experiment, args.set)
    points = expand_sweep(cfg, args.experiment)
    print(cfg.to_yaml(), end="")
    if cfg.sweep:
        print(f"# sweep: {len(points)} points")
        for run_id, _ in points:
            print(f"#   {run_id}")
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    from .model import blocks_per_stage, model_info

    try:
        blocks_per_stage(args.depth, args.block)
    except ValueError as exc:
        raise ConfigError("--depth", "model.depth", str(exc)) from None
    print(json.dumps(model_info(args.depth, args.alpha, args.block, args.widening), indent=2))
    return 0


def cmd_bench_loader(args: argparse.Namespace) -> int:
    from .benchmarks import bench_loader

    print(json.dumps(bench_loader(args.loader, args.device, args.batch_size, args.images,
                                  args.epochs, args.num_workers), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyramidrepro",
        description=(
            "Reproduce the PyramidNet / CIFAR-10 throughput study (single GPU, DataParallel, "
            "DistributedDataParallel): run experiments, dispatch them to Slurm, report."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    p.add_argument("--nproc", type=int, default=1,
                   help="spawn N DDP ranks on this machine (train.mode must be ddp)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="validate an experiment and print the resolved config")
    add_config_args(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("model-info", help="parameters and forward MACs of a PyramidNet variant")
    p.add_argument("--depth", type=int, default=110)
    p.add_argument("--alpha", type=float, default=48)
    p.add_argument("--block", choices=["basic", "bottleneck"], default="basic")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"pyramidrepro: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # data and setup problems the user can fix
        from .data import DataError

        if isinstance(exc, (DataError, FileNotFoundError)):
            print(f"pyramidrepro: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

