"""Top-K selection over every maskable parameter of multilingual-e5-small (K = 5 %).

θ1 comes from a short real dense phase on NusaX English, so |Δ| has the tie structure of real runs (most entries
exactly 0, a few word-embedding rows touched). Prints one JSON line last: seconds and peak extra memory over
parameter memory, per method.
    python bench/select.py [--dense-steps 3] [--density 0.05]
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file's name shadows the standard library's `select`: keep its folder behind the stdlib on sys.path.
_HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import argparse
import json
import time

import torch

from _common import MODEL, PeakRSS, real_batches
from raysft.config import PhaseConfig
from raysft.models import load_for_classification, load_tokenizer
from raysft.sft.groups import ParamSpace
from raysft.sft.methods import SelectionContext, make_method
from raysft.train.loop import train_dense


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dense-steps", type=int, default=3)
    ap.add_argument("--density", type=float, default=0.05)
    args = ap.parse_args()
    torch.manual_seed(0)
    tokenizer = load_tokenizer(MODEL)
    model = load_for_classification(MODEL, 3)
    space = ParamSpace(model)
    k = round(args.density * space.n)
    theta0 = space.snapshot()
    batches = real_batches(tokenizer, args.dense_steps)
    train_dense(model, space, batches, args.dense_steps, PhaseConfig(lr=2e-5, batch_size=16))
    theta1 = space.snapshot()
    param_bytes = sum(t.numel() * t.element_size() for t in theta0.values())
    changed = sum(int((theta1[n] != theta0[n]).sum()) for n in theta0)
    print(f"N = {space.n:,} maskable entries, K = {k:,}; the dense phase changed {changed:,} entries")
    runs = [
        ("lt-sft", {}),
        ("sc-sft", {"budget": {"embeddings": 0.02, "layer.10": 0.02, "layer.11": 0.02, "layer.0-9": 0.94}}),
        ("deft-x", {"rank_strategy": "energy", "energy": 0.9}),
        ("deft-x (SVD cached)", {"rank_strategy": "energy", "energy": 0.5}),
    ]
    cache: dict = {}
    result = {"n": space.n, "k": k, "param_bytes": param_bytes}
    for label, settings in runs:
        method = make_method(label.split()[0], settings)
        ctx = SelectionContext(space, k, theta0, theta1=theta1, cache=cache)
        with PeakRSS() as mem:
            t = time.perf_counter()
            sel = method.select(ctx)
            seconds = time.perf_counter() - t
        assert sum(int(i.numel()) for i in sel.mask.values()) == k
        key = label.replace(" (SVD cached)", "_cached")
        result[f"{key}_s"] = round(seconds, 3)
        result[f"{key}_peak_over_params"] = round(mem.extra / param_bytes, 3)
        print(f"{label:<20} {seconds:7.2f} s   peak extra memory {mem.extra / 2**20:8.1f} MiB "
              f"= {mem.extra / param_bytes:.2f}x parameters   ties left out {sel.info.get('ties_left_out')}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
