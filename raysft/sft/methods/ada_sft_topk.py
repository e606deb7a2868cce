"""Ada-SFT, hardened (raysft's own variant, ``ada-sft-topk``): a mask phase learns scores S over every maskable entry
(forward uses W ⊙ sigmoid(S), W frozen); the top-K scores become a hard mask; the model is rewound to θ0 and the K
entries are sparse fine-tuned without M. This is not the CMU report's Ada-SFT (``ada-sft``, see ``ada_sft.py``): it
keeps no soft mask, covers embeddings and biases too, and has an exact budget K like the other SFT methods.

Defaults: score_init 3.0 (sigmoid(3) ≈ 0.95, the masked model starts close to θ0) and score lr 0.05 (Adam normalises
the small sigmoid gradients) come from no paper; they were picked in raysft, unmeasured against alternatives.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raysft.sft.methods.base import Method, MethodSettings, Selection, SelectionContext, top_k


class AdaSFTTopKSettings(MethodSettings):
    score_init: float = 3.0  # sigmoid(3) ≈ 0.95: the masked model starts close to θ0
    score_lr: float = Field(0.05, gt=0)  # Adam normalises the (small) sigmoid gradients, so a large lr works
    criterion: Literal["score", "score_change"] = "score"  # top-K of S, or of |S − S_init|


class AdaptiveTopKSFT(Method):
    name = "ada-sft-topk"
    Settings = AdaSFTTopKSettings
    first_phase = "mask"

    def select(self, ctx: SelectionContext) -> Selection:
        if ctx.scores is None:
            raise ValueError("ada-sft-topk needs the mask phase's scores")
        if self.settings.criterion == "score":
            scores = ctx.scores
        else:
            scores = {n: (s - self.settings.score_init).abs() for n, s in ctx.scores.items()}
        return top_k(ctx, scores, budget=None)
