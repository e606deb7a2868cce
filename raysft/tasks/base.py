"""What every task shares: where the data lives, the loading options, the Task interface and the metrics.

Data is read with ``datasets`` (the csv/text builders for local files) into a cache under
``$RAYSFT_CACHE/datasets`` (default ``~/.cache/raysft/datasets``), so loading and tokenisation are done once and the
Arrow files are reused by later runs. Nothing is ever written into the data folder (it may be read-only).
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import datasets
import torch

from raysft.errors import RaysftError
from raysft.tasks.cache import cache_dir
from raysft.tasks.hub import HubSplit, check_split, repos_for, snapshot

SPLITS = ("dev", "test")
SOURCES = ("auto", "local", "hub")

# Read every CSV/TSV field as text: pandas would otherwise turn a sentence such as "NA" or "null" into a missing value.
_CSV_TEXT = {"keep_default_na": False, "na_filter": False}
QUOTE_NONE = 3  # csv.QUOTE_NONE: the TSV files have bare '"' inside fields (see the data README)


# --------------------------------------------------------------------------------------------------------- locations
def repo_root() -> Path:
    """The folder holding the ``raysft`` package (the repository root in a checkout)."""
    return Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """The shared data folder: ``$RAYSFT_DATA_DIR``, else ``../shared/data`` from the working directory, else from the
    repository root."""
    env = os.environ.get("RAYSFT_DATA_DIR")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise RaysftError(f"data folder {path} (from RAYSFT_DATA_DIR) does not exist: set RAYSFT_DATA_DIR to the shared data folder")
        return path
    tried = []
    for base in (Path.cwd(), repo_root()):
        path = (base / ".." / "shared" / "data").resolve()
        if path.is_dir():
            return path
        if path not in tried:
            tried.append(path)
    raise RaysftError(f"data folder not found (tried {', '.join(map(str, tried))}): set RAYSFT_DATA_DIR to the shared data folder")


def resolve_data_dir(path: str | os.PathLike | None) -> Path:
    if path is None:
        return data_dir()
    path = Path(path).expanduser()
    if not path.is_dir():
        raise RaysftError(f"data folder {path} does not exist: pass an existing folder or set RAYSFT_DATA_DIR")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise RaysftError(f"{what}: file {path} is missing: check the data folder (RAYSFT_DATA_DIR)")
    return path


# ---------------------------------------------------------------------------------------------------------- options
@dataclass
class TaskData:
    """Data options of a run.

    target_langs: None = every available target language. max_train_examples: None = all, else a seeded shuffled subset.
    max_eval_examples: per language and split, None = all, else the FIRST n rows (so runs stay comparable).
    source: "local" (files under the data folder), "hub" (the Hugging Face datasets, see raysft/tasks/hub.py: from the
    hub cache, downloaded when missing) or "auto" (the local folder when there is one, else the hub).
    use_all_source: nli only: train on both local MNLI parts instead of part 1 alone.
    """

    data_dir: str | os.PathLike | None = None
    source_lang: str | None = None  # None = the task's default
    target_langs: list[str] | None = None
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    seed: int = 0
    source: str = "auto"
    use_all_source: bool = False

    def __post_init__(self) -> None:
        for name in ("max_train_examples", "max_eval_examples"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise RaysftError(f"{name} must be a positive integer or None, got {v!r}: fix the data options")
        if self.source not in SOURCES:
            raise RaysftError(f"data source must be one of {', '.join(SOURCES)}, got {self.source!r}: fix the data options")
        if isinstance(self.target_langs, str):
            self.target_langs = [self.target_langs]

    @classmethod
    def coerce(cls, cfg: Any = None) -> TaskData:
        """A TaskData from None, a TaskData, a mapping, or any object with (some of) these attributes (e.g. a
        pydantic config section)."""
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        names = [f.name for f in fields(cls)]
        if isinstance(cfg, Mapping):
            unknown = sorted(set(cfg) - set(names))
            if unknown:
                raise RaysftError(f"unknown data option(s) {', '.join(unknown)}: known are {', '.join(names)}")
            return cls(**dict(cfg))
        return cls(**{n: getattr(cfg, n) for n in names if hasattr(cfg, n)})

    def root(self) -> Path:
        return resolve_data_dir(self.data_dir)

    def use_hub(self) -> bool:
        """Whether the data comes from the hub: ``hub``, or ``auto`` with no local data folder. A folder that was
        named (data.dir, RAYSFT_DATA_DIR) but is missing stays an error, never a silent switch to the hub."""
        if self.source != "auto":
            return self.source == "hub"
        if self.data_dir is not None or os.environ.get("RAYSFT_DATA_DIR"):
            self.root()  # named: must exist
            return False
        try:
            data_dir()
        except RaysftError:
            return True
        return False


# ------------------------------------------------------------------------------------------------------------ loading
def load_csv(files: Path | Sequence[Path], *, tsv: bool = False, split: str = "train") -> datasets.Dataset:
    """One local CSV (or TSV, read with QUOTE_NONE) file, or several concatenated, as a cached Dataset of strings."""
    paths = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    kwargs: dict[str, Any] = dict(_CSV_TEXT)
    if tsv:
        kwargs.update(delimiter="\t", quoting=QUOTE_NONE)
    return datasets.load_dataset(
        "csv", data_files={split: [str(p) for p in paths]}, split=split, cache_dir=str(cache_dir()), **kwargs
    )


def load_lines(files: Sequence[Path]) -> datasets.Dataset:
    """Text files, one example a line (split on '\\n' only), blank lines dropped, as a cached Dataset with "text"."""
    ds = datasets.load_dataset("text", data_files={"train": [str(p) for p in files]}, split="train", cache_dir=str(cache_dir()))
    return ds.filter(_non_blank, batched=True, desc="dropping blank lines")


def _non_blank(batch: dict[str, list]) -> list[bool]:
    return [bool(t and t.strip()) for t in batch["text"]]


def take_first(ds: datasets.Dataset, n: int | None) -> datasets.Dataset:
    return ds if n is None or n >= len(ds) else ds.select(range(n))


def take_shuffled(ds: datasets.Dataset, n: int | None, seed: int) -> datasets.Dataset:
    return ds if n is None or n >= len(ds) else ds.shuffle(seed=seed).select(range(n))


def to_label_ids(ds: datasets.Dataset, columns: Mapping[str, str], labels: Sequence[str], what: str) -> datasets.Dataset:
    """Rename text columns (``columns``: source name -> text/text_pair) and map the string "label" column to ids."""
    label_to_id = {name: i for i, name in enumerate(labels)}
    missing = [c for c in [*columns, "label"] if c not in ds.column_names]
    if missing:
        raise RaysftError(
            f"{what}: column(s) {', '.join(missing)} missing (found {', '.join(ds.column_names)}): check the data file"
        )
    feats = {dst: datasets.Value("string") for dst in columns.values()}
    feats["label"] = datasets.ClassLabel(names=list(labels))

    def convert(batch: dict[str, list]) -> dict[str, list]:
        out = {dst: ["" if t is None else str(t) for t in batch[src]] for src, dst in columns.items()}
        ids = []
        for lab in batch["label"]:
            key = str(lab).strip()
            if key not in label_to_id:
                raise RaysftError(f"{what}: unknown label {lab!r} (expected one of {', '.join(labels)}): check the data file")
            ids.append(label_to_id[key])
        out["label"] = ids
        return out

    return ds.map(
        convert,
        batched=True,
        remove_columns=ds.column_names,
        features=datasets.Features(feats),
        desc=f"labels of {what}",
    )


# -------------------------------------------------------------------------------------------------------- tokenising
_TOKENIZE_VERSION = "1"


# sha256 of a backend tokenizer's raw JSON → the sha256 state after its normalised spec. Parsing and re-encoding the
# JSON of a 250k-piece vocabulary is the slow part of the fingerprint, and a trial tokenises 23 data sets (train +
# 11 languages × dev/test): the normalised spec is hashed once per raw JSON, the raw JSON itself (a plain hash, far
# cheaper) each time, so the fingerprint stays exactly what it was and still follows any change to the tokenizer.
_SPEC_HASHES: dict[str, Any] = {}
_SPEC_HASHES_MAX = 8


def _spec_hash(raw: str):
    key = hashlib.sha256(raw.encode()).hexdigest()
    state = _SPEC_HASHES.get(key)
    if state is None:
        spec = json.loads(raw)
        spec.pop("truncation", None)
        spec.pop("padding", None)
        state = hashlib.sha256(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode())
        if len(_SPEC_HASHES) >= _SPEC_HASHES_MAX:
            _SPEC_HASHES.pop(next(iter(_SPEC_HASHES)))
        _SPEC_HASHES[key] = state
    return state.copy()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A stable hash of a tokenizer's vocabulary and pipeline (ignoring its current truncation/padding state, which
    changes when it is called and would otherwise defeat the datasets cache)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h = _spec_hash(backend.to_str())
    else:
        h = hashlib.sha256()
        h.update(datasets.fingerprint.Hasher.hash(tokenizer).encode())
    extra = {
        "class": type(tokenizer).__name__,
        "inputs": list(getattr(tokenizer, "model_input_names", [])),
        "special": {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())},
        "side": getattr(tokenizer, "truncation_side", "right"),
    }
    h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()


def tokenized_fingerprint(ds: datasets.Dataset, tokenizer: Any, *parts: Any) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([_TOKENIZE_VERSION, ds._fingerprint, tokenizer_fingerprint(tokenizer), *map(str, parts)]).encode())
    return h.hexdigest()[:32]


def _check_max_len(max_len: int) -> None:
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 8:
        raise RaysftError(f"max_len must be an integer >= 8, got {max_len!r}: fix the data options")


def tokenize_labeled(ds: datasets.Dataset, tokenizer: Any, max_len: int, is_pair: bool) -> datasets.Dataset:
    """input_ids, attention_mask (and token_type_ids when the tokenizer makes them) and labels; unpadded (pad in the
    collator); truncated to max_len (pairs: longest first)."""
    _check_max_len(max_len)
    if is_pair and "text_pair" not in ds.column_names:
        raise RaysftError("pair task data has no text_pair column: load it with the task's load_train/load_eval")

    def encode(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(batch["text"], batch["text_pair"] if is_pair else None, truncation=True, max_length=max_len)
        out = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        out["labels"] = list(batch["label"])
        return out

    return ds.map(
        encode,
        batched=True,
        remove_columns=ds.column_names,
        new_fingerprint=tokenized_fingerprint(ds, tokenizer, "labeled", max_len, is_pair),
        desc="tokenizing",
    )


# ----------------------------------------------------------------------------------------------------------- metrics
def metrics(preds: Sequence[int] | torch.Tensor, labels: Sequence[int] | torch.Tensor, num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (sklearn semantics: averaged over the classes present in labels or preds; a zero
    precision/recall denominator counts as 0). ``preds`` may also be logits of shape (n, num_labels)."""
    p = torch.as_tensor(preds)
    if p.ndim == 2:
        p = p.argmax(-1)
    p = p.reshape(-1).long()
    y = torch.as_tensor(labels).reshape(-1).long()
    if p.numel() != y.numel():
        raise ValueError(f"metrics: {p.numel()} predictions but {y.numel()} labels")
    if p.numel() == 0:
        return {"acc": 0.0, "f1": 0.0}
    for name, t in (("predictions", p), ("labels", y)):
        if int(t.min()) < 0 or int(t.max()) >= num_labels:
            raise ValueError(f"metrics: {name} outside 0..{num_labels - 1}")
    acc = (p == y).float().mean().item()
    f1s = []
    for c in range(num_labels):
        tp = int(((p == c) & (y == c)).sum())
        n_pred = int((p == c).sum())
        n_true = int((y == c).sum())
        if n_pred == 0 and n_true == 0:
            continue
        prec = tp / n_pred if n_pred else 0.0
        rec = tp / n_true if n_true else 0.0
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return {"acc": float(acc), "f1": float(sum(f1s) / len(f1s))}


# -------------------------------------------------------------------------------------------------------------- Task
class Task(ABC):
    """A task: its labels, objective metric, source language, and how to load and tokenise its data."""

    name: str
    labels: list[str]
    metric: str  # the objective metric, a key of metrics()
    source_lang: str | None  # default source (training) language
    is_pair: bool

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @abstractmethod
    def available_targets(self, data_dir: str | os.PathLike | None = None) -> list[str]:
        """Target languages that have data under data_dir (None = data_dir())."""

    def eval_languages(self, data_dir: str | os.PathLike | None = None, source_lang: str | None = None) -> list[str]:
        """Languages load_eval accepts: the targets plus the source language."""
        targets = self.available_targets(data_dir)
        src = source_lang or self.source_lang
        return targets + ([src] if src and src not in targets else [])

    def hub_targets(self) -> list[str]:
        """Target languages of the task's hub datasets."""
        return []

    def hub_eval_languages(self, source_lang: str | None = None) -> list[str]:
        targets = self.hub_targets()
        src = source_lang or self.source_lang
        return targets + ([src] if src and src not in targets else [])

    def hub_repos(self) -> tuple:
        """The hub datasets the task reads (raysft.tasks.hub.HubRepo)."""
        return repos_for(self.name)

    def targets(self, cfg: Any = None) -> list[str]:
        """Every target language the run's data source has."""
        cfg = TaskData.coerce(cfg)
        return self.hub_targets() if cfg.use_hub() else self.available_targets(cfg.root())

    def languages(self, cfg: Any = None) -> list[str]:
        """Every language load_eval accepts from the run's data source."""
        cfg = TaskData.coerce(cfg)
        if cfg.use_hub():
            return self.hub_eval_languages(cfg.source_lang)
        return self.eval_languages(cfg.root(), cfg.source_lang)

    def hub_split(self, lang: str, split: str) -> HubSplit | None:
        """Where the task's hub datasets serve ``split`` ("train" of the source language, "dev"/"test") of ``lang``;
        None for a task that reads no labeled split from the hub."""
        return None

    def hub_reads(self, cfg: Any = None, splits: Sequence[str] = SPLITS) -> list[HubSplit]:
        """Every hub split a run reads: the source language's train, then each evaluation language's ``splits``
        (the run's targets and the source language, which train/recipe.py always evaluates)."""
        cfg = TaskData.coerce(cfg)
        source = cfg.source_lang or self.source_lang
        targets = self.target_langs(cfg)
        langs = targets + ([source] if source and source not in targets else [])
        reads = [self.hub_split(source, "train")] + [self.hub_split(lang, s) for lang in langs for s in splits]
        return [r for r in reads if r is not None]

    def check_data(self, cfg: Any = None, download: bool = True, splits: Sequence[str] | None = None) -> str:
        """Make sure the run's data can be read (the hub snapshots cached, downloaded when ``download``); a line
        saying where it comes from. With ``splits`` (the run's eval.splits), one row of every hub split the run reads
        is read too (:meth:`hub_reads`, raysft.tasks.hub.check_split). Raises a RaysftError naming the fix."""
        cfg = TaskData.coerce(cfg)
        if cfg.use_hub():
            where = "hub: " + ", ".join(f"{r} ({snapshot(r, download=download)})" for r in self.hub_repos())
            if splits is not None:
                reads = self.hub_reads(cfg, splits)
                for hs in reads:
                    check_split(hs)
                where += f"; one row read of each of its {len(reads)} splits"
            return where
        return str(cfg.root())

    def target_langs(self, cfg: Any = None) -> list[str]:
        """The run's target languages: cfg.target_langs checked against the available ones, or all of them."""
        cfg = TaskData.coerce(cfg)
        if cfg.target_langs is None:
            return self.targets(cfg)
        for lang in cfg.target_langs:
            self.check_lang(lang, cfg)
        return list(cfg.target_langs)

    def check_lang(self, lang: str, cfg: Any = None) -> None:
        cfg = TaskData.coerce(cfg)
        ok = self.languages(cfg)
        if lang not in ok:
            raise RaysftError(f"unknown {self.name} language {lang!r}: available are {', '.join(ok)}")

    @staticmethod
    def check_split(split: str) -> None:
        if split not in SPLITS:
            raise RaysftError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")

    @abstractmethod
    def load_train(self, cfg: Any = None) -> datasets.Dataset:
        """Source-language training data: columns text, (text_pair,) label (int)."""

    @abstractmethod
    def load_eval(self, lang: str, split: str, cfg: Any = None) -> datasets.Dataset:
        """Evaluation data of one language and split ("dev" or "test"), the first cfg.max_eval_examples rows."""

    def tokenize(self, ds: datasets.Dataset, tokenizer: Any, max_len: int) -> datasets.Dataset:
        return tokenize_labeled(ds, tokenizer, max_len, self.is_pair)

    def metrics(self, preds: Sequence[int] | torch.Tensor, labels: Sequence[int] | torch.Tensor) -> dict[str, float]:
        return metrics(preds, labels, self.num_labels)

    def __repr__(self) -> str:
        return f"<raysft task {self.name}>"
