"""Exact, deterministic top-K over many tensors without concatenating them or sorting N entries.

A radix select on the float32 bit patterns: a 65,536-bin histogram of the high 16 bits finds the bin that holds
the K-th largest score, a second histogram of the low 16 bits inside that bin finds its exact value t, and one
last pass keeps every entry > t plus the first entries == t in (tensor order, flat index) order, so that exactly
K entries are selected even when scores tie (after a short dense phase most |Δ| are exactly 0).
Cost: three streaming passes over the scores in chunks; extra memory is a chunk plus the K selected indices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

CHUNK = 1 << 22  # 4M entries: bincount temporaries stay small and cache friendly
_BINS = 1 << 16


def sortable_keys(scores: torch.Tensor) -> torch.Tensor:
    """int32 keys whose signed order equals the float order of ``scores`` (any sign, no NaN)."""
    s = scores.detach().reshape(-1)
    if s.dtype != torch.float32:
        s = s.float()
    s = s.contiguous()
    bits = s.view(torch.int32)
    # Checked chunk by chunk: a bool tensor of all N entries would cost a quarter of the scores' memory.
    if any(bool(torch.isnan(c).any()) for c in _chunks(s)):
        raise ValueError("scores contain NaN")
    # Non-negative floats already order like their bits; negative ones order backwards: flip their magnitude bits.
    if any(bool((c < 0).any()) for c in _chunks(bits)):
        bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return bits


@dataclass
class TopKResult:
    indices: dict[str, torch.Tensor]  # name -> sorted int64 flat indices (names with no entry are absent)
    threshold: float  # the K-th largest score
    ties_broken: int  # entries equal to the threshold that were left out to keep exactly K


def _chunks(t: torch.Tensor):
    return t.split(CHUNK) if t.numel() > CHUNK else (t,)


def topk_select(scores: Mapping[str, torch.Tensor], k: int, order: Sequence[str] | None = None) -> TopKResult:
    """Select exactly the ``k`` largest entries over all tensors of ``scores`` (flat row-major indices).

    Ties at the threshold are broken by position: earlier tensors in ``order`` (default: insertion order), then
    lower flat index, win.
    """
    names = list(order) if order is not None else list(scores)
    n = sum(scores[name].numel() for name in names)
    if not 0 <= k <= n:
        raise ValueError(f"k={k} outside [0, {n}]")
    if k == 0:
        return TopKResult({}, float("inf"), 0)
    keys = {name: sortable_keys(scores[name]) for name in names}
    # Selection runs where the scores live: the histograms sit on the scores' device (the first tensor's; a tensor
    # elsewhere adds its counts across), and so do the selected indices.
    device = keys[names[0]].device

    # Pass 1: histogram of the high 16 bits (shifted to 0..65535).
    hist_hi = torch.zeros(_BINS, dtype=torch.int64, device=device)
    for key in keys.values():
        for c in _chunks(key):
            hist_hi += torch.bincount((c >> 16) + 32768, minlength=_BINS).to(device)
    above = hist_hi.flip(0).cumsum(0).flip(0)  # above[b] = count with high bin >= b
    # The threshold bin b: count(>= b) >= k and count(>= b+1) < k.
    b = int(torch.nonzero(above >= k).max())
    count_above_bin = int(above[b + 1]) if b + 1 < _BINS else 0

    # Pass 2: inside bin b, histogram of the low 16 bits.
    hist_lo = torch.zeros(_BINS, dtype=torch.int64, device=device)
    hi_value = b - 32768
    for key in keys.values():
        for c in _chunks(key):
            inside = c[(c >> 16) == hi_value]
            if inside.numel():
                hist_lo += torch.bincount(inside & 0xFFFF, minlength=_BINS).to(device)
    above_lo = hist_lo.flip(0).cumsum(0).flip(0)
    need = k - count_above_bin
    lo = int(torch.nonzero(above_lo >= need).max())
    count_greater = count_above_bin + (int(above_lo[lo + 1]) if lo + 1 < _BINS else 0)
    t_key = (hi_value << 16) | lo
    ties_to_keep = k - count_greater
    ties_total = int(hist_lo[lo])

    # Pass 3: keep key > t, and the first `ties_to_keep` entries with key == t in (tensor, index) order.
    out: dict[str, torch.Tensor] = {}
    for name in names:
        parts = []
        offset = 0
        for c in _chunks(keys[name]):
            idx = torch.nonzero(c >= t_key).squeeze(1)
            if idx.numel():
                is_tie = c[idx] == t_key
                n_ties = int(is_tie.sum())
                if n_ties > ties_to_keep:
                    tie_rank = is_tie.cumsum(0)
                    idx = idx[~is_tie | (tie_rank <= ties_to_keep)]
                    n_ties = ties_to_keep
                ties_to_keep -= n_ties
                if idx.numel():
                    parts.append(idx + offset)
            offset += c.numel()
        if parts:
            out[name] = torch.cat(parts) if len(parts) > 1 else parts[0]
    t_bits = torch.tensor([t_key], dtype=torch.int32)  # host: one scalar turned back into a Python float
    if t_key < 0:
        t_bits = t_bits ^ 0x7FFFFFFF
    threshold = float(t_bits.view(torch.float32)[0])
    return TopKResult(out, threshold, ties_total - (k - count_greater))
