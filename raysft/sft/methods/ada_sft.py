"""Ada-SFT as the SC-SFT report defines it (§3.4; text in ../shared/papers/): a soft mask M = sigmoid(S) over
weight matrices W (the report: "a parameter matrix W ∈ R^{n×m}"; raysft takes the linear layers' only, no source).

- Step 1 (the mask phase, ``first_phase = "mask"``): W fixed, S learned through the forward pass W ⊙ M.
- Step 2 (the gated phase, ``gated_phase = True``): M fixed, W trained (densely: every linear weight), with M kept in
  the forward pass; M stays at inference too, so the model it defines has the effective weights W ⊙ M.
- What is saved: the effective weights as a dense diff, δ = fl(W ⊙ M − θ0) per linear weight (nothing else: biases,
  embeddings and LayerNorms never change), and the model is folded to θ0 + δ, so the trained model, what evaluation
  scores and θ0 + the saved delta are bitwise the same weights; they differ from the unrounded product W ⊙ M by at
  most a few float32 ulps (fl(θ0 + fl(E − θ0)) vs E: ≤ 3·2⁻²⁴·max(|E|, |θ0|) per entry; tested with 4·2⁻²⁴).
- It is not parameter efficient (the report says so): step 1 trains one score per linear-weight entry, step 2 every
  linear weight; K is that count (reported as ``k``, the delta's entries), the head trains densely in both steps.

Defaults: §3.4 gives no S initialisation and no score learning rate (no source); score_init 3.0 (M starts at 0.95)
and score_lr 0.05 are carried over from raysft's ``ada-sft-topk``. Step 2 uses the ``sparse:`` phase's epochs, lr and batch.
"""

from __future__ import annotations

import torch
from pydantic import Field

from raysft.errors import RaysftError
from raysft.sft.groups import ParamSpace
from raysft.sft.methods.base import Method, MethodSettings, Selection, SelectionContext


class AdaSFTSettings(MethodSettings):
    score_init: float = 3.0  # no source: raysft's ada-sft-topk default (sigmoid(3) ≈ 0.95)
    score_lr: float = Field(0.05, gt=0)  # no source: raysft's ada-sft-topk default


class AdaptiveSFT(Method):
    name = "ada-sft"
    Settings = AdaSFTSettings
    first_phase = "mask"
    sparse_phase = False
    gated_phase = True
    uses_k = False  # K = every linear-layer weight entry

    def score_params(self, space: ParamSpace) -> list[str]:
        return list(space.linear_weights)

    def fixed_k(self, space: ParamSpace) -> int:
        return sum(space.info(n).numel for n in space.linear_weights)

    def validate(self, space: ParamSpace, k: int) -> None:
        if not space.linear_weights:
            raise RaysftError("ada-sft masks linear-layer weights and this model has no maskable ones: use another method")

    def select(self, ctx: SelectionContext) -> Selection:
        if ctx.scores is None:
            raise ValueError("ada-sft needs the mask phase's scores")
        names = self.score_params(ctx.space)
        gates = self.gates(ctx.scores)
        k = sum(ctx.space.info(n).numel for n in names)
        low = sum(int((gates[n] < 0.5).sum()) for n in names)
        mean = sum(float(gates[n].double().sum()) for n in names) / max(1, k)
        info = {"trainable_scores": k, "trainable_weights": k, "gate_mean": mean, "gates_below_half": low}
        return Selection({n: None for n in names}, k, info)

    def gates(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """M = sigmoid(S), fixed during step 2 and folded into the saved weights."""
        return {n: torch.sigmoid(s.detach().float()) for n, s in scores.items()}
