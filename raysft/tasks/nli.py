"""NLI: train on English MultiNLI (local sample or the hub), evaluate zero-shot on AmericasNLI.

English evaluation ("eng"): XNLI-en dev/test, for English-side checks only. AmericasNLI is translated from XNLI, so
XNLI-en is never used for training.
"""

from __future__ import annotations

import os
from typing import Any

import datasets

from raysft.errors import RaysftError
from raysft.tasks.base import Task, TaskData, cache_dir, load_csv, require_file, resolve_data_dir, take_first, take_shuffled, to_label_ids

LABELS = ["entailment", "neutral", "contradiction"]
HUB_NAME = "nyu-mll/multi_nli"  # its label ids use the same order (entailment 0, neutral 1, contradiction 2)
SOURCE_LANG = "eng"
MNLI_PARTS = ("mnli_part1.tsv", "mnli_part2.tsv")


class NliTask(Task):
    name = "nli"
    labels = LABELS
    metric = "acc"
    source_lang = SOURCE_LANG
    is_pair = True

    def available_targets(self, data_dir: str | os.PathLike | None = None) -> list[str]:
        root = resolve_data_dir(data_dir) / "americasnli"
        dev = {p.stem for p in (root / "dev").glob("*.tsv")}
        test = {p.stem for p in (root / "test").glob("*.tsv")}
        return sorted(dev | test)

    def load_train(self, cfg: Any = None) -> datasets.Dataset:
        cfg = TaskData.coerce(cfg)
        if (cfg.source_lang or SOURCE_LANG) != SOURCE_LANG:
            raise RaysftError(f"nli trains on English only, got source language {cfg.source_lang!r}: set source_lang to eng")
        if cfg.source == "hub":
            ds = _load_hub()
        else:
            root = cfg.root() / "nli_en" / "mnli_subset"
            parts = MNLI_PARTS if cfg.use_all_source else MNLI_PARTS[:1]
            files = [require_file(root / p, "nli source (MultiNLI sample)") for p in parts]
            ds = to_label_ids(
                load_csv(files, tsv=True), {"premise": "text", "hypothesis": "text_pair"}, LABELS, "MultiNLI sample"
            )
        return take_shuffled(ds, cfg.max_train_examples, cfg.seed)

    def load_eval(self, lang: str, split: str, cfg: Any = None) -> datasets.Dataset:
        cfg = TaskData.coerce(cfg)
        self.check_split(split)
        self.check_lang(lang, cfg)
        root = cfg.root()
        if lang == SOURCE_LANG:
            path, what = root / "nli_en" / "xnli_en" / f"{split}.tsv", f"XNLI-en {split}"
        else:
            path, what = root / "americasnli" / split / f"{lang}.tsv", f"AmericasNLI {lang} {split}"
        ds = load_csv(require_file(path, what), tsv=True)
        ds = to_label_ids(ds, {"premise": "text", "hypothesis": "text_pair"}, LABELS, what)
        return take_first(ds, cfg.max_eval_examples)


def _load_hub() -> datasets.Dataset:
    try:
        ds = datasets.load_dataset(HUB_NAME, split="train", cache_dir=str(cache_dir()))
    except Exception as e:  # offline: ConnectionError / OSError / DatasetNotFoundError / ... depending on the version
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RaysftError(
            f"could not load hub dataset {HUB_NAME} ({type(e).__name__}: {msg[:200]}): use the local data (data source: local)"
        ) from e
    ds = ds.filter(lambda b: [lab >= 0 for lab in b["label"]], batched=True, desc="dropping unlabeled pairs")
    ds = ds.select_columns(["premise", "hypothesis", "label"]).rename_columns({"premise": "text", "hypothesis": "text_pair"})
    return ds.cast_column("label", datasets.ClassLabel(names=LABELS))

