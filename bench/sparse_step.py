"""Dense vs sparse training step on multilingual-e5-small at K = 5 % (batch 16, sequence 128), side by side.

Two copies of the model step alternately (dense, sparse, dense, …) on the same real batches, so machine noise hits
both alike. Prints one JSON line last with step_time_ratio (sparse/dense) and optimizer_state_ratio.
    python bench/sparse_step.py [--steps 6] [--density 0.05]
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/select.py shadows the standard library's `select`: keep this folder behind the stdlib on sys.path.
_HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import argparse
import copy
import json
import statistics
import time

import torch

from _common import MODEL, real_batches
from raysft.models import load_for_classification, load_tokenizer
from raysft.sft.groups import ParamSpace
from raysft.sft.methods import SelectionContext, make_method
from raysft.sft.sparse import SparseUpdater
from raysft.train.loop import head_params, set_trainable


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--density", type=float, default=0.05)
    args = ap.parse_args()
    torch.manual_seed(0)
    tokenizer = load_tokenizer(MODEL)
    dense_model = load_for_classification(MODEL, 3)
    sparse_model = copy.deepcopy(dense_model)
    batches = real_batches(tokenizer, args.steps + 1)

    dense_space = ParamSpace(dense_model)
    set_trainable(dense_space, maskable=True)
    dense_opt = torch.optim.AdamW([p for p in dense_model.parameters() if p.requires_grad], lr=2e-5)

    space = ParamSpace(sparse_model)
    k = round(args.density * space.n)
    mask = make_method("rand-sft").select(SelectionContext(space, k, {}, seed=0)).mask
    set_trainable(space, maskable=False)
    updater = SparseUpdater(space, mask, lr=2e-5)
    head_opt = torch.optim.AdamW(head_params(space), lr=2e-5)

    def dense_step(batch):
        dense_model(**batch).loss.backward()
        dense_opt.step()
        dense_opt.zero_grad(set_to_none=True)

    def sparse_step(batch):
        sparse_model(**batch).loss.backward()
        updater.step()
        updater.zero_grad()
        head_opt.step()
        head_opt.zero_grad(set_to_none=True)

    dense_model.train()
    sparse_model.train()
    dense_step(batches[0])  # warm-up: allocates AdamW state
    sparse_step(batches[0])
    dense_t, sparse_t = [], []
    for batch in batches[1:]:
        t = time.perf_counter()
        dense_step(batch)
        dense_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        sparse_step(batch)
        sparse_t.append(time.perf_counter() - t)
    dense_state = sum(
        t.numel() * t.element_size() for s in dense_opt.state.values() for t in s.values() if torch.is_tensor(t) and t.numel() > 1
    )
    head_state = sum(
        t.numel() * t.element_size() for s in head_opt.state.values() for t in s.values() if torch.is_tensor(t) and t.numel() > 1
    )
    d, s = statistics.median(dense_t), statistics.median(sparse_t)
    print(f"N = {space.n:,}, K = {k:,} ({args.density:.0%}), batch 16 x 128, {torch.get_num_threads()} threads")
    print(f"dense step  median {d:.3f} s  {[round(x, 3) for x in dense_t]}")
    print(f"sparse step median {s:.3f} s  {[round(x, 3) for x in sparse_t]}")
    print(f"optimizer state: dense {dense_state / 2**20:.1f} MiB, sparse {updater.state_bytes() / 2**20:.1f} MiB "
          f"(+ head {head_state / 2**20:.2f} MiB; indices, θ0 reference, delta, grad: {updater.overhead_bytes() / 2**20:.1f} MiB)")
    print(json.dumps({
        "step_time_ratio": round(s / d, 3),
        "optimizer_state_ratio": round((updater.state_bytes() + head_state) / dense_state, 4),
        "dense_step_s": round(d, 3),
        "sparse_step_s": round(s, 3),
        "k": k,
        "n": space.n,
    }))


if __name__ == "__main__":
    main()
