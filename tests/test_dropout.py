"""Byte-mask dropout (raysft.train.dropout): torch's own dropout values and gradients, bitwise, with a one-byte mask
kept for backward instead of a float noise tensor."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raysft.train.dropout import byte_mask_dropout
from tests.conftest import random_batches, tiny_classifier


def _saved(fn):
    """(output, input grad, dtypes of the tensors autograd saved) of fn on a fixed input and generator state."""
    saved = []
    x = torch.randn(4, 6, 50, generator=torch.Generator().manual_seed(1), requires_grad=True)
    torch.manual_seed(3)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.dtype) or t, lambda t: t):
        out = fn(x)
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
    return out.detach(), x.grad, saved


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_the_same_values_and_gradients_as_torch_with_a_byte_mask(p):
    ref_out, ref_grad, ref_saved = _saved(lambda x: F.dropout(x, p, training=True))
    with byte_mask_dropout():
        out, grad, saved = _saved(lambda x: F.dropout(x, p, training=True))
    assert torch.equal(out, ref_out) and torch.equal(grad, ref_grad)
    assert ref_saved == [torch.float32] and saved == [torch.bool]
    assert F.dropout.__module__ == "torch.nn.functional"  # put back on leaving


def test_a_model_step_is_bitwise_torch_s_and_evaluation_is_untouched(monkeypatch):
    from raysft.train import dropout as module

    calls = []
    forward = module._ByteMaskDropout.forward
    monkeypatch.setattr(module._ByteMaskDropout, "forward",
                        staticmethod(lambda ctx, x, p: calls.append(p) or forward(ctx, x, p)))

    def step(patched: bool):
        model = tiny_classifier(seed=2)
        model.train()
        batch = random_batches(1, seed=4)[0]
        torch.manual_seed(5)
        if patched:
            with byte_mask_dropout():
                loss = model(**batch).loss
                loss.backward()
        else:
            loss = model(**batch).loss
            loss.backward()
        model.eval()
        with byte_mask_dropout(), torch.no_grad():
            logits = model(**batch).logits
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, logits

    torch_calls = []
    original = F.dropout
    monkeypatch.setattr(F, "dropout", lambda x, p=0.5, training=True, inplace=False:
                        torch_calls.append(training) or original(x, p, training, inplace))
    loss, grads, logits = step(False)
    monkeypatch.setattr(F, "dropout", original)
    assert not calls and sum(torch_calls) >= 5
    loss2, grads2, logits2 = step(True)
    assert len(calls) == sum(torch_calls)  # every dropout of the training step kept a byte mask
    assert torch.equal(loss, loss2) and torch.equal(logits, logits2)
    assert grads.keys() == grads2.keys() and all(torch.equal(grads[n], grads2[n]) for n in grads)


def test_anything_else_goes_to_torch_s_dropout():
    x = torch.randn(5, 5)
    with byte_mask_dropout():
        assert F.dropout(x, 0.5, training=False) is x or torch.equal(F.dropout(x, 0.5, training=False), x)
        assert torch.equal(F.dropout(x, 0.0, training=True), x)
        assert torch.count_nonzero(F.dropout(x, 1.0, training=True)) == 0
        y = x.clone()
        F.dropout(y, 0.5, training=True, inplace=True)  # in place: torch's own
        assert not torch.equal(y, x)
