"""The sweep's search: the Optuna study and its sampler (the swept methods' defaults enqueued first, random start-up
trials, then TPE), Ray Tune's OptunaSearch over the define-by-run space, and whether ASHA races the trials."""

from __future__ import annotations

import functools
import math
from typing import Any

from raysft.config import Config
from raysft.sweep.space import DEFAULT_ATTR, default_params, sample

OBJECTIVE = "objective"
STUDY = "raysft"


def default_lookup(cfg: Config, method: str):
    """key -> the value a trial of `method` runs with when the sweep samples nothing for it (a method setting, or a
    dotted config path such as ``sparse.lr``)."""
    base = cfg.model_dump(mode="json")
    settings = cfg.method_settings(method).model_dump(mode="json")

    def get(key: str):
        if "." not in key:
            return settings.get(key)
        node: Any = base
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    return get


def startup_trials(cfg: Config, trials: int) -> tuple[int, int]:
    """(default trials, TPE's n_startup_trials): the defaults, then a few random trials (tune.n_startup_trials, or
    about a third of the searched trials, 1 to 10), then TPE. Optuna counts the default trials as start-up trials."""
    n_defaults = min(trials, len(cfg.tune.methods)) if cfg.tune.run_defaults else 0
    searched = max(0, trials - n_defaults)
    random = cfg.tune.n_startup_trials
    if random is None:
        random = max(1, min(10, math.ceil(searched / 3)))
    return n_defaults, n_defaults + random


def make_study(cfg: Config, spaces: dict, trials: int):
    """The sweep's Optuna study (in memory) and sampler: the swept methods at their spaces' defaults enqueued first
    (``enqueue_trial`` with the user attribute ``raysft.default``), then random start-up trials, then TPE (MOTPE
    when multi-objective). The dry run asks the same study. Returns (study, storage, sampler, n_defaults, n_startup)."""
    import optuna  # imported where it is used (a heavy import)

    n_defaults, n_startup = startup_trials(cfg, trials)
    # TPE, seeded, constant_liar (many trials run at once); multi-objective, the same TPE runs as MOTPE. Not
    # NSGA-II: Optuna 5's holds a lock and Tune pickles its searcher (tuner.pkl), so such a sweep died at once.
    sampler = optuna.samplers.TPESampler(seed=cfg.tune.seed, constant_liar=True, n_startup_trials=n_startup)
    directions = ({"directions": ["maximize", "minimize"]} if cfg.tune.multi_objective else {"direction": "maximize"})
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name=STUDY, sampler=sampler, **directions)
    several = sum(1 for m in cfg.tune.methods if spaces.get(m)) > 1  # the methods a searched trial chooses from
    for method in cfg.tune.methods[:n_defaults]:
        params = default_params(method, spaces.get(method, {}), default_lookup(cfg, method), several)
        study.enqueue_trial(params, user_attrs={DEFAULT_ATTR: method})
    return study, storage, sampler, n_defaults, n_startup


def make_searcher(cfg: Config, spaces: dict, trials: int):
    """OptunaSearch over the define-by-run space, on a study whose first trials are the swept methods at their
    spaces' defaults (``enqueue_trial`` with the user attribute ``raysft.default``: :func:`sample` sees it and runs
    the config as it is), then random start-up trials, then TPE."""
    from ray.tune.search.optuna import OptunaSearch  # Ray: imported where it is used (a heavy import)

    study, storage, sampler, n_defaults, n_startup = make_study(cfg, spaces, trials)
    metric, mode = ([OBJECTIVE, "k"], ["max", "min"]) if cfg.tune.multi_objective else (OBJECTIVE, "max")
    return OptunaSearch(
        space=functools.partial(define_by_run, methods=cfg.tune.methods, spaces=spaces),
        metric=metric, mode=mode, sampler=sampler, study_name=STUDY, storage=storage,
    ), n_defaults, n_startup


def define_by_run(trial, methods: list[str], spaces: dict) -> dict:
    """Module-level (the searcher is pickled): the sampled method, its settings and config overrides."""
    return {"sample": sample(trial, methods, spaces)}


def uses_asha(cfg: Config) -> bool:
    """Whether the sweep stops trials early with ASHA (on each report's dev objective). Not when racing: a racing
    trial reports once per seed, and the racing scheduler stops it on the seeds' test instead."""
    return cfg.tune.scheduler == "asha" and not cfg.tune.multi_objective and cfg.tune.seeds == 1


def uses_racing(cfg: Config) -> bool:
    """Whether the sweep stops trials with the racing scheduler (:class:`raysft.sweep.scheduler.RacingScheduler`):
    several seeds per trial and early stopping on. A multi-objective sweep keeps every configuration (one worse on
    dev may be better on K), so its trials run every seed."""
    return cfg.tune.scheduler == "asha" and not cfg.tune.multi_objective and cfg.tune.seeds > 1
