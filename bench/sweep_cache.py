"""Wall time of an 8-trial SC-SFT sweep (different budget vectors, same dense settings) with and without the
dense-phase cache, run one after the other in one process. Last line: JSON with wall_ratio (with / without).

What the cache saves is the dense phase of every trial but the first, so the ratio depends on how much of a trial the
dense phase is. The defaults reproduce the proportion of the real `sa-cpu` space on this machine: there (single
process, 2 cores) dense took 207 s of a 406 s run, the rest (model and data loading, selection, sparse 116 s,
evaluation 42 s) 199 s, so dense ≈ the rest of a trial (dense/rest 1.04). A sweep adds Ray's per-trial start-up
(≈ 30–45 s here) to the rest, which on the smoke space's tiny model (tiny:xlmr, 2 × 32) is longer than any phase.
So the bench uses a larger tiny model (--model tiny:xlmr-L4-H64) and a longer dense phase (--dense-epochs) than
sparse phase (--sparse-epochs) until dense ≈ the rest of a trial *including* Ray's start-up (calibrated here: 24 dense
epochs gave dense 22.7 s against a 41.6 s rest, dense/rest 0.55, hence the default 48); it measures and prints
the proportion it ran at (dense_s per trial from each trial's metrics, rest = wall per trial − dense), so the ratio
can be read against it. Trials run one at a time (--max-concurrent 1), as the sa-cpu sweep does on 2 cores.
With the cache the expected ratio is (D + n·R) / (n·(D + R)) for n trials, dense D and rest R: 0.56 at D = R.
    python bench/sweep_cache.py [--trials 8] [--model tiny:xlmr-L4-H64] [--dense-epochs 48] [--sparse-epochs 2]
                                [--max-concurrent 1] [--space smoke]
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
import re
import statistics
import tempfile

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")

SA_CPU = {"dense_s": 207.0, "rest_s": 199.0}  # `raysft train sa-cpu --method lt-sft`, 2 cores (issue 2's note)


def phase_times(storage: str) -> list[dict]:
    """Each trial's phase timings, from the metrics.json of its final checkpoint on storage."""
    from raysft.distributed.train_workers import METRICS_FILE

    return [json.loads(p.read_text())["timings"] for p in Path(storage).rglob(METRICS_FILE) if p.parent.name == "final"]


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main():
    import ray

    from raysft.config import load_config
    from raysft.sweep.tune import run_sweep

    ap = argparse.ArgumentParser()
    ap.add_argument("--space", default="smoke")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--model", default="tiny:xlmr-L4-H64")
    ap.add_argument("--dense-epochs", type=float, default=48)
    ap.add_argument("--sparse-epochs", type=float, default=2)
    ap.add_argument("--max-concurrent", type=int, default=1)
    args = ap.parse_args()
    layers = re.search(r"-L(\d+)", args.model)
    overrides = [
        f"model={args.model}", "tune.methods=[sc-sft]", "tune.scheduler=none",
        f"dense.epochs={args.dense_epochs}", f"sparse.epochs={args.sparse_epochs}",
        "data.target_langs=[jav]", "data.max_eval_examples=32",
    ]
    if layers:  # the Dirichlet budget spans the model's layers
        overrides.append(f"methods.sc-sft.space.budget.layers={layers.group(1)}")
    print(f"{args.trials} sc-sft trials, {args.model}, dense {args.dense_epochs:g} epochs, sparse "
          f"{args.sparse_epochs:g}, {args.max_concurrent} at a time; load average before {loadavg()}", flush=True)
    walls, counts, phases, loads = {}, {}, {}, {}
    for cached in (True, False):
        cfg = load_config(args.space, [*overrides, f"tune.dense_cache={str(cached).lower()}"])
        with tempfile.TemporaryDirectory() as storage:
            _, counts[cached], _, walls[cached] = run_sweep(
                cfg, trials=args.trials, max_concurrent=args.max_concurrent, storage=storage, track=False,
            )
            phases[cached] = phase_times(storage)
        ray.shutdown()
        loads[cached] = loadavg()
        label = "with cache   " if cached else "without cache"
        print(f"{label} {walls[cached]:7.1f} s  dense phases computed {counts[cached]['computed']}, "
              f"reused {counts[cached]['reused']}; load average after {loads[cached]}", flush=True)
    # The proportion this run had, from the sweep without the cache (every trial ran its dense phase).
    if not phases[False]:
        raise SystemExit(f"no final metrics.json found on storage: wall_ratio {walls[True] / walls[False]:.3f}")
    dense = statistics.mean(t["dense_s"] for t in phases[False])
    per_trial = walls[False] * args.max_concurrent / args.trials
    rest = per_trial - dense
    print(f"per trial without cache: dense {dense:.1f} s, rest {rest:.1f} s (sparse "
          f"{statistics.mean(t['sparse_s'] for t in phases[False]):.1f} s, eval "
          f"{statistics.mean(t['eval_s'] for t in phases[False]):.1f} s, Ray start-up, loading, selection): "
          f"dense/rest {dense / rest:.2f}; sa-cpu: dense {SA_CPU['dense_s']:.0f} s, rest {SA_CPU['rest_s']:.0f} s, "
          f"dense/rest {SA_CPU['dense_s'] / SA_CPU['rest_s']:.2f}")
    n = args.trials
    expected = (dense + n * rest) / (n * (dense + rest))
    ratio = walls[True] / walls[False]
    print(json.dumps({
        "wall_ratio": round(ratio, 3), "with_cache_s": round(walls[True], 1), "without_cache_s": round(walls[False], 1),
        "trials": n, "max_concurrent": args.max_concurrent, "model": args.model,
        "dense_epochs": args.dense_epochs, "sparse_epochs": args.sparse_epochs,
        "dense_s_per_trial": round(dense, 1), "rest_s_per_trial": round(rest, 1),
        "dense_over_rest": round(dense / rest, 2), "sa_cpu_dense_over_rest": round(SA_CPU["dense_s"] / SA_CPU["rest_s"], 2),
        "expected_ratio_at_this_proportion": round(expected, 3),
        "computed_with_cache": counts[True]["computed"], "reused_with_cache": counts[True]["reused"],
        "computed_without_cache": counts[False]["computed"], "load_avg_after": {"with": loads[True], "without": loads[False]},
    }))


if __name__ == "__main__":
    main()
