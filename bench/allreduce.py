"""Bytes all-reduced per training step, dense phase (DDP over all N entries) vs sparse phase (the gathered K-vector
plus the head), two CPU workers, one Ray Train run of the smoke space. Last line: JSON with bytes_ratio.
    python bench/allreduce.py [--density 0.05]
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
    from raysft.distributed.train_workers import fit_trial

    ap = argparse.ArgumentParser()
    ap.add_argument("--density", type=float, default=0.05)
    args = ap.parse_args()
    cfg = load_config("smoke", [f"sft.density={args.density}", "data.target_langs=[jav]", "data.max_eval_examples=16"])
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as storage:
            _, metrics = fit_trial(cfg, "lt-sft", num_workers=2, storage_path=storage, name="allreduce")
    finally:
        ray.shutdown()
    d = metrics["distributed"]
    dense, sparse = d["dense_allreduce_bytes_per_step"], d["allreduce_bytes_per_sparse_step"]
    print(f"N = {metrics['n']:,}, K = {metrics['k']:,}; dense phase {dense:,} B/step, sparse phase {sparse:,} B/step "
          f"(= {d['sparse_allreduce_entries']:,} float32 entries: K + head)")
    print(json.dumps({"bytes_ratio": round(sparse / dense, 4), "dense_bytes_per_step": dense,
                      "sparse_bytes_per_step": sparse, "k": metrics["k"], "n": metrics["n"]}))


if __name__ == "__main__":
    main()
