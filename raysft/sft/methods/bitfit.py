"""BitFit (Ben Zaken et al., 2022, arXiv:2106.10199): train the bias terms only, the task head densely.

The paper's §3 trains every bias of the encoder, the LayerNorm biases included (b^{LN_1}, b^{LN_2} in its equations);
``layer_norm_bias: true`` (the default) does the same. raysft otherwise freezes LayerNorms (as the LT-SFT paper does),
so ``layer_norm_bias: false`` gives the narrower "maskable biases only" variant. LayerNorm weights (gains) always stay
frozen; with ``sft.freeze_embeddings`` the embeddings' LayerNorm bias stays frozen with the embeddings.
"""

import torch

from raysft.sft.methods.base import Method, MethodSettings, Selection, SelectionContext


class BitFitSettings(MethodSettings):
    layer_norm_bias: bool = True  # the paper trains the LayerNorm biases too


class BitFit(Method):
    name = "bitfit"
    Settings = BitFitSettings
    first_phase = "none"
    uses_k = False

    def space_options(self) -> dict:
        return {"layer_norm_bias": self.settings.layer_norm_bias}

    def fixed_k(self, space) -> int:
        return sum(p.numel for p in space.maskable if p.name.endswith(".bias"))

    def select(self, ctx: SelectionContext) -> Selection:
        mask = {
            p.name: torch.arange(p.numel, device=ctx.space.param(p.name).device)
            for p in ctx.space.maskable
            if p.name.endswith(".bias")
        }
        return Selection(mask, sum(int(i.numel()) for i in mask.values()))
