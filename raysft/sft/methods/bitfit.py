"""BitFit: train the bias terms of the maskable parameters only (LayerNorm biases stay frozen)."""

import torch

from raysft.sft.methods.base import Method, Selection, SelectionContext


class BitFit(Method):
    name = "bitfit"
    first_phase = "none"
    uses_k = False

    def select(self, ctx: SelectionContext) -> Selection:
        mask = {
            p.name: torch.arange(p.numel, device=ctx.space.param(p.name).device)
            for p in ctx.space.maskable
            if p.name.endswith(".bias")
        }
        return Selection(mask, sum(int(i.numel()) for i in mask.values()))
