"""The schema of a space YAML's search parts: each method's `space:` block (distributions and budget vectors) and the
`tune:` section. Config-level and pure pydantic: `raysft.config` validates a space with it before anything starts;
the Optuna sampling of these distributions lives in :mod:`raysft.sweep.space` (the sweep edge), which imports this
module, never the other way round.
"""

from __future__ import annotations

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


class BudgetFamilies(_Dist):
    """A budget vector from several families at once: a categorical `<name>/family` picks `dirichlet`, `shape` or
    one of the named `fixed` vectors (e.g. the seeds' best), then that family's own parameters are sampled."""

    dist: Literal["budget"]
    layers: int = Field(ge=1)
    families: list[Literal["dirichlet", "shape"]] = Field(default_factory=lambda: ["dirichlet", "shape"])
    # name -> budget vector (group or layer-range keys); null: no vector, the method's own whole-model rule (one global
    # top-K, one uniform random mask), so a method whose default has no budget can still start from its default
    fixed: dict[str, dict[str, float] | None] = {}
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
    # False: a trial scores the test sets only when its dev objective leads its kind (the defaults, or the searched
    # trials) among the trials finished so far, so the trials best-vs-default reports always have test scores and
    # the others score dev only (test never chooses anything; the test passes' share of a trial:
    # bench/sweep_overhead.py --leading, eval_test). Confirm runs always score test. True: every trial does.
    test_every_trial: bool = False
    # The computing trial renews a lease on its dense phase; one silent for this long (dead, or stopped by the
    # scheduler) loses it to a waiting trial.
    dense_lease_s: float = Field(60.0, gt=0)
    # A computing trial must show progress (a dense-phase step) this often, counting from its claim (model load and
    # the worker group's start included): one whose workers hang, or wait forever for resources, loses its lease
    # after this long even though its driver still renews it, and a waiting trial takes the dense phase over.
    dense_stall_s: float = Field(900.0, gt=0)
    # A waiting trial waits at most this long for another trial's dense phase, however well that one progresses,
    # then computes its own and keeps it to itself (publishing nothing): no trial waits without a bound.
    dense_wait_s: float = Field(21600.0, gt=0)
    # The confidence of every verdict (the paired test over seeds, the bootstrap interval of a dev score).
    confidence: float = Field(0.95, gt=0, lt=1)
    # Racing: each trial evaluates its configuration at up to this many seeds (the config's `seed`, then + 1000,
    # + 2000, …), one seed after the other, and the searcher learns from the seed-averaged objective. With early
    # stopping on (tune.scheduler: asha) the racing scheduler replaces ASHA: it stops a searched configuration once
    # the seeds it shares with the default (or the leader) rule it out (raysft.sweep.racing); with `none` every
    # configuration runs every seed. 1: one seed per trial, ASHA as before.
    seeds: int = Field(1, ge=1)


def parse_space(method: str, block: dict | None) -> dict[str, Any]:
    """Validate a method's `space:` block into distributions (one-line error naming the key on failure)."""
    try:
        return _SPACE.validate_python(block or {})
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise RaysftError(f"invalid search space methods.{method}.space.{loc}: {msg}") from None
