"""Delta file size and load time: raysft.sft/2 vs raysft.sft/1 vs composable-sft's encoding of the same delta.

Takes a real task delta (default: the one bench/memory.py leaves, multilingual-e5-small at K = 5 %), writes it in
format 2 (encoded indices) and format 1 (int32 indices), and as composable-sft's ``pytorch_diff.bin`` (written here by
the inverse of our importer: column-major flat indices, ``index_steps`` as a list, ``torch.save``), then loads each
``--repeats`` times. Checks that every file reads back to the same delta, bitwise (composable-sft's through our
importer). bytes_per_entry = whole file (header, metadata and the head's abs tensors included) / entries.
Prints one JSON line last.
    python bench/delta_file.py [--delta runs/bench-memory/task_sft.safetensors] [--repeats 5]
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/select.py shadows the standard library's `select`: keep this folder behind the stdlib on sys.path.
_HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import argparse
import json
import statistics
import tempfile
import time

import numpy as np
import torch

from _common import MODEL, REPO
from raysft.models import load_for_classification
from raysft.sft.delta import SparseDelta, import_composable_sft, read_metadata
from raysft.sft.groups import ParamSpace


def row_to_column_major(flat: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Row-major flat indices → composable-sft's flat indices (first dimension fastest)."""
    coords = np.unravel_index(flat, size)  # C order
    col_mult = np.cumprod([1] + list(size)[:-1], dtype=np.int64)
    return sum(c.astype(np.int64) * m for c, m in zip(coords, col_mult))


def write_composable(delta: SparseDelta, space: ParamSpace, path: Path) -> None:
    """The inverse of raysft's importer: composable-sft's encode_sparse_tensor layout, saved with torch.save."""
    diffs = {}
    for name, (idx, val) in delta.diffs.items():
        full = f"{space.prefix}.{name}" if space.prefix else name
        size = tuple(space.param(name).shape)
        if idx is None:
            diffs[full] = val.reshape(size).clone()
            continue
        col = row_to_column_major(idx.numpy(), size)
        order = np.argsort(col, kind="stable")
        col = col[order]
        steps = (col[1:] - col[:-1]).tolist()
        diffs[full] = {
            "size": torch.Size(size),
            "index_steps": [col[0]] + steps,  # composable-sft: a numpy int64 first, then Python ints
            "values": val[torch.from_numpy(order)].clone(),
        }
    torch.save({"diffs": diffs, "abs": dict(delta.abs)}, path)


def same(x: SparseDelta, y: SparseDelta) -> bool:
    if x.diffs.keys() != y.diffs.keys() or x.abs.keys() != y.abs.keys():
        return False
    for n, (xi, xv) in x.diffs.items():
        yi, yv = y.diffs[n]
        if (xi is None) != (yi is None) or (xi is not None and not torch.equal(xi, yi)) or not torch.equal(xv, yv):
            return False
    return all(torch.equal(x.abs[n], y.abs[n]) for n in x.abs)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--delta", default=str(REPO / "runs" / "bench-memory" / "task_sft.safetensors"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    src = Path(args.delta)
    if not src.is_file():
        sys.exit(f"delta file {src} does not exist: run bench/memory.py first (it leaves one) or pass --delta")
    torch.set_num_threads(2)
    delta = SparseDelta.load(src)
    nnz = delta.nnz()
    space = ParamSpace(load_for_classification(MODEL, delta.abs["classifier.weight"].shape[0]))
    print(f"delta {src} (format {read_metadata(src)['format']}): {nnz:,} entries of {space.n:,} "
          f"({nnz / space.n:.2%}), {len(delta.diffs)} tensors", flush=True)
    head_bytes = sum(t.numel() * t.element_size() for t in delta.abs.values())

    out: dict = {"k": nnz, "n": space.n, "head_abs_bytes": head_bytes}
    with tempfile.TemporaryDirectory(prefix="raysft-delta-bench-") as d:
        d = Path(d)
        for label, version in (("v2", 2), ("v1", 1)):
            path = d / f"{label}.safetensors"
            t = time.perf_counter()
            delta.save(path, version=version)
            save_s = time.perf_counter() - t
            load_s, back = timed(lambda: SparseDelta.load(path), args.repeats)
            size = path.stat().st_size
            out[label] = {
                "bytes_per_entry": round(size / nnz, 3), "bytes_per_entry_without_head": round((size - head_bytes) / nnz, 3),
                "file_mb": round(size / 1e6, 2), "load_s": round(load_s, 4), "save_s": round(save_s, 3),
                "exact": same(delta, back),
            }
            print(label, out[label], flush=True)
        # how format 2 encoded the indices, per kind
        from safetensors import safe_open

        kinds: dict[str, int] = {}
        with safe_open(str(d / "v2.safetensors"), framework="pt") as f:
            for key in f.keys():
                name, _, suffix = key.rpartition("/")
                if suffix == "bits":
                    kinds["bitmap"] = kinds.get("bitmap", 0) + 1
                elif suffix == "gap":
                    kinds[f"gap-{f.get_slice(key).get_dtype()}"] = kinds.get(f"gap-{f.get_slice(key).get_dtype()}", 0) + 1
        out["v2"]["index_encodings"] = kinds

        cpath = d / "pytorch_diff.bin"
        write_composable(delta, space, cpath)
        csize = cpath.stat().st_size
        load_s, _ = timed(lambda: torch.load(cpath, weights_only=False), args.repeats)
        import_s, imported = timed(lambda: import_composable_sft(cpath, space), max(1, args.repeats // 2))
        imported.meta = delta.meta
        out["composable_sft"] = {
            "bytes_per_entry": round(csize / nnz, 3), "bytes_per_entry_without_head": round((csize - head_bytes) / nnz, 3),
            "file_mb": round(csize / 1e6, 2), "load_s": round(load_s, 4), "raysft_import_s": round(import_s, 3),
            "exact": same(delta, imported),
        }
        print("composable-sft", out["composable_sft"], flush=True)
    out["bytes_per_entry"] = out["v2"]["bytes_per_entry"]
    out["load_s"] = out["v2"]["load_s"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
