"""Unlabeled text for language SFTs (masked language modelling).

AmericasNLI languages: ``americas_text/<lang>/*.txt`` (every file, sorted by name, one sentence a line).
NusaX languages: ``nusax_mt/train.csv`` ONLY. Its valid/test text is the NusaX-Senti evaluation text, so reading it
would leak evaluation sentences into training (see the data README).

The held-out split is the deterministic last 5 % of the lines (at least 20), used to measure MLM loss.

From the hub (data.source hub, or auto without a local folder): the NusaX languages' text is NusaX-senti's <lang>
train split (the same 500 sentences, in order, as ``nusax_mt/train.csv``; NusaX-MT itself is a loading script the
hub cannot serve to datasets 5, see raysft/tasks/hub.py). The AmericasNLP texts are not on the hub: local only.
The functions take a data folder or a TaskData (whose source decides local or hub).
"""

from __future__ import annotations

import math
import os
from typing import Any

import datasets

from raysft.errors import RaysftError
from raysft.tasks import hub
from raysft.tasks.base import (
    Task,
    TaskData,
    _check_max_len,
    load_csv,
    load_lines,
    require_file,
    resolve_data_dir,
    take_first,
    take_shuffled,
    tokenized_fingerprint,
)

NUSAX_MT_COLUMNS = {
    "ace": "acehnese",
    "ban": "balinese",
    "bbc": "toba_batak",
    "bjn": "banjarese",
    "bug": "buginese",
    "eng": "english",
    "ind": "indonesian",
    "jav": "javanese",
    "mad": "madurese",
    "min": "minangkabau",
    "nij": "ngaju",
    "sun": "sundanese",
}
MIN_LINES = 200
HELDOUT_FRACTION = 0.05
MIN_HELDOUT = 20
MLM_PROBABILITY = 0.15


def _hub(data) -> bool:  # noqa: ANN001
    return isinstance(data, TaskData) and data.use_hub()


def _root(data):  # noqa: ANN001, ANN202
    return data.root() if isinstance(data, TaskData) else resolve_data_dir(data)


def _no_hub_text(lang: str) -> RaysftError:
    return RaysftError(
        f"no hub text for language {lang!r}: the hub has NusaX text only ({', '.join(hub.NUSAX_LANGS)}); "
        "the AmericasNLP texts are local (data.source: local with americas_text/ under RAYSFT_DATA_DIR)"
    )


def text_languages(data_dir: str | os.PathLike | TaskData | None = None) -> list[str]:
    """Languages with unlabeled text: the americas_text folders, then the NusaX codes (when nusax_mt/train.csv exists);
    from the hub, the NusaX codes."""
    if _hub(data_dir):
        return list(hub.NUSAX_LANGS)
    root = _root(data_dir)
    americas = root / "americas_text"
    langs = sorted(p.name for p in americas.iterdir() if p.is_dir() and p.name != "upstream_readmes") if americas.is_dir() else []
    if (root / "nusax_mt" / "train.csv").is_file():
        langs += [c for c in NUSAX_MT_COLUMNS if c not in langs]
    return langs


def load_lines_of(lang: str, data_dir: str | os.PathLike | TaskData | None = None) -> datasets.Dataset:
    """All usable lines of one language (a "text" column), in a fixed order."""
    if _hub(data_dir):
        if lang not in hub.NUSAX_LANGS:
            raise _no_hub_text(lang)
        ds = hub.load(hub.NUSAX_SENTI, "train", data_dir=lang)
        if "text" not in ds.column_names:
            raise RaysftError(f"no text for language {lang!r}: {hub.NUSAX_SENTI} {lang}/ train has no text column; use local data")
        ds = ds.select_columns(["text"])
        return ds.filter(lambda b: [bool(t and t.strip()) for t in b["text"]], batched=True, desc="dropping blank lines")
    root = _root(data_dir)
    folder = root / "americas_text" / lang
    if folder.is_dir():
        files = sorted(folder.glob("*.txt"))
        if not files:
            raise RaysftError(f"no text for language {lang!r}: {folder} has no .txt files; add text or pick another language")
        return load_lines(files)
    if lang in NUSAX_MT_COLUMNS:
        path = require_file(root / "nusax_mt" / "train.csv", f"NusaX-MT text for {lang}")
        ds = load_csv(path)  # train.csv only: valid/test are the NusaX-Senti evaluation sentences
        col = NUSAX_MT_COLUMNS[lang]
        if col not in ds.column_names:
            raise RaysftError(f"no text for language {lang!r}: column {col!r} missing from {path}; check the data file")
        ds = ds.select_columns([col]).rename_column(col, "text")
        return ds.filter(lambda b: [bool(t and t.strip()) for t in b["text"]], batched=True, desc="dropping blank lines")
    raise RaysftError(f"no text for language {lang!r}: available are {', '.join(text_languages(root))}")


def corpus_of(lang: str, data_dir: str | os.PathLike | TaskData | None = None) -> str:
    """Where a language's text comes from, relative to the data folder (recorded in the language SFT's metadata)."""
    if _hub(data_dir):
        if lang not in hub.NUSAX_LANGS:
            raise _no_hub_text(lang)
        return f"hub:{hub.NUSAX_SENTI}:{lang}/train:text"
    root = _root(data_dir)
    folder = root / "americas_text" / lang
    if folder.is_dir():
        return ", ".join(f"americas_text/{lang}/{p.name}" for p in sorted(folder.glob("*.txt")))
    if lang in NUSAX_MT_COLUMNS:
        return f"nusax_mt/train.csv:{NUSAX_MT_COLUMNS[lang]}"
    raise RaysftError(f"no text for language {lang!r}: available are {', '.join(text_languages(root))}")


def heldout_size(n: int) -> int:
    return max(MIN_HELDOUT, math.ceil(HELDOUT_FRACTION * n))


def load_text(lang: str, data_dir: str | os.PathLike | TaskData | None = None) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, heldout) "text" datasets of one language; heldout = the last 5 % of the lines (at least 20)."""
    ds = load_lines_of(lang, data_dir)
    n = len(ds)
    if n == 0:
        raise RaysftError(f"no text for language {lang!r} (0 non-blank lines): add text or pick another language")
    if n < MIN_LINES:
        raise RaysftError(f"too little text for language {lang!r}: found {n} lines, need at least {MIN_LINES}; add text")
    h = heldout_size(n)
    return ds.select(range(n - h)), ds.select(range(n - h, n))


def tokenize_for_mlm(ds: datasets.Dataset, tokenizer: Any, max_len: int) -> datasets.Dataset:
    """input_ids, attention_mask, special_tokens_mask; each line truncated to max_len tokens (no grouping); unpadded."""
    _check_max_len(max_len)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(batch["text"], truncation=True, max_length=max_len, return_special_tokens_mask=True)
        return {k: enc[k] for k in ("input_ids", "attention_mask", "special_tokens_mask")}

    return ds.map(
        encode,
        batched=True,
        remove_columns=ds.column_names,
        new_fingerprint=tokenized_fingerprint(ds, tokenizer, "mlm", max_len),
        desc="tokenizing for MLM",
    )


def mlm_collator(tokenizer: Any, mlm_probability: float = MLM_PROBABILITY, seed: int | None = None, pad_to_multiple_of: int | None = None):
    """A DataCollatorForLanguageModeling (15 % masking, 80/10/10) that pads a batch and makes its labels."""
    from transformers import DataCollatorForLanguageModeling  # transformers: a heavy import, only for MLM batches

    if getattr(tokenizer, "mask_token", None) is None:
        raise RaysftError("the tokenizer has no mask token, so it cannot do MLM: use a tokenizer with a <mask> token")
    kwargs: dict[str, Any] = {"mlm": True, "mlm_probability": mlm_probability, "pad_to_multiple_of": pad_to_multiple_of}
    if seed is not None:
        kwargs["seed"] = seed
    return DataCollatorForLanguageModeling(tokenizer, **kwargs)


class MlmTask(Task):
    """Language adaptation: the "source" language is the language the SFT is trained on; dev and test are both the
    held-out lines (metric: MLM loss, computed by the trainer)."""

    name = "mlm"
    labels: list[str] = []
    metric = "loss"
    source_lang = None
    is_pair = False

    def available_targets(self, data_dir: str | os.PathLike | None = None) -> list[str]:
        return text_languages(data_dir)

    def hub_targets(self) -> list[str]:
        return list(hub.NUSAX_LANGS)

    def hub_eval_languages(self, source_lang: str | None = None) -> list[str]:
        return list(hub.NUSAX_LANGS)

    def eval_languages(self, data_dir: str | os.PathLike | None = None, source_lang: str | None = None) -> list[str]:
        return text_languages(data_dir)

    def load_train(self, cfg: Any = None) -> datasets.Dataset:
        cfg = TaskData.coerce(cfg)
        if not cfg.source_lang:
            raise RaysftError(
                f"mlm needs the language to adapt to: set source_lang to one of {', '.join(self.languages(cfg))}"
            )
        train, _ = load_text(cfg.source_lang, cfg)
        return take_shuffled(train, cfg.max_train_examples, cfg.seed)

    def load_eval(self, lang: str, split: str, cfg: Any = None) -> datasets.Dataset:
        cfg = TaskData.coerce(cfg)
        self.check_split(split)
        self.check_lang(lang, cfg)
        _, heldout = load_text(lang, cfg)
        return take_first(heldout, cfg.max_eval_examples)

    def tokenize(self, ds: datasets.Dataset, tokenizer: Any, max_len: int) -> datasets.Dataset:
        return tokenize_for_mlm(ds, tokenizer, max_len)

    def metrics(self, preds, labels):  # noqa: ANN001
        raise RaysftError("the mlm task has no classification metrics: evaluate it by held-out MLM loss")
