"""Recorded values read back with the type each use needs.

A :class:`Fields` wraps one mapping a run recorded (the root attributes of ``metrics.h5``, its
summary, a section of its config, a JSON attribute) and reads each value as text, a number, a whole
number, a flag or a nested JSON object or list.  A missing value (absent, ``""`` or null) gives the
default; a value of another type, or a number that is not finite or out of its range, raises
ValueError with a reason that names it (``its batch_size attribute is below 1 (got 0)``).
:func:`.runs.load_run` decides what each value must be; this module only reads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from numbers import Integral, Real
from typing import Any

import numpy as np

from ..config.errors import shown


def is_missing(value: Any) -> bool:
    """Absent, ``""`` (what the writer records for None) or JSON null."""
    return value is None or (isinstance(value, str) and value == "")


def series(values: Any, name: str) -> np.ndarray:
    """A recorded dataset as a flat array of floats (NaN kept: a row without that figure); ValueError unless
    numbers."""
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"its {name} dataset is not numbers (dtype {array.dtype})")
    return np.ravel(array).astype(float)


class Fields:
    """One recorded mapping, read with types; ``name`` says how a reason names a key (``"{} attribute"``).

    ``parsed``: the mapping comes from JSON or YAML, so a nested value is the structure itself (the root
    attributes of ``metrics.h5`` hold theirs as JSON text).
    """

    def __init__(self, values: Any, name: str, parsed: bool = False) -> None:
        self.values: Mapping[Any, Any] = values if isinstance(values, Mapping) else {}
        self.name = name
        self.parsed = parsed

    def fail(self, key: str, problem: str, value: Any) -> ValueError:
        """The error for ``key``'s ``value``: ``its <name> is <problem> (got <value>)``."""
        value = value.item() if isinstance(value, np.generic) else value
        return ValueError(f"its {self.name.format(key)} is {problem} (got {shown(value)})")

    def raw(self, key: str) -> Any:
        """The value as recorded, None when missing."""
        value = self.values.get(key)
        return None if is_missing(value) else value

    def text(self, key: str, default: str = "") -> str:
        """A string (any characters: the report escapes what it shows)."""
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.fail(key, "not text", value)
        return str(value)

    def number(self, key: str, least: float | None = None, above: float | None = None) -> float | None:
        """A finite number, at least ``least`` and over ``above`` where given; None when missing."""
        value = self.raw(key)
        if value is None:
            return None
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real):
            raise self.fail(key, "not a number", value)
        number = float(value)
        if not math.isfinite(number):
            raise self.fail(key, "not a finite number", value)
        if least is not None and number < least:
            raise self.fail(key, f"below {least:g}", value)
        if above is not None and number <= above:
            raise self.fail(key, f"not above {above:g}", value)
        return number

    def integer(self, key: str, default: int | None, least: int | None = None) -> int | None:
        """A whole number (an integral float too), at least ``least``; ``default`` when missing."""
        number = self.number(key, least)
        if number is None:
            return default
        value = self.values[key]
        if not isinstance(value, Integral) and not number.is_integer():
            raise self.fail(key, "not a whole number", value)
        return int(value) if isinstance(value, Integral) else int(number)

    def flag(self, key: str, default: bool | None) -> bool | None:
        """True or false; ``default`` when missing."""
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, (bool, np.bool_)):
            raise self.fail(key, "not true or false", value)
        return bool(value)

    def nested(self, key: str, kind: type[dict] | type[list]) -> Any:
        """A JSON object or list (JSON text, unless ``parsed``); empty when missing."""
        value = self.raw(key)
        if value is None:
            return kind()
        if isinstance(value, str) and not self.parsed:
            try:
                value = json.loads(value)
            except ValueError:
                raise self.fail(key, "not JSON", value) from None
        if not isinstance(value, kind):
            raise self.fail(key, "not a JSON " + ("object" if kind is dict else "list"), value)
        return value

    def each(self, key: str, read: Callable[..., Any], **limits: Any) -> list[Any]:
        """A list whose every item is read by ``read`` (``Fields.text``, ``Fields.number`` ...) with ``limits``."""
        items = Fields(dict(enumerate(self.nested(key, list))), self.name.format(key) + "[{}]", parsed=True)
        for i, value in items.values.items():
            if is_missing(value):
                raise items.fail(i, "empty", value)
        return [read(items, i, **limits) for i in items.values]
