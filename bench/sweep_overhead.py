"""Where a sweep trial's wall time goes beyond its optimizer steps (issue 12, item 3).

Runs a real small `sa-cpu` sweep (tracking off, a temp storage, one trial at a time): two default trials, lt-sft
then sc-sft, so the first computes θ1 (the dense phase, shared through the dense-phase cache) and the second reuses
it, as every later trial of a sweep does. Per trial it splits Tune's wall time of the trial (this driver's clock:
Tune's on_trial_start → on_trial_complete) into parts, from the trial's metrics.json (`timings`, the time/* metrics
of MLflow) and the wall-clock stamps the trial writes (`distributed.clock`):

    tune_start      Tune starts the trial (its actor) until the trial driver function runs
    workers_start   the trial driver until the Train worker's loop runs (θ1 lease, TorchTrainer, worker group)
    load            model, tokenizer, language SFTs (prepare)
    data            training data read and tokenised (the datasets cache)
    base            θ0 kept aside (spilled to a temp file)
    dense_steps     the dense phase's optimizer steps (the trial that computes θ1)      <- not fixed
    theta1_save     θ1 copied and written to the dense-phase cache
    theta1_read     θ1 read back from the cache (the trials that reuse it)
    dense_other     the rest of the first phase (DDP wrapping, loaders)
    select          the selection (mask), its broadcast
    sparse_steps    the sparse phase's optimizer steps                                  <- not fixed
    sparse_other    the sparse phase's set-up (rewind, K-vector, optimizers) and the delta taken out
    checkpoints     the per-epoch sparse checkpoints (K-sized state, reported to Ray Train)
    dev_passes      the per-epoch dev passes (only with ASHA; sa-cpu has scheduler: none)
    eval_data       the evaluation sets read and tokenised (cached)
    eval_dev        forward passes over every language's dev set
    eval_test       forward passes over every language's test set
    eval_other      the rest of the evaluation (applying the task delta and the language SFTs)
    worker_other    the rest of the worker, until the final report (gathers, metrics)
    finish          the final report (delta + metrics.json checkpoint) until Tune sees the trial complete
                    (checkpoint persisted, worker group and trial torn down)

By default both trials are typical sweep trials: a leader of each kind is in the sweep's dev record, so neither leads
and neither scores the test sets (tune.test_every_trial: false; only the trials best vs default reports do). With
--leading each trial leads its kind and scores test, as a sweep's first trials.

Fixed cost = trial wall − (dense_steps + sparse_steps). Last line: JSON with `fixed_cost_fraction` (the trial that
reuses θ1, the typical trial), `fixed_cost_fraction_computing` (the trial that computed θ1) and each part's seconds.

    python bench/sweep_overhead.py [--space sa-cpu] [--methods lt-sft,sc-sft] [--leading]
                                   [--dense-epochs N] [--sparse-epochs N] [--set key=value ...]

Any cap (--dense-epochs, --sparse-epochs, --set) is listed in the JSON under `caps`; the default is the real sa-cpu
trial. A full run takes ~15-20 min on 2 shared cores. Ray workers import this checkout: run it with
PYTHONPATH=<repo root> (a local Ray's workers inherit the environment).
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/select.py shadows the standard library's `select`: keep this folder behind the stdlib on sys.path.
_HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import argparse
import json
import os
import tempfile
import threading
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")

import _common  # noqa: E402,F401  (RAYSFT_DATA_DIR, HF_HUB_OFFLINE defaults)

FIXED = ["tune_start", "workers_start", "load", "data", "base", "theta1_save", "theta1_read", "dense_other", "select",
         "sparse_other", "checkpoints", "dev_passes", "eval_data", "eval_dev", "eval_test", "eval_other",
         "worker_other", "finish"]
STEPS = ["dense_steps", "sparse_steps"]
ORDER = ["tune_start", "workers_start", "load", "data", "base", "dense_steps", "theta1_save", "theta1_read",
         "dense_other", "select", "sparse_steps", "sparse_other", "checkpoints", "dev_passes", "eval_data", "eval_dev",
         "eval_test", "eval_other", "worker_other", "finish"]

# Tune's clock of each trial, filled by the callback (in this driver process).
CLOCK: dict[str, dict] = {}
T0 = time.time()


def say(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def clock_callback(typical: bool):
    from ray.tune import Callback

    class Clock(Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            if typical and not CLOCK:
                # A leader of each kind (defaults, searched) with dev 1.0 in the sweep's dev record: no trial of the
                # bench leads its kind, so none scores test, as most trials of a sweep (tune.test_every_trial: false).
                import ray

                from raysft.sweep.dev_record import ACTOR_NAME

                record = ray.get_actor(ACTOR_NAME)
                ray.get([record.leads.remote(f"bench-leader-{kind}", kind, 1.0) for kind in (True, False)])
            CLOCK.setdefault(trial.trial_id, {})["start"] = time.time()
            say(f"trial {trial.trial_id} started ({trial.config['sample']['method']})")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            c = CLOCK.setdefault(trial.trial_id, {})
            if result.get("phase") == "final":
                c["final_seen"] = time.time()
                say(f"trial {trial.trial_id}: final result, dev {result.get('objective', float('nan')):.4f}")
            else:
                say(f"trial {trial.trial_id}: {result.get('phase')} step {result.get('sparse_step')}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            c = CLOCK.setdefault(trial.trial_id, {})
            c["end"] = time.time()
            c["time_total_s"] = (trial.last_result or {}).get("time_total_s")
            c["method"] = trial.config["sample"]["method"]
            say(f"trial {trial.trial_id} complete after {c['end'] - c.get('start', c['end']):.1f}s")

        def on_trial_error(self, iteration, trials, trial, **info):
            say(f"trial {trial.trial_id} FAILED")

    return Clock()


def heartbeat(stop: threading.Event, every_s: float = 60.0) -> None:
    while not stop.wait(every_s):
        say(f"running… load average {[round(x, 2) for x in os.getloadavg()]}")


def trial_metrics(storage: str, trial_id: str) -> dict:
    from raysft.distributed.train_workers import METRICS_FILE

    found = [p for p in Path(storage).glob(f"train-{trial_id}/**/{METRICS_FILE}") if p.parent.name == "final"]
    if not found:
        raise SystemExit(f"no final metrics.json for trial {trial_id} under {storage}")
    return json.loads(found[0].read_text())


def parts_of(clock: dict, metrics: dict) -> dict[str, float]:
    """A trial's wall split into the parts above (seconds); they add up to the wall."""
    t = metrics["timings"]
    stamps = metrics["distributed"]["clock"]
    if "start_s" not in t:
        raise SystemExit("the trial's timings have no start_s: the workers ran another raysft (set PYTHONPATH)")
    worker_started, final_report = stamps["worker_started"], stamps["final_report"]
    g = lambda k: float(t.get(k, 0.0))  # noqa: E731
    p = {
        "tune_start": worker_started - t["start_s"] - clock["start"],
        "workers_start": t["start_s"],
        "load": g("load_s"), "data": g("data_s"), "base": g("base_s"),
        "dense_steps": g("dense_steps_s"), "theta1_save": g("theta1_save_s"), "theta1_read": g("theta1_read_s"),
        "select": g("select_s"),
        "sparse_steps": g("sparse_steps_s"), "checkpoints": g("checkpoint_s"), "dev_passes": g("dev_s"),
        "eval_data": g("eval_data_s"), "eval_dev": g("eval_dev_s"), "eval_test": g("eval_test_s"),
    }
    p["dense_other"] = g("dense_s") - p["dense_steps"] - p["theta1_save"] - p["theta1_read"]
    p["sparse_other"] = g("sparse_s") - p["sparse_steps"] - p["checkpoints"] - p["dev_passes"]
    p["eval_other"] = g("eval_s") - p["eval_data"] - p["eval_dev"] - p["eval_test"]
    inside = sum(v for k, v in p.items() if k not in ("tune_start", "workers_start"))
    p["worker_other"] = (final_report - worker_started) - inside
    p["finish"] = clock["end"] - final_report
    return {k: p[k] for k in ORDER}


def main():
    import ray

    from raysft.config import load_config
    from raysft.sweep.tune import run_sweep

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="sa-cpu")
    ap.add_argument("--methods", default="lt-sft,sc-sft", help="one default trial each, in this order (first: θ1)")
    ap.add_argument("--dense-epochs", type=float, default=None, help="a cap (reported): default the space's")
    ap.add_argument("--sparse-epochs", type=float, default=None, help="a cap (reported): default the space's")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another override (reported)")
    ap.add_argument("--leading", action="store_true",
                    help="each trial leads its kind and scores test, as a sweep's first trials (default: a typical "
                         "trial, which scores dev only)")
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    caps = list(args.set)
    if args.dense_epochs is not None:
        caps.append(f"dense.epochs={args.dense_epochs}")
    if args.sparse_epochs is not None:
        caps.append(f"sparse.epochs={args.sparse_epochs}")
    overrides = [f"tune.methods=[{','.join(methods)}]", "tune.run_defaults=true", *caps]
    cfg = load_config(args.space, overrides)
    import raysft

    say(f"{args.space}: {len(methods)} default trials ({', '.join(methods)}), one at a time, tracking off, "
        f"{'each leading its kind (test scored)' if args.leading else 'typical (no trial leads its kind: dev only)'}; "
        f"caps {caps or 'none'}; raysft from {Path(raysft.__file__).parent}; "
        f"load average {[round(x, 2) for x in os.getloadavg()]}")
    stop = threading.Event()
    threading.Thread(target=heartbeat, args=(stop,), daemon=True).start()
    with tempfile.TemporaryDirectory(prefix="raysft-ovh-") as storage:
        try:
            grid, counts, _, sweep_wall = run_sweep(cfg, trials=len(methods), max_concurrent=1, storage=storage, track=False,
                                              callbacks=[clock_callback(typical=not args.leading)])
        finally:
            stop.set()
        errors = [r.error for r in grid if r.error]
        if errors:
            raise SystemExit(f"{len(errors)} trial(s) failed: {errors[0]}")
        trials = []
        for trial_id, clock in sorted(CLOCK.items(), key=lambda kv: kv[1]["start"]):
            m = trial_metrics(storage, trial_id)
            trials.append((trial_id, clock, m, parts_of(clock, m)))
    ray.shutdown()

    computing = [t for t in trials if t[2]["distributed"].get("dense_cache") == "computed"]
    reusing = [t for t in trials if t[2]["distributed"].get("dense_cache") == "reused"]
    if not computing or not reusing:
        raise SystemExit(f"expected one trial computing θ1 and one reusing it, got {[t[2]['distributed'].get('dense_cache') for t in trials]}")
    head = f"{'part':<15}" + "".join(f"{t[2]['method'] + ' (' + t[2]['distributed']['dense_cache'] + ')':>26}" for t in trials)
    print(head)
    for key in ORDER:
        row = f"{key:<15}"
        for _, clock, _, p in trials:
            wall = clock["end"] - clock["start"]
            row += f"{p[key]:>16.1f}s {100 * p[key] / wall:>6.1f}%"
        print(row + ("" if key in FIXED else "   <- optimizer steps"))
    out: dict = {}
    for label, (tid, clock, m, p) in (("reused", reusing[0]), ("computed", computing[0])):
        wall = clock["end"] - clock["start"]
        fixed = wall - p["dense_steps"] - p["sparse_steps"]
        print(f"{'wall':<15}" + f"{label}: {wall:.1f}s (Tune's time_total_s {clock.get('time_total_s') or 0:.1f}s), "
              f"fixed {fixed:.1f}s = {fixed / wall:.3f}")
        out[label] = {"trial": tid, "method": m["method"], "wall_s": round(wall, 1), "fixed_s": round(fixed, 1),
                      "fraction": round(fixed / wall, 4), "tune_time_total_s": clock.get("time_total_s"),
                      "dev": m["avg"].get("dev"), "test": m["avg"].get("test"),
                      "test_scored": m["distributed"].get("test_scored", True),
                      "parts_s": {k: round(v, 2) for k, v in p.items()}, "eval_pass_s": m["distributed"].get("eval_pass_s")}
    # The evaluation floor: what the targets' dev passes alone would cost (the final dev score an un-pruned sweep needs).
    r = out["reused"]
    targets = reusing[0][2]["target_langs"]
    dev_targets = sum(v for k, v in (r["eval_pass_s"] or {}).items() if k.split("/")[0] == "dev" and k.split("/")[1] in targets)
    eval_all = r["parts_s"]["eval_data"] + r["parts_s"]["eval_dev"] + r["parts_s"]["eval_test"] + r["parts_s"]["eval_other"]
    print(f"evaluation of the reusing trial: {eval_all:.1f}s ({eval_all / r['wall_s']:.3f} of its wall); the targets' "
          f"dev passes alone: {dev_targets:.1f}s ({dev_targets / r['wall_s']:.3f})")
    print(json.dumps({
        "fixed_cost_fraction": r["fraction"], "fixed_cost_fraction_computing": out["computed"]["fraction"],
        "wall_s": {"reused": r["wall_s"], "computed": out["computed"]["wall_s"]},
        "fixed_s": {"reused": r["fixed_s"], "computed": out["computed"]["fixed_s"]},
        "eval_fraction": round(eval_all / r["wall_s"], 4), "dev_targets_eval_fraction": round(dev_targets / r["wall_s"], 4),
        "parts_s": {"reused": r["parts_s"], "computed": out["computed"]["parts_s"]},
        "methods": {"reused": r["method"], "computed": out["computed"]["method"]},
        "scores": {label: {"dev": v["dev"], "test": v["test"]} for label, v in out.items()},
        "test_scored": {label: v["test_scored"] for label, v in out.items()},
        "space": args.space, "caps": caps, "sweep_wall_s": round(sweep_wall, 1), "dense_cache": counts,
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
    }))


if __name__ == "__main__":
    main()
