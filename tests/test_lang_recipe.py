"""The language-SFT recipe (composable-sft's train_mlm.sh) and what it needs: L1 toward θ0 in the dense and sparse
phases (its full_l1_reg / sparse_l1_reg, 0.1 in the recipe), a step budget with a floor (its
*_min_steps_per_iteration), and the Table 4 preset's dry run."""

from __future__ import annotations

import pytest
import torch

from raysft.config import Config, LangConfig, PhaseConfig, steps_for
from raysft.sft.groups import ParamSpace
from raysft.train.loop import l1_per_entry, train_dense
from raysft.train.rows import data_rows, row_subset_embeddings
from tests.conftest import tiny_classifier
from tests.test_rows import VOCAB, _batches


def _dense(l1: float, rows: bool):
    model = tiny_classifier(seed=1, vocab=VOCAB, hidden=32)
    space = ParamSpace(model)
    theta0 = space.snapshot()
    batches = _batches()
    ids = data_rows([[row.tolist() for row in b["input_ids"]] for b in batches])
    cfg = PhaseConfig(lr=3e-2, batch_size=4, head_lr=1e-2, l1=l1 * space.n_params)  # l1: per entry
    torch.manual_seed(7)
    with row_subset_embeddings(model, ids if rows else None, cfg.weight_decay, None, space) as sub:
        train_dense(model, space, batches, 9, cfg, rows=sub)
    moved = sum(float((space.param(n).detach() - theta0[n]).abs().sum()) for n in theta0)
    return moved, {n: space.param(n).detach().clone() for n in theta0}


def test_dense_l1_pulls_toward_theta0_and_keeps_the_row_subset_exact():
    free, _ = _dense(0.0, rows=False)
    pulled, full = _dense(1.0, rows=False)
    assert pulled < 0.5 * free  # a per-entry coefficient above the data's gradients holds the weights near θ0
    # rows no batch contains never move, L1 or not (sign(0) = 0): training the embedding by its rows stays exact
    _, by_rows = _dense(1.0, rows=True)
    assert all(torch.equal(full[n], by_rows[n]) for n in full)


def test_l1_is_composable_sfts_coefficient_over_the_models_parameter_count():
    model = tiny_classifier()
    space = ParamSpace(model)
    assert space.n_params == sum(p.numel() for p in model.parameters()) > space.n  # LayerNorms and head count too
    assert l1_per_entry(PhaseConfig(l1=0.1), space) == pytest.approx(0.1 / space.n_params)
    assert l1_per_entry(PhaseConfig(), space) == 0.0


def test_min_steps_repeats_the_data_and_max_steps_still_caps():
    assert steps_for(PhaseConfig(epochs=1, batch_size=8), 80) == 10
    assert steps_for(PhaseConfig(epochs=1, batch_size=8, min_steps=25), 80) == 25
    assert steps_for(PhaseConfig(epochs=100, batch_size=8, min_steps=25, max_steps=300), 80) == 300
    assert steps_for(PhaseConfig(epochs=1, batch_size=8, min_steps=25, max_steps=12), 80) == 12


def test_language_sft_defaults_are_composable_sfts_train_mlm_recipe():
    """examples/language-modeling/train_mlm.sh (github.com/cambridgeltl/composable-sft): batch 4 x accumulation 2,
    length 256, K = 7,667,712 (its "small" language SFTs, MODELS.md), lr 5e-5, L1 0.1 in both phases, 10,000 to
    100,000 steps (at most 100 epochs) per phase."""
    lang = LangConfig()
    assert (lang.method, lang.k, lang.density, lang.max_seq_len, lang.mlm_probability) == ("lt-sft", 7667712, None, 256, 0.15)
    for phase in (lang.dense, lang.sparse):
        assert (phase.lr, phase.batch_size, phase.l1, phase.min_steps, phase.max_steps, phase.epochs) == (
            5e-5, 8, 0.1, 10000, 100000, 100)
    # a space can still give the task's budget to its language SFTs (k and density null)
    cfg = Config.model_validate({"name": "x", "task": "sa", "model": "tiny:xlmr", "sft": {"density": 0.05},
                                 "lang": {"k": None}})
    assert cfg.lang.resolve_k(cfg.sft, 1000) == 50


def test_table4_presets_dry_run_shows_its_five_languages_and_the_recipe(capsys):
    """`raysft lang nli-lang --dry-run`: the report's Table 4 languages (the space's targets), their text, and
    composable-sft's recipe; nothing trained, no model loaded (XLM-R base needs the hub)."""
    from raysft.cli import main
    from tests.conftest import needs_data

    needs_data()
    main(["lang", "nli-lang", "--dry-run"])
    out = capsys.readouterr().out
    assert "nli-lang: lt-sft language SFTs on xlm-roberta-base, K = 7,667,712, length 256, MLM probability 0.15" in out
    for phase in ("dense", "sparse"):
        assert (f"{phase} phase: lr 5e-05, batch 8, L1 0.1, 100 epochs, at least 10,000 steps, at most 100,000 steps"
                in out)
    rows = [line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")]
    assert rows == ["aym", "bzd", "cni", "hch", "oto"]
    assert "dry run: 5 language jobs, nothing started" in out
