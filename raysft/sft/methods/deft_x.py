"""DeFT-X: denoise each weight matrix's dense update with a truncated SVD before magnitude pruning.

Δ = θ1 − θ0 per 2-D weight matrix of the encoder layers → Δ_r (top-r singular components), optionally plus the
top-p magnitude part of the residual Δ − Δ_r; then the global top-K of |Δ'| (1-D parameters, and the embedding
tables unless ``svd_embeddings``, use |Δ|). Embedding tables are lookup tables whose dense update touches only
the rows seen in training, so a low-rank view of them is not what the method denoises; they are opt-in.
SVD factors are cached in ``ctx.cache`` (one cache per θ1) so that rank sweeps do not redo them; a sweep keeps them
beside θ1 on its storage (:meth:`DenoisedSFT.cache_tensors` / :meth:`DenoisedSFT.load_cache`), so trials that share
θ1 through the dense-phase cache compute them once.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from raysft.errors import RaysftError
from raysft.sft.groups import EMBEDDINGS, ParamInfo, ParamSpace
from raysft.sft.methods.base import Method, MethodSettings, Selection, SelectionContext, top_k


class DeftXSettings(MethodSettings):
    rank_strategy: Literal["energy", "uniform"] = "energy"
    energy: float = Field(0.9, gt=0, le=1)  # energy: smallest r with Σσ²_≤r ≥ energy·Σσ²
    rank: int = Field(16, ge=1)  # uniform: the same r for every matrix
    residual_top_p: float = Field(0.0, ge=0, lt=1)  # fraction of each matrix's residual entries added back
    svd_embeddings: bool = False


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest r with Σ_{i≤r} σ_i² ≥ energy · Σ σ_i² (at least 1)."""
    power = singular_values.double() ** 2
    total = float(power.sum())
    if total == 0:
        return 1
    cum = power.cumsum(0)
    # Tolerance: energy=1 must reach full rank despite rounding of the cumulative sum.
    r = int(torch.searchsorted(cum, torch.tensor([energy * total * (1 - 1e-12)], dtype=torch.float64, device=cum.device))[0]) + 1
    return min(r, singular_values.numel())


def singular_basis(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Singular values (descending) and the singular vectors of the smaller side, from the eigen-decomposition of
    the small Gram matrix (eigh in float64): cheaper than a full SVD of the matrix (the decomposition is of the
    smaller side only), and the top components, which carry the energy DeFT-X keeps, are as accurate. Returns
    (σ, basis, basis_is_right)."""
    right = delta.shape[0] >= delta.shape[1]
    d = delta.double()  # the product itself in float64: small singular values survive (an fp32 product loses them)
    gram = d.T @ d if right else d @ d.T
    eigvals, eigvecs = torch.linalg.eigh(gram)  # ascending
    sigma = eigvals.flip(0).clamp_min(0).sqrt().float()
    return sigma, eigvecs.flip(1).float(), right


SVD_CACHE = "deft-x/svd"


class DenoisedSFT(Method):
    name = "deft-x"
    Settings = DeftXSettings

    # ------------------------------------------------------------------ the per-θ1 cache, as tensors
    def cache_tensors(self, cache: dict) -> dict[str, torch.Tensor]:
        """The SVD factors in ``cache`` as flat tensors (``<param>/sigma``, ``<param>/basis``, ``<param>/right``),
        to keep beside θ1; :meth:`load_cache` reads them back bitwise."""
        out: dict[str, torch.Tensor] = {}
        for name, (sigma, basis, right) in cache.get(SVD_CACHE, {}).items():
            out[f"{name}/sigma"] = sigma.contiguous()
            out[f"{name}/basis"] = basis.contiguous()
            out[f"{name}/right"] = torch.tensor([int(right)], dtype=torch.uint8, device=sigma.device)
        return out

    def load_cache(self, tensors: dict[str, torch.Tensor], cache: dict) -> int:
        """Put factors saved by :meth:`cache_tensors` into ``cache``; returns how many matrices they cover."""
        svd = cache.setdefault(SVD_CACHE, {})
        names = {k.rpartition("/")[0] for k in tensors if k.endswith("/basis")}
        for name in names:
            svd.setdefault(name, (tensors[f"{name}/sigma"], tensors[f"{name}/basis"], bool(tensors[f"{name}/right"][0])))
        return len(names)

    def svd_params(self, space: ParamSpace) -> list[ParamInfo]:
        return [
            p for p in space.maskable
            if len(p.shape) == 2 and (p.group != EMBEDDINGS or self.settings.svd_embeddings)
        ]

    def validate(self, space: ParamSpace, k: int) -> None:
        super().validate(space, k)
        if self.settings.rank_strategy == "uniform":
            for p in self.svd_params(space):
                if self.settings.rank > min(p.shape):
                    raise RaysftError(
                        f"deft-x rank {self.settings.rank} is larger than matrix {p.name} {tuple(p.shape)} allows "
                        f"(max {min(p.shape)}): set methods.deft-x.rank <= {min(p.shape)}"
                    )

    def select(self, ctx: SelectionContext) -> Selection:
        if ctx.theta1 is None:
            raise ValueError("deft-x needs the dense phase's weights")
        svd_cache = ctx.cache.setdefault(SVD_CACHE, {})
        svd_names = {p.name for p in self.svd_params(ctx.space)}
        scores, ranks = {}, {}
        for p in ctx.space.maskable:
            delta = ctx.theta1[p.name].float() - ctx.theta0[p.name].float()
            if p.name not in svd_names:
                scores[p.name] = delta.abs_()
                continue
            if p.name not in svd_cache:
                svd_cache[p.name] = singular_basis(delta)
            s, basis, right = svd_cache[p.name]
            r = energy_rank(s, self.settings.energy) if self.settings.rank_strategy == "energy" else self.settings.rank
            ranks[p.name] = r
            v = basis[:, :r]
            # Δ_r = U_r Σ_r V_rᵀ = Δ V_r V_rᵀ (or U_r U_rᵀ Δ for a wide matrix): a projection, no U needed.
            denoised = (delta @ v) @ v.T if right else v @ (v.T @ delta)
            if self.settings.residual_top_p > 0:
                residual = delta - denoised
                keep = int(self.settings.residual_top_p * residual.numel())
                if keep:
                    flat = residual.reshape(-1)
                    idx = flat.abs().topk(keep, sorted=False).indices
                    denoised.view(-1).index_add_(0, idx, flat[idx])
            scores[p.name] = denoised.abs_()
        selection = top_k(ctx, scores, budget=None)
        if ranks:
            selection.info["rank_mean"] = sum(ranks.values()) / len(ranks)
            selection.info["rank_min"] = min(ranks.values())
            selection.info["rank_max"] = max(ranks.values())
        return selection
