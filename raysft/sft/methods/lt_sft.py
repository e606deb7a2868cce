"""LT-SFT (Ansell et al. 2022): global top-K of |θ1 − θ0| after a dense phase, then rewind and train only those."""

from raysft.sft.methods.base import Method, Selection, SelectionContext, magnitude, top_k


class LotteryTicketSFT(Method):
    name = "lt-sft"

    def select(self, ctx: SelectionContext) -> Selection:
        return top_k(ctx, magnitude(ctx), budget=None)
