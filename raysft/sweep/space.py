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
Pure Python + Optuna: no Ray import, so it is testable without a cluster.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

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


Distribution = Annotated[
    Union[FloatDist, IntDist, CategoricalDist, DirichletBudget, ShapeBudget, FixedBudget], Field(discriminator="dist")
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
