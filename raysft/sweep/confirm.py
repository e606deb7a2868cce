"""`raysft tune --confirm`: the sweep's best configurations and its default rerun with fresh seeds, as Ray trials
(no scheduler: every run reaches its full evaluation), paired by seed and judged by :mod:`raysft.outcome`."""

from __future__ import annotations

from raysft.cluster.connect import connect
from raysft.cluster.resources import cluster_capacity, default_max_concurrent, driver_resources
from raysft.config import Config
from raysft.errors import RaysftError
from raysft.outcome import Row, confirm_summary, confirm_verdict, errored, row_of
from raysft.stats import CONFIDENCE
from raysft.sweep.racing import SEED_STEP
from raysft.sweep.report import trial_lines_callback
from raysft.sweep.trial import run_trial
from raysft.sweep.watch import watch_sweep


def confirm_seeds(base_seed: int, n: int, racing: int = 1) -> list[int]:
    """n seeds, none equal to a seed the sweep ran (``base_seed``, and with ``racing`` seeds per trial its racing
    seeds, :func:`raysft.sweep.racing.racing_seeds`) nor to the neighbours the recipe derives from a seed (seed + 1
    orders the sparse phase's data): fresh seeds test the configurations on noise the sweep did not choose them on."""
    if n < 1:
        raise RaysftError(f"--seeds {n}: confirm needs at least 1 seed")
    return [base_seed + SEED_STEP * (max(1, racing) + i) for i in range(n)]


def confirm_picks(items, top: int) -> list[tuple[str, dict]]:
    """(label, sampled) of the top ``top`` searched trials with a full evaluation, by dev objective, and the best
    default trial (label: its trial id; the default's sample keeps ``default: True``). Each row and its sample come
    from the same trial (a trial that never reported has no row: a list of rows never lines up with the trials)."""
    if top < 1:
        raise RaysftError(f"--top {top}: confirm at least 1 configuration")
    pairs = [(row, t.config["sample"]) for t in items if (row := row_of(t)) is not None]
    finals = sorted(((r, s) for r, s in pairs if r.final and isinstance(r.dev, (int, float))), key=lambda p: -p[0].dev)
    searched = [p for p in finals if not p[0].default][:top]
    default = [p for p in finals if p[0].default][:1]
    if not searched and not default:
        raise RaysftError("no trial of this sweep has a full evaluation: nothing to confirm (let the sweep finish first)")
    return [(r.id, sampled) for r, sampled in default + searched]


def confirm_samples(picks: list[tuple[str, dict]], seeds: list[int]) -> list[dict]:
    """One trial sample per (configuration, seed): the configuration's own sample with ``seed`` overridden (the seed
    drives the data order, the head's init and Rand-SFT's mask) and a ``confirm`` record {config, seed}."""
    out = []
    # seed-major: each seed's configurations run one after the other, so they share that seed's dense phase while it
    # is fresh, and a confirm stopped early still holds complete pairs (every configuration at the same seeds)
    for seed in seeds:
        for label, sampled in picks:
            s = {"method": sampled["method"], "settings": dict(sampled.get("settings") or {}),
                 "overrides": {**(sampled.get("overrides") or {}), "seed": seed},
                 "confirm": {"config": label, "seed": seed}}
            if sampled.get("default"):
                s["default"] = True
            out.append(s)
    return out


def confirm_rows(items) -> list[tuple[str, int, Row]]:
    """(configuration label, seed, row) of every confirm trial, each read from that trial's own config (its sample's
    ``confirm`` record), never from its position among the trials. A trial that failed or never reported gets a row
    without a full evaluation: :func:`raysft.outcome.confirm_summary` shows it as failed and the test leaves it out."""
    out = []
    for t in items:
        sampled = (getattr(t, "config", None) or {}).get("sample") or {}
        c = sampled.get("confirm") or {}
        if "config" not in c or "seed" not in c:
            continue  # not a confirm trial (nothing to label it with)
        row = row_of(t)
        if row is None:  # never reported: what it was comes from its sample alone
            row = Row(id=str(getattr(t, "trial_id", None) or "?"), method=sampled.get("method", "?"), dev=None,
                      default=bool(sampled.get("default")), final=False)
        elif errored(t):
            row.final = False
        row.label, row.seed = str(c["config"]), int(c["seed"])
        out.append((row.label, row.seed, row))
    return out


def run_confirm(
    base: dict,
    picks: list[tuple[str, dict]],
    seeds: list[int],
    *,
    root: str,
    name: str,
    address: str | None = None,
    verbose: bool = False,
    console=None,
    tracking=None,
    max_concurrent: int | None = None,
    done: list | None = None,
):
    """Rerun each picked configuration with each seed, as Ray trials (one Ray Train run each, no scheduler: every
    run goes to its full evaluation), logged under the sweep's parent run when ``tracking`` is given. ``done``:
    (label, seed, row) of confirm runs that already finished (:meth:`SweepTracking.confirmed_rows`); those pairs are
    not rerun but count in the summary. Returns the confirm summary (:func:`raysft.outcome.confirm_summary`), its
    verdict (:func:`raysft.outcome.confirm_verdict`, at the config's ``tune.confidence``) and the result grid (None
    when every pair was done)."""
    labels = {label for label, _ in picks}
    done = [(label, seed, row) for label, seed, row in (done or []) if label in labels and seed in seeds]
    have = {(label, seed) for label, seed, _ in done}
    samples = [s for s in confirm_samples(picks, seeds) if (s["confirm"]["config"], s["confirm"]["seed"]) not in have]
    if console is not None and have:
        console.print(f"confirm: {len(have)} of {len(picks) * len(seeds)} runs already finished under this sweep "
                      f"(kept); {len(samples)} to run", highlight=False)
    grid = _confirm_trials(base, picks, seeds, samples, root=root, name=name, address=address, verbose=verbose,
                           console=console, tracking=tracking, max_concurrent=max_concurrent) if samples else None
    summary = confirm_summary(done + (confirm_rows(list(grid)) if grid is not None else []))
    verdict = confirm_verdict(summary, float((base.get("tune") or {}).get("confidence", CONFIDENCE)))
    if tracking is not None:
        tracking.log_confirm(summary, verdict, seeds)
    return summary, verdict, grid


def _confirm_trials(base: dict, picks, seeds, samples: list[dict], *, root, name, address, verbose, console, tracking,
                    max_concurrent):
    import ray  # imported where it is used (a heavy import)
    from ray import tune

    from raysft.sweep.dense_cache import get_cache  # imports Ray

    cfg = Config.model_validate(base)
    connect(address, verbose)
    cluster = ray.cluster_resources()
    concurrent = max_concurrent or cfg.tune.max_concurrent or default_max_concurrent(cfg, cluster_capacity(cluster))
    trainable = tune.with_resources(tune.with_parameters(run_trial, base=base, storage=root), driver_resources(cluster))
    callbacks = ([tracking.callback()] if tracking else []) + ([trial_lines_callback()] if console is not None else [])
    if console is not None:
        console.print(f"confirm: {len(picks)} configurations × seeds {', '.join(map(str, seeds))}: {len(samples)} runs",
                      highlight=False)
    tuner = tune.Tuner(
        trainable,
        param_space={"sample": tune.grid_search(samples)},
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(name=name, storage_path=root, callbacks=callbacks, verbose=1 if verbose else 0,
                                  failure_config=tune.FailureConfig(max_failures=1)),
    )
    # The handle is held until every confirm run is over: the actor dies with its last handle, and trials find it by
    # name (a dropped handle let it be collected mid-confirm).
    cache = get_cache(root)
    # the same live display as the sweep's: a confirm run takes minutes (its own dense phase per seed)
    stop_watch = watch_sweep(console, len(samples), concurrent) if console is not None else None
    try:
        return tuner.fit()
    finally:
        if stop_watch is not None:
            stop_watch()
        del cache
