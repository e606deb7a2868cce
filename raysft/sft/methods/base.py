"""The protocol every SFT method implements; the training loop only talks to this."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, field_validator

from raysft.errors import RaysftError
from raysft.sft.groups import ParamSpace
from raysft.sft.mask import Mask, allocate, check_budget, expand_budget
from raysft.sft.topk import topk_select


class MethodSettings(BaseModel):
    """A method's own settings (the `methods.<name>` block of a space file); unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


class BudgetSettings(MethodSettings):
    # group (`embeddings`, `layer.3`) or layer range (`layer.0-9`, spread evenly) -> share of K; shares sum to 1.
    budget: dict[str, float] | None = None

    @field_validator("budget")
    @classmethod
    def _on_simplex(cls, v):
        if v is not None:
            check_budget(v)
        return v


@dataclass
class SelectionContext:
    space: ParamSpace
    k: int
    theta0: dict[str, torch.Tensor]
    theta1: dict[str, torch.Tensor] | None = None  # after the dense phase
    scores: dict[str, torch.Tensor] | None = None  # learned by a mask phase (Ada-SFT)
    seed: int = 0
    cache: dict = field(default_factory=dict)  # per-θ1 results a sweep may reuse (DeFT-X SVD factors)


@dataclass
class Selection:
    mask: Mask
    k: int  # entries selected
    info: dict = field(default_factory=dict)  # threshold, ties, budget adjustments, zero-Δ entries …


class Method:
    """One SFT method: which phase precedes selection, and how it selects."""

    name: ClassVar[str]
    Settings: ClassVar[type[MethodSettings]] = MethodSettings
    first_phase: ClassVar[Literal["dense", "mask", "none"]] = "dense"
    sparse_phase: ClassVar[bool] = True  # False: the first phase's result is the delta (full fine-tuning)
    uses_k: ClassVar[bool] = True  # False: the method fixes its own K (full, bitfit)
    # True (Ada-SFT per the report): after selection, the selected weights train densely with the forward pass using
    # W ⊙ gates(scores), the gates fixed; the delta is the folded product (see raysft.sft.mask_scores.fold_gates).
    gated_phase: ClassVar[bool] = False

    def __init__(self, settings: MethodSettings | None = None):
        self.settings = settings if settings is not None else self.Settings()

    def score_params(self, space: ParamSpace) -> list[str]:
        """The parameters a mask phase learns scores for (default: every maskable one)."""
        return [p.name for p in space.maskable]

    def gates(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The fixed multipliers of a gated phase, from the mask phase's scores."""
        raise NotImplementedError(f"{self.name} has no gated phase")

    def fixed_k(self, space: ParamSpace) -> int:
        """K of a method that fixes its own (``uses_k = False``): the entries its delta holds."""
        return space.n

    def space_options(self) -> dict:
        """Keyword arguments for :class:`ParamSpace` (e.g. BitFit's ``layer_norm_bias``): which parameters this
        method may train beyond the standard maskable set."""
        return {}

    def validate(self, space: ParamSpace, k: int) -> None:
        """Refuse settings that cannot work on this model before any training starts."""
        if self.uses_k and not 0 < k <= space.n:
            raise RaysftError(f"K={k} is outside 1..{space.n} (the maskable entries of this model): lower K or sft.density")

    def select(self, ctx: SelectionContext) -> Selection:
        raise NotImplementedError

    def cache_tensors(self, cache: dict) -> dict[str, torch.Tensor]:
        """What of ``ctx.cache`` (results that depend on θ1 only) a sweep may keep beside θ1, as named tensors."""
        return {}

    def load_cache(self, tensors: dict[str, torch.Tensor], cache: dict) -> int:
        """Fill ``ctx.cache`` from tensors :meth:`cache_tensors` gave; returns how many entries were restored."""
        return 0


def magnitude(ctx: SelectionContext) -> dict[str, torch.Tensor]:
    """|θ1 − θ0| per maskable parameter."""
    if ctx.theta1 is None:
        raise ValueError("this method needs the dense phase's weights")
    return {p.name: (ctx.theta1[p.name] - ctx.theta0[p.name]).abs_() for p in ctx.space.maskable}


def top_k(ctx: SelectionContext, scores: dict[str, torch.Tensor], budget: dict[str, float] | None) -> Selection:
    """Global top-K of ``scores``, or per-group top-K_g when a budget vector is given."""
    order = [p.name for p in ctx.space.maskable]
    if budget is None:
        result = topk_select(scores, ctx.k, order)
        info = {"threshold": result.threshold, "ties_left_out": result.ties_broken}
        mask: Mask = dict(result.indices)
    else:
        shares = expand_budget(budget, ctx.space.groups)
        counts, notes = allocate(ctx.k, shares, ctx.space.group_sizes())
        mask, info = {}, {"k_per_group": counts, "budget_notes": notes, "ties_left_out": 0}
        for group, k_g in counts.items():
            names = [p.name for p in ctx.space.maskable if p.group == group]
            result = topk_select({n: scores[n] for n in names}, k_g, names)
            mask.update(result.indices)
            info["ties_left_out"] += result.ties_broken
    mask = {p.name: mask[p.name] for p in ctx.space.maskable if p.name in mask}  # model order
    return Selection(mask, ctx.k, info)
