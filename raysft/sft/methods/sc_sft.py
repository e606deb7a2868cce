"""SC-SFT: LT-SFT's magnitude criterion, but a budget vector fixes how many of the K entries each group gets."""

from __future__ import annotations

from pydantic import field_validator

from raysft.sft.mask import check_budget
from raysft.sft.methods.base import Method, MethodSettings, Selection, SelectionContext, magnitude, top_k


class ScSFTSettings(MethodSettings):
    # group (`embeddings`, `layer.3`) or layer range (`layer.0-9`, spread evenly) -> share of K; shares sum to 1.
    # None: shares proportional to the groups' sizes.
    budget: dict[str, float] | None = None

    @field_validator("budget")
    @classmethod
    def _on_simplex(cls, v):
        if v is not None:
            check_budget(v)
        return v


class StructuredSFT(Method):
    name = "sc-sft"
    Settings = ScSFTSettings

    def budget(self, ctx: SelectionContext) -> dict[str, float]:
        if self.settings.budget is not None:
            return self.settings.budget
        sizes = ctx.space.group_sizes()
        return {g: n / ctx.space.n for g, n in sizes.items()}

    def select(self, ctx: SelectionContext) -> Selection:
        return top_k(ctx, magnitude(ctx), budget=self.budget(ctx))
