"""The shape of the package: layers with no upward import, no import cycle, one import path per name,
and experiments found as package data."""

import ast
from pathlib import Path

from pyramidrepro.config.load import load_config
from support import SMOKE

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pyramidrepro"


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, lazily imported ones included."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("pyramidrepro", *path.relative_to(PACKAGE).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                for alias in node.names:
                    target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    if target in modules and target != name:
                        graph[name].add(target)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name in modules and a.name != name)
    return graph


#: the package's layers, lowest first: a module may import its own group and the groups below it,
#: never one above (``cli`` sits on top of all; groups on one line are peers that import neither)
LAYERS = (("config",), ("workload", "stats"), ("machine",), ("records",), ("step",), ("autotune",),
          ("training", "bench"), ("cluster",), ("study",), ("cli",))
LEVEL = {group: level for level, groups in enumerate(LAYERS) for group in groups}


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_groups_import_only_their_own_layer_or_below():
    graph = _import_graph()
    groups = {_group(m) for m in graph} - {"", "__main__"}
    assert groups == set(LEVEL), f"a subpackage is missing from LAYERS: {sorted(groups ^ set(LEVEL))}"
    assert len(groups) >= 6
    upward = [f"{m} -> {d}" for m, deps in graph.items() for d in deps
              if _group(m) in LEVEL and _group(d) in LEVEL and _group(d) != _group(m)
              and LEVEL[_group(d)] >= LEVEL[_group(m)]]
    assert not upward, "imports against the layer order:\n" + "\n".join(sorted(upward))


def _reexports(path: Path) -> list[str]:
    """Names ``path`` passes on from elsewhere: in ``__all__`` but imported, imported ``as`` themselves,
    or served by a module ``__getattr__``."""
    tree = ast.parse(path.read_text())
    imported = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names}
    listed: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
            listed = [e.value for e in node.value.elts]
    found = [f"{name} (in __all__, imported)" for name in listed if name in imported]
    found += [f"{a.name} (imported as itself)" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
              for a in n.names if a.asname == a.name]
    found += ["__getattr__ (served lazily)" for n in tree.body if isinstance(n, ast.FunctionDef)
              and n.name == "__getattr__"]
    return found


def test_every_public_name_has_one_import_path_and_config_stays_free_of_torch():
    """A name is imported from the module that defines it: no facade, no re-export, no lazy export."""
    import subprocess
    import sys

    passed_on = {str(p.relative_to(PACKAGE)): r for p in PACKAGE.rglob("*.py") if (r := _reexports(p))}
    assert not passed_on, f"re-exported names (import them from where they are defined): {passed_on}"
    code = ("import sys, pyramidrepro.config.load as c, pyramidrepro.records.runs, pyramidrepro.stats.measure; "
            "c.load_config(sys.argv[1]); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(SMOKE)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "checking a config imported torch"


def test_no_import_cycles():
    graph = _import_graph()
    assert "pyramidrepro.workload.loaders.dali" in graph and graph["pyramidrepro.workload.loaders.dali"]
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join([*trail, node, nxt])
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_installed_package_finds_its_experiments(tmp_path):
    """``reproduce`` resolves its default campaigns through package data, not the source tree."""
    from pyramidrepro.cli.reproduce import default_experiment

    for n_gpus, name in ((0, "quick_cpu.yaml"), (2, "fig5.yaml")):
        path = Path(default_experiment(n_gpus))
        assert path.name == name and path.is_file()
        assert load_config(path).name


def test_every_package_folder_is_in_the_distribution():
    """pyproject.toml lists the packages by hand (the experiments ship as one): a folder it misses is
    left out of a non-editable install, which is what the image and a site's login node get."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(("pyramidrepro", *p.parent.relative_to(PACKAGE).parts)) for p in PACKAGE.rglob("__init__.py")}
    assert folders <= listed, f"missing from [tool.setuptools] packages: {sorted(folders - listed)}"
    assert listed - folders == {"pyramidrepro.experiments"}
