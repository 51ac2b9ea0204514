"""What several commands share: their common arguments, the container override, the machine check."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..config.errors import ConfigError

if TYPE_CHECKING:
    from ..config.experiment import ExperimentConfig

DEFAULT_OUT = "results/runs"
SET_HELP = ("override a config value, e.g. --set train.batch_size=256 "
            "(VALUE is YAML: lists and mappings work); repeatable")
CONTAINER_HELP = ("run inside this image (sets container.image): an Apptainer .sif, or a folder "
                  "built by `make image`, run with Apptainer when installed, else bwrap")


def add_set_arg(p: argparse.ArgumentParser, text: str = SET_HELP) -> None:
    """``--set KEY=VALUE``, repeatable; ``text`` is its help."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=text)


def add_config_args(p: argparse.ArgumentParser) -> None:
    """The experiment file and its ``--set`` overrides."""
    p.add_argument("experiment", help="experiment YAML file (see experiments/)")
    add_set_arg(p)


def add_out_arg(p: argparse.ArgumentParser, default: str = DEFAULT_OUT) -> None:
    """``--out``: the results folder."""
    p.add_argument("--out", default=default, help=f"results folder (default: {default})")


def add_container_arg(p: argparse.ArgumentParser) -> None:
    """``--container IMAGE``."""
    p.add_argument("--container", metavar="IMAGE", help=CONTAINER_HELP)


def add_model_args(p: argparse.ArgumentParser, depth: int, alpha: float, what: str = "the PyramidNet") -> None:
    """``--depth``, ``--alpha`` and ``--block`` of a PyramidNet."""
    p.add_argument("--depth", type=int, default=depth, help=f"depth of {what} (default {depth})")
    p.add_argument("--alpha", type=float, default=alpha, help=f"widening factor alpha (default {alpha:g})")
    p.add_argument("--block", choices=["basic", "bottleneck"], default="basic")


def check_model_args(args: argparse.Namespace, widening: str = "additive") -> None:
    """ConfigError naming ``--depth`` or ``--alpha`` when ``add_model_args``' PyramidNet is not one this
    package builds: the config's own rule (``model.depth`` / ``model.alpha``: config.model_shape.check_size)."""
    from ..config.sections import ModelConfig

    command = getattr(args, "command", None) or "model"
    try:
        ModelConfig(depth=args.depth, alpha=args.alpha, block=args.block, widening=widening).validate(command)
    except ConfigError as exc:
        raise ConfigError(command, "--" + exc.key.removeprefix("model."), exc.message) from None


def container_override(args: argparse.Namespace) -> list[str]:
    """``--container PATH`` as the override it stands for."""
    return [f"container.image={args.container}"] if getattr(args, "container", None) else []


def check_runnable(cfg: ExperimentConfig, source: str) -> None:
    """ConfigError, before anything is created, when this machine cannot run ``cfg``: first what this
    Python lacks (torch, the loader's package: a login node's package may have neither), then what the
    machine lacks."""
    from ..workload.requirements import host_problem

    if problem := host_problem(cfg.data.loader, image=""):  # it trains here, in this Python
        raise ConfigError(source, *problem)
    from ..machine.devices import machine_problem

    problem = machine_problem(cfg)
    if problem:
        raise ConfigError(source, *problem)


def hardware() -> tuple[str, int]:
    """("cuda", GPUs) when CUDA sees GPUs, else ("cpu", 0); without torch here (a login node whose
    runs go into an image), the GPUs nvidia-smi lists."""
    from ..workload.requirements import torch_missing

    if torch_missing():
        from ..machine.driver import gpus_without_torch

        n = gpus_without_torch()
        return ("cuda" if n else "cpu"), n
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ("cuda" if n else "cpu"), n


def default_nproc(args: argparse.Namespace, n_gpus: int) -> int:
    """``--nproc``, else one rank per GPU, else 2 ranks on a CPU."""
    return args.nproc or (n_gpus if n_gpus else 2)
