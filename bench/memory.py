"""Peak resident memory, per phase, of one `raysft train` run (what the CLI runs, in this process, untracked).

The issue's set-up by default: sa-cpu (multilingual-e5-small, NusaX eng → 10 languages), batch 16, sequence 128,
K = 5 %, lr 1e-4. A thread samples this process's RSS every 5 ms and books it to the phase running then:
load (model, data, tokenisation, θ0), dense, select, sparse, eval (the delta's writing counts as eval). The overall
peak is the kernel's high-water mark (VmHWM), which no sampling can miss. The memory peak does not grow with the
step count after the first optimizer step, so the phases can be capped (``--dense-steps``/``--sparse-steps``; the
defaults cap them, and the JSON says so). The run's output folder (task_sft.safetensors, metrics.json) stays in
``--out`` for bench/delta_file.py. Prints one JSON line last.
``--lean`` recomputes activations in backward in both phases (the same delta, ~1 GB less, more compute).
    python bench/memory.py [--lean] [--dense-steps 30] [--sparse-steps 10] [--eval-examples 64] [--out runs/bench-memory]
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/select.py shadows the standard library's `select`: keep this folder behind the stdlib on sys.path.
_HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import argparse
import hashlib
import json
import threading
import time

import psutil

import _common  # noqa: F401 - environment (data dir, offline)

GB = 1e9


def vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class PhaseRSS:
    """Max RSS seen while each phase ran (phase = whatever ``self.phase`` names at the sample)."""

    def __init__(self):
        self.proc = psutil.Process()
        self.phase = "load"
        self.peak: dict[str, int] = {}
        self.wall: dict[str, float] = {}
        self._since = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _sample(self):
        rss = self.proc.memory_info().rss
        self.peak[self.phase] = max(self.peak.get(self.phase, 0), rss)

    def _watch(self):
        while not self._stop.is_set():
            self._sample()
            time.sleep(0.005)

    def enter(self, phase: str):
        self._sample()
        now = time.perf_counter()
        self.wall[self.phase] = self.wall.get(self.phase, 0.0) + now - self._since
        self._since, self.phase = now, phase
        self._sample()
        print(f"[memory] phase {phase} (rss so far {max(self.peak.values()) / GB:.2f} GB)", flush=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.enter("done")
        self._stop.set()
        self._thread.join()


def delta_hash(delta) -> str:
    """sha256 over every diff's int64 indices and values and every abs tensor, by name: equal = bitwise equal."""
    import torch

    h = hashlib.sha256()
    for name in sorted(delta.diffs):
        idx, val = delta.diffs[name]
        h.update(name.encode())
        if idx is not None:
            h.update(idx.to(torch.int64).contiguous().numpy().tobytes())
        h.update(val.contiguous().view(torch.uint8).numpy().tobytes())
    for name in sorted(delta.abs):
        h.update(name.encode())
        h.update(delta.abs[name].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--space", default="sa-cpu")
    ap.add_argument("--method", default="lt-sft")
    ap.add_argument("--dense-steps", type=int, default=30, help="cap the dense phase (0: the full 3 epochs)")
    ap.add_argument("--sparse-steps", type=int, default=10, help="cap the sparse phase (0: the full 3 epochs)")
    ap.add_argument("--eval-examples", type=int, default=64, help="per language and split (0: the space's)")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="more config overrides")
    ap.add_argument("--lean", action="store_true",
                    help="recompute activations in backward in both phases (checkpoint_activations): same delta, less memory")
    ap.add_argument("--out", default="runs/bench-memory")
    args = ap.parse_args()

    rss = PhaseRSS()
    with rss:
        import torch

        from raysft.config import load_config
        from raysft.train import phases as phases_mod
        from raysft.train import recipe
        from raysft.train.spill import HEAP_SLACK, keep_heap_top

        torch.set_num_threads(2)
        keep_heap_top(HEAP_SLACK)  # as `raysft train` does: the process is the command's own
        sets = [f"data.max_seq_len={args.seq}", f"dense.lr={args.lr}", f"sparse.lr={args.lr}", "lang_sfts=null"]
        if args.dense_steps:
            sets.append(f"dense.max_steps={args.dense_steps}")
        if args.sparse_steps:
            sets.append(f"sparse.max_steps={args.sparse_steps}")
        if args.eval_examples:
            sets.append(f"data.max_eval_examples={args.eval_examples}")
        if args.lean:
            sets += ["dense.checkpoint_activations=true", "sparse.checkpoint_activations=true"]
        cfg = load_config(args.space, sets + args.sets)
        run = recipe.prepare(cfg, args.method)
        param_bytes = sum(p.numel() * p.element_size() for p in run.model.parameters())

        def phased(phase, fn):
            def wrapper(*a, **kw):
                rss.enter(phase)
                return fn(*a, **kw)

            return wrapper

        # the training sequence's phases (raysft.train.phases, which every path runs) and the evaluation
        phases_mod.train_dense = phased("dense", phases_mod.train_dense)
        phases_mod.train_mask_scores = phased("dense", phases_mod.train_mask_scores)
        run.method.select = phased("select", run.method.select)
        phases_mod.train_sparse = phased("sparse", phases_mod.train_sparse)
        recipe.evaluate = phased("eval", recipe.evaluate)
        t = time.perf_counter()
        delta, metrics = recipe.run_training(run)
        wall = time.perf_counter() - t
        recipe.write_outputs(Path(args.out), delta, metrics, force=True)
    peak = vm_hwm()
    delta_file = Path(args.out) / "task_sft.safetensors"
    phases = {
        p: {"peak_rss_gb": round(v / GB, 3), "x_params": round(v / param_bytes, 2), "wall_s": round(rss.wall.get(p, 0), 1)}
        for p, v in rss.peak.items() if p != "done"
    }
    out = {
        "peak_rss_gb": round(peak / GB, 3),
        "peak_x_params": round(peak / param_bytes, 2),
        "param_gb": round(param_bytes / GB, 3),
        "phases": phases,
        "lean": args.lean,
        "embedding_rows": cfg.dense.embedding_rows,
        "capped": {"dense_steps": args.dense_steps or None, "sparse_steps": args.sparse_steps or None,
                   "eval_examples": args.eval_examples or None},
        "k": metrics["k"],
        "avg_dev": metrics["avg"].get("dev"),
        "run_s": round(wall, 1),
        "delta_sha256": delta_hash(delta),  # of the tensors (not the file, whose format may change)
        "delta_file": str(delta_file),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
