"""Ada-SFT's mask phase: learn a score S per maskable entry while the weights W stay frozen.

The forward pass uses W ⊙ sigmoid(S) in place of W (``torch.func.functional_call``, so the model is not modified);
the head trains densely alongside, as in every phase.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from raysft.sft.groups import ParamSpace


class MaskScores(nn.Module):
    def __init__(self, space: ParamSpace, init: float):
        super().__init__()
        self.space = space
        self.init = init
        self._names = [p.name for p in space.maskable]
        # ParameterDict keys cannot contain dots.
        self.scores = nn.ParameterDict(
            {
                n.replace(".", "__"): nn.Parameter(torch.full_like(space.param(n), init, dtype=torch.float32))
                for n in self._names
            }
        )

    def full_name(self, name: str) -> str:
        return f"{self.space.prefix}.{name}" if self.space.prefix else name

    def forward(self, model: nn.Module, **batch):
        masked = {
            self.full_name(n): self.space.param(n).detach() * torch.sigmoid(self.scores[n.replace(".", "__")])
            for n in self._names
        }
        return functional_call(model, masked, args=(), kwargs=batch, strict=False)

    def learned(self) -> dict[str, torch.Tensor]:
        return {n: self.scores[n.replace(".", "__")].detach() for n in self._names}
