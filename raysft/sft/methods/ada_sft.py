"""Ada-SFT: a mask phase learns scores S (forward uses W ⊙ sigmoid(S), W frozen); keep the top-K scores.

The mask phase itself is `raysft.sft.mask_scores.MaskScores`; the training loop runs it because
``first_phase == "mask"``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raysft.sft.methods.base import Method, MethodSettings, Selection, SelectionContext, top_k


class AdaSFTSettings(MethodSettings):
    score_init: float = 3.0  # sigmoid(3) ≈ 0.95: the masked model starts close to θ0
    score_lr: float = Field(0.05, gt=0)  # Adam normalises the (small) sigmoid gradients, so a large lr works
    criterion: Literal["score", "score_change"] = "score"  # top-K of S, or of |S − S_init|


class AdaptiveSFT(Method):
    name = "ada-sft"
    Settings = AdaSFTSettings
    first_phase = "mask"

    def select(self, ctx: SelectionContext) -> Selection:
        if ctx.scores is None:
            raise ValueError("ada-sft needs the mask phase's scores")
        if self.settings.criterion == "score":
            scores = ctx.scores
        else:
            scores = {n: (s - self.settings.score_init).abs() for n, s in ctx.scores.items()}
        return top_k(ctx, scores, budget=None)
