"""The Ray Tune edge: `raysft tune <space>` = OptunaSearch (define-by-run from the YAML) + ASHA, one trial = one
driver function that fits a Ray Train `TorchTrainer` (Ray 2.60 runs Train V2: `Tuner(trainer)` is gone)."""

from __future__ import annotations

import functools
import math
import os
import time
from pathlib import Path
from typing import Any

from raysft.cluster.storage import DRIVER_RESOURCE, STORAGE_ENV, is_remote_uri, machines, node_local_problem
from raysft.config import Config, trial_config  # noqa: F401 (trial_config: re-exported)
from raysft.errors import RaysftError
from raysft.storage import join as storage_join
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
    import optuna

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
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    study, storage, sampler, n_defaults, n_startup = make_study(cfg, spaces, trials)
    metric, mode = ([OBJECTIVE, "k"], ["max", "min"]) if cfg.tune.multi_objective else (OBJECTIVE, "max")
    return OptunaSearch(
        space=functools.partial(define_by_run, methods=cfg.tune.methods, spaces=spaces),
        metric=metric, mode=mode, sampler=sampler, study_name=STUDY, storage=storage,
    ), n_defaults, n_startup


def define_by_run(trial, methods: list[str], spaces: dict) -> dict:
    """Module-level (the searcher is pickled): the sampled method, its settings and config overrides."""
    return {"sample": sample(trial, methods, spaces)}


def run_trial(config: dict, base: dict, storage: str) -> None:
    """One trial: wait for or claim the shared dense phase, then fit the trial's TorchTrainer. Every Train report
    reaches Tune through TuneReportCallback; the last one is the full composed evaluation."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raysft.distributed.progress import find_board, push
    from raysft.distributed.train_workers import fit_trial
    from raysft.sft.methods import method_class
    from raysft.sweep.dense_cache import ACTOR_NAME, Lease, acquire, dense_key, get_cache

    started = time.time()
    sampled = config["sample"]
    trial_id = tune.get_context().get_trial_id()
    board = find_board()
    push(board, trial_id, phase="starting", method=sampled["method"], desc=describe(sampled))
    cfg = trial_config(base, sampled)
    # Only ASHA reads the per-epoch dev objective (it stops trials on it; TPE reads the final one). Without it (no
    # scheduler, a multi-objective sweep, a confirm run) the dev passes are skipped: ~17 % of a sa-cpu trial here.
    report_dev = uses_asha(cfg) and not sampled.get("confirm")
    extra: dict[str, Any] = {"report_dev": report_dev, "trial_id": trial_id, "progress": board is not None,
                             "started_at": started}
    if not (cfg.tune.test_every_trial or sampled.get("confirm")):  # test only where best vs default will read it
        extra["test_if_leading"] = "default" if sampled.get("default") else "searched"
    cache, key, lease = None, None, None
    workers = cfg.tune.num_workers
    if cfg.tune.dense_cache and method_class(cfg.method).first_phase == "dense":
        cache, key = get_cache(storage), dense_key(cfg, workers)
        status, path = acquire(cache, key, trial_id, lease_s=cfg.tune.dense_lease_s,
                               on_wait=lambda: push(board, trial_id, phase="waiting for θ1"))
        extra.update(theta1_path=path, theta1_mode="save" if status == "compute" else "load")
        if status == "compute":
            # Renewed until θ1 is published; the rank-0 worker publishes it (done) as soon as it is written.
            lease = Lease(cache, key, trial_id, cfg.tune.dense_lease_s)
            extra.update(theta1_key=key, theta1_actor=ACTOR_NAME)
            _test_hook_computing()
        extra["dense_ready_at"] = time.time()
    push(board, trial_id, phase="workers")
    try:
        fit_trial(
            cfg, cfg.method, num_workers=workers, cpus_per_worker=cfg.tune.cpus_per_worker,
            gpus_per_worker=cfg.tune.gpus_per_worker, storage_path=storage, name=f"train-{trial_id}",
            extra=extra, callbacks=[TuneReportCallback()], checkpoint_every=cfg.tune.report_every or None,
        )
    except BaseException:
        if cache is not None and extra.get("theta1_mode") == "save":
            cache.failed.remote(key, trial_id)  # a no-op when θ1 was already published
        raise
    finally:
        if lease is not None:
            lease.stop()
    if cache is not None and extra.get("theta1_mode") == "save":
        import ray

        ray.get(cache.done.remote(key, trial_id))


def uses_asha(cfg: Config) -> bool:
    """Whether the sweep stops trials early with ASHA (on each report's dev objective)."""
    return cfg.tune.scheduler == "asha" and not cfg.tune.multi_objective


def _test_hook_computing() -> None:
    """Tests only. ``RAYSFT_TEST_DENSE_HOOK=<folder>`` whose ``actions`` file lists, one per line, what the next trials
    that claim a dense phase do, before any of it: ``stop`` (the process is terminated, SIGTERM, as Ray ends a trial
    that the scheduler stops: no exception reaches this driver) or ``kill`` (it exits at once, as on a lost node)."""
    folder = os.environ.get("RAYSFT_TEST_DENSE_HOOK")
    if not folder:
        return
    actions = Path(folder) / "actions"
    todo = actions.read_text().split() if actions.exists() else []
    if not todo:
        return
    actions.write_text("\n".join(todo[1:]))
    with open(Path(folder) / "done", "a") as f:
        f.write(todo[0] + "\n")
    if todo[0] == "kill":
        os._exit(1)
    import signal

    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)  # terminated meanwhile; never returns into the trial


def describe(sampled: dict) -> str:
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


def pareto_front(points: list[tuple[str, float, int]]) -> list[tuple[str, float, int]]:
    """The (name, objective ↑, K ↓) points no other point dominates (at least as good on both, better on one),
    by K ascending."""
    front = [
        p for p in points
        if not any(q[1] >= p[1] and q[2] <= p[2] and (q[1] > p[1] or q[2] < p[2]) for q in points)
    ]
    return sorted(front, key=lambda p: (p[2], -p[1]))


def pareto_lines(grid) -> list[str]:
    """A multi-objective sweep's Pareto front over its fully evaluated trials, one line per trial."""
    points = []
    for result in grid:
        m = result.metrics or {}
        if m.get("phase") == "final" and m.get("k") is not None and m.get(OBJECTIVE) == m.get(OBJECTIVE):
            points.append((f"{m.get('trial_id', '?')}: {describe(result.config['sample'])}", m[OBJECTIVE], int(m["k"])))
    front = pareto_front(points)
    return [f"Pareto front (dev ↑, K ↓), {len(front)} of {len(points)} trials:"] + [
        f"  {name} → dev {score:.4f} at K={k:,}" for name, score, k in front
    ]


def trial_lines_callback():
    """A Tune callback: one line per finished trial (method, key parameters, dev score, time), handed to the sweep's
    progress board, whose watcher prints it (:mod:`raysft.sweep.watch`). It holds no console or actor handle (Tune
    pickles its callbacks); the board is found by name."""
    from ray.tune import Callback

    from raysft.distributed.progress import find_board, push

    class TrialLines(Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            r = trial.last_result or {}
            score = r.get(OBJECTIVE, float("nan"))
            final = r.get("phase") == "final"
            stopped = "" if final else ", stopped early"
            reused = ", dense reused" if r.get("dense_cache") == "reused" else ""
            test = r.get("avg/test")
            test = f" test {test:.4f}" if isinstance(test, (int, float)) else ""
            line = (f"trial {trial.trial_id}: {describe(trial.config['sample'])} → dev {score:.4f}{test} "
                    f"({r.get('time_total_s', 0):.0f}s{reused}{stopped}) · {outcome_of(trials).line()}")
            push(find_board(), trial.trial_id, phase="done" if final else "stopped", line=line, ended=time.time(),
                 method=trial.config["sample"]["method"])

        def on_trial_error(self, iteration, trials, trial, **info):
            push(find_board(), trial.trial_id, phase="failed", ended=time.time(),
                 line=f"trial {trial.trial_id}: {describe(trial.config['sample'])} failed")

    return TrialLines()


def outcome_of(items):
    """Best searched trial vs default over Tune trials or results (:mod:`raysft.outcome`)."""
    from raysft.outcome import outcome_of as _outcome_of

    return _outcome_of(items)


def watch_sweep(console, trials: int, concurrent: int, interval_s: float = 1.0):
    """Start drawing the sweep's progress (a thread reading the progress board every ``interval_s``); returns a
    function that draws what is left and stops."""
    import threading

    import ray

    from raysft.distributed.progress import get_board
    from raysft.sweep.watch import SweepWatch

    board = get_board()  # created here: it lives as long as this driver; trials find it by name
    watch = SweepWatch(console, trials, concurrent).__enter__()
    stop = threading.Event()
    cursor = [0]

    def read() -> None:
        try:
            states, events, cursor[0] = ray.get(board.read.remote(cursor[0]), timeout=30)
        except Exception:  # a slow or lost read only delays the display
            return
        watch.update(states, events)

    def loop() -> None:
        while not stop.wait(interval_s):
            read()

    thread = threading.Thread(target=loop, name="raysft-watch", daemon=True)
    thread.start()

    def finish() -> None:
        stop.set()
        thread.join(timeout=interval_s + 30)
        read()
        watch.__exit__(None, None, None)

    return finish


def driver_resources(cluster: dict[str, float]) -> dict[str, float]:
    """A trial driver's resources. On a cluster that advertises ``raysft_driver`` (the head node of cluster.yaml),
    one unit of it and no CPU: drivers (and their Train controllers, which Ray pins to the driver's node) stay on the
    head, as many at once as the head has units, and every CPU of the worker nodes is left to Train workers.
    Elsewhere (a local Ray) 1 CPU, as before: a bundle that asks for nothing is refused by Tune."""
    if cluster.get(DRIVER_RESOURCE, 0) >= 1:
        return {"CPU": 0, DRIVER_RESOURCE: 1}
    return {"CPU": 1}


def resources_per_trial(cfg: Config, cluster: dict[str, float] | None = None) -> dict[str, float]:
    """The trial driver's resources plus its Train workers' (what one running trial holds)."""
    need = dict(driver_resources(cluster or {}))
    need["CPU"] += cfg.tune.num_workers * cfg.tune.cpus_per_worker
    need["GPU"] = cfg.tune.num_workers * cfg.tune.gpus_per_worker
    return need


def default_max_concurrent(cfg: Config, cluster: dict[str, float]) -> int:
    need = resources_per_trial(cfg, cluster)
    fits = [math.floor(cluster.get(r, 0) / n) for r, n in need.items() if n > 0]
    return max(1, min(fits)) if fits else 1


def autoscaling_node_types() -> list[dict]:
    """The node types the cluster's autoscaler may still start (``ray up``'s available_node_types, as Ray publishes
    them in the GCS), shaped like ``ray.nodes()`` entries; empty without an autoscaler."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # an older GCS, or no autoscaler: nothing to add
        return []
    if config is None:
        return []
    return [
        {"NodeManagerAddress": f"autoscaled {g.name or 'node type'} (up to {g.max_count if g.max_count >= 0 else 'any'})",
         "Resources": dict(g.resources)}
        for g in config.node_group_configs if g.max_count != 0
    ]


def cluster_capacity(cluster: dict[str, float]) -> dict[str, float]:
    """The cluster's resources now, or what its autoscaler may grow it to (GPU workers with min 0 start with none):
    the larger of the two, per resource (a sweep's concurrency follows the GPUs it can get)."""
    try:
        from ray._private.state import state

        most = state.get_max_resources_from_cluster_config() or {}
    except Exception:
        most = {}
    return {k: max(cluster.get(k, 0), most.get(k, 0)) for k in set(cluster) | set(most)}


def check_resources(cfg: Config, nodes: list[dict]) -> None:
    """Refuse a trial whose workers no node (alive, or one the autoscaler may start) can hold, before any trial
    starts."""
    worker = {"CPU": cfg.tune.cpus_per_worker, "GPU": cfg.tune.gpus_per_worker}
    for node in nodes:
        res = node.get("Resources", {})
        if all(res.get(r, 0) >= n for r, n in worker.items() if n > 0):
            return
    have = ", ".join(f"{n.get('NodeManagerAddress')}: {n.get('Resources', {}).get('CPU', 0):g} CPU "
                     f"{n.get('Resources', {}).get('GPU', 0):g} GPU" for n in nodes)
    raise RaysftError(
        f"no node can hold a worker with {worker['CPU']:g} CPU and {worker['GPU']:g} GPU (nodes: {have}): "
        "lower tune.cpus_per_worker / tune.gpus_per_worker or add nodes"
    )


def storage_uri(storage: str | None, n_machines: int = 1) -> str:
    """--storage, else $RAYSFT_STORAGE (cluster.yaml sets it on every node), else runs/tune. A folder that the
    cluster's machines cannot share is refused (:func:`raysft.cluster.storage.node_local_problem`)."""
    source = "--storage"
    if not storage and os.environ.get(STORAGE_ENV, "").strip():
        storage, source = os.environ[STORAGE_ENV].strip(), STORAGE_ENV
    if not storage:
        storage, source = str(Path.cwd() / "runs" / "tune"), "the default"
    if is_remote_uri(storage):
        return storage
    path = Path(storage.removeprefix("file://")).expanduser().resolve()
    problem = node_local_problem(path, n_machines, source)
    if problem:
        raise RaysftError(problem)
    return str(path)


def _check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """ray.init retries an unreachable GCS for minutes: test the TCP port first and fail at once."""
    import socket

    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError) as e:
        raise RaysftError(
            f"cannot reach the Ray cluster at {address} ({e.__class__.__name__}: {e}): "
            "check the address (ray status on the head node) or leave --address out for a local Ray"
        ) from None


def connect(address: str | None, verbose: bool) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if not verbose:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0, no experiment banners or status tables
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"log_to_driver": verbose, "logging_level": "INFO" if verbose else "ERROR"}
    # Inside `ray job submit` (or `ray attach` with RAY_ADDRESS set) the cluster is the one in RAY_ADDRESS.
    address = address or os.environ.get("RAY_ADDRESS", "").strip() or None
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RaysftError(f"cannot reach the Ray cluster at {address} ({str(e).splitlines()[0][:120]}): "
                              "check the address (ray status) or leave --address out for a local Ray") from None
    else:
        # Locally, trial drivers mostly wait on their workers: give Ray more logical CPUs than cores.
        # The dashboard stays on: Ray Train's PlacementGroupCleaner asks the state API whether a controller died
        # (a trial stopped by ASHA); without it the stopped trial's workers keep their placement group forever.
        # address="local": always a Ray of our own, never one that a `ray start` on this machine left in
        # /tmp/ray/ray_current_cluster (which a bare ray.init() would join, and then refuse num_cpus).
        ray.init(address="local", num_cpus=max(4, 2 * (os.cpu_count() or 2)), **kwargs)


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
    import optuna
    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from raysft.sweep.interrupt import InterruptStopper, graceful_interrupt
    from raysft.sweep.preflight import check_model_and_spaces, check_not_exhausted

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
        from raysft.tracking.runs import SweepTracking

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
                   if uses_asha(cfg) else ""),
                highlight=False,
            )
        scheduler = None
        if uses_asha(cfg):
            from raysft.sweep.scheduler import DefaultsFinishASHA

            scheduler = DefaultsFinishASHA(  # ASHA, except that the default trials (the baseline) run to the end
                metric=OBJECTIVE, mode="max", grace_period=cfg.tune.grace_period,
                reduction_factor=cfg.tune.reduction_factor, max_t=10_000,
            )
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
    from raysft.sweep.dense_cache import get_cache

    # Created here so that it lives as long as this driver (an actor dies with the process that created it);
    # trial drivers find it by name.
    cache = get_cache(root)
    from raysft.distributed.progress import get_board

    # Even with nothing drawn: trials tell it their final dev, which decides who scores the test sets. The handle
    # is held to the end (the actor dies with its last handle).
    board = get_board()
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
        from raysft.sweep.interrupt import interrupted

        tracking.finish(grid, cache_counts, wall, sections=[], status="KILLED" if interrupted() else None)
    del board  # the sweep's trials are over: the board may go
    return grid, cache_counts, experiment, wall


# ------------------------------------------------------------------------------------------------------------ confirm
def confirm_seeds(base_seed: int, n: int) -> list[int]:
    """n seeds, none equal to the sweep's own (``base_seed``) nor to the neighbours the recipe derives from a seed
    (seed + 1 orders the sparse phase's data)."""
    if n < 1:
        raise RaysftError(f"--seeds {n}: confirm needs at least 1 seed")
    return [base_seed + 1000 * (i + 1) for i in range(n)]


def confirm_picks(items, top: int) -> list[tuple[str, dict]]:
    """(label, sampled) of the top ``top`` searched trials with a full evaluation, by dev objective, and the best
    default trial (label: its trial id; the default's sample keeps ``default: True``)."""
    from raysft.outcome import rows_of

    if top < 1:
        raise RaysftError(f"--top {top}: confirm at least 1 configuration")
    rows = rows_of(items)
    samples = {}
    for t in items:
        r = getattr(t, "last_result", None) or getattr(t, "metrics", None) or {}
        samples[str(r.get("trial_id") or getattr(t, "trial_id", "?"))] = (getattr(t, "config", None) or {}).get("sample")
    finals = sorted((r for r in rows if r.final and isinstance(r.dev, (int, float))), key=lambda r: -r.dev)
    searched = [r for r in finals if not r.default][:top]
    default = [r for r in finals if r.default][:1]
    if not searched and not default:
        raise RaysftError("no trial of this sweep has a full evaluation: nothing to confirm (let the sweep finish first)")
    return [(r.id, samples[r.id]) for r in default + searched]


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


def confirm_rows(items) -> list:
    """(configuration label, seed, outcome row) of every confirm trial."""
    from raysft.outcome import rows_of

    out = []
    for t, row in zip(items, rows_of(items)):
        c = (getattr(t, "config", None) or {}).get("sample", {}).get("confirm") or {}
        out.append((str(c.get("config")), int(c.get("seed", -1)), row))
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
    verdict line and the result grid (None when every pair was done)."""
    from raysft.outcome import confirm_summary, confirm_verdict

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
    verdict = confirm_verdict(summary)
    if tracking is not None:
        tracking.log_confirm(summary, verdict, seeds)
    return summary, verdict, grid


def _confirm_trials(base: dict, picks, seeds, samples: list[dict], *, root, name, address, verbose, console, tracking,
                    max_concurrent):
    import ray
    from ray import tune

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
    from raysft.sweep.dense_cache import get_cache

    get_cache(root)  # lives as long as this driver (see run_sweep)
    # the same live display as the sweep's: a confirm run takes minutes (its own dense phase per seed)
    stop_watch = watch_sweep(console, len(samples), concurrent) if console is not None else None
    try:
        return tuner.fit()
    finally:
        if stop_watch is not None:
            stop_watch()
