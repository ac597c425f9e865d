"""The import direction of the package, checked by reading every module's imports.

    types <- config <- ops <- models <- loading
                               models <- runtime <- speculative <- engine <- server <- cli
             config <- selection <- engine

Bookkeeping (the plain-data layers, drafter selection, and the engine's scheduler, block
manager, request and detokenizer) must not import torch, so it stays testable and cheap
without a model.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import spinserve

ROOT = Path(spinserve.__file__).parent

# What each layer may import from spinserve (itself always allowed).
ALLOWED: dict[str, set[str]] = {
    "types": set(),
    "config": {"types"},
    "ops": {"types", "config"},
    "models": {"types", "config", "ops"},
    "loading": {"types", "config", "ops", "models"},
    "runtime": {"types", "config", "ops", "models"},
    "speculative": {"types", "config", "ops", "models", "loading", "runtime"},
    "selection": {"types", "config"},
    "bench": {"types", "config"},
    "engine": {
        "types",
        "config",
        "ops",
        "models",
        "loading",
        "runtime",
        "speculative",
        "selection",
    },
}
ALLOWED["server"] = ALLOWED["engine"] | {"engine"}
ALLOWED["cli"] = ALLOWED["server"] | {"server", "bench"}
NO_TORCH = [
    "types",
    "config",
    "selection",
    "engine/request.py",
    "runtime/block_manager.py",
    "engine/scheduler.py",
    "engine/detokenizer.py",
    "engine/outputs.py",
    "loading/zoo.py",
]


def modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py"))


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def layer_of(path: Path) -> str | None:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else None


def test_every_subpackage_has_a_layer_and_a_docstring():
    for pkg in (p for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith("__")):
        assert pkg.name in ALLOWED, f"new subpackage {pkg.name}: give it a place in ALLOWED"
        init = pkg / "__init__.py"
        assert init.is_file() and ast.get_docstring(ast.parse(init.read_text())), pkg.name


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layers(path):
    layer = layer_of(path)
    if layer is None:
        return
    for name in imported(path):
        parts = name.split(".")
        if parts[0] != "spinserve" or len(parts) < 2 or parts[1] == layer:
            continue
        assert parts[1] in ALLOWED[layer], f"{layer} must not import {name}"


@pytest.mark.parametrize("entry", NO_TORCH)
def test_bookkeeping_does_not_import_torch(entry):
    target = ROOT / entry
    files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
    for path in files:
        heavy = {n for n in imported(path) if n.split(".")[0] in ("torch", "numpy", "transformers")}
        assert not heavy, f"{path.relative_to(ROOT)} imports {heavy}"


def module_name(path: Path) -> str:
    """``spinserve/selection/spin.py`` -> ``spinserve.selection.spin``; a package's
    ``__init__.py`` is the package."""
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def load_time_imports(path: Path) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported: everything outside
    function bodies (an import inside a function runs when it is called). Imports under
    ``if TYPE_CHECKING`` count: a loop of names is a loop in the design even where the
    interpreter is spared it."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [ast.parse(path.read_text())]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the spinserve modules it imports at load time. ``from a.b import c`` is an
    edge to ``a.b.c`` where that is a module, else to ``a.b``."""
    paths = {module_name(p): p for p in modules()}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in load_time_imports(path):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
                continue
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            module = ".".join([*base, node.module] if node.level else [node.module or ""])
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                edges.add(sub if sub in paths else module)
        graph[name] = {e for e in edges if e in paths and e != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first, iterative)."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, on_path = [start], {start}
        todo = [iter(sorted(graph[start]))]
        while todo:
            nxt = next(todo[-1], None)
            if nxt is None:  # every import of path[-1] explored: no cycle through it
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                todo.pop()
                continue
            if nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                todo.append(iter(sorted(graph[nxt])))
    return None


def test_find_cycle_names_the_loop():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_cycles():
    """A cycle makes import order matter and every module in it one unit to understand;
    break it by moving the shared name down a layer, not by a function-level import."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_product_never_imports_research_or_benchmarks():
    """research/ and benchmarks/ study the product and import it, never the reverse (their
    scripts are imported by bare name, so those names are refused too)."""
    repo = ROOT.parent
    scripts = {p.stem for p in (repo / "benchmarks").glob("*.py")}
    refused = {"research", "benchmarks"} | scripts
    for path in modules():
        bad = {n for n in imported(path) if n.split(".")[0] in refused}
        assert not bad, f"{path.relative_to(repo)} imports {sorted(bad)}"
