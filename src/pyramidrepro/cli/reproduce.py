"""``pyramidrepro reproduce``: run the campaign sized for this machine, then write the report."""

from __future__ import annotations

import argparse
import time

from ..cluster.campaign_state import Repeats, campaign_held
from ..config.errors import ConfigError
from ..config.experiment import ExperimentConfig
from ..config.load import load_config
from ._campaign import ReportSchedule, add_repeat_args, print_summary, take_up
from ._common import add_container_arg, add_out_arg, add_set_arg, container_override, default_nproc, hardware

#: reproduce's repeats: every point 3 times, a pass apart (a laptop's time is cheap)
LAPTOP_REPEATS = Repeats(3, 3, 0.02)
ONE_GPU_SWEEP = "sweep={train.mode: [single], train.batch_size: [32, 64, 128, 256, 512, 1024]}"


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``reproduce`` to ``sub``."""
    p = sub.add_parser("reproduce", help="run the campaign sized for this machine, then report",
                       description="CPU only: experiments/quick_cpu.yaml (single vs 2-rank gloo DDP, "
                                   "small PyramidNet). GPUs: experiments/fig5.yaml under a 12 GB cap. One point "
                                   "at a time through submitit's local executor, in passes of repeats; the "
                                   "campaign's state is kept in OUT/<experiment>/campaign.json, so running it "
                                   "again resumes it (done runs are skipped).")
    add_out_arg(p, default="results/local")
    p.add_argument("--experiment", help="campaign file (default: chosen by the hardware)")
    add_set_arg(p, "config override")
    p.add_argument("--nproc", type=int, help="DDP ranks (default: GPUs present, or 2 on CPU)")
    add_repeat_args(p, LAPTOP_REPEATS, why="a laptop's time is cheap")
    add_container_arg(p)
    p.set_defaults(func=cmd_reproduce)


def default_experiment(n_gpus: int) -> str:
    """The campaign ``reproduce`` runs when none is given: shipped with the package (pyramidrepro.experiments)."""
    from importlib.resources import files

    return str(files("pyramidrepro.experiments") / ("fig5.yaml" if n_gpus else "quick_cpu.yaml"))


def campaign_overrides(args: argparse.Namespace, experiment: str, n_gpus: int) -> list[str]:
    """``--set`` and ``--container``, plus synthetic data when CIFAR-10 is absent and the single-GPU line
    on one GPU; says each choice on stdout."""
    from ..workload.data import DataError, check_data_available

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
        overrides.append(ONE_GPU_SWEEP)
    return overrides


def check_loader(cfg: ExperimentConfig, experiment: str) -> None:
    """ConfigError before anything runs when torch or the campaign's loader is not installed here (the
    image brings its own)."""
    from ..workload.requirements import host_problem

    if problem := host_problem(cfg.data.loader, cfg.container.image):
        raise ConfigError(experiment, *problem)


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Pick the campaign for the hardware present, run it, write the report after each pass."""
    from ..cluster.campaign import Campaign, drive
    from ..cluster.campaign_launchers import LocalLauncher

    kind, n_gpus = hardware()
    experiment = args.experiment or default_experiment(n_gpus)
    cfg = load_config(experiment, campaign_overrides(args, experiment, n_gpus))
    check_loader(cfg, experiment)
    ranks = default_nproc(args, n_gpus)
    print(f"reproduce: {experiment} on {kind}" + (f" ({n_gpus} GPUs)" if n_gpus else "")
          + f", DDP with {ranks} ranks, loader {cfg.data.loader}, results in {args.out}", flush=True)
    t0 = time.monotonic()
    campaign = Campaign.of(cfg, experiment, args.out)
    with campaign_held(campaign.folder):
        state = take_up(campaign, args, LAPTOP_REPEATS, "local", ddp_ranks=ranks)
        reports = ReportSchedule(campaign.folder, f"pyramidrepro reproduce --out {args.out}", state.repeats.maximum)
        outcome = drive(campaign, state, LocalLauncher(ranks, on_progress=reports), on_progress=reports)
        report = reports.final()
    print_summary("reproduce", outcome, report, time.monotonic() - t0)
    return 1 if outcome.failed else 0
