"""One trial of a sweep (a Ray Tune function trainable): claim or wait for the shared dense phase
(:mod:`raysft.sweep.dense_cache`), then fit the trial's Ray Train run (:func:`raysft.distributed.train_workers.fit_trial`);
when racing (``tune.seeds`` > 1), one such fit per seed (:mod:`raysft.sweep.racing`)."""

from __future__ import annotations

import time
from typing import Any

from raysft.config import Config, trial_config
from raysft.distributed.progress import find_board, push
from raysft.sft.methods import method_class
from raysft.sweep.racing import STATE_FILE, Race, racing_seeds
from raysft.sweep.space import describe
from raysft.sweep.study import uses_asha


def run_trial(config: dict, base: dict, storage: str) -> None:
    """One trial: wait for or claim the shared dense phase, then fit the trial's TorchTrainer. Every Train report
    reaches Tune through TuneReportCallback; the last one is the full composed evaluation. Racing, the trial runs
    its configuration seed by seed instead and reports once per seed (:func:`race`)."""
    # Ray, Ray Train and the worker's torch stack: imported where they are used (heavy imports, only ever needed
    # inside a trial)
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raysft.sweep import dev_record

    started = time.time()
    sampled = config["sample"]
    trial_id = tune.get_context().get_trial_id()
    board = find_board()
    push(board, trial_id, phase="starting", method=sampled["method"], desc=describe(sampled))
    cfg = trial_config(base, sampled)
    racing = cfg.tune.seeds > 1 and not sampled.get("confirm")
    # Only ASHA reads the per-epoch dev objective (it stops trials on it; TPE reads the final one). Without it (no
    # scheduler, a multi-objective sweep, a racing one, a confirm run) the dev passes are skipped (their share of a
    # trial: bench/sweep_overhead.py's dev_passes, in an ASHA sweep).
    report_dev = uses_asha(cfg) and not sampled.get("confirm")
    extra: dict[str, Any] = {"report_dev": report_dev, "trial_id": trial_id, "progress": board is not None,
                             "started_at": started}
    # Test only where best vs default will read it. Racing, every seed scores test: the verdict pairs the test
    # scores by seed as it pairs dev, and a seed's run cannot know whether its configuration will lead at the end.
    if not (cfg.tune.test_every_trial or sampled.get("confirm") or racing):
        extra.update(test_if_leading="default" if sampled.get("default") else "searched",
                     dev_record_actor=dev_record.ACTOR_NAME)
    if racing:
        race(cfg, base, sampled, storage, trial_id, extra, board)
        return
    fit_with_cache(cfg, storage, f"train-{trial_id}", extra, board, trial_id, callbacks=[TuneReportCallback()])


def race(cfg: Config, base: dict, sampled: dict, storage: str, trial_id: str, extra: dict, board) -> None:
    """A racing trial: its configuration at each of its seeds in turn (one Ray Train run each, its own dense-cache
    claim at that seed), one Tune report and checkpoint after each (:class:`raysft.sweep.racing.Race`). A retried or
    resumed trial reads its checkpoint and continues at its next seed. The racing scheduler may stop it after any
    report (Ray then ends this function)."""
    import tempfile
    from pathlib import Path

    from ray import tune

    seeds = racing_seeds(cfg.seed, cfg.tune.seeds)
    state = Race(seeds)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            f = Path(d) / STATE_FILE
            if f.is_file():
                state = Race.from_json(f.read_text(), seeds)
    for seed in state.todo():
        seeded = trial_config(base, {**sampled, "overrides": {**(sampled.get("overrides") or {}), "seed": seed}})
        delta, metrics = fit_with_cache(seeded, storage, f"train-{trial_id}-seed{seed}",
                                        {**extra, "started_at": time.time()}, board, trial_id)
        state.record(seed, metrics, str(delta.parent))
        with tempfile.TemporaryDirectory(prefix="raysft-race-") as d:
            (Path(d) / STATE_FILE).write_text(state.to_json())
            tune.report(state.report(seed), checkpoint=tune.Checkpoint.from_directory(d))


def fit_with_cache(cfg: Config, storage: str, name: str, extra: dict, board, trial_id: str,
                   callbacks: list | None = None):
    """One Ray Train fit of ``cfg`` (:func:`fit_trial`), its dense phase claimed in (or read from) the sweep's
    dense-phase cache under ``cfg``'s key; returns ``fit_trial``'s (delta path, metrics)."""
    from raysft.distributed.train_workers import fit_trial
    from raysft.sweep.dense_cache import ACTOR_NAME, Lease, acquire, dense_key, find_cache

    extra = dict(extra)
    # The sweep's driver holds the cache; without one (no sweep driver) there is nobody to share θ1 with.
    cache = find_cache() if cfg.tune.dense_cache and method_class(cfg.method).first_phase == "dense" else None
    claim, key, lease = None, None, None
    workers = cfg.tune.num_workers
    if cache is not None:
        tune_cfg = cfg.tune
        key = dense_key(cfg, workers)
        claim = acquire(cache, key, trial_id, lease_s=tune_cfg.dense_lease_s, stall_s=tune_cfg.dense_stall_s,
                        max_wait_s=tune_cfg.dense_wait_s,
                        on_wait=lambda: push(board, trial_id, phase="waiting for θ1"))
        if claim.status == "compute":
            # Renewed until θ1 is published; the rank-0 worker reports the dense phase's steps (the lease's proof of
            # progress) and publishes θ1 (done) as soon as it is written.
            lease = Lease(cache, key, claim.attempt, tune_cfg.dense_lease_s)
            extra.update(theta1_path=claim.path, theta1_mode="save", theta1_save_path=claim.write_path,
                         theta1_key=key, theta1_actor=ACTOR_NAME, theta1_attempt=claim.attempt)
        elif claim.status == "ready":
            extra.update(theta1_path=claim.path, theta1_mode="load")
        # "alone": waited past tune.dense_wait_s; the trial runs its own dense phase and publishes nothing
        extra["dense_ready_at"] = time.time()
    push(board, trial_id, phase="workers")
    try:
        out = fit_trial(
            cfg, cfg.method, num_workers=workers, cpus_per_worker=cfg.tune.cpus_per_worker,
            gpus_per_worker=cfg.tune.gpus_per_worker, storage_path=storage, name=name,
            extra=extra, callbacks=callbacks, checkpoint_every=cfg.tune.report_every or None,
        )
    except BaseException:
        if lease is not None:
            cache.failed.remote(key, claim.attempt)  # a no-op when θ1 was already published
        raise
    finally:
        if lease is not None:
            lease.stop()
    if lease is not None:
        import ray  # imported where it is used (a heavy import)

        # The worker published θ1 already, unless the cache did not answer it: a repeated done changes nothing, and
        # one refused (this attempt lost its lease meanwhile) leaves the taker's θ1 as the published one. A finished
        # trial's result never depends on it.
        try:
            ray.get(cache.done.remote(key, claim.attempt), timeout=60)
        except Exception:
            pass
    return out
