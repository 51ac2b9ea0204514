"""Reading experiment files and ``--set dotted.key=VALUE`` overrides, with hostile input bounded.

``yaml.safe_load`` with duplicate keys refused and aliases, size and nesting bounded; every problem
raises :class:`ConfigError` naming the file (or ``--set``) and, where known, the line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, shown

#: limits on what an experiment file may expand to (aliases make small files large)
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 64
#: the largest experiment file read
MAX_FILE_BYTES = 1 << 20


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {shown(key)}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """(values, depth) of a composed document once its aliases are expanded; stops past the limits."""
    sizes: dict[int, tuple[int, int]] = {}

    def walk(node: yaml.Node, level: int) -> tuple[int, int]:
        if level > MAX_YAML_DEPTH:
            return 1, level
        if id(node) in sizes:
            return sizes[id(node)]
        total, depth = 1, level
        for child in _children(node):
            n, d = walk(child, level + 1)
            total, depth = total + n, max(depth, d)
            if total > MAX_YAML_NODES or depth > MAX_YAML_DEPTH:
                break
        sizes[id(node)] = (total, depth)
        return total, depth

    return walk(root, 0)


def _check_expanded_size(node: yaml.Node, source: str) -> None:
    values, depth = _expanded_size(node)
    if depth > MAX_YAML_DEPTH:
        raise ConfigError(source, "", f"values nested deeper than {MAX_YAML_DEPTH} levels")
    if values > MAX_YAML_NODES:
        raise ConfigError(source, "", f"YAML aliases expand to more than {MAX_YAML_NODES:,} values "
                                      "(an alias bomb?); write the values out")


def parse_yaml_text(text: str, source: str) -> Any:
    """``yaml.safe_load`` with duplicate keys refused and aliases, size and nesting bounded."""
    loader = None
    try:
        loader = _StrictLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(source, "", f"malformed YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(source, "", f"values nested deeper than {MAX_YAML_DEPTH} levels") from None
    finally:
        if loader is not None:
            loader.dispose()


def _read_text(p: Path) -> str:
    """The file's text: a file (not a folder), at most MAX_FILE_BYTES, UTF-8."""
    if p.is_dir():
        raise ConfigError(str(p), "", "not a file but a folder: give an experiment YAML file")
    if not p.is_file():
        raise ConfigError(str(p), "", "no such file")
    blob = p.read_bytes()
    if len(blob) > MAX_FILE_BYTES:
        raise ConfigError(str(p), "", f"{len(blob):,} bytes: an experiment file is at most {MAX_FILE_BYTES >> 20} MiB")
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(p), "", f"not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read one experiment file; errors name the file."""
    p = Path(path)
    raw = parse_yaml_text(_read_text(p), str(p))
    if raw is None:
        raise ConfigError(str(p), "", "empty experiment file (expected a mapping: name, model, data, train ...)")
    if not isinstance(raw, dict):
        raise ConfigError(str(p), "<root>", "expected a mapping at the top level")
    raw.setdefault("name", p.stem)
    return raw


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``dotted.key=VALUE``; VALUE is parsed as YAML (so lists and mappings work)."""
    if "=" not in text:
        raise ConfigError("--set", text, "expected dotted.key=VALUE")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError("--set", text, "empty key")
    value = parse_yaml_text(raw, f"--set {key}") if raw.strip() else None
    return key, value


def apply_override(raw: dict[str, Any], key: str, value: Any, source: str = "--set") -> None:
    """Set ``raw[a][b][c] = value`` for ``key = "a.b.c"``, creating mappings on the way."""
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(source, ".".join(parts[: i + 1]), "is not a section")
        node = nxt
    node[parts[-1]] = value
