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
        # host: the uniform scores are drawn by a CPU generator, so one seed selects the same entries on every device
        # (CUDA's generator draws another stream); each tensor then moves to its parameter's device, where the
        # selection runs. Only one parameter's scores exist on the host at a time.
        gen = torch.Generator().manual_seed(ctx.seed)
        scores = {
            p.name: torch.rand(p.numel, generator=gen).to(ctx.space.param(p.name).device)  # host: see above
            for p in ctx.space.maskable
        }
        return top_k(ctx, scores, budget=self.settings.budget)
