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
Pure Python + Optuna: no Ray import, so it is testable without a cluster.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Callable, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from raysft.errors import RaysftError


class _Dist(BaseModel):
    model_config = ConfigDict(extra="forbid")
    when: dict[str, Any] | None = None  # conditional: only when these earlier choices hold


class FloatDist(_Dist):
    dist: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _range(self):
        if not self.low < self.high:
            raise ValueError(f"empty range: low {self.low} must be < high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self


class IntDist(_Dist):
    dist: Literal["int"]
    low: int
    high: int
    log: bool = False

    @model_validator(mode="after")
    def _range(self):
        if not self.low <= self.high:
            raise ValueError(f"empty range: low {self.low} must be <= high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self


class CategoricalDist(_Dist):
    dist: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)


class DirichletBudget(_Dist):
    dist: Literal["dirichlet"]
    groups: list[str] | None = None  # default: embeddings + layer.0 … layer.{layers-1}
    layers: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _groups(self):
        if self.groups is None and self.layers is None:
            raise ValueError("a dirichlet budget needs `layers: L` or an explicit `groups:` list")
        for g in self.group_names():
            if g != "embeddings" and not (g.startswith("layer.") and g[6:].isdigit()):
                raise ValueError(f"unknown group '{g}' in a dirichlet budget: use embeddings or layer.<i>")
        return self

    def group_names(self) -> list[str]:
        return self.groups or ["embeddings"] + [f"layer.{i}" for i in range(self.layers)]


class ShapeBudget(_Dist):
    dist: Literal["shape"]
    layers: int = Field(ge=1)
    max_embeddings: float = Field(0.1, ge=0, lt=1)


class FixedBudget(_Dist):
    dist: Literal["fixed"]
    choices: dict[str, dict[str, float]] = Field(min_length=1)  # name -> budget vector


class BudgetFamilies(_Dist):
    """A budget vector from several families at once: a categorical `<name>/family` picks `dirichlet`, `shape` or
    one of the named `fixed` vectors (e.g. the seeds' best), then that family's own parameters are sampled."""

    dist: Literal["budget"]
    layers: int = Field(ge=1)
    families: list[Literal["dirichlet", "shape"]] = Field(default_factory=lambda: ["dirichlet", "shape"])
    fixed: dict[str, dict[str, float]] = {}  # name -> budget vector (group or layer-range keys)
    max_embeddings: float = Field(0.1, ge=0, lt=1)  # the shape family's cap on the embeddings' share

    @model_validator(mode="after")
    def _names(self):
        clash = set(self.fixed) & {"dirichlet", "shape"}
        if clash:
            raise ValueError(f"fixed vector name(s) {', '.join(sorted(clash))} clash with a family name: rename them")
        if not self.families and not self.fixed:
            raise ValueError("a budget needs at least one family or one fixed vector")
        return self

    def choices(self) -> list[str]:
        return list(self.families) + list(self.fixed)


class Candidates(_Dist):
    """Named candidates that each set several keys at once (method settings, or dotted config paths such as
    `sft.k`, `sft.freeze_embeddings`, `sparse.lr`), e.g. a report's variants. A later key of the space can depend on
    the choice with `when: {<this key>: <name>}`."""

    dist: Literal["candidates"]
    choices: dict[str, dict[str, Any]] = Field(min_length=1)  # name -> {key: value}


Distribution = Annotated[
    Union[FloatDist, IntDist, CategoricalDist, DirichletBudget, ShapeBudget, FixedBudget, BudgetFamilies, Candidates],
    Field(discriminator="dist"),
]
_SPACE = TypeAdapter(dict[str, Distribution])


class TuneConfig(BaseModel):
    """The `tune:` section: what `raysft tune` searches and how."""

    model_config = ConfigDict(extra="forbid")
    methods: list[str] = Field(default_factory=lambda: ["lt-sft"], min_length=1)  # categorical when several
    trials: int = Field(8, ge=1)
    max_concurrent: int | None = Field(None, ge=1)  # None: what the cluster's resources allow
    metric: Literal["dev", "test"] = "dev"  # the objective: the targets' average on dev (test is only reported)
    seed: int = 0
    multi_objective: bool = False  # (objective ↑, K ↓): a Pareto front when K is searched
    # TPE's random start-up: the default trials, then this many random ones, then TPE (Optuna's own default, 10,
    # would make every sweep of 10 trials or fewer a random search). None: about a third of the searched trials.
    n_startup_trials: int | None = Field(None, ge=0)
    time_budget_s: float | None = Field(None, gt=0)  # stop starting trials (and stop running ones) after this long
    run_defaults: bool = True  # the first trials: every swept method at its space's defaults (labelled "default")
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1)  # ASHA: reports before a trial may be stopped
    reduction_factor: int = Field(2, ge=2)
    num_workers: int = Field(1, ge=1)  # Ray Train workers per trial
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    report_every: int = Field(0, ge=0)  # sparse steps between intermediate dev reports (0: once per epoch)
    dense_cache: bool = True  # trials with the same dense settings share one dense phase


def parse_space(method: str, block: dict | None) -> dict[str, Any]:
    """Validate a method's `space:` block into distributions (one-line error naming the key on failure)."""
    try:
        return _SPACE.validate_python(block or {})
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise RaysftError(f"invalid search space methods.{method}.space.{loc}: {msg}") from None


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
        return dict(dist.fixed[family])
    if isinstance(dist, Candidates):
        return trial.suggest_categorical(name, list(dist.choices))
    raise TypeError(dist)


def _expand(budget: dict[str, float], groups: list[str]) -> dict[str, float] | None:
    from raysft.sft.mask import expand_budget

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
        elif isinstance(dist, (DirichletBudget, BudgetFamilies)) and isinstance(value, dict):
            groups = (dist.group_names() if isinstance(dist, DirichletBudget)
                      else ["embeddings"] + [f"layer.{i}" for i in range(dist.layers)])
            if isinstance(dist, BudgetFamilies):
                match = [n for n, v in dist.fixed.items() if _same(v, value, groups)]
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
    method = methods[0] if len(methods) == 1 else trial.suggest_categorical("method", methods)
    is_default = bool((getattr(trial, "user_attrs", None) or {}).get(DEFAULT_ATTR))
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
        if settings_key == "budget" and not is_default:
            for g, share in value.items():
                trial.set_user_attr(f"budget/{g}", share)
    if is_default:
        return {"method": method, "settings": {}, "overrides": {}, "default": True}
    return {"method": method, "settings": settings, "overrides": overrides}
