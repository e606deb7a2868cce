"""Sentiment analysis: NusaX-Senti, train on English (or Indonesian), evaluate zero-shot on the 10 local languages.

The 12 NusaX languages are sentence-parallel, so any of them is also accepted as an evaluation language (the source
language's own dev/test included).

Hub source: ``indonlp/NusaX-senti`` at its parquet export (``refs/convert/parquet``), folder <lang>, splits
train/validation/test, columns id, text, lang, label (layout cited in raysft/tasks/hub.py): the same rows, in the
same order, as the local ``nusax_senti/<lang>/{train,valid,test}.csv``.
"""

from __future__ import annotations

import os
from typing import Any

import datasets

from raysft.errors import RaysftError
from raysft.tasks import hub
from raysft.tasks.base import Task, TaskData, load_csv, require_file, resolve_data_dir, take_first, take_shuffled, to_label_ids

LABELS = ["negative", "neutral", "positive"]
SOURCE_LANG = "eng"
SOURCE_LANGS = ("eng", "ind")
LOCAL_LANGS = ("ace", "ban", "bbc", "bjn", "bug", "jav", "mad", "min", "nij", "sun")
SPLIT_FILES = {"train": "train.csv", "dev": "valid.csv", "test": "test.csv"}


class SaTask(Task):
    name = "sa"
    labels = LABELS
    metric = "f1"
    source_lang = SOURCE_LANG
    is_pair = False

    def available_targets(self, data_dir: str | os.PathLike | None = None) -> list[str]:
        root = resolve_data_dir(data_dir) / "nusax_senti"
        return [lang for lang in LOCAL_LANGS if (root / lang).is_dir()]

    def eval_languages(self, data_dir: str | os.PathLike | None = None, source_lang: str | None = None) -> list[str]:
        root = resolve_data_dir(data_dir) / "nusax_senti"
        extra = [lang for lang in SOURCE_LANGS if (root / lang).is_dir()]
        return self.available_targets(data_dir) + extra

    def hub_targets(self) -> list[str]:
        return list(LOCAL_LANGS)

    def hub_eval_languages(self, source_lang: str | None = None) -> list[str]:
        return list(LOCAL_LANGS) + list(SOURCE_LANGS)

    @staticmethod
    def hub_split(lang: str, split: str) -> hub.HubSplit:
        """Where the hub serves a split: NusaX-senti's parquet export, folder <lang>."""
        return hub.HubSplit(hub.NUSAX_SENTI, split, data_dir=lang, columns=("text", "label"))

    def load_train(self, cfg: Any = None) -> datasets.Dataset:
        cfg = TaskData.coerce(cfg)
        lang = cfg.source_lang or SOURCE_LANG
        ok = self.languages(cfg)
        if lang not in ok:
            raise RaysftError(f"unknown sa source language {lang!r}: available are {', '.join(ok)}")
        ds = self._load(cfg, lang, "train")
        return take_shuffled(ds, cfg.max_train_examples, cfg.seed)

    def load_eval(self, lang: str, split: str, cfg: Any = None) -> datasets.Dataset:
        cfg = TaskData.coerce(cfg)
        self.check_split(split)
        self.check_lang(lang, cfg)
        return take_first(self._load(cfg, lang, split), cfg.max_eval_examples)

    @staticmethod
    def _load(cfg: TaskData, lang: str, split: str) -> datasets.Dataset:
        what = f"NusaX-Senti {lang} {split}"
        if cfg.use_hub():
            return hub.labeled(hub.load_split(SaTask.hub_split(lang, split)), {"text": "text"}, LABELS, f"{what} (hub)")
        path = require_file(cfg.root() / "nusax_senti" / lang / SPLIT_FILES[split], what)
        return to_label_ids(load_csv(path), {"text": "text"}, LABELS, what)
