"""Wall time of an 8-trial SC-SFT sweep (different budget vectors, same dense settings) with and without the
dense-phase cache, run one after the other in one process. Last line: JSON with wall_ratio (with / without).

The smoke space's tiny model makes Ray's per-trial start-up dominate, so the dense phase is lengthened
(--dense-epochs) until it costs about what the rest of a trial costs, the proportion of the sa-cpu space
(dense 207 s vs sparse + evaluation + loading ≈ 200 s per trial on 2 cores).
    python bench/sweep_cache.py [--trials 8] [--dense-epochs 60] [--space smoke]
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

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")


def main():
    import ray

    from raysft.config import load_config
    from raysft.sweep.tune import run_sweep

    ap = argparse.ArgumentParser()
    ap.add_argument("--space", default="smoke")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--dense-epochs", type=float, default=60)
    args = ap.parse_args()
    walls, counts = {}, {}
    for cached in (True, False):
        cfg = load_config(args.space, [
            "tune.methods=[sc-sft]", "tune.scheduler=none", f"tune.dense_cache={str(cached).lower()}",
            f"dense.epochs={args.dense_epochs}", "data.target_langs=[jav]", "data.max_eval_examples=32",
        ])
        with tempfile.TemporaryDirectory() as storage:
            _, counts[cached], _, walls[cached] = run_sweep(cfg, trials=args.trials, storage=storage)
        ray.shutdown()
        label = "with cache   " if cached else "without cache"
        print(f"{label} {walls[cached]:7.1f} s  dense phases computed {counts[cached]['computed']}, "
              f"reused {counts[cached]['reused']}")
    ratio = walls[True] / walls[False]
    print(json.dumps({"wall_ratio": round(ratio, 3), "with_cache_s": round(walls[True], 1),
                      "without_cache_s": round(walls[False], 1), "trials": args.trials,
                      "dense_epochs": args.dense_epochs, "computed_with_cache": counts[True]["computed"],
                      "reused_with_cache": counts[True]["reused"]}))


if __name__ == "__main__":
    main()
