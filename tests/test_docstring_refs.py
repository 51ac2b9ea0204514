"""Every cross-reference in the package's docstrings and ``#:`` comments (``:mod:``, ``:func:``,
``:class:``, ``:meth:``, ``:data:``, ``:attr:``, ``:exc:``) names something that exists.

A reference resolves as the code would: ``.name`` and ``..group.name`` relative to the module's
package, as a relative import; a bare name in the module itself (what it defines or imports, a class's
member, a method of one of its classes); ``pyramidrepro.x`` from the package's root; another
library's name by importing it.  Read from the source (ast), so no module of the package is imported."""

from __future__ import annotations

import ast
import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pyramidrepro"
REFERENCE = re.compile(r":(?:mod|func|class|meth|data|attr|exc):`~?([^`<>]+)`")


@dataclass
class Module:
    """What one module defines (or imports) at its top level, and each of its classes' members."""

    names: set[str] = field(default_factory=set)
    members: dict[str, set[str]] = field(default_factory=dict)


def _targets(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in node.names]
    return []


def read_module(text: str) -> Module:
    tree = ast.parse(text)
    module = Module()
    for node in ast.walk(tree):  # names bound under if/try too (TYPE_CHECKING, optional imports)
        if node in tree.body or isinstance(node, (ast.Import, ast.ImportFrom)):
            module.names.update(_targets(node))
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            module.members[node.name] = {t for child in node.body for t in _targets(child)}
    return module


def index() -> dict[str, Module]:
    """Dotted module name -> what it defines, for every module of the package."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("pyramidrepro", *path.relative_to(PACKAGE).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = read_module(path.read_text())
    return found


def _in_module(modules: dict[str, Module], module: str, rest: list[str]) -> bool:
    """``rest`` (a name, or Class.member) within ``module``; a submodule when ``module`` is a package."""
    if not rest:
        return True
    if f"{module}.{rest[0]}" in modules:
        return _in_module(modules, f"{module}.{rest[0]}", rest[1:])
    m = modules[module]
    if len(rest) == 1:
        return rest[0] in m.names
    return len(rest) == 2 and rest[1] in m.members.get(rest[0], set())


def _dotted(modules: dict[str, Module], dotted: str) -> bool:
    """A module, or a name in the longest module prefix of ``dotted``."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        if ".".join(parts[:cut]) in modules:
            return _in_module(modules, ".".join(parts[:cut]), parts[cut:])
    return False


def _external(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for part in parts[cut:]:
                obj = getattr(obj, part)
        except AttributeError:
            return False
        return True
    return False


def resolves(modules: dict[str, Module], module: str, is_package: bool, ref: str) -> bool:
    package = module if is_package else module.rpartition(".")[0]
    if ref.startswith("."):
        dots = len(ref) - len(ref.lstrip("."))
        base = package.split(".")[: len(package.split(".")) - dots + 1]
        return _dotted(modules, ".".join([*base, ref.lstrip(".")]))
    if ref.startswith("pyramidrepro"):
        return _dotted(modules, ref)
    own = modules[module]
    parts = ref.split(".")
    if parts[0] in own.names and (len(parts) == 1 or _in_module(modules, module, parts)):
        return True
    if len(parts) == 1 and any(ref in members for members in own.members.values()):
        return True  # a method or attribute of one of the module's classes
    return _external(ref)


def unresolved(modules: dict[str, Module], module: str, path: Path) -> list[str]:
    text = path.read_text()
    return [f"{path.relative_to(PACKAGE.parent)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
            for m in REFERENCE.finditer(text)
            if not resolves(modules, module, path.name == "__init__.py", m.group(1).strip())]


def test_every_cross_reference_in_the_package_resolves():
    modules = index()
    broken = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("pyramidrepro", *path.relative_to(PACKAGE).with_suffix("").parts)
        broken += unresolved(modules, ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path)
    assert len(list(REFERENCE.finditer((PACKAGE / "records" / "runs.py").read_text()))) > 0  # the scan reads
    assert not broken, "references that name nothing:\n" + "\n".join(broken)


def test_a_reference_to_a_moved_or_missing_name_is_caught():
    modules = index()
    at = ("pyramidrepro.training.loop", False)
    assert resolves(modules, *at, ".loop.TrainingLoop") and resolves(modules, *at, "..records.runs.run_dir_for")
    assert resolves(modules, *at, "TrainingLoop.run") and resolves(modules, *at, "pyramidrepro.config.load")
    assert resolves(modules, *at, "torch.nn.Module")
    for broken in (".executor", ".loaders", "..spec.schema", ".loop.NoSuchClass", "TrainingLoop.no_such_method",
                   "pyramidrepro.step.autotune", "torch.no_such_thing"):
        assert not resolves(modules, *at, broken), broken
