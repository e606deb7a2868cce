"""Test helper: the tasks' hub dataset repos, laid out as on the Hugging Face hub (README configs, parquet files,
columns, ClassLabels; see raysft/tasks/hub.py), written into a Hugging Face cache as snapshots, plus the same rows
as a local data folder (the layout of shared/data). So the hub code path runs offline and can be compared row by
row with the local one. SFT model repos too (:func:`write_model_snapshot`).

The dataset cards are the hub's: every config and split the real card declares (XNLI's 15 languages and
all_languages, each with train/test/validation; AmericasNLI's all_languages and 10 languages, each with
validation/test; MultiNLI's default with its three splits), with ``dataset_info`` features. The snapshot holds what
``raysft data fetch`` leaves in the cache: the repo's files filtered by raysft's ``allow_patterns``
(:func:`write_repo`), so a card may declare splits whose files are not there (XNLI ``en`` train)."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import datasets
import yaml

NLI_LABELS = ["entailment", "neutral", "contradiction"]
SA_LABELS = ["negative", "neutral", "positive"]
NUSAX_COLUMNS = {"ind": "indonesian", "ace": "acehnese", "jav": "javanese", "sun": "sundanese", "eng": "english"}


def write_snapshot(cache: Path, repo_id: str, revision: str, files: dict[str, object]) -> Path:
    """A snapshot in a Hugging Face hub cache, as huggingface_hub leaves it: ``datasets--<owner>--<name>/refs/
    <revision>`` holding a commit hash and ``snapshots/<hash>/<files>``. A file is text, or a Dataset (parquet)."""
    folder = cache / f"datasets--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    ref = folder / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)
    snap = folder / "snapshots" / commit
    for rel, content in files.items():
        path = snap / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, datasets.Dataset):
            content.to_parquet(str(path))
        else:
            path.write_text(str(content))
    return snap


def write_model_snapshot(cache: Path, repo_id: str, folder: Path) -> Path:
    """A model repo's snapshot in a Hugging Face hub cache, as ``huggingface-cli upload <repo_id> <folder>`` then a
    download leave it: ``models--<owner>--<name>/refs/main`` holding a commit hash and ``snapshots/<hash>/`` the
    folder's files (subfolders included)."""
    import shutil

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo_id}@main".encode()).hexdigest()
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    shutil.copytree(folder, snap, dirs_exist_ok=True)
    return snap


def readme(configs: dict[str, dict[str, str]], features: dict[str, datasets.Features] | None = None) -> str:
    """A dataset card whose YAML declares the configs' data files, as the hub's parquet repos do, and (``features``)
    each config's ``dataset_info`` features: a mapping with ``config_name`` for one config, a list for several."""
    lines = ["---"]
    if features:
        infos = [{"config_name": name, "features": feats._to_yaml_list()} for name, feats in features.items()]
        lines += yaml.safe_dump({"dataset_info": infos if len(infos) > 1 else infos[0]}, sort_keys=False).splitlines()
    lines.append("configs:")
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        for split, pattern in splits.items():
            lines += [f"  - split: {split}", f"    path: {pattern}"]
    return "\n".join(lines + ["---", "", "# test copy", ""])


def write_repo(cache: Path, repo, files: dict[str, object]) -> Path:
    """The snapshot ``raysft data fetch`` leaves of a hub repo holding ``files``: only those matching the repo's
    allow_patterns (raysft.tasks.hub.HubRepo), filtered as huggingface_hub's snapshot_download filters them."""
    from huggingface_hub.utils import filter_repo_objects

    kept = set(filter_repo_objects(list(files), allow_patterns=list(repo.patterns)))
    return write_snapshot(cache, repo.repo_id, repo.revision, {k: v for k, v in files.items() if k in kept})


def _nli_ds(rows, extra: dict[str, list] | None = None) -> datasets.Dataset:
    cols = {"premise": [r[0] for r in rows], "hypothesis": [r[1] for r in rows], "label": [r[2] for r in rows]}
    feats = {"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
             "label": datasets.ClassLabel(names=NLI_LABELS)}
    for k, v in (extra or {}).items():
        cols[k] = v
        feats[k] = datasets.Value("int32") if isinstance(v[0], int) else datasets.Value("string")
    return datasets.Dataset.from_dict(cols, features=datasets.Features(feats))


def _tsv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar=None, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def nli_rows(n: int, tag: str) -> list[tuple[str, str, int]]:
    return [(f"{tag} premise {i} NA", f"{tag} hypothesis {i}", i % 3) for i in range(n)]


XNLI_LANGS = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")
AMERICAS_NLI_LANGS = ("aym", "bzd", "cni", "gn", "hch", "nah", "oto", "quy", "shp", "tar")


def _mnli_extra(n: int, rows) -> dict[str, list]:
    parse = [f"( {p} )" for p, _, _ in rows]
    return {"promptID": list(range(n)), "pairID": [f"{i}e" for i in range(n)], "premise_binary_parse": parse,
            "premise_parse": parse, "hypothesis_binary_parse": parse, "hypothesis_parse": parse, "genre": ["fiction"] * n}


def write_nli(cache: Path, data: Path, langs=("aym", "gn")) -> dict:
    """MultiNLI, AmericasNLI and XNLI as the hub cache holds them after ``raysft data fetch nli`` (the real cards,
    the files the allow_patterns keep); the same rows as local files under ``data``."""
    from raysft.tasks import hub

    train = nli_rows(30, "mnli")
    # The hub's MultiNLI train: the local sample's rows plus an unlabeled pair (label -1), which both drop.
    hub_train = train[:5] + [("unlabeled premise", "unlabeled hypothesis", -1)] + train[5:]
    val = nli_rows(6, "mnli-val")
    mnli = {"data/train-00000-of-00001.parquet": _nli_ds(hub_train, _mnli_extra(len(hub_train), hub_train)),
            "data/validation_matched-00000-of-00001.parquet": _nli_ds(val, _mnli_extra(len(val), val)),
            "data/validation_mismatched-00000-of-00001.parquet": _nli_ds(val, _mnli_extra(len(val), val))}
    mnli_card = readme({"default": {"train": "data/train-*", "validation_matched": "data/validation_matched-*",
                                    "validation_mismatched": "data/validation_mismatched-*"}},
                       {"default": mnli["data/train-00000-of-00001.parquet"].features})
    write_repo(cache, hub.MNLI, {"README.md": mnli_card, **mnli})
    _tsv(data / "nli_en" / "mnli_subset" / "mnli_part1.tsv", ["premise", "hypothesis", "label"],
         [[p, h, NLI_LABELS[y]] for p, h, y in train])

    # AmericasNLI: all_languages (with a language column) and the 10 languages, each validation and test.
    files: dict[str, object] = {}
    eval_rows = {}
    for lang in langs:
        for split, hub_split in (("dev", "validation"), ("test", "test")):
            rows = nli_rows(7 if split == "dev" else 9, f"{lang}-{split}")
            eval_rows[(lang, split)] = rows
            files[f"{lang}/{hub_split}-00000-of-00001.parquet"] = _nli_ds(rows)
            _tsv(data / "americasnli" / split / f"{lang}.tsv", ["language", "premise", "hypothesis", "label"],
                 [[lang, p, h, NLI_LABELS[y]] for p, h, y in rows])
    for split, hub_split in (("dev", "validation"), ("test", "test")):
        all_rows = [r for lang in langs for r in eval_rows[(lang, split)]]
        files[f"all_languages/{hub_split}-00000-of-00001.parquet"] = _nli_ds(
            all_rows, {"language": [lang for lang in langs for _ in eval_rows[(lang, split)]]})
    configs = {name: {"validation": f"{name}/validation-*", "test": f"{name}/test-*"}
               for name in ("all_languages", *AMERICAS_NLI_LANGS)}
    feats = {name: _nli_ds([]).features for name in AMERICAS_NLI_LANGS}
    feats = {"all_languages": files["all_languages/validation-00000-of-00001.parquet"].features, **feats}
    write_repo(cache, hub.AMERICAS_NLI, {"README.md": readme(configs, feats), **files})

    # XNLI: every language config (and all_languages) declares train, test and validation; raysft fetches en's
    # validation and test only (a run never reads XNLI train), so en/train is on the hub but not in the snapshot.
    xnli = {}
    files = {"en/train-00000-of-00001.parquet": _nli_ds(nli_rows(12, "xnli-train")),
             "de/validation-00000-of-00001.parquet": _nli_ds(nli_rows(3, "xnli-de"))}
    for split, hub_split in (("dev", "validation"), ("test", "test")):
        rows = nli_rows(8, f"xnli-{split}")
        xnli[split] = rows
        files[f"en/{hub_split}-00000-of-00001.parquet"] = _nli_ds(rows)
        _tsv(data / "nli_en" / "xnli_en" / f"{split}.tsv", ["genre", "premise", "hypothesis", "label"],
             [["fiction", p, h, NLI_LABELS[y]] for p, h, y in rows])
    configs = {name: {"train": f"{name}/train-*", "test": f"{name}/test-*", "validation": f"{name}/validation-*"}
               for name in ("all_languages", *XNLI_LANGS)}
    write_repo(cache, hub.XNLI, {"README.md": readme(configs, {name: _nli_ds([]).features for name in XNLI_LANGS}),
                                 **files})
    return {"train": train, "eval": eval_rows, "xnli": xnli}


def nusax_rows(lang: str, split: str, n: int) -> list[tuple[str, str, int]]:
    return [(str(i), f"{lang} {split} sentence {i}" + (" null" if i % 7 == 0 else ""), (i * 5) % 3) for i in range(n)]


def write_nusax(cache: Path, data: Path, langs=("eng", "ind", "jav", "sun"), sizes=None) -> dict:
    """NusaX-senti's parquet export (refs/convert/parquet: ``<lang>/<split>/0000.parquet``) and the same rows as
    ``nusax_senti/<lang>/{train,valid,test}.csv`` plus ``nusax_mt/train.csv`` (the train sentences, parallel)."""
    sizes = sizes or {"train": 220, "dev": 10, "test": 12}
    files: dict[str, object] = {}
    rows_of = {}
    for lang in langs:
        for split, hub_split, local in (("train", "train", "train.csv"), ("dev", "validation", "valid.csv"),
                                        ("test", "test", "test.csv")):
            rows = nusax_rows(lang, split, sizes[split])
            rows_of[(lang, split)] = rows
            files[f"{lang}/{hub_split}/0000.parquet"] = datasets.Dataset.from_dict(
                {"id": [r[0] for r in rows], "text": [r[1] for r in rows], "lang": [lang] * len(rows),
                 "label": [r[2] for r in rows]},
                features=datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string"),
                                            "lang": datasets.Value("string"),
                                            "label": datasets.ClassLabel(names=SA_LABELS)}))
            path = data / "nusax_senti" / lang / local
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["id", "text", "label"])
                w.writerows([[i, t, SA_LABELS[y]] for i, t, y in rows])
    mt = data / "nusax_mt" / "train.csv"
    mt.parent.mkdir(parents=True, exist_ok=True)
    with open(mt, "w", newline="") as f:
        w = csv.writer(f)
        cols = [NUSAX_COLUMNS[lang] for lang in langs]
        w.writerow(["", *cols])
        for k in range(sizes["train"]):
            w.writerow([k, *(rows_of[(lang, "train")][k][1] for lang in langs)])
    write_snapshot(cache, "indonlp/NusaX-senti", "refs/convert/parquet", files)
    return rows_of
