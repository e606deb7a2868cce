"""The Ray Tune edge: `raysft tune <space>` = OptunaSearch (define-by-run from the YAML) + ASHA, one trial = one
driver function that fits a Ray Train `TorchTrainer` (Ray 2.60 runs Train V2: `Tuner(trainer)` is gone).

This module runs (or resumes) the sweep; the search is :mod:`raysft.sweep.study`, one trial :mod:`raysft.sweep.trial`,
the printed outcome :mod:`raysft.sweep.report`, confirm runs :mod:`raysft.sweep.confirm`, and the Ray connection and
resources :mod:`raysft.cluster`."""

from __future__ import annotations

import time

from raysft.cluster.connect import connect
from raysft.cluster.resources import (
    autoscaling_node_types,
    check_resources,
    cluster_capacity,
    default_max_concurrent,
    driver_resources,
)
from raysft.cluster.storage import machines, storage_uri
from raysft.config import Config
from raysft.errors import RaysftError
from raysft.storage import join as storage_join
from raysft.sweep.dev_record import get_record
from raysft.sweep.preflight import check_model_and_spaces, check_not_exhausted
from raysft.sweep.report import trial_lines_callback
from raysft.sweep.study import OBJECTIVE, make_searcher, uses_asha, uses_racing
from raysft.sweep.trial import run_trial
from raysft.sweep.watch import watch_sweep


def run_sweep(
    cfg: Config,
    *,
    trials: int | None = None,
    max_concurrent: int | None = None,
    address: str | None = None,
    storage: str | None = None,
    resume: bool = False,
    verbose: bool = False,
    console=None,
    tracking_uri: str | None = None,
    experiment_name: str | None = None,
    track: bool = True,
    preflight: bool = True,
    callbacks: list | None = None,
):
    """Run (or resume) the sweep; returns the Tune ResultGrid, the dense-cache counts, the experiment path and the
    wall time. With ``track``, a parent MLflow run for this invocation (the same one on --resume) and a child run per
    trial, written by a Tune callback in this driver (:mod:`raysft.tracking`). ``callbacks``: more Tune callbacks
    (after the tracking and trial-line ones), e.g. a benchmark's clock."""
    # optuna and Ray, and the modules that import Ray (dense cache, interrupt, scheduler): imported where they are
    # used (heavy imports), so that the rest of the sweep package loads without Ray
    import optuna
    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from raysft.sweep.dense_cache import get_cache
    from raysft.sweep.interrupt import InterruptStopper, graceful_interrupt, interrupted
    from raysft.sweep.scheduler import DefaultsFinishASHA, RacingScheduler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = trials if trials is not None else cfg.tune.trials
    if trials < 1:
        raise RaysftError(f"--trials {trials}: a sweep needs at least 1 trial")
    spaces = {m: cfg.method_space(m) for m in cfg.tune.methods}
    if not resume:
        check_not_exhausted(cfg, trials)
    if preflight:  # what every trial would load and check, once, here: a bad model fails now, not in N trials
        if console is not None:
            with console.status("checking model, data and search spaces"):
                check_model_and_spaces(cfg)
        else:
            check_model_and_spaces(cfg)
    connect(address, verbose)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    check_resources(cfg, nodes + autoscaling_node_types())
    hosts = machines(nodes)
    root = storage_uri(storage, len(hosts))
    cluster = ray.cluster_resources()
    concurrent = max_concurrent or cfg.tune.max_concurrent or default_max_concurrent(cfg, cluster_capacity(cluster))
    base = cfg.model_dump(mode="json")
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base, storage=root), driver_resources(cluster)
    )
    experiment = storage_join(root, cfg.name)
    if resume and not tune.Tuner.can_restore(experiment):
        raise RaysftError(f"nothing to resume at {experiment}: run `raysft tune {cfg.name}` without --resume first")
    if not resume and tune.Tuner.can_restore(experiment):
        raise RaysftError(f"a sweep already exists at {experiment}: pass --resume to finish it, or --storage elsewhere")
    tracking = None
    if track:
        from raysft.tracking.runs import SweepTracking  # imports mlflow (a heavy import), only when tracking

        tracking = SweepTracking.start(
            cfg, tracking_uri=tracking_uri, experiment=experiment_name, experiment_dir=experiment, storage_root=root,
            resume=resume, nodes=len(hosts),
        )
        if console is not None:
            console.print(
                f"tracking: experiment '{tracking.experiment}' in {tracking.uri}, "
                f"{'resumed' if tracking.resumed else 'new'} parent run {tracking.parent_run_id}",
                highlight=False, soft_wrap=True,
            )
    # The tracking callback first: a trial's run is written before its line is printed.
    callbacks = (([tracking.callback()] if tracking else []) + ([trial_lines_callback()] if console is not None else [])
                 + list(callbacks or []))
    if resume:
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True, restart_errored=False)
        # Tuner.restore brings back the callbacks pickled at the first invocation; this invocation's replace them
        # (the tracking callback holds this invocation's store and parent run).
        # Private: Ray 2.60 has no public API to give a restored Tuner a new RunConfig (Tuner.restore takes none).
        local = getattr(tuner, "_local_tuner", None)
        if local is not None:
            local.get_run_config().callbacks = callbacks
            local.get_run_config().stop = InterruptStopper()  # a sweep saved before it had one stops on Ctrl-C too
    else:
        searcher, n_defaults, n_startup = make_searcher(cfg, spaces, trials)
        if console is not None:
            console.print(
                f"{trials} trials: {n_defaults} at the defaults ({', '.join(cfg.tune.methods[:n_defaults]) or 'none'})"
                + (", then multi-objective TPE" if cfg.tune.multi_objective else f", {max(0, n_startup - n_defaults)} random, then TPE")
                + (f"; ASHA stops weak searched trials after {cfg.tune.grace_period} report(s)"
                   if uses_asha(cfg) else "")
                + (f"; racing: each configuration at up to {cfg.tune.seeds} seeds, the default at all of them"
                   + (", a searched one stopped once ruled out (paired by seed, pooled noise, "
                      f"{cfg.tune.confidence:.0%})" if uses_racing(cfg) else "") if cfg.tune.seeds > 1 else ""),
                highlight=False,
            )
        scheduler = None
        if uses_asha(cfg):
            scheduler = DefaultsFinishASHA(  # ASHA, except that the default trials (the baseline) run to the end
                metric=OBJECTIVE, mode="max", grace_period=cfg.tune.grace_period,
                reduction_factor=cfg.tune.reduction_factor, max_t=10_000,
            )
        elif uses_racing(cfg):  # seeds inside the search: a searched trial stops once its seeds rule it out
            scheduler = RacingScheduler(cfg.tune.confidence)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrent),
                scheduler=scheduler, num_samples=trials, max_concurrent_trials=concurrent,
                time_budget_s=cfg.tune.time_budget_s,
            ),
            run_config=tune.RunConfig(
                name=cfg.name, storage_path=root, callbacks=callbacks,
                verbose=1 if verbose else 0,
                failure_config=tune.FailureConfig(max_failures=1), stop=InterruptStopper(),
            ),
        )
    # The sweep's own actors, found by name by trial drivers and workers: the dense-phase cache and the record of
    # final dev scores that decides who scores the test sets. Created here and held to the end of this function: an
    # actor dies with the process that created it, and with its last handle.
    cache = get_cache(root)
    dev_record = get_record()
    started = time.perf_counter()
    stop_watch = watch_sweep(console, trials, concurrent) if console is not None else None
    say = (lambda line: console.print(line, highlight=False)) if console is not None else print
    try:
        with graceful_interrupt(say):
            grid = tuner.fit()
    except BaseException as e:
        if stop_watch is not None:
            stop_watch()
        if tracking is not None:
            tracking.finish(status="KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    if stop_watch is not None:
        stop_watch()
    cache_counts = ray.get(cache.stats.remote())
    wall = time.perf_counter() - started
    if tracking is not None:
        # sections: more markdown for the parent run's description (best vs default, issue 10, goes here)
        tracking.finish(grid, cache_counts, wall, sections=[], status="KILLED" if interrupted() else None)
    del cache, dev_record  # the sweep's trials are over: its actors may go
    return grid, cache_counts, experiment, wall
