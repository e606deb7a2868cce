"""NLI: train on English MultiNLI (local sample or the hub), evaluate zero-shot on AmericasNLI.

Hub sources (layouts cited in raysft/tasks/hub.py): ``nyu-mll/multi_nli`` train (the full 393k pairs; the local
files are a 5 % sample of it), ``nala-cub/americas_nli`` config <lang> validation/test (the same rows as the local
``americasnli/{dev,test}/<lang>.tsv``), ``facebook/xnli`` config en validation/test (the local ``xnli_en``).

English evaluation ("eng"): XNLI-en dev/test, for English-side checks only. AmericasNLI is translated from XNLI, so
XNLI-en is never used for training.
"""

from __future__ import annotations

import os
from typing import Any

import datasets

from raysft.errors import RaysftError
from raysft.tasks import hub
from raysft.tasks.base import Task, TaskData, load_csv, require_file, resolve_data_dir, take_first, take_shuffled, to_label_ids

LABELS = ["entailment", "neutral", "contradiction"]  # the hub datasets' ClassLabel order too
HUB_NAME = hub.MNLI.repo_id
PAIR = {"premise": "text", "hypothesis": "text_pair"}
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

    def hub_targets(self) -> list[str]:
        return list(hub.AMERICAS_LANGS)

    def hub_split(self, lang: str, split: str) -> hub.HubSplit:
        """Where the hub serves a split: MultiNLI's train, XNLI en's or an AmericasNLI language's dev/test."""
        if split == "train":
            return hub.HubSplit(hub.MNLI, "train", config="default", columns=(*PAIR, "label"))
        repo = hub.XNLI if lang == SOURCE_LANG else hub.AMERICAS_NLI
        return hub.HubSplit(repo, split, config="en" if lang == SOURCE_LANG else lang, columns=(*PAIR, "label"))

    def load_train(self, cfg: Any = None) -> datasets.Dataset:
        cfg = TaskData.coerce(cfg)
        if (cfg.source_lang or SOURCE_LANG) != SOURCE_LANG:
            raise RaysftError(f"nli trains on English only, got source language {cfg.source_lang!r}: set source_lang to eng")
        if cfg.use_hub():
            ds = hub.labeled(hub.load_split(self.hub_split(SOURCE_LANG, "train")), PAIR, LABELS, "MultiNLI (hub)")
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
        if cfg.use_hub():
            what = f"XNLI-en {split}" if lang == SOURCE_LANG else f"AmericasNLI {lang} {split}"
            ds = hub.load_split(self.hub_split(lang, split))
            return take_first(hub.labeled(ds, PAIR, LABELS, f"{what} (hub)"), cfg.max_eval_examples)
        root = cfg.root()
        if lang == SOURCE_LANG:
            path, what = root / "nli_en" / "xnli_en" / f"{split}.tsv", f"XNLI-en {split}"
        else:
            path, what = root / "americasnli" / split / f"{lang}.tsv", f"AmericasNLI {lang} {split}"
        ds = load_csv(require_file(path, what), tsv=True)
        ds = to_label_ids(ds, {"premise": "text", "hypothesis": "text_pair"}, LABELS, what)
        return take_first(ds, cfg.max_eval_examples)

