"""Byte-mask dropout (raysft.train.dropout): torch's own dropout values and gradients, bitwise, with a one-byte mask
kept for backward instead of a float noise tensor."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from raysft.train.dropout import byte_mask_dropout, recompute_context
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


def _count_byte_mask_calls(monkeypatch):
    """The threads whose dropout went through the byte mask (``_ByteMaskDropout.forward``), one entry a call."""
    import threading

    from raysft.train import dropout as module

    calls = []
    forward = module._ByteMaskDropout.forward
    monkeypatch.setattr(module._ByteMaskDropout, "forward", staticmethod(
        lambda ctx, x, p: calls.append(threading.current_thread().name) or forward(ctx, x, p)))
    return calls


def test_no_global_swap_and_another_thread_runs_torch_s_own_dropout(monkeypatch):
    """The mode is the entering thread's: ``F.dropout`` stays the same function object, and a thread running while
    another is inside the block gets torch's own dropout (its float noise saved, no byte mask)."""
    import threading

    calls = _count_byte_mask_calls(monkeypatch)
    before = F.dropout
    ref_out, ref_grad, ref_saved = _saved(lambda x: F.dropout(x, 0.3, training=True))
    inside, done, seen = threading.Event(), threading.Event(), {}

    def other():
        inside.wait(timeout=30)
        try:
            seen["result"] = _saved(lambda x: F.dropout(x, 0.3, training=True))
            seen["dropout"] = F.dropout
        finally:
            done.set()

    thread = threading.Thread(target=other, name="other")
    thread.start()
    with byte_mask_dropout():
        assert F.dropout is before and torch.nn.functional.dropout is before  # no module attribute swapped
        inside.set()
        assert done.wait(timeout=30)
        mine = _saved(lambda x: F.dropout(x, 0.3, training=True))
    thread.join()
    assert seen["dropout"] is before
    out, grad, saved = seen["result"]
    assert saved == ref_saved == [torch.float32]  # torch's own dropout in the other thread
    assert torch.equal(out, ref_out) and torch.equal(grad, ref_grad)
    assert mine[2] == [torch.bool] and torch.equal(mine[0], ref_out) and torch.equal(mine[1], ref_grad)
    assert calls == ["MainThread"]  # only the thread inside the block went through the byte mask
    assert F.dropout is before


def test_checkpointed_activations_recompute_with_the_byte_mask_bitwise(monkeypatch):
    """Activation checkpointing (non-reentrant) recomputes the forward in backward, where torch runs no
    torch-function mode: with ``context_fn=recompute_context`` the recomputation takes the byte mask again (the same
    masks: checkpoint restores the generator), and values and gradients are torch's, bitwise."""
    from torch.utils.checkpoint import checkpoint

    calls = _count_byte_mask_calls(monkeypatch)

    def block(x, w):
        h = F.dropout(torch.tanh(x @ w), 0.2, training=True)
        return F.dropout(h * 2, 0.4, training=True)

    def run(ckpt: bool, patched: bool):
        w = torch.randn(50, 50, generator=torch.Generator().manual_seed(2), requires_grad=True)
        fn = ((lambda x: checkpoint(block, x, w, use_reentrant=False, context_fn=recompute_context)) if ckpt
              else (lambda x: block(x, w)))
        if patched:
            with byte_mask_dropout():
                out, grad, _ = _saved(fn)
        else:
            out, grad, _ = _saved(fn)
        return out, grad, w.grad

    ref = run(ckpt=False, patched=False)
    assert not calls
    assert all(torch.equal(a, b) for a, b in zip(ref, run(ckpt=True, patched=False)))  # no mode: nothing changes
    assert not calls
    for ckpt in (False, True):
        got = run(ckpt=ckpt, patched=True)
        assert all(torch.equal(a, b) for a, b in zip(ref, got)), ckpt
    assert len(calls) == 2 + 4  # plain: two dropouts; checkpointed: two in forward, two recomputed in backward


def test_a_checkpointed_model_step_is_bitwise_torch_s(monkeypatch):
    """HF activation checkpointing with recompute_context, as the training loop runs it: torch's loss and
    gradients, bitwise, and the checkpointed layers' dropouts recomputed through the byte mask."""
    calls = _count_byte_mask_calls(monkeypatch)

    def step(patched: bool, ckpt: bool):
        model = tiny_classifier(seed=2)
        model.train()
        if ckpt:
            kwargs = {"use_reentrant": False, "context_fn": recompute_context}
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x names
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        batch = random_batches(1, seed=4)[0]
        torch.manual_seed(5)
        with byte_mask_dropout() if patched else contextlib.nullcontext():
            loss = model(**batch).loss
        loss.backward()  # outside the block: the byte mask's backward needs no mode, the recomputation has its own
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = step(patched=False, ckpt=False)
    assert not calls
    for patched, ckpt in ((False, True), (True, False), (True, True)):
        calls.clear()
        loss2, grads2 = step(patched, ckpt)
        assert torch.equal(loss, loss2), (patched, ckpt)
        assert grads.keys() == grads2.keys() and all(torch.equal(grads[n], grads2[n]) for n in grads), (patched, ckpt)
        if not patched:
            assert not calls
        elif not ckpt:
            forward_only = len(calls)
            assert forward_only >= 5
        else:  # the checkpointed layers' dropouts once more, in backward
            assert len(calls) > forward_only


def test_nested_modes_and_exceptions_leave_torch_s_dropout_in_place():
    from torch._C import _len_torch_function_stack
    from torch.overrides import TorchFunctionMode

    class Seen(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.funcs = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.funcs.append(func)
            return func(*args, **(kwargs or {}))

    ref_out, ref_grad, _ = _saved(lambda x: F.dropout(x, 0.5, training=True))
    depth = _len_torch_function_stack()
    with byte_mask_dropout():
        with byte_mask_dropout():  # nested: one byte mask, not two
            out, grad, saved = _saved(lambda x: F.dropout(x, 0.5, training=True))
        assert _len_torch_function_stack() == depth + 1
    assert saved == [torch.bool] and torch.equal(out, ref_out) and torch.equal(grad, ref_grad)

    outer = Seen()
    with outer, byte_mask_dropout():  # under someone else's mode: it still sees dropout's own ops pass by
        out, grad, saved = _saved(lambda x: F.dropout(x, 0.5, training=True))
    assert saved == [torch.bool] and torch.equal(out, ref_out) and torch.equal(grad, ref_grad)
    assert outer.funcs  # the byte mask's ops went on down the stack, to the outer mode
    inner = Seen()
    with byte_mask_dropout(), inner:  # above someone else's mode: dropout reaches it first, then the byte mask
        out, grad, saved = _saved(lambda x: F.dropout(x, 0.5, training=True))
    assert saved == [torch.bool] and torch.equal(out, ref_out) and torch.equal(grad, ref_grad)
    assert F.dropout in inner.funcs

    with pytest.raises(RuntimeError, match="boom"):
        with byte_mask_dropout():
            with byte_mask_dropout():
                raise RuntimeError("boom")
    assert _len_torch_function_stack() == depth
    _, _, saved = _saved(lambda x: F.dropout(x, 0.5, training=True))
    assert saved == [torch.float32]  # torch's own dropout again
