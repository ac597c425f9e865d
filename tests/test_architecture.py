"""The import direction of the package, checked by reading every module's imports.

    types <- config <- ops <- models <- loading
                               models <- runtime <- spec <- engine <- server <- cli
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
    "spec": {"types", "config", "ops", "models", "loading", "runtime"},
    "selection": {"types", "config"},
    "bench": {"types", "config"},
    "engine": {"types", "config", "ops", "models", "loading", "runtime", "spec", "selection"},
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
