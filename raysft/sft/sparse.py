"""Sparse training: only the K masked entries change, and the optimizer keeps state for K entries, not N.

The base parameters stay dense tensors. After backward, a post-accumulate-grad hook gathers each masked tensor's
gradient at its indices into one flat K-vector and frees the dense gradient at once, so dense gradients never all
live together. The trainable state is the K-vector ``delta`` (θ = θ0 + delta at the masked entries): a stock
``torch.optim.AdamW`` over it holds 2K moments, its weight decay pulls toward θ0 (not toward 0), and an optional L1
term does too. After each step the masked entries are written as θ0[idx] + delta with ``index_copy_``, which is
exactly what applying the saved delta to θ0 computes, so a trained model and θ0 + its delta agree bitwise.
In distributed runs the K-vector ``grad`` is what gets all-reduced.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from raysft.sft.groups import ParamSpace
from raysft.sft.mask import Mask


class RowGradients(Protocol):
    """An input embedding whose gradient is built for some rows only, into ``holder`` (raysft.train.rows)."""

    weight: nn.Parameter
    holder: torch.Tensor

    def local_indices(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class SparseUpdater:
    def __init__(
        self,
        space: ParamSpace,
        mask: Mask,
        *,
        lr: float,
        weight_decay: float = 0.0,
        l1: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        rows: RowGradients | None = None,
    ):
        """``rows``: the input embedding builds its gradient for the data's rows only (the sparse phase's
        :func:`raysft.train.rows.row_gradients`); its masked entries are gathered from there, the same values."""
        self.space = space
        self.l1 = l1
        self.names: list[str] = []
        self.indices: list[torch.Tensor] = []
        self.slices: list[slice] = []
        offset = 0
        for info in space.maskable:
            idx = mask.get(info.name)
            param = space.param(info.name)
            if idx is None and info.name in mask:
                idx = torch.arange(info.numel, device=param.device)
            if idx is None or idx.numel() == 0:
                param.requires_grad_(False)  # no entry of it trains: skip its gradient altogether
                continue
            param.requires_grad_(True)
            idx = idx.to(param.device, torch.int64)
            self.names.append(info.name)
            self.indices.append(idx)
            self.slices.append(slice(offset, offset + idx.numel()))
            offset += idx.numel()
        self.k = offset
        # Everything the updater keeps (indices, θ0 reference, δ, its gradient, AdamW's moments) lives on the
        # parameters' device; an updater with nothing to train sits on the model's device.
        device = space.param(self.names[0]).device if self.names else next(space.model.parameters()).device
        self.reference = torch.empty(self.k, dtype=torch.float32, device=device)  # θ0 at the masked entries
        for name, idx, sl in zip(self.names, self.indices, self.slices):
            self.reference[sl] = space.param(name).detach().reshape(-1)[idx].float()
        self.delta = torch.zeros(self.k, dtype=torch.float32, device=device)
        self.delta.grad = torch.zeros_like(self.delta)
        self.optimizer = torch.optim.AdamW([self.delta], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self._hooks = []
        for name, idx, sl in zip(self.names, self.indices, self.slices):
            param = space.param(name)
            if rows is not None and param is rows.weight:
                param.requires_grad_(False)  # its gradient comes through the row table
                positions, local = rows.local_indices(idx)
                rows.holder.requires_grad_(positions.numel() > 0)
                if positions.numel():
                    self._hooks.append(rows.holder.register_post_accumulate_grad_hook(
                        self._gather_rows_hook(positions + sl.start, local)))
            else:
                self._hooks.append(param.register_post_accumulate_grad_hook(self._gather_hook(idx, sl)))

    def _gather_hook(self, idx: torch.Tensor, sl: slice):
        def hook(param: nn.Parameter) -> None:
            self.delta.grad[sl] += param.grad.reshape(-1)[idx].float()
            param.grad = None  # the dense gradient is not needed any more

        return hook

    def _gather_rows_hook(self, positions: torch.Tensor, local: torch.Tensor):
        """Masked entries whose row the data contains: their gradients, from the row table, at their places in
        the K-vector (the other entries' gradients are zero, as the full matrix's would be)."""
        def hook(holder: torch.Tensor) -> None:
            self.delta.grad.index_add_(0, positions, holder.grad.reshape(-1)[local].float())
            holder.grad = None

        return hook

    @property
    def grad(self) -> torch.Tensor:
        """The gathered K-vector gradient (what a distributed run all-reduces)."""
        return self.delta.grad

    def zero_grad(self) -> None:
        self.delta.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        if self.l1:
            self.delta.grad.add_(torch.sign(self.delta), alpha=self.l1)
        self.optimizer.step()
        self.write_back()

    @torch.no_grad()
    def write_back(self) -> None:
        values = self.reference + self.delta
        for name, idx, sl in zip(self.names, self.indices, self.slices):
            param = self.space.param(name)
            param.view(-1).index_copy_(0, idx, values[sl].to(param.dtype))

    def state_bytes(self) -> int:
        """Bytes of optimizer state (AdamW's moments), the quantity dense AdamW keeps for all N entries."""
        return sum(
            t.numel() * t.element_size()
            for state in self.optimizer.state.values()
            for t in state.values()
            if torch.is_tensor(t) and t.numel() > 1
        )

    def overhead_bytes(self) -> int:
        """Everything else the sparse phase keeps per trained entry: indices, θ0 reference, delta, its gradient."""
        return sum(i.numel() * i.element_size() for i in self.indices) + 3 * self.k * 4

    def mask(self) -> Mask:
        """host: the mask as saved in a delta file and broadcast to other ranks (K indices, copied once at the end)."""
        return dict(zip(self.names, (i.cpu() for i in self.indices)))  # host: see above

    def values(self) -> dict[str, torch.Tensor]:
        """The trained delta per parameter (aligned with ``mask()``); host: a delta is a file's content."""
        d = self.delta.detach().cpu()  # host: see above
        return {name: d[sl].clone() for name, sl in zip(self.names, self.slices)}

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
