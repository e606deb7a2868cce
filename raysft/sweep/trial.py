"""One trial of a sweep (a Ray Tune function trainable): claim or wait for the shared dense phase
(:mod:`raysft.sweep.dense_cache`), then fit the trial's Ray Train run (:func:`raysft.distributed.train_workers.fit_trial`)."""

from __future__ import annotations

import time
from typing import Any

from raysft.config import trial_config
from raysft.distributed.progress import find_board, push
from raysft.sft.methods import method_class
from raysft.sweep.space import describe
from raysft.sweep.study import uses_asha


def run_trial(config: dict, base: dict, storage: str) -> None:
    """One trial: wait for or claim the shared dense phase, then fit the trial's TorchTrainer. Every Train report
    reaches Tune through TuneReportCallback; the last one is the full composed evaluation."""
    # Ray, Ray Train and the worker's torch stack: imported where they are used (heavy imports, only ever needed
    # inside a trial)
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raysft.distributed.train_workers import fit_trial
    from raysft.sweep import dev_record
    from raysft.sweep.dense_cache import ACTOR_NAME, Lease, acquire, dense_key, find_cache

    started = time.time()
    sampled = config["sample"]
    trial_id = tune.get_context().get_trial_id()
    board = find_board()
    push(board, trial_id, phase="starting", method=sampled["method"], desc=describe(sampled))
    cfg = trial_config(base, sampled)
    # Only ASHA reads the per-epoch dev objective (it stops trials on it; TPE reads the final one). Without it (no
    # scheduler, a multi-objective sweep, a confirm run) the dev passes are skipped (their share of a trial:
    # bench/sweep_overhead.py's dev_passes, in an ASHA sweep).
    report_dev = uses_asha(cfg) and not sampled.get("confirm")
    extra: dict[str, Any] = {"report_dev": report_dev, "trial_id": trial_id, "progress": board is not None,
                             "started_at": started}
    if not (cfg.tune.test_every_trial or sampled.get("confirm")):  # test only where best vs default will read it
        extra.update(test_if_leading="default" if sampled.get("default") else "searched",
                     dev_record_actor=dev_record.ACTOR_NAME)
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
        fit_trial(
            cfg, cfg.method, num_workers=workers, cpus_per_worker=cfg.tune.cpus_per_worker,
            gpus_per_worker=cfg.tune.gpus_per_worker, storage_path=storage, name=f"train-{trial_id}",
            extra=extra, callbacks=[TuneReportCallback()], checkpoint_every=cfg.tune.report_every or None,
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
