"""MultiNLI at full size through raysft's training data path: load → tokenize → embedding rows → sharded batches.

A synthetic MultiNLI-shaped train set of ``--pairs`` pairs (default 392,702, MultiNLI's train split): the data
folder's MultiNLI sample (real premises and hypotheses, so real token lengths) resampled with replacement, labels
kept, then tokenized by raysft's own ``tokenize_labeled`` with multilingual-e5-small's tokenizer (XLM-R's
sentencepiece) and saved as Arrow. Then ``--workers`` processes, as a Ray Train trial's workers do, each open the
saved dataset (memory-mapped), read the embedding rows (:func:`raysft.train.rows.data_rows`) and draw their shard of
``--batches`` global batches of 32 through raysft's ``sharded_loader`` and the padding collator. Each worker reports
its time per stage, its peak RSS and what the rows and batches added to it (sampled every 2 ms); side by side, the rows read the old way (every row's ids as a Python list into
a set), same ids checked.

    python bench/mnli_data_path.py [--pairs 392702] [--workers 2] [--batches 200] [--max-len 128]

The last line is JSON. Ray workers are processes of the same shape; this bench needs no Ray.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]  # bench/select.py shadows select

import argparse
import json
import multiprocessing as mp
import os
import resource
import tempfile
import time

from _common import MODEL, PeakRSS  # noqa: E402  (sets RAYSFT_DATA_DIR, HF_HUB_OFFLINE)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rows_as_lists(ds, pad: int):
    """The old data_rows: every row's ids as Python lists into a set."""
    import torch

    seen = {pad}
    for ids in ds["input_ids"]:
        seen.update(ids)
    return torch.tensor(sorted(seen), dtype=torch.long)


def worker(rank: int, world: int, folder: str, tokenizer_dir: str, way: str, batches: int, out) -> None:
    import datasets
    import torch
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from raysft.train.parallel import sharded_loader
    from raysft.train.rows import data_rows

    torch.set_num_threads(1)
    started = time.perf_counter()
    ds = datasets.load_from_disk(folder)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    opened = time.perf_counter()
    with PeakRSS() as data_path:  # what the data path adds to the worker's memory: the rows, then the batches
        rows = data_rows([ds], extra=[tok.pad_token_id]) if way == "arrow" else rows_as_lists(ds, tok.pad_token_id)
        rowed = time.perf_counter()
        loader, _ = sharded_loader(ds, DataCollatorWithPadding(tok), 32, seed=0, rank=rank, world=world)
        tokens = 0
        for i, batch in enumerate(loader):
            tokens += int(batch["attention_mask"].sum())
            if i + 1 >= batches:
                break
        done = time.perf_counter()
    out.put({"rank": rank, "way": way, "open_s": opened - started, "rows_s": rowed - opened,
             "batches_s": done - rowed, "total_s": done - started, "rows": len(rows), "rows_sum": int(rows.sum()),
             "tokens": tokens, "peak_rss_mb": peak_rss_mb(), "data_path_mb": data_path.extra / 2**20})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=392_702)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--max-len", type=int, default=128)
    opts = ap.parse_args()

    import datasets
    import numpy as np

    from raysft.models import resolve_model
    from raysft.tasks import TaskData, get_task
    from raysft.tasks.base import tokenize_labeled
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    model_dir = str(resolve_model(MODEL))
    tok = AutoTokenizer.from_pretrained(model_dir)
    sample = get_task("nli").load_train(TaskData(use_all_source=True))
    picks = np.random.default_rng(0).integers(0, len(sample), size=opts.pairs)
    with tempfile.TemporaryDirectory(prefix="raysft-mnli-bench-") as d:
        t = time.perf_counter()
        ds = sample.select(picks)  # an indices mapping: no copy
        ds = tokenize_labeled(ds.flatten_indices(), tok, opts.max_len, is_pair=True)
        tokenize_s = time.perf_counter() - t
        folder = os.path.join(d, "tokenized")
        ds.save_to_disk(folder)
        print(f"{opts.pairs:,} pairs from the {len(sample):,}-pair MultiNLI sample, tokenized in {tokenize_s:.0f}s "
              f"(max length {opts.max_len}); {opts.workers} workers, {opts.batches} global batches of 32 each",
              flush=True)
        results = {}
        ctx = mp.get_context("spawn")
        for way in ("arrow", "lists"):
            queue = ctx.Queue()
            procs = [ctx.Process(target=worker, args=(r, opts.workers, folder, model_dir, way, opts.batches, queue))
                     for r in range(opts.workers)]
            for p in procs:
                p.start()
            got = [queue.get() for _ in procs]
            for p in procs:
                p.join()
            results[way] = sorted(got, key=lambda r: r["rank"])
    a, b = results["arrow"], results["lists"]
    assert all(x["rows"] == y["rows"] and x["rows_sum"] == y["rows_sum"] for x, y in zip(a, b)), "the two ways differ"
    print(f"\n{'rows read':10} {'rank':>4} {'open':>7} {'rows':>8} {'batches':>8} {'total':>8} {'peak RSS':>9} "
          f"{'data path':>10}")
    for way, rs in results.items():
        for r in rs:
            print(f"{way:10} {r['rank']:>4} {r['open_s']:6.1f}s {r['rows_s']:7.2f}s {r['batches_s']:7.1f}s "
                  f"{r['total_s']:7.1f}s {r['peak_rss_mb']:7.0f}MB {r['data_path_mb']:+8.0f}MB")
    ratio_rows = max(r["rows_s"] for r in b) / max(max(r["rows_s"] for r in a), 1e-9)
    ratio_rss = max(r["data_path_mb"] for r in b) / max(max(r["data_path_mb"] for r in a), 1.0)
    print(f"lists / arrow: rows {ratio_rows:.1f}x the time, the data path's memory {ratio_rss:.1f}x · "
          f"{a[0]['rows']:,} distinct ids")
    print(json.dumps({"pairs": opts.pairs, "workers": opts.workers, "batches": opts.batches, "max_len": opts.max_len,
                      "tokenize_s": tokenize_s, "results": results, "rows_time_ratio": ratio_rows,
                      "data_path_memory_ratio": ratio_rss}))


if __name__ == "__main__":
    main()
