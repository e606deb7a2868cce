"""Rand-SFT: K entries uniformly at random without replacement (seeded), no dense phase.

Implemented as the top-K of i.i.d. uniform scores, which is an exact uniform sample of K entries and reuses the
deterministic top-K (and the per-group budget) of the other methods.
"""

from __future__ import annotations

import torch
from pydantic import field_validator

from raysft.sft.mask import check_budget
from raysft.sft.methods.base import Method, MethodSettings, Selection, SelectionContext, top_k


class RandSFTSettings(MethodSettings):
    budget: dict[str, float] | None = None  # optional per-group shares, as in sc-sft

    @field_validator("budget")
    @classmethod
    def _on_simplex(cls, v):
        if v is not None:
            check_budget(v)
        return v


class RandomSFT(Method):
    name = "rand-sft"
    Settings = RandSFTSettings
    first_phase = "none"

    def select(self, ctx: SelectionContext) -> Selection:
        gen = torch.Generator().manual_seed(ctx.seed)
        scores = {p.name: torch.rand(p.numel, generator=gen) for p in ctx.space.maskable}
        return top_k(ctx, scores, budget=self.settings.budget)
