"""The tasks' data on the Hugging Face Hub: which dataset repos, revisions, configs, splits and columns.

Each repo is taken as files (``huggingface_hub.snapshot_download`` into the Hugging Face cache, ``$HF_HOME/hub``):
only the files a run reads (the repo's ``allow_patterns``), so XNLI's 15 languages and its train split stay on the
hub. A split is read as the repo's own ``README.md`` card declares it: the card's ``configs`` name each config's
data files per split and its ``dataset_info`` their features; raysft resolves the one split it needs in the snapshot
and hands exactly those parquet files to ``datasets``' parquet builder (:func:`load_split`). Handing ``datasets``
the whole snapshot instead makes it resolve every config and split the card declares, and it fails on those not
downloaded ("Couldn't infer the same data file format for all splits" for XNLI ``en``, whose card declares a train
split; "No (supported) data files found" where the card's first config, ``all_languages``, was not fetched). So a
snapshot fetched once (``raysft data fetch <space>``, which then reads one row of every split a run reads:
:func:`check_split`) is all a node without network needs, and the tests run this same code against snapshots laid
out like the real repos with their real cards (``tests/hub_layout.py``, ``tests/test_hub_data.py``). The cache is
tried first; the hub is asked only when the snapshot is missing (``HF_HUB_OFFLINE=1`` forbids that).

Where the layouts were read (the dataset cards' YAML and the repos' file trees):

- ``nyu-mll/multi_nli`` (main): one ``default`` config, ``data/{train,validation_matched,validation_mismatched}-
  00000-of-00001.parquet``; columns promptID, pairID, premise, premise_binary_parse, premise_parse, hypothesis,
  hypothesis_binary_parse, hypothesis_parse, genre, label (ClassLabel entailment/neutral/contradiction).
  https://huggingface.co/datasets/nyu-mll/multi_nli/tree/main/data
- ``nala-cub/americas_nli`` (main; the old id ``americas_nli`` redirects here): configs all_languages (not fetched),
  aym, bzd, cni, gn, hch, nah, oto, quy, shp, tar, files ``<config>/{validation,test}-00000-of-00001.parquet``; columns premise, hypothesis, label (ClassLabel entailment/neutral/
  contradiction); all_languages adds ``language``. https://huggingface.co/datasets/nala-cub/americas_nli
  (commit aa38975 "Convert dataset to Parquet (#3)")
- ``facebook/xnli`` (main; formerly ``xnli``): configs all_languages and the 15 languages (ar … zh), each declaring
  train, test and validation (``<config>/{train,test,validation}-*``); raysft fetches ``en/{validation,test}-*``
  only (a run never reads XNLI train, ~50 MB of parquet); columns premise, hypothesis, label (same ClassLabel). The
  local ``xnli_en`` files are its English validation/test rows.
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


def offline() -> bool:
    """Whether huggingface_hub may not reach the hub (HF_HUB_OFFLINE)."""
    from huggingface_hub import constants  # imported where it is used (a heavy import)

    return bool(constants.HF_HUB_OFFLINE)


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


def snapshot(repo: HubRepo, *, download: bool = True, force: bool = False) -> Path:
    """The local snapshot of ``repo``: from the cache, else downloaded (when ``download``); ``force``: downloaded
    again whatever the cache holds (a file missing or cut short). A repo that cannot be had is one line naming
    `raysft data fetch`."""
    path = None if force else cached_snapshot(repo)
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
            cache_dir=str(hub_cache_dir()), force_download=force,
        ))
    except Exception as e:  # offline, unknown repo or revision, gated, hub down
        raise RaysftError(f"cannot get hub dataset {repo} ({repo.what}; {_first_line(e)}): {fix}") from None


FETCH_AGAIN = "run `raysft data fetch <space>` again where the hub is reachable (a download was cut short?)"


@dataclass(frozen=True)
class HubSplit:
    """One split a run reads: a ``config`` the repo's card declares, or (a repo without card configs, as NusaX-senti's
    parquet export) a folder ``data_dir`` holding ``<split>/*.parquet`` or ``*-<split>.parquet``. ``split`` is
    raysft's name (train, dev, test); ``columns`` are those the run needs."""

    repo: HubRepo
    split: str
    config: str | None = None
    data_dir: str | None = None
    columns: tuple[str, ...] = ()

    @property
    def hub_split(self) -> str:
        return SPLIT_NAMES.get(self.split, self.split)

    def __str__(self) -> str:
        where = f" config {self.config}" if self.config else (f" {self.data_dir}/" if self.data_dir else "")
        return f"hub dataset {self.repo}{where} split {self.hub_split}"


def card(path: Path):
    """The metadata of a snapshot's dataset card (``README.md``) as ``huggingface_hub`` reads it (DatasetCardData;
    empty when the snapshot has no card)."""
    from huggingface_hub import DatasetCard, DatasetCardData  # imported where it is used (a heavy import)

    readme = path / "README.md"
    if not readme.is_file():
        return DatasetCardData()
    try:
        return DatasetCard.load(readme).data
    except Exception as e:  # YAML that does not parse
        raise RaysftError(f"the dataset card {readme} cannot be read ({_first_line(e)}): {FETCH_AGAIN}") from None


def split_files(hs: HubSplit, path: Path) -> tuple[list[Path], datasets.Features | None]:
    """The parquet files of one split in a snapshot, as the repo's card declares them, and the card's features for
    them. A config or split the card lacks, or a split without files, is one line naming the fix."""
    meta = card(path)
    features = None
    if hs.config is not None:
        # the card's configs and their data files, read as datasets reads them (every form the hub accepts)
        from datasets.data_files import sanitize_patterns
        from datasets.info import DatasetInfosDict
        from datasets.utils.metadata import MetadataConfigs

        try:
            configs = MetadataConfigs.from_dataset_card_data(meta)
        except ValueError as e:  # a configs field of a form datasets does not accept
            raise RaysftError(f"{hs}: the snapshot's dataset card has configs datasets cannot read "
                              f"({_first_line(e)}): {FETCH_AGAIN}") from None
        if hs.config not in configs:
            have = ", ".join(configs) or "none"
            raise RaysftError(f"{hs}: the snapshot's dataset card declares no config {hs.config} (it has {have}): "
                              f"the hub dataset changed its layout, or {FETCH_AGAIN}")
        spec = configs[hs.config].get("data_files")
        patterns = sanitize_patterns(spec) if spec is not None else {}
        if hs.hub_split not in patterns:
            raise RaysftError(f"{hs}: the dataset card declares no split {hs.hub_split} for config {hs.config} (it has "
                              f"{', '.join(patterns) or 'none'}): the hub dataset changed its layout; use local data "
                              "(data.source: local)")
        globs = list(patterns[hs.hub_split])
        info = DatasetInfosDict.from_dataset_card_data(meta).get(hs.config)
        features = info.features if info is not None else None
    else:
        base = hs.data_dir or "."
        globs = [f"{base}/{hs.hub_split}/*.parquet", f"{base}/*-{hs.hub_split}.parquet",
                 f"{base}/{hs.hub_split}-*.parquet", f"{base}/*-{hs.hub_split}-*.parquet"]
    files = sorted({f for g in globs for f in path.glob(g.lstrip("/")) if f.is_file()})
    if not files:
        raise RaysftError(f"{hs}: no file matches {', '.join(globs)} in the snapshot {path}: {FETCH_AGAIN}")
    return files, features


def load_split(hs: HubSplit) -> datasets.Dataset:
    """One split of a hub dataset: its files (:func:`split_files`) read by ``datasets``' parquet builder, with the
    card's features, into raysft's datasets cache."""
    path = snapshot(hs.repo)
    files, features = split_files(hs, path)
    try:
        return datasets.load_dataset("parquet", data_files={hs.hub_split: [str(f) for f in files]}, split=hs.hub_split,
                                     features=features, cache_dir=str(cache_dir()))
    except Exception as e:  # a truncated or corrupt file, columns the card does not describe
        raise RaysftError(f"cannot read {hs} ({_first_line(e)}): {FETCH_AGAIN}") from None


def check_split(hs: HubSplit) -> Path:
    """Read one row of a split as a run reads it (the card's files and features, the run's columns), from this
    machine's cache only; every file's footer is read too, so a truncated one is found. Returns the first file; a
    split that cannot be read is one line naming the repo, the split and the fix."""
    import pyarrow.parquet as pq  # imported where it is used

    path = snapshot(hs.repo, download=False)
    files, features = split_files(hs, path)
    try:
        for f in files:
            names = pq.ParquetFile(f).schema_arrow.names  # the footer: a truncated or corrupt file fails here
            missing = [c for c in hs.columns if c not in names]
            if missing:
                raise RaysftError(f"{hs}: {f.name} has no column(s) {', '.join(missing)} (it has {', '.join(names)}): "
                                  "the hub dataset changed its layout; use local data (data.source: local)")
        rows = datasets.load_dataset("parquet", data_files={hs.hub_split: [str(f) for f in files]}, split=hs.hub_split,
                                     features=features, streaming=True)
        row = next(iter(rows), None)
    except RaysftError:
        raise
    except Exception as e:
        raise RaysftError(f"cannot read {hs} ({_first_line(e)}): {FETCH_AGAIN}") from None
    if row is None:
        raise RaysftError(f"{hs}: no rows in {', '.join(f.name for f in files)}: {FETCH_AGAIN}")
    return files[0]


def load(repo: HubRepo, split: str, *, name: str | None = None, data_dir: str | None = None) -> datasets.Dataset:
    """One split of a hub dataset: a config ``name`` its card declares (default: the card's ``default``), or a folder
    ``data_dir`` of the repo (:func:`load_split`)."""
    return load_split(HubSplit(repo, split, config=name or (None if data_dir else "default"), data_dir=data_dir))


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
