"""The layer rules of design.md §1, checked on the source: every `import raysft…` (module level or inside a function)
goes down or sideways, never up; the edges never import each other in a circle through tracking."""

from __future__ import annotations

import ast
from pathlib import Path

import raysft

ROOT = Path(raysft.__file__).resolve().parent

# Lower rank = lower layer. A module may import modules of its own rank or below.
RANKS = {
    "errors": 0, "storage": 0, "space_schema": 0, "stats": 0,
    "sft": 1,
    "models": 2, "tasks": 2,
    "store": 3, "config": 3, "outcome": 3,
    "train": 4,
    # the Python API for users (raysft.load_sft, compose): over sft, models and tasks; the package's __init__
    # re-exports it; export's `raysft apply` composes through it
    "api": 4, "__init__": 4,
    # the edges: Ray Train, Ray Tune, MLflow, cluster checks, results read back, export, the CLI
    "distributed": 5, "sweep": 5, "tracking": 5, "cluster": 5, "results": 5, "export": 5, "cli": 5,
}


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "raysft" else None


def _imports() -> list[tuple[str, str, int]]:
    """(importing module's file, imported module, line) for every raysft import in the package."""
    out = []
    for f in sorted(ROOT.rglob("*.py")):
        rel = f.relative_to(ROOT.parent).with_suffix("")
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "raysft":
                    out += [(str(rel), f"raysft.{a.name}", node.lineno) for a in node.names]
                elif node.module.startswith("raysft."):
                    out.append((str(rel), node.module, node.lineno))
            elif isinstance(node, ast.Import):
                out += [(str(rel), a.name, node.lineno) for a in node.names if a.name.startswith("raysft.")]
    return out


def test_every_unit_has_a_rank():
    units = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    assert units - set(RANKS) == set(), "a new module or package: give it a rank in RANKS"


def test_no_import_runs_upward():
    upward = []
    for source, target, line in _imports():
        src, dst = _unit(".".join(Path(source).parts)), _unit(target)
        if src is None or dst is None or dst == "__version__":
            continue
        if RANKS[dst] > RANKS[src]:
            upward.append(f"{source}.py:{line} imports {target}")
    assert upward == []


def test_config_and_tracking_never_import_the_sweep():
    """The former circle: config → sweep.space, and tracking.callback → sweep.tune → tracking.runs → callback."""
    bad = [f"{s}.py:{line} imports {t}" for s, t, line in _imports()
           if _unit(t) == "sweep" and _unit(".".join(Path(s).parts)) in ("config", "tracking", "space_schema")]
    assert bad == []
