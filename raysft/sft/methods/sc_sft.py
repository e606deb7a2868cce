"""SC-SFT: LT-SFT's magnitude criterion, but a budget vector fixes how many of the K entries each group gets."""

from __future__ import annotations

from raysft.sft.methods.base import BudgetSettings, Method, Selection, SelectionContext, magnitude, top_k


class ScSFTSettings(BudgetSettings):
    """budget None: shares proportional to the groups' sizes."""


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
