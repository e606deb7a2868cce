"""Search spaces: the `tune:` section and each method's `space:` block of a space YAML, turned into an Optuna
define-by-run function.

A method block holds the method's fixed settings and, under `space:`, what to search:

    methods:
      sc-sft:
        space:
          budget: {dist: dirichlet, layers: 12}            # flat Dirichlet over embeddings, layer.0..11
          sparse.lr: {dist: float, low: 1.0e-5, high: 1.0e-3, log: true}
      deft-x:
        space:
          rank_strategy: {dist: categorical, choices: [energy, uniform]}
          energy: {dist: float, low: 0.5, high: 0.99, when: {rank_strategy: energy}}
          rank: {dist: int, low: 4, high: 256, log: true, when: {rank_strategy: uniform}}

A key without a dot is a method setting; a dotted key (`sparse.lr`, `sft.density`, `dense.epochs`) is a config
path, so shared knobs work for every method. Budget vectors: `dirichlet` (the Optuna FAQ's recipe: x_i = −log u_i,
normalised; logged as `budget/<group>`), `shape` (an embeddings share plus a Gaussian depth profile with a searched
peak and width), and `fixed` (a categorical choice among named vectors, e.g. the seeds' best).
Pure Python + Optuna: no Ray import, so it is testable without a cluster. The schema itself (what a `space:` block
may hold, the `tune:` section) is :mod:`raysft.space_schema`, at the config level.
"""

from __future__ import annotations

import math
from typing import Any

# The schema (distributions, budget vectors, the `tune:` section) lives at the config level; re-exported here.
from raysft.space_schema import (  # noqa: F401
    CategoricalDist,
    DirichletBudget,
    Distribution,
    FixedBudget,
    FloatDist,
    IntDist,
    ShapeBudget,
    TuneConfig,
    parse_space,
)


def _suggest(trial, name: str, dist) -> Any:
    if isinstance(dist, FloatDist):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    if isinstance(dist, IntDist):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    if isinstance(dist, CategoricalDist):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, DirichletBudget):
        groups = dist.group_names()
        # Optuna FAQ: a flat Dirichlet from independent uniforms, x_i = −log(u_i), normalised.
        x = [-math.log(max(trial.suggest_float(f"{name}_u/{g}", 0.0, 1.0), 1e-12)) for g in groups]
        total = sum(x)
        return {g: v / total for g, v in zip(groups, x)}
    if isinstance(dist, ShapeBudget):
        emb = trial.suggest_float(f"{name}/embeddings_share", 0.0, dist.max_embeddings)
        peak = trial.suggest_float(f"{name}/peak", 0.0, dist.layers - 1)
        width = trial.suggest_float(f"{name}/width", 0.5, float(dist.layers), log=True)
        weights = [math.exp(-((i - peak) ** 2) / (2 * width**2)) for i in range(dist.layers)]
        total = sum(weights)
        out = {"embeddings": emb}
        out.update({f"layer.{i}": (1 - emb) * w / total for i, w in enumerate(weights)})
        return out
    if isinstance(dist, FixedBudget):
        choice = trial.suggest_categorical(name, list(dist.choices))
        return dict(dist.choices[choice])
    raise TypeError(dist)


def sample(trial, methods: list[str], spaces: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Define-by-run: choose a method (categorical when several), then its conditional space.

    Returns {"method": m, "settings": {...method settings...}, "overrides": {"sparse.lr": …}} and records budget
    vectors as user attributes `budget/<group>` so that they are comparable across trials."""
    method = methods[0] if len(methods) == 1 else trial.suggest_categorical("method", methods)
    chosen: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    for key, dist in spaces.get(method, {}).items():
        if dist.when and any(chosen.get(k) != v for k, v in dist.when.items()):
            continue
        value = _suggest(trial, f"{method}.{key}", dist)
        chosen[key] = value
        if "." in key:
            overrides[key] = value
        else:
            settings[key] = value
        if key == "budget":
            for g, share in value.items():
                trial.set_user_attr(f"budget/{g}", share)
    return {"method": method, "settings": settings, "overrides": overrides}
