"""``pyramidrepro run``: one experiment on this machine (one process, or ``--nproc`` DDP ranks)."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..autotune.trial_cache import RETUNE_ENV
from ..config.errors import ConfigError
from ..config.load import load_config
from ..config.schema import EXIT_CODES, Attr
from ._common import add_config_args, add_container_arg, add_out_arg, check_runnable, container_override
from ._types import int_between

if TYPE_CHECKING:
    from ..config.experiment import ExperimentConfig

MAX_LOCAL_RANKS = 256


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``run`` to ``sub``."""
    p = sub.add_parser("run", help="run one experiment here (one process, or --nproc ranks)",
                       description="Run one experiment on this machine and write "
                                   "OUT/<experiment>/<run id>/metrics.h5 and config.yaml.")
    add_config_args(p)
    add_out_arg(p)
    p.add_argument("--run-id", help="name of the run folder (default: time stamp + config hash)")
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--boundary-search", help=argparse.SUPPRESS)  # set by `boundary` on its probes
    p.add_argument("--nproc", type=int_between(1, MAX_LOCAL_RANKS), default=1,
                   help="spawn N DDP ranks on this machine (train.mode must be ddp)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--retune", action="store_true",
                   help="measure the auto values of train.precision / channels_last / compile again, ignoring and "
                        f"replacing their cached trials (or {RETUNE_ENV}=1 in a run's environment)")
    add_container_arg(p)
    p.set_defaults(func=cmd_run)


def check_request(args: argparse.Namespace, cfg: ExperimentConfig, in_image: bool = False) -> None:
    """ConfigError, before anything is created, for what ``run`` cannot do with ``cfg``; ``in_image``:
    the run goes into an image, whose own ``run`` checks the devices and packages with its torch."""
    from ..workload.data import per_rank_batch

    if cfg.sweep:
        raise ConfigError(args.experiment, "sweep", "`run` runs one experiment and this file sweeps several: "
                          f"`pyramidrepro reproduce --experiment {args.experiment}` runs them here, "
                          "`pyramidrepro submit` on a cluster")
    if args.nproc > 1 and cfg.train.mode != "ddp":
        raise ConfigError(args.experiment, "train.mode",
                          f"--nproc {args.nproc} needs train.mode: ddp (got {cfg.train.mode})")
    try:
        per_rank_batch(cfg.train.batch_size, max(args.nproc, int(os.environ.get("WORLD_SIZE", "1"))))
    except ValueError as exc:
        raise ConfigError(args.experiment, "train.batch_size", str(exc)) from None
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError("run", "--out", f"{args.out} is a file; give a folder for the results")
    if not in_image:
        check_runnable(cfg, args.experiment)


def run_dir_of(args: argparse.Namespace, cfg: ExperimentConfig) -> Path | None:
    """The run folder ``--run-dir`` or ``--run-id`` names; None: the trainer names a fresh one."""
    from ..records import runs

    if args.run_id is None:
        return Path(args.run_dir) if args.run_dir else None
    try:
        return runs.run_dir_for(args.out, cfg.name, runs.check_run_id(args.run_id))
    except ValueError as exc:
        raise ConfigError("run", "--run-id", str(exc).removeprefix("--run-id: ")) from None


def cmd_run(args: argparse.Namespace) -> int:
    """Check the request, then run it: in its image, as ``--nproc`` local ranks, or in this process."""
    from ..machine.container import resolve, run_in_image
    from ..workload.data import check_data_available

    cfg = load_config(args.experiment, [*args.set, *container_override(args)])
    box = resolve(cfg, args.experiment)
    check_request(args, cfg, in_image=box is not None)
    check_data_available(cfg.data)
    if box:  # the same command, in the image (where container.image is the image it is in)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        paths = [args.out, cfg.data.root, Path(args.experiment).parent]
        paths += [Path(args.run_dir).parent] if args.run_dir else []
        return run_in_image(box, paths, ["-m", "pyramidrepro", *args.argv])
    run_dir = run_dir_of(args, cfg)
    with retune_if(args.retune):
        if args.nproc > 1:
            return launch_ranks(args, cfg, run_dir)
        return train_here(args, cfg, run_dir)


@contextlib.contextmanager
def retune_if(retune: bool) -> Iterator[None]:
    """``--retune``: ``$PYRAMIDREPRO_RETUNE`` set while the run (and any rank it starts) chooses its path."""
    before = os.environ.get(RETUNE_ENV)
    if retune:
        os.environ[RETUNE_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(RETUNE_ENV, None)
        else:
            os.environ[RETUNE_ENV] = before


def launch_ranks(args: argparse.Namespace, cfg: ExperimentConfig, run_dir: Path | None) -> int:
    """``--nproc`` DDP ranks of this run on this machine."""
    from ..machine.parallel import launch_local
    from ..records import runs

    run_dir = run_dir or runs.run_dir_for(args.out, cfg.name, runs.new_run_id(cfg))
    rank_args = ["--boundary-search", args.boundary_search] if args.boundary_search is not None else []
    return launch_local(cfg, run_dir, args.nproc, progress=not args.no_progress, rank_args=rank_args)


def train_here(args: argparse.Namespace, cfg: ExperimentConfig, run_dir: Path | None) -> int:
    """The run in this process (one DDP rank when a launcher started it); its exit code."""
    from ..training.train import Trainer

    probe_of = {Attr.BOUNDARY_SEARCH: args.boundary_search} if args.boundary_search is not None else {}
    trainer = Trainer(cfg, run_dir, extra_attrs=probe_of, progress=False if args.no_progress else None,
                      out_dir=args.out, handle_signals=True)
    code = EXIT_CODES.get(trainer.run(), 1)
    if trainer.distributed:  # a DDP rank: skip interpreter teardown (see exit_rank)
        from ..machine.parallel import exit_rank

        exit_rank(code)
    return code
