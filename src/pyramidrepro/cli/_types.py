"""Range checks as argparse types: a bad value gets argparse's usual error (exit 2, usage line,
``pyramidrepro COMMAND: error: argument --x: must be ...``), before anything is loaded or created."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

Number = TypeVar("Number", int, float)


def checked(kind: type[Number], problem: Callable[[Number], str | None]) -> Callable[[str], Number]:
    """An argparse type: ``kind(text)``, refused with ``problem(value)`` when that is not None."""

    def convert(text: str) -> Number:
        try:
            value = kind(text)
        except ValueError:  # the text argparse gives for a plain type=int / type=float
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        message = problem(value)
        if message is not None:
            raise argparse.ArgumentTypeError(message)
        return value

    return convert


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer >= ``low``."""
    return checked(int, lambda v: f"must be >= {low}, got {v}" if v < low else None)


def int_between(low: int, high: int) -> Callable[[str], int]:
    """An integer in [``low``, ``high``]."""
    return checked(int, lambda v: None if low <= v <= high else f"must be between {low} and {high}, got {v}")


def _positive_problem(value: float) -> str | None:
    if not math.isfinite(value):
        return f"must be a finite number > 0, got {value:g}"
    return None if value > 0 else f"must be > 0, got {value:g}"


def _percentage_problem(value: float) -> str | None:
    return None if 0 < value <= 100 else f"must be a percentage in (0, 100], got {value:g}"


def float_between(low: float, high: float) -> Callable[[str], float]:
    """A float in [``low``, ``high``] (NaN is refused)."""
    return checked(float, lambda v: None if low <= v <= high else f"must be between {low:g} and {high:g}, got {v:g}")


def _non_negative_problem(value: float) -> str | None:
    return None if 0 <= value < math.inf else f"must be a finite number >= 0, got {value:g}"


#: a finite float > 0
positive_float = checked(float, _positive_problem)
#: a finite float >= 0
non_negative_float = checked(float, _non_negative_problem)
#: a float in (0, 100] (NaN is refused)
percentage = checked(float, _percentage_problem)
#: an integer >= 1
positive_int = int_at_least(1)
#: an integer >= 0
non_negative_int = int_at_least(0)
