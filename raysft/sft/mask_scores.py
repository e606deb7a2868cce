"""Soft masks: learn a score S per entry while the weights W stay frozen (Ada-SFT's mask phase), and train W with
fixed gates M kept in the forward pass (Ada-SFT's second step, as the SC-SFT report defines it, §3.4).

The forward pass uses W ⊙ sigmoid(S) (or W ⊙ M) in place of W (``torch.func.functional_call``, so the model is not
modified); the head trains densely alongside, as in every phase.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.func import functional_call

from raysft.sft.groups import ParamSpace


def _full_name(space: ParamSpace, name: str) -> str:
    return f"{space.prefix}.{name}" if space.prefix else name


class MaskScores(nn.Module):
    def __init__(self, space: ParamSpace, init: float, names: Iterable[str] | None = None):
        super().__init__()
        self.space = space
        self.init = init
        self._names = list(names) if names is not None else [p.name for p in space.maskable]
        # ParameterDict keys cannot contain dots.
        self.scores = nn.ParameterDict(
            {
                n.replace(".", "__"): nn.Parameter(torch.full_like(space.param(n), init, dtype=torch.float32))
                for n in self._names
            }
        )

    def full_name(self, name: str) -> str:
        return _full_name(self.space, name)

    def forward(self, model: nn.Module, **batch):
        masked = {
            self.full_name(n): self.space.param(n).detach() * torch.sigmoid(self.scores[n.replace(".", "__")])
            for n in self._names
        }
        return functional_call(model, masked, args=(), kwargs=batch, strict=False)

    def learned(self) -> dict[str, torch.Tensor]:
        return {n: self.scores[n.replace(".", "__")].detach() for n in self._names}


def gated_call(model: nn.Module, space: ParamSpace, gates: dict[str, torch.Tensor], **batch):
    """The model's forward pass with W ⊙ M for every gated W (gradients reach W, not M)."""
    gated = {_full_name(space, n): space.param(n) * m for n, m in gates.items()}
    return functional_call(model, gated, args=(), kwargs=batch, strict=False)


@torch.no_grad()
def fold_gates(space: ParamSpace, base: dict[str, torch.Tensor], gates: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fold the gates into the weights: δ = fl(W ⊙ M − base) per gated parameter (flat, float32), and W := base + δ
    computed exactly as ``SparseDelta.apply`` does (``add_`` on a copy of base), so the folded model and base + the
    saved δ are bitwise equal. Returns δ."""
    out = {}
    for name, m in gates.items():
        param = space.param(name)
        t0 = base[name].to(param.device).reshape(-1)
        effective = (param.detach() * m.to(param.device)).reshape(-1).float()
        delta = effective - t0.float()
        folded = t0.clone()
        folded.add_(delta.to(folded.dtype))
        param.detach().view(-1).copy_(folded)
        out[name] = delta.cpu()  # host: a dense delta the size of the gated weights is kept off the device
    return out
