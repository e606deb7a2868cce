"""What `raysft tune` checks in its driver before any trial starts, and `raysft tune --dry-run`.

- :func:`check_model_and_spaces`: everything `raysft train` validates (data, model loadable, K, language-SFT
  sources), for every swept method, and each space's extremes against the loaded model (a uniform DeFT-X rank above
  a matrix's size, K above the maskable entries, a budget vector naming groups the model lacks, a sampled value the
  config refuses). One line, exit code 2, seconds instead of a Ray traceback per trial.
- :func:`distinct_configurations` / :func:`check_not_exhausted`: a sweep asking for more trials than its spaces hold
  distinct configurations is refused (never N identical trials).
- :func:`first_samples`: the first trials' sampled configurations, drawn in-process by the same Optuna sampler and
  seed as the sweep's searcher (no Ray).

No Ray import here.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

from pydantic import ValidationError

from raysft.cluster.resources import driver_resources, resources_per_trial
from raysft.config import Config, trial_config
from raysft.errors import RaysftError
from raysft.sft.mask import expand_budget
from raysft.sft.methods import make_method
from raysft.space_schema import (
    BudgetFamilies,
    Candidates,
    CategoricalDist,
    DirichletBudget,
    FixedBudget,
    FloatDist,
    IntDist,
    ShapeBudget,
)
from raysft.sweep.space import describe, sample
from raysft.sweep.study import make_study, uses_asha, uses_racing

# --------------------------------------------------------------------------------------------------- counting
_UNBOUNDED = math.inf


def _choices(dist) -> list[Any] | None:
    """The finite set of values a distribution can take, or None when it is continuous."""
    if isinstance(dist, CategoricalDist):
        return list(dist.choices)
    if isinstance(dist, (FixedBudget, Candidates)):
        return list(dist.choices)
    if isinstance(dist, BudgetFamilies):
        return None if dist.families else list(dist.fixed)
    if isinstance(dist, IntDist):
        return list(range(dist.low, dist.high + 1)) if dist.high - dist.low < 1_000_000 else None
    return None  # float, dirichlet, shape: continuous


def _count(items: list[tuple[str, Any]], chosen: dict[str, Any]) -> float:
    """Distinct configurations of a conditional space (keys in order; a key whose ``when`` fails is not sampled)."""
    if not items:
        return 1
    (key, dist), rest = items[0], items[1:]
    if dist.when and any(chosen.get(k) != v for k, v in dist.when.items()):
        return _count(rest, chosen)
    values = _choices(dist)
    if values is None:
        return _UNBOUNDED
    total = 0.0
    for v in values:
        total += _count(rest, {**chosen, key: v})
        if total > 10**9:
            return _UNBOUNDED
    return total


def distinct_configurations(methods: list[str], spaces: dict[str, dict[str, Any]]) -> float:
    """How many distinct trials the sweep can sample (``math.inf`` when any chosen path has a continuous value)."""
    return sum(_count(list(spaces.get(m, {}).items()), {}) for m in methods)


def check_not_exhausted(cfg: Config, trials: int) -> None:
    spaces = {m: cfg.method_space(m) for m in cfg.tune.methods}
    n = distinct_configurations(cfg.tune.methods, spaces)
    if trials > n:
        empty = [m for m in cfg.tune.methods if not spaces.get(m)]
        label = "method" if len(empty) == 1 else "methods"
        why = (f"{label} {', '.join(empty)} {'has' if len(empty) == 1 else 'have'} no `space:` to search"
               if empty and len(empty) == len(spaces)
               else f"the spaces of {', '.join(cfg.tune.methods)} hold only {int(n)} distinct configuration(s)")
        raise RaysftError(
            f"{trials} trials asked but {why}: the sweep would repeat identical trials; use --trials {int(n)} "
            f"(or raysft train), or add ranges under methods.<method>.space"
        )


# ------------------------------------------------------------------------------------------- the space's extremes
def _extremes(dist) -> list[Any]:
    if isinstance(dist, (FloatDist, IntDist)):
        return [dist.low, dist.high]
    if isinstance(dist, CategoricalDist):
        return list(dist.choices)
    if isinstance(dist, FixedBudget):
        return [dict(v) for v in dist.choices.values()]
    if isinstance(dist, DirichletBudget):
        groups = dist.group_names()
        return [{g: 1 / len(groups) for g in groups}]
    if isinstance(dist, ShapeBudget):
        share = (1 - dist.max_embeddings) / dist.layers
        return [{"embeddings": dist.max_embeddings, **{f"layer.{i}": share for i in range(dist.layers)}}]
    if isinstance(dist, BudgetFamilies):
        out = [None if v is None else dict(v) for v in dist.fixed.values()]
        if "dirichlet" in dist.families:
            out.append({g: 1 / (dist.layers + 1) for g in ["embeddings"] + [f"layer.{i}" for i in range(dist.layers)]})
        if "shape" in dist.families:
            share = (1 - dist.max_embeddings) / dist.layers
            out.append({"embeddings": dist.max_embeddings, **{f"layer.{i}": share for i in range(dist.layers)}})
        return out
    if isinstance(dist, Candidates):
        return list(dist.choices)
    raise TypeError(dist)


def space_corners(method: str, space: dict[str, Any]) -> Iterator[tuple[str, Any, dict]]:
    """(key, value, sampled) for each key's extreme values (and every categorical choice), one key at a time, with
    the earlier choices its ``when`` needs; ``sampled`` is shaped like :func:`raysft.sweep.space.sample`'s result."""
    for key, dist in space.items():
        for value in _extremes(dist):
            # a named candidate sets its keys (as raysft.sweep.space.sample expands it)
            picked: dict[str, Any] = {}
            for k, v in {**(dist.when or {}), key: value}.items():
                cand = space.get(k)
                picked.update(cand.choices[v] if isinstance(cand, Candidates) else {k: v})
            settings = {k: v for k, v in picked.items() if "." not in k}
            overrides = {k: v for k, v in picked.items() if "." in k}
            yield key, value, {"method": method, "settings": settings, "overrides": overrides}


def _short(value: Any) -> str:
    if value is None:
        return "null (no budget vector)"
    if isinstance(value, dict):
        return "a budget vector over " + ",".join(list(value)[:4]) + ("…" if len(value) > 4 else "")
    return repr(value)


def check_spaces_against_model(cfg: Config, param_space) -> None:
    """Each method's defaults and each space key's extremes, validated as a trial would be: the config, the method's
    settings, K, and the method's own check against the model (e.g. a uniform rank above a matrix's size)."""
    base = cfg.model_dump(mode="json")
    for m in cfg.tune.methods:
        cases = [("(defaults)", None, {"method": m, "settings": {}, "overrides": {}})]
        cases += list(space_corners(m, cfg.method_space(m)))
        for key, value, sampled in cases:
            where = f"methods.{m}" if key == "(defaults)" else f"methods.{m}.space.{key} = {_short(value)}"
            try:
                tcfg = trial_config(base, sampled)
                method = make_method(m, tcfg.method_settings(m))
                k = tcfg.sft.resolve_k(param_space.n) if method.uses_k else param_space.n
                method.validate(param_space, k)
                budget = getattr(method.settings, "budget", None)
                if budget:
                    expand_budget(budget, param_space.groups)
            except ValidationError as e:
                err = e.errors()[0]
                loc = ".".join(str(x) for x in err["loc"])
                raise RaysftError(f"{where}: {loc}: {err['msg'].removeprefix('Value error, ')}: narrow the range") from None
            except RaysftError as e:
                raise RaysftError(f"{where}: {e}") from None


def check_model_and_spaces(cfg: Config, strict: bool = True) -> dict[str, Any]:
    """Load what every trial loads (data, tokenizer, model, K, language SFTs) once, in this process, and check every
    swept method and its space's extremes against it. Returns facts for the dry run (maskable entries, K, groups).
    With ``strict=False`` (the dry run) a model or data that cannot be loaded here is reported in ``skipped`` instead
    of refused; a space that does not fit a loaded model is refused either way."""
    import gc

    from raysft.train.recipe import prepare  # the model stack (transformers): a heavy import, only when checking

    try:
        run = prepare(cfg, cfg.tune.methods[0])  # one line on a bad model, data, K or language-SFT source
    except RaysftError as e:
        if strict:
            raise
        return {"skipped": str(e)}
    try:
        check_spaces_against_model(cfg, run.space)
        return {"n": run.space.n, "k": run.k, "groups": list(run.space.groups), "targets": list(run.target_langs),
                "lang_sfts": sorted(run.lang_sfts)}
    finally:
        del run
        gc.collect()


# ----------------------------------------------------------------------------------------------- the searcher
def first_samples(cfg: Config, n: int, trials: int | None = None) -> list[dict]:
    """The first ``n`` trials' sampled configurations as the sweep's searcher draws them before any result is back
    (an in-process Optuna study with the same sampler and seed, asked as OptunaSearch asks)."""
    import optuna  # imported where it is used (a heavy import)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spaces = {m: cfg.method_space(m) for m in cfg.tune.methods}
    study = make_study(cfg, spaces, trials if trials is not None else cfg.tune.trials)[0]
    return [sample(study.ask(), cfg.tune.methods, spaces) for _ in range(n)]


# ----------------------------------------------------------------------------------------------------- dry run
def describe_dist(dist) -> str:
    """One space key's distribution, short: `log 2e-05…0.0004`, `{energy, uniform}`, `vectors {dirichlet, shape, sa-best}`."""
    when = f" (when {', '.join(f'{k}={v}' for k, v in dist.when.items())})" if dist.when else ""
    if isinstance(dist, (FloatDist, IntDist)):
        body = f"{'log ' if dist.log else ''}{dist.low:g}…{dist.high:g}"
    elif isinstance(dist, CategoricalDist):
        body = "{" + ", ".join(str(c) for c in dist.choices) + "}"
    elif isinstance(dist, Candidates):
        body = "{" + ", ".join(f"{n}" + (f" ({', '.join(f'{k}={v}' for k, v in sets.items())})" if sets else "")
                               for n, sets in dist.choices.items()) + "}"
    elif isinstance(dist, BudgetFamilies):
        body = "vectors {" + ", ".join(list(dist.families) + [f"{n} (whole model)" if v is None else n
                                                              for n, v in dist.fixed.items()]) + "}"
    elif isinstance(dist, FixedBudget):
        body = "vectors {" + ", ".join(dist.choices) + "}"
    else:
        body = f"vectors {dist.dist}"
    return body + when


def dry_run_lines(cfg: Config, trials: int, max_concurrent: int | None = None, show: int = 8) -> list[str]:
    """`raysft tune --dry-run`: the resolved sweep, checked (as a real sweep is, except that a model this machine
    cannot load is noted instead of refused), its first trials' sampled configurations and what each trial asks
    Ray for. Starts nothing: no Ray, no storage, no tracking."""
    check_not_exhausted(cfg, trials)
    facts = check_model_and_spaces(cfg, strict=False)
    t = cfg.tune
    sampler = "TPE (constant_liar" + (", multi-objective: dev ↑, K ↓)" if t.multi_objective else ")")
    scheduler = (f"ASHA (grace {t.grace_period}, reduction {t.reduction_factor})" if uses_asha(cfg)
                 else f"racing (up to {t.seeds} seeds per configuration, stops at {t.confidence:.0%})" if uses_racing(cfg)
                 else "none" + (f", {t.seeds} seeds per configuration" if t.seeds > 1 else ""))
    out = [f"{cfg.name}: dry run, nothing started · {trials} trials of {', '.join(t.methods)} on {cfg.model} · "
           f"sampler {sampler}, seed {t.seed} · scheduler {scheduler}"]
    if "skipped" in facts:
        out.append(f"not checked against the model here: {facts['skipped']}")
        # the objective's languages come from the config even when the model cannot be loaded here
        targets = cfg.data.target_langs
        out.append(f"targets (the objective averages them): {', '.join(targets) if targets else 'every language the data has'}")
    else:
        out.append(f"model: {facts['n']:,} maskable entries, K = {facts['k']:,} ({facts['k'] / facts['n']:.2%}); "
                   f"targets {', '.join(facts['targets'])}; language SFTs: {', '.join(facts['lang_sfts']) or 'none'}; "
                   "every method's defaults and each space's extremes fit it")
    local, cluster = resources_per_trial(cfg, {}), resources_per_trial(cfg, {"raysft_driver": 1})
    worker = f"{t.cpus_per_worker:g} CPU" + (f" + {t.gpus_per_worker:g} GPU" if t.gpus_per_worker else "")
    out.append(
        f"each trial: {t.num_workers} Ray Train worker(s) × ({worker}) + a driver "
        f"({driver_resources({})['CPU']:g} CPU on a local Ray; 1 raysft_driver and 0 CPU on a cluster head) = "
        f"{local['CPU']:g} CPU, {local['GPU']:g} GPU locally ({cluster['CPU']:g} CPU, {cluster['GPU']:g} GPU on workers "
        f"of a cluster); trials at once: {max_concurrent or t.max_concurrent or 'as many as the cluster holds'}"
    )
    out.append("spaces (each method starts at its defaults, then samples these):")
    for m in t.methods:
        space = cfg.method_space(m)
        out.append(f"  {m}: " + (" · ".join(f"{key} {describe_dist(d)}" for key, d in space.items()) or "nothing (defaults only)"))
    n = min(trials, show)
    out.append(f"first {n} trial(s), as the sweep's searcher draws them:")
    for i, sampled in enumerate(first_samples(cfg, n, trials), 1):
        out.append(f"  {i:>3}  {describe(sampled)}")
    return out
