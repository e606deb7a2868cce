"""The K-sized sparse updater: gradients gathered to K values, dense gradients freed, decay toward θ0."""

import torch

from raysft.sft.groups import ParamSpace
from raysft.sft.methods import SelectionContext, make_method
from raysft.sft.sparse import SparseUpdater
from raysft.train.loop import set_trainable
from tests.conftest import random_batches, tiny_classifier


def _setup(k=300, **kw):
    model = tiny_classifier()
    space = ParamSpace(model)
    mask = make_method("rand-sft").select(SelectionContext(space, k, {}, seed=1)).mask
    set_trainable(space, maskable=False, head=False)
    return model, space, mask, SparseUpdater(space, mask, **kw)


def test_gradients_gathered_at_mask_and_dense_grads_freed():
    model, space, mask, updater = _setup(lr=1e-2)
    batch = random_batches(1)[0]
    # Reference: the dense gradient of the same loss, gathered by hand.
    ref_model = tiny_classifier().eval()  # no dropout: both passes compute the same function
    model.eval()
    ref_model(**batch).loss.backward()
    ref = dict(ref_model.named_parameters())
    model(**batch).loss.backward()
    for name, idx, sl in zip(updater.names, updater.indices, updater.slices):
        assert space.param(name).grad is None  # freed right after accumulation
        full = ref[f"{space.prefix}.{name}"].grad.reshape(-1)
        torch.testing.assert_close(updater.grad[sl], full[idx])
    assert updater.grad.numel() == 300


def test_weight_decay_pulls_toward_theta0_not_zero():
    model, space, mask, updater = _setup(lr=1e-2, weight_decay=0.5)
    theta0 = space.snapshot()
    updater.delta.data.fill_(1.0)  # pretend training moved every entry by +1
    updater.write_back()
    for _ in range(5):
        updater.zero_grad()  # no task gradient: only the decay acts
        updater.step()
    assert bool((updater.delta < 1.0).all()) and bool((updater.delta > 0.9).all())
    for name, idx, sl in zip(updater.names, updater.indices, updater.slices):
        now = space.param(name).detach().reshape(-1)[idx]
        torch.testing.assert_close(now, theta0[name].reshape(-1)[idx] + updater.delta[sl])


def test_l1_toward_theta0():
    model, space, mask, updater = _setup(lr=1e-2, l1=1.0)
    updater.delta.data.fill_(-0.5)
    updater.zero_grad()
    updater.step()
    assert bool((updater.delta > -0.5).all())  # moved back toward θ0


def test_state_is_k_sized_and_hooks_removed_on_close():
    model, space, mask, updater = _setup(lr=1e-2)
    model(**random_batches(1)[0]).loss.backward()
    updater.step()
    assert updater.state_bytes() == 2 * 300 * 4
    updater.close()
    updater.zero_grad()
    model(**random_batches(1)[0]).loss.backward()
    assert float(updater.grad.abs().sum()) == 0.0  # no hook gathers any more
