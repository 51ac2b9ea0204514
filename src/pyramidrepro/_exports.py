"""Lazy public names for the subpackages: ``from pyramidrepro.records import load_runs`` imports
only the module that defines ``load_runs``, so a light command (``validate``, ``report``) never
pulls torch in through a package's ``__init__``."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(package: str, owners: dict[str, tuple[str, ...]]) -> tuple[list[str], Callable[[str], Any]]:
    """``__all__`` and a module ``__getattr__`` for ``package``: module -> the public names it owns."""
    where = {name: module for module, names in owners.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f"{package}.{where[name]}"), name)

    return sorted(where), __getattr__
