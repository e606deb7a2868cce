"""Full fine-tuning: every maskable entry; the dense phase's result is the delta."""

from raysft.sft.methods.base import Method, Selection, SelectionContext


class Full(Method):
    name = "full"
    first_phase = "dense"
    sparse_phase = False
    uses_k = False

    def select(self, ctx: SelectionContext) -> Selection:
        return Selection({p.name: None for p in ctx.space.maskable}, ctx.space.n)
