"""Masks: which flat entries of each maskable parameter an SFT trains, and how a budget splits K over groups."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from raysft.errors import RaysftError
from raysft.sft.groups import ParamSpace, group_sort_key

# name (base-relative) -> sorted unique int64 flat row-major indices, or None for "every entry" (dense).
Mask = dict[str, "torch.Tensor | None"]


def mask_size(mask: Mask, space: ParamSpace) -> int:
    return sum(space.info(n).numel if idx is None else int(idx.numel()) for n, idx in mask.items())


def entries_per_group(mask: Mask, space: ParamSpace) -> dict[str, int]:
    counts = {g: 0 for g in space.groups}
    for name, idx in mask.items():
        info = space.info(name)
        counts[info.group] += info.numel if idx is None else int(idx.numel())
    return counts


def entries_per_component(mask: Mask, space: ParamSpace) -> dict[str, dict[str, int]]:
    """group -> {attention, feed_forward, embeddings, other} -> entries: the data of the papers' layer plots."""
    out: dict[str, dict[str, int]] = {g: {} for g in space.groups}
    for name, idx in mask.items():
        info = space.info(name)
        n = info.numel if idx is None else int(idx.numel())
        out[info.group][info.component] = out[info.group].get(info.component, 0) + n
    return out


def expand_budget(budget: Mapping[str, float], groups: list[str]) -> dict[str, float]:
    """Resolve a budget vector's keys against the model's groups.

    Keys are group names (``embeddings``, ``layer.3``) or layer ranges ``layer.0-9``, whose share is spread evenly
    over the layers in the range. Groups not named get 0.
    """
    out = {g: 0.0 for g in groups}
    for key, share in budget.items():
        if key.startswith("layer.") and "-" in key:
            lo, hi = key[len("layer.") :].split("-", 1)
            members = [f"layer.{i}" for i in range(int(lo), int(hi) + 1)]
        else:
            members = [key]
        missing = [m for m in members if m not in out]
        if missing:
            raise RaysftError(
                f"budget vector names group(s) {', '.join(missing)} that this model does not have; "
                f"its groups are {', '.join(groups)}"
            )
        for m in members:
            out[m] += share / len(members)
    return out


def check_budget(budget: Mapping[str, float]) -> None:
    """A budget vector lies on the simplex: non-negative shares that sum to 1."""
    negative = [k for k, v in budget.items() if v < 0 or not math.isfinite(v)]
    if negative:
        raise RaysftError(f"budget vector has negative or non-finite share(s) for {', '.join(negative)}: shares must be >= 0")
    total = sum(budget.values())
    if abs(total - 1.0) > 1e-6:
        raise RaysftError(f"budget vector sums to {total:.6g}, not 1: rescale its shares so they sum to 1")


def allocate(k: int, shares: Mapping[str, float], capacity: Mapping[str, int]) -> tuple[dict[str, int], list[str]]:
    """K_g = round(b_g·K) by largest remainder so that Σ K_g = K exactly; a group with fewer entries than K_g keeps
    all it has and its surplus goes to the groups with room, in proportion to their shares (or their free room
    when they have no share). Returns the counts and human-readable notes about every adjustment."""
    groups = sorted(shares, key=group_sort_key)
    if k > sum(capacity[g] for g in groups):
        raise RaysftError(f"K={k} is larger than the {sum(capacity.values())} maskable entries: lower K")
    counts = _largest_remainder(k, {g: shares[g] for g in groups})
    notes = []
    while True:
        over = {g: counts[g] - capacity[g] for g in groups if counts[g] > capacity[g]}
        if not over:
            return counts, notes
        surplus = 0
        for g, extra in over.items():
            counts[g] = capacity[g]
            surplus += extra
            notes.append(f"group {g} has only {capacity[g]} entries: {extra} of its budget moved to other groups")
        room = {g: capacity[g] - counts[g] for g in groups if capacity[g] > counts[g]}
        weights = {g: shares[g] for g in room if shares[g] > 0} or {g: float(r) for g, r in room.items()}
        for g, add in _largest_remainder(surplus, weights).items():
            counts[g] += add


def _largest_remainder(k: int, weights: Mapping[str, float]) -> dict[str, int]:
    total = sum(weights.values())
    if total <= 0:
        raise RaysftError("budget vector is all zeros: give at least one group a positive share")
    exact = {g: k * w / total for g, w in weights.items()}
    counts = {g: math.floor(x) for g, x in exact.items()}
    left = k - sum(counts.values())
    # Largest fractional part first; ties go to the earlier group, so the result is deterministic.
    order = sorted(weights, key=lambda g: (-(exact[g] - counts[g]), group_sort_key(g)))
    for g in order[:left]:
        counts[g] += 1
    return counts
