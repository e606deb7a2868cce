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
`budget` mixes them: a categorical family (`dirichlet`, `shape`, or one of its named `fixed` vectors), then that
family's parameters. `candidates`: named choices that each set several keys at once (a report's variant: `sft.k`,
`sft.freeze_embeddings`, `sparse.lr`); later keys can depend on the choice with `when:`.

The sweep's first trials run each swept method at its defaults (the config as it is, no sampled value):
:func:`default_params` gives the Optuna parameters that express those defaults (for `enqueue_trial`), and
:func:`sample` recognises such a trial by its user attribute and labels it ``default``.
Pure Python + Optuna: no Ray import, so it is testable without a cluster. The schema itself (what a `space:` block
may hold, the `tune:` section) is :mod:`raysft.space_schema`, at the config level.
"""

from __future__ import annotations

import math
from typing import Any, Callable

# The schema (distributions, budget vectors, the `tune:` section) lives at the config level; re-exported here.
from raysft.space_schema import (  # noqa: F401
    BudgetFamilies,
    Candidates,
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


def _dirichlet(trial, name: str, groups: list[str]) -> dict[str, float]:
    # Optuna FAQ: a flat Dirichlet from independent uniforms, x_i = −log(u_i), normalised.
    x = [-math.log(max(trial.suggest_float(f"{name}_u/{g}", 0.0, 1.0), 1e-12)) for g in groups]
    total = sum(x)
    return {g: v / total for g, v in zip(groups, x)}


def _shape(trial, name: str, layers: int, max_embeddings: float) -> dict[str, float]:
    emb = trial.suggest_float(f"{name}/embeddings_share", 0.0, max_embeddings)
    peak = trial.suggest_float(f"{name}/peak", 0.0, layers - 1)
    width = trial.suggest_float(f"{name}/width", 0.5, float(layers), log=True)
    weights = [math.exp(-((i - peak) ** 2) / (2 * width**2)) for i in range(layers)]
    total = sum(weights)
    out = {"embeddings": emb}
    out.update({f"layer.{i}": (1 - emb) * w / total for i, w in enumerate(weights)})
    return out


def _suggest(trial, name: str, dist) -> Any:
    if isinstance(dist, FloatDist):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    if isinstance(dist, IntDist):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    if isinstance(dist, CategoricalDist):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, DirichletBudget):
        return _dirichlet(trial, name, dist.group_names())
    if isinstance(dist, ShapeBudget):
        return _shape(trial, name, dist.layers, dist.max_embeddings)
    if isinstance(dist, FixedBudget):
        choice = trial.suggest_categorical(name, list(dist.choices))
        return dict(dist.choices[choice])
    if isinstance(dist, BudgetFamilies):
        family = trial.suggest_categorical(f"{name}/family", dist.choices())
        if family == "dirichlet":
            return _dirichlet(trial, f"{name}.dirichlet", ["embeddings"] + [f"layer.{i}" for i in range(dist.layers)])
        if family == "shape":
            return _shape(trial, f"{name}.shape", dist.layers, dist.max_embeddings)
        vector = dist.fixed[family]
        return None if vector is None else dict(vector)
    if isinstance(dist, Candidates):
        return trial.suggest_categorical(name, list(dist.choices))
    raise TypeError(dist)


def _expand(budget: dict[str, float], groups: list[str]) -> dict[str, float] | None:
    from raysft.sft.mask import expand_budget  # torch: a heavy import, only for budget vectors

    try:
        return expand_budget(budget, groups)
    except Exception:
        return None


def default_params(method: str, space: dict[str, Any], defaults: Callable[[str], Any], several_methods: bool) -> dict:
    """The Optuna parameters of `method`'s default trial (for `enqueue_trial`): each searched key at the value the
    config gives it when nothing is sampled (`defaults(key)`: a method setting, or a dotted config path). A default that a distribution cannot express
    (outside its range, a budget vector the family cannot produce) is left out: the default trial still runs the
    config's own value (see :func:`sample`), only the searcher's record of that key is a draw."""
    out: dict[str, Any] = {"method": method} if several_methods else {}
    chosen: dict[str, Any] = {}
    for key, dist in space.items():
        if dist.when and any(chosen.get(k) != v for k, v in dist.when.items()):
            continue
        name = f"{method}.{key}"
        value = None if isinstance(dist, Candidates) else defaults(key)
        if isinstance(dist, (FloatDist, IntDist)):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and dist.low <= value <= dist.high:
                out[name] = int(value) if isinstance(dist, IntDist) else float(value)
                chosen[key] = value
        elif isinstance(dist, CategoricalDist):
            if value in dist.choices:
                out[name] = chosen[key] = dist.choices[dist.choices.index(value)]
        elif isinstance(dist, FixedBudget):
            match = [n for n, v in dist.choices.items() if value and _same(v, value, list(set(v) | set(value)))]
            if match:
                out[name] = chosen[key] = match[0]
        elif isinstance(dist, BudgetFamilies) and value is None:
            match = [n for n, v in dist.fixed.items() if v is None]  # the whole-model rule, named in the space
            if match:
                out[f"{name}/family"] = chosen[key] = match[0]
        elif isinstance(dist, (DirichletBudget, BudgetFamilies)) and isinstance(value, dict):
            groups = (dist.group_names() if isinstance(dist, DirichletBudget)
                      else ["embeddings"] + [f"layer.{i}" for i in range(dist.layers)])
            if isinstance(dist, BudgetFamilies):
                match = [n for n, v in dist.fixed.items() if v is not None and _same(v, value, groups)]
                if match:
                    out[f"{name}/family"] = chosen[key] = match[0]
                    continue
                if "dirichlet" not in dist.families:
                    continue
            b = _expand(value, groups)
            if b is None or abs(sum(b.values()) - 1) > 1e-6:
                continue
            prefix = f"{name}_u" if isinstance(dist, DirichletBudget) else f"{name}.dirichlet_u"
            if isinstance(dist, BudgetFamilies):
                out[f"{name}/family"] = chosen[key] = "dirichlet"
            # x_g = −log u_g = b_g, normalised to b: u_g = exp(−b_g) reproduces the vector exactly
            out.update({f"{prefix}/{g}": math.exp(-b[g]) for g in groups})
        elif isinstance(dist, Candidates):
            for n, sets in dist.choices.items():
                if all(defaults(k) == v for k, v in sets.items()):
                    out[name] = chosen[key] = n
                    break
    return out


def _same(a: dict[str, float], b: dict[str, float], groups: list[str]) -> bool:
    ea, eb = _expand(a, groups), _expand(b, groups)
    return ea is not None and eb is not None and all(abs(ea[g] - eb[g]) < 1e-9 for g in groups)


DEFAULT_ATTR = "raysft.default"  # the user attribute that marks an enqueued default trial (value: its method)


def sample(trial, methods: list[str], spaces: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Define-by-run: choose a method (categorical when several), then its conditional space.

    Returns {"method": m, "settings": {...method settings...}, "overrides": {"sparse.lr": …}} and records budget
    vectors as user attributes `budget/<group>` so that they are comparable across trials. A default trial (enqueued
    with the user attribute ``raysft.default``) still asks every key (the searcher learns from it) but runs the
    config exactly as it is: its sample has no settings or overrides and ``"default": True``."""
    default_of = (getattr(trial, "user_attrs", None) or {}).get(DEFAULT_ATTR)
    is_default = bool(default_of)
    # A method with nothing to sample runs once, as its default trial; searched trials choose among the methods with
    # a space, so a sweep never repeats a trial identical to a default (the categorical's choices stay the same for
    # every trial that asks it, as TPE requires).
    searchable = [m for m in methods if spaces.get(m)] or list(methods)
    if is_default and default_of in methods and default_of not in searchable:
        return {"method": default_of, "settings": {}, "overrides": {}, "default": True}
    method = searchable[0] if len(searchable) == 1 else trial.suggest_categorical("method", searchable)
    chosen: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    overrides: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        (overrides if "." in key else settings)[key] = value

    for key, dist in spaces.get(method, {}).items():
        if dist.when and any(chosen.get(k) != v for k, v in dist.when.items()):
            continue
        value = _suggest(trial, f"{method}.{key}", dist)
        chosen[key] = value
        if isinstance(dist, Candidates):
            for k, v in dist.choices[value].items():
                put(k, v)
            settings_key = None
        else:
            put(key, value)
            settings_key = key
        if settings_key == "budget" and not is_default and value is not None:
            for g, share in value.items():
                trial.set_user_attr(f"budget/{g}", share)
    if is_default:
        return {"method": method, "settings": {}, "overrides": {}, "default": True}
    return {"method": method, "settings": settings, "overrides": overrides}


def describe(sampled: dict) -> str:
    """One line for a sampled configuration: the method, (default), then its settings and overrides."""
    parts = [sampled["method"]]
    if sampled.get("default"):
        parts.append("(default)")
    for key, value in {**sampled["settings"], **sampled["overrides"]}.items():
        if key == "budget" and value is None:
            parts.append("budget global")
        elif key == "budget":
            top = sorted(value.items(), key=lambda kv: -kv[1])[:3]
            parts.append("budget " + ",".join(f"{g}={v:.2f}" for g, v in top))
        elif isinstance(value, float):
            parts.append(f"{key}={value:.3g}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)
