"""raysft.tasks: metrics, data loading on the shared data, tokenisation with a tiny BPE tokenizer."""

from __future__ import annotations

import csv
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import math  # noqa: E402
import random  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from raysft.errors import RaysftError  # noqa: E402
from raysft.tasks import TASKS, TaskData, data_dir, get_task, load_text, metrics, mlm_collator, tokenize_for_mlm  # noqa: E402
from raysft.tasks import base as tasks_base  # noqa: E402

SKIP_REASON = "../shared/data not found: set RAYSFT_DATA_DIR"


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory):
    """Keep this module's Arrow files out of the user's cache."""
    old = os.environ.get("RAYSFT_CACHE")
    os.environ["RAYSFT_CACHE"] = str(tmp_path_factory.mktemp("raysft_cache"))
    yield
    if old is None:
        os.environ.pop("RAYSFT_CACHE", None)
    else:
        os.environ["RAYSFT_CACHE"] = old


@pytest.fixture(scope="module")
def root() -> Path:
    try:
        return data_dir()
    except RaysftError:
        pytest.skip(SKIP_REASON)


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    corpus = [
        "the cakes give me massive nostalgia",
        "Jupax sanwa: Mamita, utankastwa.",
        "he called his mom as soon as the school bus dropped him off",
        "nikmati cicilan hingga 12 bulan untuk pemesanan tiket pesawat",
    ] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=200, special_tokens=specials, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_input_names=["input_ids", "attention_mask"],
    )


# ------------------------------------------------------------------------------------------------------------ metrics
def test_metrics_class_never_predicted():
    # class 0: P 2/3 R 1 F1 .8; class 1: P 1/3 R 1/2 F1 .4; class 2: never predicted -> F1 0
    m = metrics([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2], 3)
    assert m["acc"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx((0.8 + 0.4 + 0.0) / 3)


def test_metrics_class_predicted_but_never_true():
    # class 0: P 1 R .5 F1 2/3; class 1: F1 1; class 2: predicted once, never true -> F1 0 (still averaged)
    m = metrics(torch.tensor([0, 2, 1, 1]), torch.tensor([0, 0, 1, 1]), 3)
    assert m["acc"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_metrics_absent_classes_excluded_and_logits():
    # 5 classes but only 0 and 1 occur: class 0 F1 2/3, class 1 P 2/3 R 1 F1 .8
    m = metrics([0, 1, 1, 1], [0, 1, 0, 1], 5)
    assert m == pytest.approx({"acc": 0.75, "f1": (2 / 3 + 0.8) / 2})
    logits = torch.tensor([[2.0, 0.1, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    assert metrics(logits, [0, 1, 1], 3) == pytest.approx({"acc": 2 / 3, "f1": (1 + 2 / 3 + 0) / 3})
    assert metrics([1, 1], [1, 1], 3) == {"acc": 1.0, "f1": 1.0}
    with pytest.raises(ValueError):
        metrics([0, 1], [0], 3)
    with pytest.raises(ValueError):
        metrics([0, 3], [0, 1], 3)


def test_metrics_match_sklearn_on_random_inputs():
    sk = pytest.importorskip("sklearn.metrics")
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(1, 30)
        y = [rng.randrange(4) for _ in range(n)]
        p = [rng.randrange(4) for _ in range(n)]
        m = metrics(p, y, 4)
        assert m["acc"] == pytest.approx(sk.accuracy_score(y, p))
        assert m["f1"] == pytest.approx(sk.f1_score(y, p, average="macro", zero_division=0))


# ----------------------------------------------------------------------------------------------- registry, options
def test_unknown_task_lists_known_names():
    with pytest.raises(RaysftError, match="nli, sa, mlm"):
        get_task("ner")
    assert {get_task(n).name for n in ("nli", "sa", "mlm")} == set(TASKS)
    assert get_task("nli").metric == "acc" and get_task("sa").metric == "f1"
    assert get_task("nli").is_pair and not get_task("sa").is_pair


def test_data_dir_env_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("RAYSFT_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(RaysftError, match="RAYSFT_DATA_DIR") as e:
        data_dir()
    assert str(tmp_path / "nope") in str(e.value)
    monkeypatch.setenv("RAYSFT_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path


def test_data_dir_falls_back_to_repo_root(monkeypatch, tmp_path):
    expected = (tasks_base.repo_root() / ".." / "shared" / "data").resolve()
    if not expected.is_dir():
        pytest.skip(SKIP_REASON)
    monkeypatch.delenv("RAYSFT_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # tmp_path/../shared/data does not exist
    assert data_dir() == expected


def test_taskdata_options():
    assert TaskData.coerce({"max_eval_examples": 5}).max_eval_examples == 5
    with pytest.raises(RaysftError, match="unknown data option"):
        TaskData.coerce({"max_eval": 5})
    with pytest.raises(RaysftError, match="max_train_examples"):
        TaskData(max_train_examples=0)
    with pytest.raises(RaysftError, match="local"):
        TaskData(source="s3")


# ----------------------------------------------------------------------------------------------------- real data
def test_sa_eng_train(root):
    ds = get_task("sa").load_train(TaskData(data_dir=root))
    assert len(ds) == 500
    assert set(ds.column_names) == {"text", "label"}
    assert Counter(list(ds["label"])) == {0: 192, 1: 119, 2: 189}  # negative / neutral / positive
    assert all(isinstance(x, int) for x in list(ds["label"])[:10])


def test_sa_eval_languages(root):
    sa = get_task("sa")
    assert sa.available_targets(root) == ["ace", "ban", "bbc", "bjn", "bug", "jav", "mad", "min", "nij", "sun"]
    jav = sa.load_eval("jav", "dev", TaskData(data_dir=root))
    assert len(jav) == 100 and Counter(list(jav["label"])) == {0: 38, 1: 24, 2: 38}
    eng = sa.load_eval("eng", "test", TaskData(data_dir=root, max_eval_examples=7))
    full = sa.load_eval("eng", "test", TaskData(data_dir=root))
    assert len(full) == 400 and list(eng["text"]) == list(full["text"])[:7]  # the FIRST n rows


def test_nli_aym_dev(root):
    nli = get_task("nli")
    ds = nli.load_eval("aym", "dev", TaskData(data_dir=root))
    assert len(ds) == 743
    assert set(ds.column_names) == {"text", "text_pair", "label"}
    assert set(list(ds["label"])) == {0, 1, 2}
    assert ds[0] == {
        "text": "Jupax sanwa: Mamita, utankastwa.",
        "text_pair": "Yatiñ utan awtux jaytawayki ukxpachaw mamaytapar jawsanxa.",
        "label": 1,  # neutral
    }
    assert len(nli.available_targets(root)) == 10
    assert len(nli.load_eval("eng", "dev", TaskData(data_dir=root))) == 2490  # XNLI-en dev


def test_nli_train_subset_is_seeded(root):
    nli = get_task("nli")
    a = nli.load_train(TaskData(data_dir=root, max_train_examples=50, seed=1))
    b = nli.load_train(TaskData(data_dir=root, max_train_examples=50, seed=1))
    c = nli.load_train(TaskData(data_dir=root, max_train_examples=50, seed=2))
    assert len(a) == 50 and list(a["text"]) == list(b["text"]) and list(a["text"]) != list(c["text"])
    assert set(a.column_names) == {"text", "text_pair", "label"}


def test_nli_hub_offline_is_a_raysft_error(root, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(RaysftError, match="local"):
        get_task("nli").load_train(TaskData(data_dir=root, source="hub"))


def test_unknown_language_and_split(root):
    cfg = TaskData(data_dir=root)
    with pytest.raises(RaysftError, match="available are ace, ban"):
        get_task("sa").load_eval("xyz", "dev", cfg)
    with pytest.raises(RaysftError, match="available are aym, bzd"):
        get_task("nli").load_eval("xyz", "test", cfg)
    with pytest.raises(RaysftError, match="available are aym"):
        load_text("xyz", root)
    with pytest.raises(RaysftError, match="available are"):
        get_task("nli").target_langs(TaskData(data_dir=root, target_langs=["aym", "xyz"]))
    assert get_task("nli").target_langs(TaskData(data_dir=root, target_langs=["aym"])) == ["aym"]
    with pytest.raises(RaysftError, match="dev, test"):
        get_task("sa").load_eval("jav", "train", cfg)


def test_mlm_nusax_uses_only_mt_train(root):
    train, heldout = load_text("jav", root)
    assert len(train) + len(heldout) == 500 and len(heldout) == 25
    with open(root / "nusax_mt" / "train.csv", newline="", encoding="utf-8") as f:
        expected = [row["javanese"] for row in csv.DictReader(f)]
    assert list(train["text"]) + list(heldout["text"]) == expected  # nusax_mt/train.csv, in order, last 5 % held out


def test_mlm_americas_text(root):
    train, heldout = load_text("oto", root)
    n = len(train) + len(heldout)
    with open(root / "americas_text" / "oto" / "train.oto.txt", encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    assert n == len(lines) and len(heldout) == math.ceil(0.05 * n)
    assert list(heldout["text"]) == lines[-len(heldout) :]


def test_mlm_too_little_text(tmp_path):
    (tmp_path / "americas_text" / "few").mkdir(parents=True)
    (tmp_path / "americas_text" / "none").mkdir(parents=True)
    (tmp_path / "americas_text" / "few" / "a.txt").write_text("".join(f"line {i}\n\n" for i in range(50)))
    with pytest.raises(RaysftError, match="found 50 lines, need at least 200"):
        load_text("few", tmp_path)
    with pytest.raises(RaysftError, match="no text for language 'none'"):
        load_text("none", tmp_path)


def test_loading_never_writes_into_data_dir(root):
    def snapshot():
        return sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*"))

    before = snapshot()
    get_task("sa").load_eval("ace", "test", TaskData(data_dir=root))
    load_text("bzd", root)
    assert snapshot() == before


# ------------------------------------------------------------------------------------------------------ tokenising
def test_tokenize_single_and_cache_reuse(root, tiny_tokenizer):
    sa = get_task("sa")
    ds = sa.load_eval("eng", "dev", TaskData(data_dir=root, max_eval_examples=20))
    tok = sa.tokenize(ds, tiny_tokenizer, 16)
    assert set(tok.column_names) == {"input_ids", "attention_mask", "labels"}
    assert list(tok["labels"]) == list(ds["label"])
    bos, eos = tiny_tokenizer.convert_tokens_to_ids(["<s>", "</s>"])
    assert all(len(x) <= 16 and x[0] == bos and x[-1] == eos for x in list(tok["input_ids"]))
    files = [f["filename"] for f in tok.cache_files]
    assert files and all(f.startswith(os.environ["RAYSFT_CACHE"]) for f in files)
    tiny_tokenizer("calling the tokenizer changes its truncation state", truncation=True, max_length=9)
    again = sa.tokenize(ds, tiny_tokenizer, 16)
    assert [f["filename"] for f in again.cache_files] == files  # the Arrow file is reused
    assert sa.tokenize(ds, tiny_tokenizer, 12)._fingerprint != tok._fingerprint


def test_tokenizer_fingerprint_is_memoised_exactly_and_follows_changes(tiny_tokenizer):
    import copy
    import hashlib
    import json

    def spec_hash(tok) -> str:  # the normalised spec's hash, computed in full (what every call used to do)
        spec = json.loads(tok.backend_tokenizer.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        return hashlib.sha256(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    tasks_base._SPEC_HASHES.clear()
    first = tasks_base.tokenizer_fingerprint(tiny_tokenizer)
    assert tasks_base._spec_hash(tiny_tokenizer.backend_tokenizer.to_str()).hexdigest() == spec_hash(tiny_tokenizer)
    assert tasks_base.tokenizer_fingerprint(tiny_tokenizer) == first  # from the memo
    tiny_tokenizer("a call changes the truncation state", truncation=True, max_length=7)
    assert tasks_base.tokenizer_fingerprint(tiny_tokenizer) == first
    changed = copy.deepcopy(tiny_tokenizer)
    changed.add_tokens(["zzqxv"])
    assert tasks_base.tokenizer_fingerprint(changed) != first
    assert tasks_base._spec_hash(changed.backend_tokenizer.to_str()).hexdigest() == spec_hash(changed)
    tasks_base._SPEC_HASHES.clear()
    assert tasks_base.tokenizer_fingerprint(tiny_tokenizer) == first  # recomputed: the same value


def test_tokenize_pairs(root, tiny_tokenizer):
    nli = get_task("nli")
    ds = nli.load_eval("aym", "dev", TaskData(data_dir=root, max_eval_examples=10))
    tok = nli.tokenize(ds, tiny_tokenizer, 32)
    eos = tiny_tokenizer.convert_tokens_to_ids("</s>")
    for ids in list(tok["input_ids"]):
        assert len(ids) <= 32 and ids.count(eos) == 3  # <s> A </s> </s> B </s>
    assert list(tok["labels"]) == list(ds["label"])


def test_tokenize_for_mlm_and_collator(root, tiny_tokenizer):
    _, heldout = load_text("ace", root)
    tok = tokenize_for_mlm(heldout, tiny_tokenizer, 24)
    assert {"input_ids", "attention_mask"} <= set(tok.column_names) and "text" not in tok.column_names
    assert all(len(x) <= 24 for x in list(tok["input_ids"]))
    collate = mlm_collator(tiny_tokenizer, seed=0)
    assert collate.mlm_probability == 0.15
    batch = collate([tok[i] for i in range(8)])
    assert batch["input_ids"].shape == batch["labels"].shape
    assert (batch["labels"] == -100).any()
    assert get_task("mlm").tokenize(heldout, tiny_tokenizer, 24)._fingerprint == tok._fingerprint
