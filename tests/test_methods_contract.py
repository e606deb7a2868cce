"""One contract, every method (the peft way): run the training sequence (first phase → select → sparse phase, the
same :func:`raysft.train.phases.train_sft` that ``raysft train``, ``raysft lang`` and the Ray worker run) on a tiny
model and check what an SFT promises."""

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import default_collate

from raysft.config import PhaseConfig
from raysft.sft.delta import SparseDelta, base_metadata
from raysft.sft.groups import ParamSpace
from raysft.sft.mask import allocate, expand_budget, mask_size
from raysft.sft.methods import METHODS, SelectionContext, make_method
from raysft.train.loop import restore, train_gated, train_mask_scores
from raysft.train.phases import SFTJob, train_sft
from tests.conftest import random_batches, tiny_classifier

SETTINGS = {
    "sc-sft": {"budget": {"embeddings": 0.2, "layer.0": 0.4, "layer.1": 0.4}},
    "deft-x": {"rank_strategy": "energy", "energy": 0.8},
    "ada-sft": {"score_init": 3.0, "score_lr": 0.1},
    "ada-sft-topk": {"score_init": 3.0, "score_lr": 0.1},
}
PHASE = PhaseConfig(epochs=1, lr=5e-3, batch_size=8)
K = 600


def examples(batches: list[dict]) -> list[dict]:
    """The batches' rows as a dataset of examples (the sequence draws its own batches from it)."""
    return [{k: v[i] for k, v in b.items()} for b in batches for i in range(len(b["labels"]))]


def contract_job(name: str, model, phase: PhaseConfig = PHASE) -> SFTJob:
    method = make_method(name, SETTINGS.get(name))
    space = ParamSpace(model, **method.space_options())
    data = examples(random_batches(6, seed=1))
    return SFTJob(
        model=model, space=space, method=method, k=K if method.uses_k else method.fixed_k(space), dataset=data,
        collate=lambda seed: default_collate, dense=phase, mask=phase, sparse=phase, seed=0,
        rows=torch.unique(torch.stack([x["input_ids"] for x in data])),
        meta={"kind": "task", "method": name, **base_metadata(space)},
    )


def run_method(name: str, device: str = "cpu", phase: PhaseConfig = PHASE):
    """The contract run (also on CUDA by tests/test_gpu.py: the model moves there, batches follow it)."""
    job = contract_job(name, tiny_classifier(seed=0).to(device), phase)
    theta0 = job.space.snapshot()
    trained = train_sft(job, theta0)
    selection = SimpleNamespace(mask=trained.mask, k=trained.selection["k"], info=trained.selection)
    return job.model, job.space, job.method, selection, trained, trained.delta, theta0


@pytest.fixture(scope="module", params=sorted(METHODS))
def trained(request):
    return request.param, run_method(request.param)


def test_exactly_k_selected(trained):
    name, (model, space, method, selection, *_ ) = trained
    n_selected = mask_size(selection.mask, space)
    assert n_selected == selection.k
    if method.uses_k:
        assert n_selected == K
    if name == "sc-sft":
        want, _ = allocate(K, expand_budget(SETTINGS[name]["budget"], space.groups), space.group_sizes())
        got = {g: 0 for g in space.groups}
        for n, idx in selection.mask.items():
            got[space.info(n).group] += idx.numel()
        assert got == want
    for idx in selection.mask.values():
        if idx is not None:
            assert idx.dtype == torch.int64 and bool((idx[1:] > idx[:-1]).all())  # sorted unique


def test_unmasked_entries_bitwise_equal_and_masked_moved(trained):
    name, (model, space, method, selection, updater, delta, theta0) = trained
    if not (method.sparse_phase or method.gated_phase):
        pytest.skip(f"{name} has no sparse phase: its delta is the dense update")
    moved = 0
    for info in space.maskable:
        now = space.param(info.name).detach().reshape(-1)
        before = theta0[info.name].reshape(-1)
        keep = torch.ones(info.numel, dtype=torch.bool)
        idx = selection.mask.get(info.name)
        if idx is None and info.name in selection.mask:
            idx = torch.arange(info.numel)  # the whole tensor (Ada-SFT's linear weights)
        if idx is not None:
            keep[idx] = False
            moved += int((now[idx] != before[idx]).sum())
        assert torch.equal(now[keep], before[keep]), f"{name}: unmasked entries of {info.name} changed"
    params = dict(model.named_parameters())
    for n in space.frozen:  # LayerNorms never train (BitFit's LayerNorm biases are maskable, not frozen)
        assert params[n].requires_grad is False
    assert moved >= 0.5 * selection.k, f"{name}: only {moved} of {selection.k} masked entries moved"


def test_optimizer_state_holds_k_entries(trained):
    name, (model, space, method, selection, result, *_ ) = trained
    if not method.sparse_phase:
        pytest.skip(f"{name} has no sparse phase")
    assert result.optimizer_state_bytes == 2 * selection.k * 4  # AdamW's two moments, float32, K entries


def test_trained_weights_equal_theta0_plus_delta_bitwise(trained):
    name, (model, space, method, selection, updater, delta, theta0) = trained
    trained_weights = space.snapshot()
    restore(space, theta0)
    with delta.apply(space):
        for n, w in trained_weights.items():
            if method.sparse_phase or method.gated_phase:
                assert torch.equal(space.param(n).detach(), w), n
            else:
                torch.testing.assert_close(space.param(n).detach(), w)
    restore(space, trained_weights)


def test_delta_round_trips_and_apply_revert_is_exact(trained, tmp_path):
    name, (model, space, method, selection, updater, delta, theta0) = trained
    path = tmp_path / f"{name}.safetensors"
    delta.save(path)
    loaded = SparseDelta.load(path)
    assert loaded.diffs.keys() == delta.diffs.keys()
    for n, (idx, val) in delta.diffs.items():
        lidx, lval = loaded.diffs[n]
        assert (idx is None and lidx is None) or torch.equal(lidx.long(), idx.long())
        assert torch.equal(lval, val)
    for n, t in delta.abs.items():
        assert torch.equal(loaded.abs[n], t)
    before = {**space.snapshot(), **space.head_snapshot()}
    handle = loaded.apply(space)
    handle.revert()
    after = {**space.snapshot(), **space.head_snapshot()}
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_compose_equals_sequential_application(trained):
    name, (model, space, method, selection, updater, delta, theta0) = trained
    g = torch.Generator().manual_seed(7)
    other = {}
    for info in space.maskable[:4]:
        idx = torch.sort(torch.randperm(info.numel, generator=g)[: max(1, info.numel // 3)]).values
        other[info.name] = (idx, torch.randn(idx.numel(), generator=g) * 1e-2)
    lang = SparseDelta(diffs=other, abs={}, meta={"kind": "lang"})
    restore(space, theta0)
    with delta.apply(space), lang.apply(space, with_abs=False):
        sequential = space.snapshot()
    with SparseDelta.compose(delta, lang).apply(space):
        composed = space.snapshot()
    for n in sequential:
        torch.testing.assert_close(composed[n], sequential[n], rtol=0, atol=1e-6)


def test_bitfit_trains_every_bias_layer_norm_biases_included(trained):
    """BitFit's paper trains all biases, LayerNorm's too: K counts them, they move, LayerNorm gains stay bitwise."""
    name, (model, space, method, selection, updater, delta, theta0) = trained
    if name != "bitfit":
        pytest.skip("BitFit only")
    params = dict(model.named_parameters())
    biases = [n for n in params if n.startswith(space.prefix + ".") and n.endswith(".bias")]
    ln_biases = [n for n in biases if "LayerNorm" in n]
    assert ln_biases and sorted(space.strip_prefix(n) for n in ln_biases) == sorted(space.layer_norm_biases)
    assert selection.k == sum(params[n].numel() for n in biases)
    for n in ln_biases:  # every LayerNorm bias trained (the fixture's model is back at θ0 by now: read the delta)
        rel = space.strip_prefix(n)
        idx, val = delta.diffs[rel]
        assert torch.equal(idx, torch.arange(params[n].numel())) and bool(val.ne(0).all()), n
    assert not any("LayerNorm.weight" in n for n in selection.mask)  # gains stay frozen
    # the base's fingerprint ignores the extra maskable LayerNorm biases: the delta applies to a standard space
    fresh = tiny_classifier(seed=0)
    standard = ParamSpace(fresh)
    assert space.fingerprint() == standard.fingerprint() and "embeddings.LayerNorm.bias" not in {
        p.name for p in standard.maskable}
    fresh_params = dict(fresh.named_parameters())
    with delta.apply(standard):
        for n in ln_biases:
            want = theta0[space.strip_prefix(n)] + delta.diffs[space.strip_prefix(n)][1]
            assert torch.equal(fresh_params[n].detach(), want), n


def test_bitfit_without_layer_norm_biases():
    method = make_method("bitfit", {"layer_norm_bias": False})
    space = ParamSpace(tiny_classifier(seed=0), **method.space_options())
    selection = method.select(SelectionContext(space, space.n, space.snapshot()))
    assert not any("LayerNorm" in n for n in selection.mask) and selection.k == sum(
        p.numel for p in space.maskable if p.name.endswith(".bias"))


def test_ada_sft_is_the_reports_soft_mask_on_linear_weights():
    """Step 1 learns M = sigmoid(S) for the linear weights only, W fixed; step 2 trains W with W ⊙ M in the forward
    pass; the folded weights (= θ0 + the saved delta, bitwise) are W ⊙ M within float32 rounding and score as the
    gated model does."""
    from raysft.sft.mask_scores import fold_gates, gated_call

    model = tiny_classifier(seed=0)
    method = make_method("ada-sft", SETTINGS["ada-sft"])
    space = ParamSpace(model)
    batches = random_batches(6, seed=1)
    theta0 = space.snapshot()
    names = method.score_params(space)
    linear = {f"{space.prefix}.{n}" for n in names}
    assert linear == {f"{m}.weight" for m, mod in model.named_modules()
                      if isinstance(mod, torch.nn.Linear) and m.startswith(space.prefix + ".")}
    scores = train_mask_scores(model, space, batches, 6, PHASE, score_init=3.0, score_lr=0.1, names=names)
    assert set(scores) == set(names) and all(torch.equal(space.param(n), theta0[n]) for n in theta0)  # W fixed
    assert any(not torch.equal(s, torch.full_like(s, 3.0)) for s in scores.values())  # S learned
    gates = method.gates(scores)
    train_gated(model, space, gates, batches, 6, PHASE)
    for info in space.maskable:  # only the linear weights moved
        assert torch.equal(space.param(info.name), theta0[info.name]) != (info.name in gates), info.name
    effective = {n: (space.param(n) * gates[n]).detach().clone() for n in gates}
    model.eval()
    with torch.no_grad():
        gated_logits = gated_call(model, space, gates, **{k: v for k, v in batches[0].items() if k != "labels"}).logits
    deltas = fold_gates(space, theta0, gates)
    for n, e in effective.items():  # fl(θ0 + fl(E − θ0)) vs E: ≤ 3 units of 2⁻²⁴ of max(|E|, |θ0|); 4 allowed
        bound = 4 * 2.0**-24 * torch.maximum(e.abs(), theta0[n].abs())
        assert bool(((space.param(n).detach() - e).abs() <= bound).all()), n
        assert deltas[n].numel() == e.numel()
    with torch.no_grad():
        folded_logits = model(**{k: v for k, v in batches[0].items() if k != "labels"}).logits
    torch.testing.assert_close(folded_logits, gated_logits, rtol=1e-5, atol=1e-5)
