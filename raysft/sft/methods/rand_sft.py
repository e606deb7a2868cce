"""Rand-SFT: random entries, no dense phase (the SC-SFT report, §3.5: M_ij ~ Bernoulli(p), then W trained under M).

Two ways to draw them (``sampling``):

- ``exact`` (the default): exactly K entries, uniformly without replacement, as the top-K of i.i.d. uniform scores
  (an exact uniform sample that reuses the deterministic top-K and the per-group budget of the other methods). Every
  trial of a sweep then trains the same number of entries, so K means the same across methods.
- ``bernoulli``: each entry kept independently with probability p = K/N (with a budget vector, p_g = K_g/N_g per
  group), as the report writes it; the count is random around K (sd ≈ √(K(1 − p))) and is what the delta holds.

Both draw from one seeded CPU generator, so a seed selects the same entries on every device.
"""

from __future__ import annotations

from typing import Literal

import torch

from raysft.sft.mask import allocate, expand_budget
from raysft.sft.methods.base import BudgetSettings, Method, Selection, SelectionContext, top_k


class RandSFTSettings(BudgetSettings):
    """budget None: one sample over all maskable entries; else one per group, K_g of them (see ``allocate``)."""

    sampling: Literal["exact", "bernoulli"] = "exact"


class RandomSFT(Method):
    name = "rand-sft"
    Settings = RandSFTSettings
    first_phase = "none"

    def select(self, ctx: SelectionContext) -> Selection:
        # host: the uniform scores are drawn by a CPU generator, so one seed selects the same entries on every device
        # (CUDA's generator draws another stream); each tensor then moves to its parameter's device, where the
        # selection runs. Only one parameter's scores exist on the host at a time.
        gen = torch.Generator().manual_seed(ctx.seed)
        scores = {
            p.name: torch.rand(p.numel, generator=gen).to(ctx.space.param(p.name).device)  # host: see above
            for p in ctx.space.maskable
        }
        if self.settings.sampling == "exact":
            return top_k(ctx, scores, budget=self.settings.budget)
        return self._bernoulli(ctx, scores)

    def _bernoulli(self, ctx: SelectionContext, scores: dict[str, torch.Tensor]) -> Selection:
        """Entry kept where its uniform score is below its group's p (a Bernoulli(p) draw per entry)."""
        sizes = ctx.space.group_sizes()
        if self.settings.budget is None:
            p_of = dict.fromkeys(sizes, ctx.k / ctx.space.n)
            info: dict = {"p": ctx.k / ctx.space.n}
        else:
            counts, notes = allocate(ctx.k, expand_budget(self.settings.budget, ctx.space.groups), sizes)
            p_of = {g: counts[g] / sizes[g] if sizes[g] else 0.0 for g in sizes}
            info = {"p_per_group": p_of, "budget_notes": notes}
        mask = {}
        for p in ctx.space.maskable:
            idx = torch.nonzero(scores[p.name] < p_of[p.group]).squeeze(1)
            if idx.numel():
                mask[p.name] = idx
        drawn = sum(int(v.numel()) for v in mask.values())
        return Selection(mask, drawn, {**info, "sampling": "bernoulli", "k_asked": ctx.k})
