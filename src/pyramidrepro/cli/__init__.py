"""Command-line interface: ``pyramidrepro COMMAND ...`` (``--help`` on each command).

Each command is a module of this package with a ``register(subparsers)`` that adds its parser and
handler; the shared arguments are in ``_common``, the range checks (argparse types) in ``_types``.
Handlers import what is heavy (torch) themselves, so ``validate`` and ``report`` stay light."""

from __future__ import annotations

import argparse
import sys

from . import (
    bench,
    bench_loader,
    boundary,
    compare,
    data,
    follow,
    model_info,
    report,
    reproduce,
    run,
    scaling,
    status,
    submit,
    validate,
)
from ._errors import exit_code_for, interrupted
from ._version import VersionAction

__all__ = ["build_parser", "main"]

#: the commands, in the order ``--help`` lists them
COMMANDS = (run, validate, data, model_info, bench_loader, bench, scaling, submit, status, follow, boundary, report,
            compare, reproduce)


def build_parser() -> argparse.ArgumentParser:
    """A fresh parser for the whole CLI."""
    parser = argparse.ArgumentParser(
        prog="pyramidrepro",
        description=(
            "Reproduce the PyramidNet / CIFAR-10 throughput study (single GPU, DataParallel, "
            "DistributedDataParallel): run experiments, dispatch them to Slurm, report."
        ),
    )
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The CLI; a problem the user can fix is one line on stderr (bad input: exit 2), never a traceback.

    Safe to call again in one process: every call parses afresh and keeps nothing; a bad command line
    raises argparse's SystemExit (2)."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:
        return interrupted(exc)
    except Exception as exc:  # config, data, run-folder and disk problems
        code = exit_code_for(exc)
        if code is None:
            raise
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
