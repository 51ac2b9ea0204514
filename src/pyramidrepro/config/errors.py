"""The error every config problem raises, and how a bad value is shown in it."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration problem: file, dotted key and what was expected."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source, self.key, self.message = source, key, message
        where = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(where + message)


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error message never prints an unbounded value."""
    if isinstance(value, (dict, list)) and len(value) > 8:
        return f"a {type(value).__name__} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
