"""The package's import graph, read from the source with `ast` (every import: module level and inside functions): no
circle among raysft's modules, and the pure-torch layer (raysft/sft/) imports no Ray, MLflow or edge (design.md §1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import raysft

ROOT = Path(raysft.__file__).resolve().parent

# Imports known to close a circle, (importer, imported) -> why it is still there. Each entry is removed with its circle.
ALLOWED_EDGES: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The raysft module that ``import name`` runs last: the longest prefix of ``name`` that is a module."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    return None


def imports_of(module: str) -> list[tuple[str, int]]:
    """(imported name, line) of every import in ``module``; ``from raysft.x import y`` gives raysft.x.y when y is a
    module, else raysft.x. Relative imports are resolved against the module's package."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub if sub in MODULES else base, node.lineno))
    return out


def graph() -> dict[str, dict[str, int]]:
    """raysft module -> {raysft module it imports: line}."""
    g: dict[str, dict[str, int]] = {m: {} for m in MODULES}
    for m in MODULES:
        for name, line in imports_of(m):
            target = _resolve(name) if name.split(".")[0] == "raysft" else None
            if target is not None and target != m:
                g[m].setdefault(target, line)
    return g


def find_cycle(g: dict[str, dict[str, int]]) -> list[str] | None:
    """One import circle (a, b, …, a), or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(g, WHITE)
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        color[m] = GREY
        stack.append(m)
        for t in sorted(g[m]):
            if color[t] == GREY:
                return stack[stack.index(t):] + [t]
            if color[t] == WHITE:
                found = visit(t)
                if found:
                    return found
        stack.pop()
        color[m] = BLACK
        return None

    for m in sorted(g):
        if color[m] == WHITE:
            found = visit(m)
            if found:
                return found
    return None


def test_the_checker_resolves_imports_to_modules():
    g = graph()
    assert "raysft.tasks.registry" in g["raysft.tasks"]  # from raysft.tasks.registry import TASKS
    assert "raysft.tasks.hub" in g["raysft.tasks.nli"]  # from raysft.tasks import hub: the submodule
    assert "raysft.sweep.trial" in g["raysft.sweep.tune"]
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None


def test_no_import_circle():
    g = graph()
    for (src, dst) in ALLOWED_EDGES:
        g.get(src, {}).pop(dst, None)
    cycle = find_cycle(g)
    assert cycle is None, "import circle: " + " → ".join(
        f"{a} (line {g[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" → {cycle[-1]}"


FORBIDDEN_IN_SFT = ("ray", "mlflow", "raysft.train", "raysft.sweep", "raysft.distributed", "raysft.tracking",
                    "raysft.cli")


def test_sft_is_pure_torch():
    bad = []
    for m in MODULES:
        if m != "raysft.sft" and not m.startswith("raysft.sft."):
            continue
        for name, line in imports_of(m):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IN_SFT):
                bad.append(f"{m} line {line} imports {name}")
    assert bad == []


# The layers (design.md §1), each with what it may never import: a lower layer never reaches up, the pure-torch core
# (sft, train) imports no Ray, MLflow or Optuna.
EDGES = ("raysft.sweep", "raysft.distributed", "raysft.tracking", "raysft.cluster", "raysft.cli", "raysft.report",
         "raysft.export")
LAYERS = {
    "raysft.train": ("ray", "mlflow", "optuna", *EDGES),
    "raysft.tasks": ("ray", "mlflow", "optuna", "raysft.train", *EDGES),
    "raysft.models": ("ray", "mlflow", "optuna", "raysft.train", "raysft.tasks", *EDGES),
}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_no_layer_imports_upward(layer):
    bad = []
    for m in MODULES:
        if m != layer and not m.startswith(layer + "."):
            continue
        for name, line in imports_of(m):
            if any(name == f or name.startswith(f + ".") for f in LAYERS[layer]):
                bad.append(f"{m} line {line} imports {name}")
    assert bad == []
