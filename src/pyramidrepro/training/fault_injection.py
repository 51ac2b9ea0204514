"""Faults a test injects through environment variables, to stop a run at an exact point on a CPU.

``PYRAMIDREPRO_INJECT_OOM=RANK:STEP`` (STEP a step number, or ``setup``) raises
``torch.OutOfMemoryError`` on that rank at that point: the seam the tests use to check all this
on CPU, where a real allocation failure cannot be provoked safely.
``PYRAMIDREPRO_INJECT_SIGNAL=RANK:STEP:NAME`` (NAME ``TERM``, ``INT`` or ``KILL``) sends that rank's
process the signal just before the step, as a scheduler's preemption, a Ctrl-C or a node's loss
would, so a test can stop a run at an exact point of its logging window.
``PYRAMIDREPRO_INJECT_DELAY=SECONDS`` sleeps that long before every step of every rank: a slower
machine, within the measured time, for the tests that compare campaigns.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import torch

from ..config.errors import ConfigError

INJECT_OOM_VAR = "PYRAMIDREPRO_INJECT_OOM"
INJECT_SIGNAL_VAR = "PYRAMIDREPRO_INJECT_SIGNAL"
INJECT_DELAY_VAR = "PYRAMIDREPRO_INJECT_DELAY"
INJECTABLE_SIGNALS = ("TERM", "INT", "KILL")


def _injection(var: str, expected: str, valid: Callable[[list[str]], bool]) -> list[str] | None:
    """``var``'s value split at ``:`` (None when unset); a value ``valid`` refuses is a ConfigError
    that names the variable and the form ``expected``."""
    spec = os.environ.get(var, "")
    if not spec:
        return None
    parts = spec.split(":")
    if not valid(parts):
        raise ConfigError("environment", var, f"{spec!r}: expected {expected}")
    return parts


def injected_oom_step(rank: int) -> int | str | None:
    """Where ``PYRAMIDREPRO_INJECT_OOM`` puts an out-of-memory error on ``rank`` (step or ``setup``)."""
    parts = _injection(INJECT_OOM_VAR, "RANK:STEP or RANK:setup",
                       lambda p: len(p) == 2 and p[0].isdigit() and (p[1].isdigit() or p[1] == "setup"))
    if parts is None or int(parts[0]) != rank:
        return None
    return parts[1] if parts[1] == "setup" else int(parts[1])


def injected_signal(rank: int) -> tuple[int, signal.Signals] | None:
    """(step, signal) that ``PYRAMIDREPRO_INJECT_SIGNAL`` sends ``rank``'s process before that step."""
    parts = _injection(INJECT_SIGNAL_VAR, f"RANK:STEP:NAME, NAME one of {', '.join(INJECTABLE_SIGNALS)}",
                       lambda p: len(p) == 3 and p[0].isdigit() and p[1].isdigit() and p[2] in INJECTABLE_SIGNALS)
    if parts is None or int(parts[0]) != rank:
        return None
    return int(parts[1]), signal.Signals[f"SIG{parts[2]}"]


def injected_delay() -> float:
    """Seconds ``PYRAMIDREPRO_INJECT_DELAY`` adds before every step (0 when unset)."""
    def valid(p: list[str]) -> bool:
        try:
            return len(p) == 1 and 0 <= float(p[0]) < 60
        except ValueError:
            return False

    parts = _injection(INJECT_DELAY_VAR, "SECONDS, from 0 to 60", valid)
    return float(parts[0]) if parts else 0.0


def raise_injected_oom(where: int | str) -> None:
    raise torch.OutOfMemoryError(f"injected out-of-memory error at {where} ({INJECT_OOM_VAR})")


def send_injected_signal(sig: signal.Signals) -> None:
    """``sig`` to this process (a handled one runs before the next step; KILL ends it at once)."""
    os.kill(os.getpid(), sig)
