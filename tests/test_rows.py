"""The dense phase trains the word embedding by the rows its data contains (raysft.train.rows): θ1 bitwise the same
as training the whole matrix, and only where that holds."""

from __future__ import annotations

import pytest
import torch

from raysft.config import PhaseConfig
from raysft.sft.groups import ParamSpace
from raysft.train.loop import train_dense
from raysft.train.rows import RowSubsetEmbedding, data_rows, row_subset_embeddings, row_subset_for
from tests.conftest import random_batches, tiny_classifier

VOCAB = 200  # the batches use ids 5..59 (and the padding id 1): most rows are never touched


def _batches():
    batches = random_batches(6, seed=3, vocab=60, length=10, batch=4)
    for b in batches[::2]:  # padded tails: the padding row must stay out of the gradient, as in the original
        b["input_ids"][:, -3:] = 1
        b["attention_mask"][:, -3:] = 0
    return batches


def _dense(rows: bool, weight_decay: float = 0.0, release: str | None = None) -> tuple[dict, list[float], torch.Tensor]:
    """``release``: the embedding's weight is released during the phase and read back from a "spilled" or an
    in-"memory" base."""
    from raysft.train.spill import SpilledParams

    model = tiny_classifier(seed=1, vocab=VOCAB, hidden=32)
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    space = ParamSpace(model)
    base = None
    if release is not None:
        snapshot = space.snapshot()
        base = SpilledParams(snapshot) if release == "spilled" else snapshot
    batches = _batches()
    cfg = PhaseConfig(lr=3e-2, batch_size=4, warmup_ratio=0.2, head_lr=1e-2, weight_decay=weight_decay)
    ids = data_rows([[row.tolist() for row in b["input_ids"]] for b in batches])
    torch.manual_seed(7)  # dropout: both runs draw the same masks
    with row_subset_embeddings(model, ids if rows else None, cfg.weight_decay, base, space) as sub:
        assert (sub is not None) == (rows and weight_decay == 0)
        released = space.param("embeddings.word_embeddings.weight").numel() == 0
        assert released == (sub is not None and base is not None)
        losses = train_dense(model, space, batches, 9, cfg, rows=sub)
    if release == "memory":  # the base snapshot was read, never written
        assert torch.equal(base["embeddings.word_embeddings.weight"], theta0["roberta.embeddings.word_embeddings.weight"])
    assert isinstance(model.get_input_embeddings(), torch.nn.Embedding)  # the original module is back
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    emb = "roberta.embeddings.word_embeddings.weight"
    untouched = torch.ones(VOCAB, dtype=torch.bool)
    untouched[ids] = False
    if weight_decay == 0:
        assert torch.equal(after[emb][untouched], theta0[emb][untouched])  # rows no batch contains never move
        assert torch.equal(after[emb][1], theta0[emb][1])  # nor the padding row
    else:
        assert not torch.equal(after[emb][untouched], theta0[emb][untouched])  # decay moves them: no row subset
    assert not torch.equal(after[emb], theta0[emb])
    return after, losses, ids


@pytest.mark.parametrize("release", [None, "spilled", "memory"])
def test_training_by_rows_gives_the_whole_matrix_theta1_bitwise(release):
    full, full_losses, ids = _dense(rows=False)
    by_rows, row_losses, _ = _dense(rows=True, release=release)
    assert full_losses == row_losses
    assert full.keys() == by_rows.keys()
    for name in full:
        assert torch.equal(full[name], by_rows[name]), name
    assert 1 < len(ids) < VOCAB // 2


def test_rows_do_not_apply_with_weight_decay_or_a_tied_decoder():
    model = tiny_classifier(vocab=VOCAB)
    assert row_subset_for(model, 0.0) is model.get_input_embeddings()
    assert row_subset_for(model, 0.01) is None  # decay moves untouched rows too
    _dense(rows=True, weight_decay=0.01)  # falls back to the whole matrix

    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    mlm = XLMRobertaForMaskedLM(XLMRobertaConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=24, type_vocab_size=1, tie_word_embeddings=True,
    ))
    assert row_subset_for(mlm, 0.0) is None  # its tied decoder reaches every row


def test_an_id_outside_the_kept_rows_fails_loudly():
    model = tiny_classifier(vocab=VOCAB)
    sub = RowSubsetEmbedding(model.get_input_embeddings(), torch.tensor([1, 5, 7]))
    assert torch.equal(sub(torch.tensor([[5, 7, 1]])), model.get_input_embeddings()(torch.tensor([[5, 7, 1]])))
    with pytest.raises(RuntimeError, match=r"token ids \[9\]"):
        sub(torch.tensor([[5, 9]]))


# ------------------------------------------------------------------------------------------------- sparse phase
def _sparse(rows: bool, weight_decay: float = 0.0, l1: float = 0.0):
    """A sparse phase whose mask holds embedding entries in rows the data contains, in rows it never contains, and
    in the padding row, beside entries of other matrices."""
    from raysft.sft.methods import SelectionContext, make_method
    from raysft.train.loop import train_sparse

    model = tiny_classifier(seed=1, vocab=VOCAB, hidden=32)
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    space = ParamSpace(model)
    mask = make_method("rand-sft").select(SelectionContext(space, space.n // 10, {}, seed=5)).mask
    batches = _batches()
    ids = data_rows([[row.tolist() for row in b["input_ids"]] for b in batches])
    cfg = PhaseConfig(lr=3e-2, batch_size=4, warmup_ratio=0.2, head_lr=1e-2, weight_decay=weight_decay, l1=l1)
    torch.manual_seed(7)
    updater, losses = train_sparse(model, space, mask, batches, 9, cfg, rows=ids if rows else None)
    assert isinstance(model.get_input_embeddings(), torch.nn.Embedding) and "forward" not in vars(model.get_input_embeddings())
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    return theta0, after, updater.values(), losses, mask, ids


@pytest.mark.parametrize("weight_decay,l1", [(0.0, 0.0), (0.1, 1e-3)])
def test_the_sparse_phase_by_rows_gives_the_same_delta_and_model_bitwise(weight_decay, l1, monkeypatch):
    from raysft.train import rows as rows_module

    backward = rows_module._RowGradientLookup.backward
    calls = []
    monkeypatch.setattr(rows_module._RowGradientLookup, "backward",
                        staticmethod(lambda ctx, g: calls.append(1) or backward(ctx, g)))
    theta0, full, full_delta, full_losses, mask, ids = _sparse(False, weight_decay, l1)
    assert not calls
    _, by_rows, row_delta, row_losses, _, _ = _sparse(True, weight_decay, l1)
    assert len(calls) == 9  # every step's embedding gradient came from the row table
    assert full_losses == row_losses
    for name in full:
        assert torch.equal(full[name], by_rows[name]), name
    assert full_delta.keys() == row_delta.keys()
    for name in full_delta:
        assert torch.equal(full_delta[name], row_delta[name]), name
    emb = "embeddings.word_embeddings.weight"  # the space's name; the model's is roberta.<it>
    rows_of_mask = mask[emb] // full["roberta." + emb].shape[1]
    kept = torch.isin(rows_of_mask, ids)
    assert kept.any() and (~kept).any()  # the mask reaches rows the data contains and rows it never does
    assert torch.count_nonzero(row_delta[emb][~kept]) == 0  # those never move
    assert torch.count_nonzero(row_delta[emb][kept]) > 0


def test_evaluation_during_the_sparse_phase_reads_every_row():
    from raysft.train.rows import row_gradients

    model = tiny_classifier(vocab=VOCAB)
    emb = model.get_input_embeddings()
    with row_gradients(model, torch.tensor([5, 7])) as grads:
        grads.holder.requires_grad_(True)
        with torch.no_grad():  # evaluation: any id, the module's own lookup
            assert torch.equal(emb(torch.tensor([[9, 150]])), emb.weight[[9, 150]].unsqueeze(0))
        with pytest.raises(RuntimeError, match=r"token ids \[9\]"):  # training: a stray id fails loudly
            emb(torch.tensor([[5, 9]]))


def test_data_rows_reads_a_datasets_column_as_arrow_with_its_selection():
    """A tokenized Dataset's token ids reduced in Arrow (no Python list per row): the same sorted ids as a set of
    the selected rows' ids, the padding id added, the rows a selection leaves out left out."""
    import datasets

    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(2, 5000, (int(n),), generator=g).tolist() for n in torch.randint(1, 40, (300,), generator=g)]
    ds = datasets.Dataset.from_dict({"input_ids": rows}).shuffle(seed=1).select(range(0, 300, 3))
    want = sorted({1, *(i for r in ds["input_ids"] for i in r)})
    got = data_rows([ds], extra=[1, None])
    assert got.dtype == torch.long and got.tolist() == want
    assert len(want) < len({i for r in rows for i in r}) + 1  # the selection matters
    assert data_rows([[[7, 3], [3]]]).tolist() == [3, 7]  # plain id lists too
