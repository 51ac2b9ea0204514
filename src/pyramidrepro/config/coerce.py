"""Raw YAML values to typed config values, driven by the dataclass type hints.

One converter per kind of type (a table, not an if-chain); a mismatch raises :class:`ConfigError`
naming the dotted key and the expected type in words.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union

from .errors import ConfigError, shown

#: converter(value, type, source, dotted key) -> the typed value, or ConfigError
Converter = Callable[[Any, Any, str, str], Any]

_PLAIN_NAMES: dict[Any, str] = {int: "an integer", float: "a number", bool: "true/false", str: "a string",
                                type(None): "null", Any: "any value"}


def _literal_name(tp: Any) -> str:
    return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))


def _union_name(tp: Any) -> str:
    return " or ".join(type_name(a) for a in typing.get_args(tp))


def _list_name(tp: Any) -> str:
    return f"a list of {type_name(typing.get_args(tp)[0])}"


def _mapping_name(tp: Any) -> str:
    return "a mapping"


#: generic origin -> how its type is named in an error message
_GENERIC_NAMES: dict[Any, Callable[[Any], str]] = {
    Literal: _literal_name, Union: _union_name, types.UnionType: _union_name, list: _list_name, dict: _mapping_name,
}


def type_name(tp: Any) -> str:
    """The type in words, as an error message names what was expected."""
    namer = _GENERIC_NAMES.get(typing.get_origin(tp))
    if namer is not None:
        return namer(tp)
    return _PLAIN_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _mismatch(value: Any, tp: Any, source: str, key: str) -> ConfigError:
    return ConfigError(source, key, f"expected {type_name(tp)}, got {shown(value)}")


def _any(value: Any, tp: Any, source: str, key: str) -> Any:
    return value


def _union(value: Any, tp: Any, source: str, key: str) -> Any:
    """None where the union allows it, else the first member type that takes the value."""
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return coerce(value, arg, source, key)
        except ConfigError:
            continue
    raise _mismatch(value, tp, source, key)


def _literal(value: Any, tp: Any, source: str, key: str) -> Any:
    if value not in typing.get_args(tp):
        raise _mismatch(value, tp, source, key)
    return value


def _list(value: Any, tp: Any, source: str, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise _mismatch(value, tp, source, key)
    (item,) = typing.get_args(tp)
    return [coerce(v, item, source, f"{key}[{i}]") for i, v in enumerate(value)]


def _mapping(value: Any, tp: Any, source: str, key: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise _mismatch(value, tp, source, key)
    ktp, vtp = typing.get_args(tp)
    return {coerce(k, ktp, source, key): coerce(v, vtp, source, f"{key}.{k}") for k, v in value.items()}


def _bool(value: Any, tp: Any, source: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise _mismatch(value, tp, source, key)
    return value


def _int(value: Any, tp: Any, source: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _mismatch(value, tp, source, key)
    return value


def _float(value: Any, tp: Any, source: str, key: str) -> float:
    if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string: accept it
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _mismatch(value, tp, source, key)
    return float(value)


def _str(value: Any, tp: Any, source: str, key: str) -> str:
    if not isinstance(value, str):
        raise _mismatch(value, tp, source, key)
    return value


#: a type, or a generic type's origin -> its converter (dataclasses are built by :func:`build`)
CONVERTERS: dict[Any, Converter] = {
    Any: _any, Union: _union, types.UnionType: _union, Literal: _literal, list: _list, dict: _mapping,
    bool: _bool, int: _int, float: _float, str: _str,
}


def coerce(value: Any, tp: Any, source: str, key: str) -> Any:
    """``value`` checked against (and converted to) the schema type ``tp``; ``key`` names it in errors."""
    if dataclasses.is_dataclass(tp):
        return build(tp, value, source, key)
    convert = CONVERTERS.get(typing.get_origin(tp) or tp)
    if convert is None:  # pragma: no cover - schema bug
        raise TypeError(f"unsupported schema type {tp!r}")
    return convert(value, tp, source, key)


def build(cls: type, raw: Any, source: str, prefix: str) -> Any:
    """An instance of the dataclass ``cls`` from a raw mapping (None: all defaults); unknown keys refused."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, prefix or "<root>", f"expected a mapping, got {shown(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in raw:
        if k not in names:
            dotted = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(source, dotted, f"unknown key (allowed here: {', '.join(names)})")
    kwargs = {}
    for k, v in raw.items():
        dotted = f"{prefix}.{k}" if prefix else k
        kwargs[k] = coerce(v, hints[k], source, dotted)
    return cls(**kwargs)
