"""Data-parallel training through the loop's gradient-sync hook, with torch.distributed directly (no Ray).

W processes (default 2) each build the same randomly initialised model on the device, draw different batches, and
run the dense phase, rank 0's LT-SFT selection (broadcast to every rank) and the sparse phase, with
``raysft.distributed.train_workers.FlatAllReduce`` as ``grad_sync`` (what Ray Train workers use). Checks that every
rank holds bitwise-identical weights after each phase, that the sparse phase all-reduces K + head entries per step,
not N, and that the masked entries moved while no other entry did. Backend: NCCL when there is a GPU per rank, else
gloo (two ranks on one GPU: gloo all-reduces CUDA tensors). Prints one JSON line per run.
    python bench/ddp_check.py --device cuda [--world 2] [--model random:tiny] [--steps 3] [--density 0.05]
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import argparse
import hashlib
import json
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hash(model) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _worker(rank: int, args, port: int, backend: str, queue) -> None:
    from _common import SHAPES, random_batches, random_classifier
    from raysft.config import PhaseConfig
    from raysft.train.parallel import FlatAllReduce
    from raysft.sft.groups import ParamSpace
    from raysft.sft.methods import SelectionContext, make_method
    from raysft.train.device import resolve_device
    from raysft.train.loop import restore, train_dense, train_sparse

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = resolve_device(args.device)
    if device.type == "cuda":  # NCCL: one GPU per rank; gloo: every rank on the one GPU asked for
        device = torch.device("cuda", rank if backend == "nccl" else (device.index or 0))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=args.world)
    try:
        shape = args.model.removeprefix("random:")
        model = random_classifier(shape, device)  # the same seed on every rank: the same θ0
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0  # ranks would draw different dropout masks; the check is about the synchronised update
        space = ParamSpace(model)
        k = args.k if args.k is not None else round(args.density * space.n)
        batches = random_batches(args.steps, SHAPES[shape]["vocab_size"], args.batch_size, args.seq_len, seed=100 + rank)
        phase = PhaseConfig(lr=1e-3, batch_size=args.batch_size, precision=args.precision)
        theta0, head0 = space.snapshot(), space.head_snapshot()
        hashes = {"start": _hash(model)}

        sync = FlatAllReduce(args.world)
        t = time.perf_counter()
        train_dense(model, space, batches, args.steps, phase, grad_sync=sync)
        dense_s = time.perf_counter() - t
        dense_bytes = sync.per_step()
        hashes["dense"] = _hash(model)
        payload = [None]
        if rank == 0:
            sel = make_method("lt-sft").select(SelectionContext(space, k, theta0, theta1=space.snapshot()))
            payload = [{n: i.cpu() for n, i in sel.mask.items()}]  # host: broadcast as a Python object
        dist.broadcast_object_list(payload, src=0)
        mask = payload[0]
        restore(space, theta0, head0)
        sync = FlatAllReduce(args.world)
        t = time.perf_counter()
        updater, _ = train_sparse(model, space, mask, batches, args.steps, phase, grad_sync=sync)
        sparse_s = time.perf_counter() - t
        hashes["sparse"] = _hash(model)
        moved = outside = 0
        for info in space.maskable:
            now, before = space.param(info.name).detach().reshape(-1), theta0[info.name].reshape(-1)
            changed = now != before
            idx = mask.get(info.name)
            if idx is not None:
                idx = idx.to(now.device)
                moved += int(changed[idx].sum())
                changed[idx] = False
            outside += int(changed.sum())
        head_entries = sum(space.param(n).numel() for n in space.head)
        gathered = [None] * args.world
        dist.all_gather_object(gathered, hashes)
        if rank == 0:
            queue.put({
                "bench": "ddp_check", "backend": backend, "world_size": args.world, "device": str(device),
                "model": args.model, "precision": args.precision, "n": space.n, "k": k, "steps": args.steps,
                "ranks_identical": {p: len({g[p] for g in gathered}) == 1 for p in hashes},
                "dense_allreduce_bytes_per_step": dense_bytes,
                "sparse_allreduce_bytes_per_step": sync.per_step(),
                "sparse_allreduce_expected_bytes": (updater.k + head_entries) * 4,
                "masked_entries_moved": moved, "unmasked_entries_changed": outside,
                "dense_phase_s": round(dense_s, 3), "sparse_phase_s": round(sparse_s, 3),
            })
    finally:
        dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="auto, cpu, cuda")
    ap.add_argument("--model", default="random:tiny", help="random:<shape> (xlmr-base, tiny)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--density", type=float, default=0.05)
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--backend", default="auto", choices=["auto", "gloo", "nccl"])
    args = ap.parse_args()
    from raysft.train.device import resolve_device

    device = resolve_device(args.device)
    backend = args.backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" and torch.cuda.device_count() >= args.world else "gloo"
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(args, _free_port(), backend, queue), nprocs=args.world, start_method="spawn")
    result = queue.get()
    ok = all(result["ranks_identical"].values()) and result["unmasked_entries_changed"] == 0 and (
        result["sparse_allreduce_bytes_per_step"] == result["sparse_allreduce_expected_bytes"])
    result["ok"] = ok
    print(f"{backend}, {args.world} ranks on {device}: ranks identical after each phase: {result['ranks_identical']}; "
          f"all-reduced per step: dense {result['dense_allreduce_bytes_per_step']:,} B, sparse "
          f"{result['sparse_allreduce_bytes_per_step']:,} B (K + head = {result['sparse_allreduce_expected_bytes']:,} B); "
          f"{result['masked_entries_moved']:,} of K = {result['k']:,} masked entries moved, "
          f"{result['unmasked_entries_changed']} others changed", flush=True)
    print(json.dumps(result), flush=True)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
