"""``pyramidrepro reproduce``: run the campaign sized for this machine, then write the report."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..spec.config import ConfigError, ExperimentConfig, load_config
from ._common import add_container_arg, add_out_arg, add_set_arg, container_override, default_nproc, hardware
from ._types import int_between, percentage

if TYPE_CHECKING:
    from ..cluster.campaign import Progress

MAX_REPEATS = 20
ONE_GPU_SWEEP = "sweep={train.mode: [single], train.batch_size: [32, 64, 128, 256, 512, 1024]}"


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``reproduce`` to ``sub``."""
    p = sub.add_parser("reproduce", help="run the campaign sized for this machine, then report",
                       description="CPU only: experiments/quick_cpu.yaml (single vs 2-rank gloo DDP, "
                                   "small PyramidNet). GPUs: experiments/fig5.yaml under a 12 GB cap.")
    add_out_arg(p, default="results/local")
    p.add_argument("--experiment", help="campaign file (default: chosen by the hardware)")
    add_set_arg(p, "config override")
    p.add_argument("--nproc", type=int, help="DDP ranks (default: GPUs present, or 2 on CPU)")
    p.add_argument("--ci-target", type=percentage, default=2.0, metavar="PERCENT",
                   help="repeat a point while its images/s 95 %% interval is wider than +-PERCENT of the mean "
                        "(default: 2)")
    p.add_argument("--max-repeats", type=int_between(1, MAX_REPEATS), default=3,
                   help="runs of one point at most (default: 3)")
    p.add_argument("--min-repeats", type=int, default=3,
                   help="runs of every point at least, a pass apart: one run's interval cannot see how much "
                        "the machine drifts between runs (default: 3)")
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


def check_min_repeats(args: argparse.Namespace) -> None:
    """ConfigError unless 1 <= ``--min-repeats`` <= ``--max-repeats``."""
    if not 1 <= args.min_repeats <= args.max_repeats:
        raise ConfigError("reproduce", "--min-repeats", f"must be between 1 and --max-repeats ({args.max_repeats}), "
                                                         f"got {args.min_repeats}")


def print_summary(results: list, failed: int, report: dict, seconds: float) -> None:
    """Runs, points, failures and time, each claim's verdict, and where the report is."""
    points = {re.sub(r"-r[0-9]+$", "", r[0]) for r in results}
    print(f"reproduce: {len(results)} runs of {len(points)} points in {seconds:.0f} s, {failed} failed")
    for c in report["claims"]:
        print(f"  {c['key']}: {c['verdict']:8s} {c['evidence']}")
    print(f"reproduce: report at {report['report']}")


def check_loader(cfg: ExperimentConfig, experiment: str) -> None:
    """ConfigError before anything runs when torch or the campaign's loader is not installed here (the
    image brings its own)."""
    from ..workload.requirements import host_problem

    if problem := host_problem(cfg.data.loader, cfg.container.image):
        raise ConfigError(experiment, *problem)


#: while a pass runs, the report is written again once this long has passed since the last one
REPORT_EVERY_S = 240.0


class ReportSchedule:
    """The campaign's report, written at the end of every pass and, within a pass, once
    :data:`REPORT_EVERY_S` have passed since the last one; each says how far the campaign had come."""

    def __init__(self, out_dir: Path, args: argparse.Namespace, every_s: float = REPORT_EVERY_S) -> None:
        self.out_dir, self.args, self.every_s = out_dir, args, every_s
        self.last = time.monotonic()
        self.passes = 0

    def __call__(self, progress: Progress) -> None:
        if progress.pass_ended:
            self.passes = progress.number
            self.write(f"pass {progress.number} of at most {self.args.max_repeats} done, the campaign goes on")
        elif time.monotonic() - self.last >= self.every_s:
            self.write(f"pass {progress.number} of at most {self.args.max_repeats} under way: "
                       f"{progress.point} of {progress.points} points done, the campaign goes on")

    def write(self, stage: str, final: bool = False) -> dict:
        from ..study.report import build_report

        report = build_report(self.out_dir, self.out_dir, command=f"pyramidrepro reproduce --out {self.args.out}",
                              stage=stage)
        self.last = time.monotonic()
        if not final:
            print(f"reproduce: report ({stage}) at {report['report']}", flush=True)
        return report

    def final(self) -> dict:
        return self.write(f"complete after {self.passes} pass(es)", final=True)


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Pick the campaign for the hardware present, run it, write the report after each pass."""
    from ..cluster.campaign import Repeats, run_campaign

    kind, n_gpus = hardware()
    experiment = args.experiment or default_experiment(n_gpus)
    cfg = load_config(experiment, campaign_overrides(args, experiment, n_gpus))
    check_min_repeats(args)
    check_loader(cfg, experiment)
    ranks = default_nproc(args, n_gpus)
    print(f"reproduce: {experiment} on {kind}" + (f" ({n_gpus} GPUs)" if n_gpus else "")
          + f", DDP with {ranks} ranks, loader {cfg.data.loader}, results in {args.out}", flush=True)
    t0 = time.monotonic()
    reports = ReportSchedule(Path(args.out) / cfg.name, args)
    repeats = Repeats(args.min_repeats, args.max_repeats, args.ci_target / 100)
    results = run_campaign(cfg, experiment, args.out, ranks, repeats, on_progress=reports)
    report = reports.final()
    failed = sum("exit" in r[1] for r in results)
    print_summary(results, failed, report, time.monotonic() - t0)
    return 1 if failed else 0
