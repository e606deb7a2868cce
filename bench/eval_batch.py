"""Evaluation batch size vs time, side by side (issue 12, item 3: the dev passes are the largest fixed part of a
sweep trial).

Scores the 10 targets' dev sets of a space (default sa-cpu: e5-small, NusaX, rows sorted by length as
`eval_loaders` builds them) with θ0 at each batch size, in one process, alternating the sizes over --rounds so
machine noise hits each alike. Prints per size: median seconds, padded tokens, and whether the predictions equal the
first size's. Last line JSON.

    python bench/eval_batch.py [--space sa-cpu] [--sizes 64,32,16,8] [--rounds 2]
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/select.py shadows the standard library's `select`: keep this folder behind the stdlib on sys.path.
_HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import argparse
import dataclasses
import json
import statistics
import time

import _common  # noqa: F401  (data folder, offline hub)
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="sa-cpu")
    ap.add_argument("--sizes", default="64,32,16,8")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    from raysft.config import load_config
    from raysft.train.loop import predict
    from raysft.train.recipe import eval_loaders, loader, prepare

    run = prepare(load_config(args.space))
    dev = {k: v for k, v in eval_loaders(dataclasses.replace(run, eval_langs=run.target_langs)).items() if k[1] == "dev"}
    sizes = [int(s) for s in args.sizes.split(",")]
    by_size = {b: [loader(l.dataset, run.tokenizer, b, shuffle=False, seed=0) for l in dev.values()] for b in sizes}
    times: dict[int, list[float]] = {b: [] for b in sizes}
    preds: dict[int, list[torch.Tensor]] = {}
    for _ in range(args.rounds):
        for b in sizes:
            t = time.perf_counter()
            preds[b] = [predict(run.model, ld)[0] for ld in by_size[b]]
            times[b].append(time.perf_counter() - t)
    first = sizes[0]
    out = {}
    for b in sizes:
        padded = sum(batch["input_ids"].numel() for ld in by_size[b] for batch in ld)
        same = all(torch.equal(x, y) for x, y in zip(preds[first], preds[b]))
        out[b] = {"seconds": round(statistics.median(times[b]), 2), "padded_tokens": padded, "same_predictions": same}
        print(f"batch {b:>3}: {out[b]['seconds']:6.2f} s, {padded:,} padded tokens, predictions equal batch {first}'s: {same}")
    tokens = sum(int(batch["attention_mask"].sum()) for ld in by_size[first] for batch in ld)
    print(json.dumps({"space": args.space, "langs": len(dev), "tokens": tokens, "by_batch_size": out,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
