"""Rand-SFT: K entries uniformly at random without replacement (seeded), no dense phase.

Implemented as the top-K of i.i.d. uniform scores, which is an exact uniform sample of K entries and reuses the
deterministic top-K (and the per-group budget) of the other methods.
"""

from __future__ import annotations

import torch

from raysft.sft.methods.base import BudgetSettings, Method, Selection, SelectionContext, top_k


class RandSFTSettings(BudgetSettings):
    """budget None: one global uniform sample over all maskable entries."""


class RandomSFT(Method):
    name = "rand-sft"
    Settings = RandSFTSettings
    first_phase = "none"

    def select(self, ctx: SelectionContext) -> Selection:
        gen = torch.Generator().manual_seed(ctx.seed)
        scores = {p.name: torch.rand(p.numel, generator=gen) for p in ctx.space.maskable}
        return top_k(ctx, scores, budget=self.settings.budget)
