"""The tasks' data on the Hugging Face Hub: which dataset repos, revisions, configs, splits and columns.

Each repo is taken as files (``huggingface_hub.snapshot_download`` into the Hugging Face cache, ``$HF_HOME/hub``) and
read by ``datasets`` from that snapshot, with the repo's own ``README.md`` configs. So a snapshot fetched once
(``raysft data fetch <space>``) is all a node without network needs, and the tests run this same code against
snapshots laid out like the real repos (``tests/test_hub_data.py``). The cache is tried first; the hub is asked only
when the snapshot is missing (``HF_HUB_OFFLINE=1`` forbids that).

Where the layouts were read (the dataset cards' YAML and the repos' file trees):

- ``nyu-mll/multi_nli`` (main): one ``default`` config, ``data/{train,validation_matched,validation_mismatched}-
  00000-of-00001.parquet``; columns promptID, pairID, premise, premise_binary_parse, premise_parse, hypothesis,
  hypothesis_binary_parse, hypothesis_parse, genre, label (ClassLabel entailment/neutral/contradiction).
  https://huggingface.co/datasets/nyu-mll/multi_nli/tree/main/data
- ``nala-cub/americas_nli`` (main; the old id ``americas_nli`` redirects here): configs aym, bzd, cni, gn, hch, nah,
  oto, quy, shp, tar and all_languages, files ``<config>/{validation,test}-00000-of-00001.parquet``; columns premise, hypothesis, label (ClassLabel entailment/neutral/
  contradiction); all_languages adds ``language``. https://huggingface.co/datasets/nala-cub/americas_nli
  (commit aa38975 "Convert dataset to Parquet (#3)")
- ``facebook/xnli`` (main; formerly ``xnli``): config ``en``, ``en/{train,validation,test}-*.parquet``; columns
  premise, hypothesis, label (same ClassLabel). The local ``xnli_en`` files are its English validation/test rows.
  https://huggingface.co/datasets/facebook/xnli/tree/main/en (commit "Convert dataset to Parquet (#10)")
- ``indonlp/NusaX-senti``: main holds only a loading script (``NusaX-senti.py``), which ``datasets`` >= 4 no longer
  runs; the hub's parquet export (revision ``refs/convert/parquet``) has one folder per language,
  ``<lang>/<split>/0000.parquet`` (older exports: ``<lang>/nusa_x-senti-<split>.parquet``; both are read by their
  split names), splits train/validation/test; columns id, text, lang, label (ClassLabel negative/neutral/positive).
  https://huggingface.co/datasets/indonlp/NusaX-senti (card: features id, text, lang, label) and its parquet
  branch https://huggingface.co/datasets/indonlp/NusaX-senti/tree/refs%2Fconvert%2Fparquet
- ``indonlp/NusaX-MT``: a loading script only, with no parquet export (its viewer says it "requires arbitrary Python
  code execution"), so it cannot be read by ``datasets`` 5. NusaX is sentence-parallel: NusaX-MT's train.csv rows
  are NusaX-Senti's train rows in every language (see the data README), so the language-SFT text of a NusaX language
  comes from NusaX-senti's ``<lang>`` train split (text column), the same 500 sentences as ``nusax_mt/train.csv``.
  https://huggingface.co/datasets/indonlp/NusaX-MT (files: NusaX-MT.py, README.md)
- AmericasNLP 2021 texts (``americas_text/``): not on the hub as a dataset; they stay local-only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import datasets

from raysft.errors import RaysftError
from raysft.tasks.cache import cache_dir

AMERICAS_LANGS = ("aym", "bzd", "cni", "gn", "hch", "nah", "oto", "quy", "shp", "tar")
NUSAX_LANGS = ("ace", "ban", "bbc", "bjn", "bug", "eng", "ind", "jav", "mad", "min", "nij", "sun")
# The hub's split names for raysft's splits.
SPLIT_NAMES = {"train": "train", "dev": "validation", "test": "test"}


@dataclass(frozen=True)
class HubRepo:
    repo_id: str
    revision: str
    patterns: tuple[str, ...]  # what a snapshot needs (fnmatch, as huggingface_hub's allow_patterns)
    what: str

    def __str__(self) -> str:
        return self.repo_id if self.revision == "main" else f"{self.repo_id}@{self.revision}"


MNLI = HubRepo("nyu-mll/multi_nli", "main", ("README.md", "data/*.parquet"), "MultiNLI")
AMERICAS_NLI = HubRepo(
    "nala-cub/americas_nli", "main", ("README.md", *(f"{lang}/*.parquet" for lang in AMERICAS_LANGS)), "AmericasNLI"
)
XNLI = HubRepo("facebook/xnli", "main", ("README.md", "en/validation-*.parquet", "en/test-*.parquet"), "XNLI")
NUSAX_SENTI = HubRepo(
    "indonlp/NusaX-senti", "refs/convert/parquet", tuple(f"{lang}/*.parquet" for lang in NUSAX_LANGS), "NusaX-Senti"
)

# What each task reads from the hub (`raysft data fetch` downloads these).
TASK_REPOS: dict[str, tuple[HubRepo, ...]] = {
    "nli": (MNLI, AMERICAS_NLI, XNLI),
    "sa": (NUSAX_SENTI,),
    "mlm": (NUSAX_SENTI,),
}


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache (``$HF_HUB_CACHE``, default ``$HF_HOME/hub``), read at call time."""
    from huggingface_hub import constants  # huggingface_hub: imported where it is used (a heavy import)

    return Path(constants.HF_HUB_CACHE)


def _first_line(e: BaseException) -> str:
    text = [line for line in str(e).strip().splitlines() if line.strip()]
    return (f"{type(e).__name__}: {text[0]}" if text else type(e).__name__)[:200]


def cached_snapshot(repo: HubRepo) -> Path | None:
    """The complete snapshot of ``repo`` in this machine's cache, or None (nothing is downloaded)."""
    from huggingface_hub import snapshot_download  # imported where it is used (a heavy import)

    try:
        path = snapshot_download(
            repo.repo_id, repo_type="dataset", revision=repo.revision, allow_patterns=list(repo.patterns),
            local_files_only=True, cache_dir=str(hub_cache_dir()),
        )
    except Exception:  # LocalEntryNotFoundError, IncompleteSnapshotError, ...
        return None
    return Path(path)


def snapshot(repo: HubRepo, *, download: bool = True) -> Path:
    """The local snapshot of ``repo``: from the cache, else downloaded (when ``download``). A repo that cannot be had
    is one line naming `raysft data fetch`."""
    path = cached_snapshot(repo)
    if path is not None:
        return path
    fix = ("run `raysft data fetch <space>` where the hub is reachable (with the same HF_HOME), "
           "or use local data (data.source: local, RAYSFT_DATA_DIR)")
    if not download:
        raise RaysftError(f"hub dataset {repo} ({repo.what}) is not in this machine's cache {hub_cache_dir()}: {fix}")
    from huggingface_hub import snapshot_download  # imported where it is used (a heavy import)

    try:
        return Path(snapshot_download(
            repo.repo_id, repo_type="dataset", revision=repo.revision, allow_patterns=list(repo.patterns),
            cache_dir=str(hub_cache_dir()),
        ))
    except Exception as e:  # offline, unknown repo or revision, gated, hub down
        raise RaysftError(f"cannot get hub dataset {repo} ({repo.what}; {_first_line(e)}): {fix}") from None


def load(repo: HubRepo, split: str, *, name: str | None = None, data_dir: str | None = None) -> datasets.Dataset:
    """One split of a hub dataset (a config ``name`` from its README, or a ``data_dir`` of the repo), read by
    ``datasets`` from the snapshot into raysft's datasets cache."""
    path = snapshot(repo)
    where = f"{repo}" + (f" config {name}" if name else "") + (f" {data_dir}/" if data_dir else "")
    if data_dir is not None and not (path / data_dir).is_dir():
        raise RaysftError(f"hub dataset {where}: no folder {data_dir}/ in the snapshot {path}: run `raysft data fetch <space>` again")
    try:
        return datasets.load_dataset(
            str(path), name=name, data_dir=data_dir, split=SPLIT_NAMES.get(split, split), cache_dir=str(cache_dir()),
        )
    except Exception as e:  # unknown config or split, missing files
        raise RaysftError(f"cannot read {SPLIT_NAMES.get(split, split)} of hub dataset {where} ({_first_line(e)}): "
                          "run `raysft data fetch <space>` again") from None


def labeled(ds: datasets.Dataset, columns: dict[str, str], labels: list[str], what: str) -> datasets.Dataset:
    """Keep ``columns`` (hub name -> text/text_pair) and the label, as the local loaders give them: text columns and a
    ClassLabel with raysft's names. Unlabeled rows (label -1, as MultiNLI has for pairs without a gold label) are
    dropped. The hub's label names must be raysft's, in raysft's order."""
    missing = [c for c in [*columns, "label"] if c not in ds.column_names]
    if missing:
        raise RaysftError(f"{what}: column(s) {', '.join(missing)} missing (found {', '.join(ds.column_names)}): "
                          "the hub dataset changed its layout; use local data (data.source: local)")
    feat = ds.features["label"]
    if isinstance(feat, datasets.ClassLabel) and list(feat.names) != list(labels):
        raise RaysftError(f"{what}: labels {feat.names} differ from {labels}: the hub dataset changed its labels; "
                          "use local data (data.source: local)")
    ds = ds.select_columns([*columns, "label"])
    ds = ds.filter(lambda b: [lab is not None and 0 <= lab < len(labels) for lab in b["label"]], batched=True,
                   desc=f"dropping unlabeled rows of {what}")
    ds = ds.rename_columns({k: v for k, v in columns.items() if k != v})
    return ds.cast(datasets.Features({**{v: datasets.Value("string") for v in columns.values()},
                                      "label": datasets.ClassLabel(names=list(labels))}))


def repos_for(task: str) -> tuple[HubRepo, ...]:
    return TASK_REPOS[task]


def snapshot_size(path: Path) -> tuple[int, int]:
    """(files, bytes) under a snapshot (following the cache's symlinks to the blobs)."""
    n = size = 0
    for root, _, files in os.walk(path):
        for f in files:
            n += 1
            size += os.path.getsize(os.path.join(root, f))
    return n, size
