"""Selection semantics against hand-computed examples, and the exact top-K under ties."""

import pytest
import torch

from raysft.errors import RaysftError
from raysft.sft.groups import ParamSpace
from raysft.sft.mask import allocate, check_budget, expand_budget
from raysft.sft.methods import SelectionContext, make_method
from raysft.sft.methods.deft_x import energy_rank
from raysft.sft.topk import topk_select
from tests.conftest import tiny_classifier


def _reference_topk(scores, k):
    names = list(scores)
    flat = torch.cat([scores[n].reshape(-1).float() for n in names])
    order = torch.sort(-flat, stable=True).indices[:k]  # ties: lower position first
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[order] = True
    out, off = {}, 0
    for n in names:
        idx = torch.nonzero(chosen[off : off + scores[n].numel()]).squeeze(1)
        if idx.numel():
            out[n] = idx
        off += scores[n].numel()
    return out


def test_topk_hand_example():
    # flat a = [0.5, 3.0, 1.0, 0.0], b = [2.0, 1.0, 0.0]: 3.0 and 2.0, then the 1.0 tie goes to the earlier tensor.
    scores = {"a": torch.tensor([[0.5, 3.0], [1.0, 0.0]]), "b": torch.tensor([2.0, 1.0, 0.0])}
    r = topk_select(scores, 3)
    assert {n: v.tolist() for n, v in r.indices.items()} == {"a": [1, 2], "b": [0]}
    assert r.threshold == 1.0 and r.ties_broken == 1


def test_topk_exact_k_with_ties_and_signs():
    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        sizes = torch.randint(1, 40, (3,), generator=g).tolist()
        if trial % 2:
            scores = {f"p{i}": torch.randint(-2, 3, (n,), generator=g).float() for i, n in enumerate(sizes)}
        else:
            scores = {f"p{i}": torch.randn(n, generator=g) for i, n in enumerate(sizes)}
        k = int(torch.randint(0, sum(sizes) + 1, (1,), generator=g))
        got = topk_select(scores, k).indices
        want = _reference_topk(scores, k)
        assert got.keys() == want.keys()
        for n in want:
            assert torch.equal(got[n], want[n])
        assert sum(v.numel() for v in got.values()) == k


def test_topk_all_zero_scores_selects_first_positions():
    scores = {"a": torch.zeros(5), "b": torch.zeros(4)}
    r = topk_select(scores, 7)
    assert r.indices["a"].tolist() == [0, 1, 2, 3, 4] and r.indices["b"].tolist() == [0, 1]
    assert r.ties_broken == 2


def test_largest_remainder_allocation():
    # K=10, shares .25/.25/.5 → 2.5/2.5/5: the two .5 remainders tie; the earlier group gets the spare entry.
    counts, notes = allocate(10, {"embeddings": 0.25, "layer.0": 0.25, "layer.1": 0.5}, {"embeddings": 99, "layer.0": 99, "layer.1": 99})
    assert counts == {"embeddings": 3, "layer.0": 2, "layer.1": 5} and notes == []
    # K=7, shares 1/3 each → 2.33 each: floor 2+2+2, one left → first group.
    counts, _ = allocate(7, {"embeddings": 1 / 3, "layer.0": 1 / 3, "layer.1": 1 / 3}, {"embeddings": 9, "layer.0": 9, "layer.1": 9})
    assert counts == {"embeddings": 3, "layer.0": 2, "layer.1": 2}
    # A group too small gives its surplus to the others, proportionally to their shares.
    counts, notes = allocate(10, {"embeddings": 0.6, "layer.0": 0.2, "layer.1": 0.2}, {"embeddings": 2, "layer.0": 99, "layer.1": 99})
    assert counts == {"embeddings": 2, "layer.0": 4, "layer.1": 4} and sum(counts.values()) == 10
    assert "embeddings" in notes[0]


def test_budget_vector_checks():
    with pytest.raises(RaysftError, match="sums to"):
        check_budget({"layer.0": 0.5, "layer.1": 0.4})
    with pytest.raises(RaysftError, match="negative"):
        check_budget({"layer.0": 1.5, "layer.1": -0.5})
    assert expand_budget({"layer.0-1": 0.5, "embeddings": 0.5}, ["embeddings", "layer.0", "layer.1"]) == {
        "embeddings": 0.5, "layer.0": 0.25, "layer.1": 0.25,
    }
    with pytest.raises(RaysftError, match="layer.7"):
        expand_budget({"layer.7": 1.0}, ["embeddings", "layer.0"])


def _ctx_with_delta(model, k, delta_fn):
    space = ParamSpace(model)
    theta0 = space.snapshot()
    theta1 = {n: t + delta_fn(n, t) for n, t in theta0.items()}
    return SelectionContext(space, k, theta0, theta1=theta1)


def test_lt_sft_is_global_topk_of_magnitude():
    model = tiny_classifier()
    space = ParamSpace(model)
    target = "encoder.layer.1.attention.self.query.weight"
    other = "embeddings.word_embeddings.weight"

    def delta(name, t):
        d = torch.zeros_like(t)
        if name == target:
            d.view(-1)[[3, 7, 11]] = torch.tensor([-5.0, 4.0, 3.0])
        if name == other:
            d.view(-1)[[2]] = 4.5
        return d

    ctx = _ctx_with_delta(model, 3, delta)
    sel = make_method("lt-sft").select(ctx)
    assert {n: v.tolist() for n, v in sel.mask.items()} == {other: [2], target: [3, 7]}
    assert sel.k == 3 and space.n > 3


def test_sc_sft_per_group_topk():
    model = tiny_classifier()
    g = torch.Generator().manual_seed(1)
    ctx = _ctx_with_delta(model, 50, lambda n, t: torch.randn(t.shape, generator=g))
    method = make_method("sc-sft", {"budget": {"embeddings": 0.2, "layer.0": 0.3, "layer.1": 0.5}})
    sel = method.select(ctx)
    per_group = {}
    for name, idx in sel.mask.items():
        grp = ctx.space.info(name).group
        per_group[grp] = per_group.get(grp, 0) + idx.numel()
    assert per_group == {"embeddings": 10, "layer.0": 15, "layer.1": 25}
    # Inside layer.1, the chosen entries are exactly layer.1's 25 largest |Δ|.
    names = [p.name for p in ctx.space.maskable if p.group == "layer.1"]
    want = _reference_topk({n: (ctx.theta1[n] - ctx.theta0[n]).abs() for n in names}, 25)
    for n in names:
        assert torch.equal(sel.mask.get(n, torch.empty(0, dtype=torch.long)), want.get(n, torch.empty(0, dtype=torch.long)))


def test_energy_rank_on_known_singular_values():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert energy_rank(s, 9 / 14) == 1
    assert energy_rank(s, 0.65) == 2
    assert energy_rank(s, 13 / 14) == 2
    assert energy_rank(s, 0.95) == 3
    assert energy_rank(s, 1.0) == 3


def test_deft_x_denoises_before_pruning():
    model = tiny_classifier(hidden=16)
    target = "encoder.layer.0.attention.self.query.weight"
    g = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(16, 16, generator=g))[0]
    v = torch.linalg.qr(torch.randn(16, 16, generator=g))[0]
    sigma = torch.tensor([10.0, 5.0] + [0.01] * 14)
    low_rank_plus_noise = (u * sigma) @ v.T

    def delta(name, t):
        return low_rank_plus_noise.clone() if name == target else torch.zeros_like(t)

    ctx = _ctx_with_delta(model, 20, delta)
    # energy .99 keeps rank 2 (100+25 of 125.0014): the selection equals the top-20 of |Δ_2|.
    sel = make_method("deft-x", {"rank_strategy": "energy", "energy": 0.99}).select(ctx)
    assert sel.info["rank_max"] == 2 and set(sel.mask) == {target}
    d2 = (u[:, :2] * sigma[:2]) @ v[:, :2].T
    assert torch.equal(sel.mask[target], torch.sort(d2.abs().reshape(-1).topk(20).indices).values)
    # uniform rank 16 = full rank: same as top-K of |Δ|.
    sel_full = make_method("deft-x", {"rank_strategy": "uniform", "rank": 16}).select(
        SelectionContext(ctx.space, 20, ctx.theta0, theta1=ctx.theta1)
    )
    want = torch.sort(low_rank_plus_noise.abs().reshape(-1).topk(20).indices).values
    assert torch.equal(sel_full.mask[target], want)
    # the SVD is cached per θ1: a rank sweep reuses it
    assert target in ctx.cache["deft-x/svd"]


def test_deft_x_rank_larger_than_matrix_is_refused():
    space = ParamSpace(tiny_classifier(hidden=16))
    with pytest.raises(RaysftError, match="rank 17 is larger"):
        make_method("deft-x", {"rank_strategy": "uniform", "rank": 17}).validate(space, 10)


def test_rand_sft_is_seeded_uniform_and_exact():
    space = ParamSpace(tiny_classifier())
    theta0 = space.snapshot()
    a = make_method("rand-sft").select(SelectionContext(space, 500, theta0, seed=3))
    b = make_method("rand-sft").select(SelectionContext(space, 500, theta0, seed=3))
    c = make_method("rand-sft").select(SelectionContext(space, 500, theta0, seed=4))
    assert sum(v.numel() for v in a.mask.values()) == 500
    assert all(torch.equal(a.mask[n], b.mask[n]) for n in a.mask)
    assert any(n not in c.mask or not torch.equal(a.mask[n], c.mask[n]) for n in a.mask)
    # Roughly proportional to size: the word embeddings hold most entries and get most of the sample.
    words = "embeddings.word_embeddings.weight"
    share = space.info(words).numel / space.n
    assert abs(a.mask[words].numel() / 500 - share) < 0.1


def test_rand_sft_bernoulli_keeps_each_entry_with_probability_k_over_n():
    """The report's §3.5 draw: M_ij ~ Bernoulli(K/N), so the count is random around K; with a budget vector each group
    has its own p_g = K_g/N_g. Seeded like the exact draw."""
    space = ParamSpace(tiny_classifier())
    theta0, k = space.snapshot(), 2000
    draw = lambda seed, **kw: make_method("rand-sft", {"sampling": "bernoulli", **kw}).select(  # noqa: E731
        SelectionContext(space, k, theta0, seed=seed))
    a, b, c = draw(3), draw(3), draw(4)
    sd = (k * (1 - k / space.n)) ** 0.5
    for sel in (a, c):
        drawn = sum(v.numel() for v in sel.mask.values())
        assert sel.k == drawn and abs(drawn - k) < 5 * sd  # what the delta will hold, near K
        assert all(v.unique().numel() == v.numel() for v in sel.mask.values())
    assert a.k != c.k or any(not torch.equal(a.mask[n], c.mask.get(n, a.mask[n][:0])) for n in a.mask)
    assert set(a.mask) == set(b.mask) and all(torch.equal(a.mask[n], b.mask[n]) for n in a.mask)
    # per group: layer.0 gets 90 % of K, the embeddings 10 %, layer.1 nothing
    budget = {"embeddings": 0.1, "layer.0": 0.9}
    sel = draw(5, budget=budget)
    sizes, per_group = space.group_sizes(), {}
    for name, idx in sel.mask.items():
        per_group[space.info(name).group] = per_group.get(space.info(name).group, 0) + idx.numel()
    assert "layer.1" not in per_group
    for group, share in budget.items():
        expected, p = share * k, share * k / sizes[group]
        assert abs(per_group[group] - expected) < 5 * (expected * (1 - p)) ** 0.5 + 1, (group, per_group)
    assert sel.info["sampling"] == "bernoulli" and sel.info["k_asked"] == k


def test_bitfit_selects_every_maskable_bias():
    space = ParamSpace(tiny_classifier())
    sel = make_method("bitfit").select(SelectionContext(space, 0, space.snapshot()))
    biases = [p for p in space.maskable if p.name.endswith(".bias")]
    assert set(sel.mask) == {p.name for p in biases} and sel.k == sum(p.numel for p in biases)
    assert not any("LayerNorm" in n for n in sel.mask)


def test_ada_sft_selects_top_scores():
    space = ParamSpace(tiny_classifier())
    scores = {p.name: torch.full(p.shape, 3.0) for p in space.maskable}
    name = "encoder.layer.0.output.dense.weight"
    scores[name].view(-1)[[5, 9]] = torch.tensor([4.0, 2.0])
    sel = make_method("ada-sft-topk", {"criterion": "score"}).select(SelectionContext(space, 1, space.snapshot(), scores=scores))
    assert sel.mask == {name: sel.mask[name]} and sel.mask[name].tolist() == [5]
    sel = make_method("ada-sft-topk", {"criterion": "score_change", "score_init": 3.0}).select(
        SelectionContext(space, 2, space.snapshot(), scores=scores)
    )
    assert sel.mask[name].tolist() == [5, 9]


def test_param_groups_and_layer_norm_frozen():
    space = ParamSpace(tiny_classifier(layers=3))
    assert space.groups == ["embeddings", "layer.0", "layer.1", "layer.2"]
    assert not any("LayerNorm" in p.name for p in space.maskable)
    assert any("LayerNorm" in n for n in space.frozen)
    assert all(n.startswith("classifier.") for n in space.head)
    frozen_emb = ParamSpace(tiny_classifier(layers=3), freeze_embeddings=True)
    assert "embeddings" not in frozen_emb.groups


def test_singular_basis_matches_svd_for_tall_and_wide_matrices():
    from raysft.sft.methods.deft_x import singular_basis

    g = torch.Generator().manual_seed(3)
    for shape in [(48, 16), (16, 48), (20, 20)]:
        delta = torch.randn(shape, generator=g)
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        sigma, basis, right = singular_basis(delta)
        torch.testing.assert_close(sigma, s, rtol=1e-4, atol=1e-5)
        for r in (1, 3, min(shape)):
            v = basis[:, :r]
            approx = (delta @ v) @ v.T if right else v @ (v.T @ delta)
            torch.testing.assert_close(approx, (u[:, :r] * s[:r]) @ vh[:r], rtol=1e-4, atol=1e-4)


def test_deft_x_rank_sweep_factors_each_matrix_once_per_theta1(tmp_path, monkeypatch):
    """Trials of a rank sweep share θ1 (dense-phase cache) and build fresh selection contexts: the SVD factors kept
    beside θ1 make the whole sweep run one eigh per matrix, and each trial selects exactly what it would alone."""
    from raysft.distributed.train_workers import select_with_shared_cache, selection_cache_path

    model = tiny_classifier(hidden=16)
    g = torch.Generator().manual_seed(5)
    base = _ctx_with_delta(model, 60, lambda n, t: torch.randn(t.shape, generator=g))
    settings = [
        {"rank_strategy": "uniform", "rank": 2},
        {"rank_strategy": "uniform", "rank": 5},
        {"rank_strategy": "energy", "energy": 0.5},
        {"rank_strategy": "energy", "energy": 0.95, "residual_top_p": 0.1},
    ]
    # Reference: each trial alone, its own fresh context, no shared cache.
    alone = [make_method("deft-x", s).select(SelectionContext(base.space, 60, base.theta0, theta1=base.theta1))
             for s in settings]

    real_eigh, calls = torch.linalg.eigh, []

    def counting_eigh(a, *args, **kwargs):
        calls.append(a)
        return real_eigh(a, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", counting_eigh)
    uri = selection_cache_path(str(tmp_path / "dense" / "key" / "theta1.safetensors"), "deft-x")
    n_matrices = len(make_method("deft-x").svd_params(base.space))
    assert n_matrices >= 12
    statuses = []
    for s, want in zip(settings, alone):
        ctx = SelectionContext(base.space, 60, base.theta0, theta1=base.theta1)  # a fresh trial
        sel = select_with_shared_cache(make_method("deft-x", s), ctx, uri, "cpu")
        statuses.append(sel.info["select_cache"])
        assert set(sel.mask) == set(want.mask)
        for name, idx in want.mask.items():
            assert torch.equal(sel.mask[name], idx), name
    assert len(calls) == n_matrices, f"{len(calls)} eigendecompositions for {n_matrices} matrices"
    assert statuses == ["computed", "reused", "reused", "reused"]
    # The Gram matrix is multiplied in float64 (not multiplied in fp32 and then cast).
    name = "encoder.layer.0.attention.self.query.weight"
    d = (base.theta1[name] - base.theta0[name]).double()
    assert any(a.dtype == torch.float64 and torch.equal(a, d.T @ d) for a in calls)

    # svd_embeddings adds matrices: only those are factored, and the file is extended for the next trial.
    calls.clear()
    with_emb = {"rank_strategy": "uniform", "rank": 2, "svd_embeddings": True}
    sel = select_with_shared_cache(make_method("deft-x", with_emb), SelectionContext(base.space, 60, base.theta0,
                                   theta1=base.theta1), uri, "cpu")
    extra = make_method("deft-x", with_emb).svd_params(base.space)
    assert sel.info["select_cache"] == "extended" and len(calls) == len(extra) - n_matrices > 0
