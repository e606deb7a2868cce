"""Which parameters an SFT may touch, and which layer group each belongs to.

Names of maskable parameters are relative to the base model (``model.base_model``), e.g.
``encoder.layer.3.attention.self.query.weight``, so that one delta applies to the same encoder under any head
(sequence classification, masked LM). Head parameters keep their full names (e.g. ``classifier.weight``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch import nn

from raysft.errors import RaysftError

EMBEDDINGS = "embeddings"
HEAD = "head"
_LAYER = re.compile(r"^(?:encoder\.)?layers?\.(\d+)\.")


@dataclass(frozen=True)
class ParamInfo:
    name: str  # relative to the base model
    shape: tuple[int, ...]
    dtype: torch.dtype
    group: str

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def component(self) -> str:
        """attention / feed_forward / embeddings / other: the split the SFT papers' layer plots use."""
        if self.group == EMBEDDINGS:
            return "embeddings"
        if ".attention." in self.name:
            return "attention"
        if ".intermediate." in self.name or ".output." in self.name:
            return "feed_forward"
        return "other"


def group_of(name: str) -> str:
    """Map a base-relative parameter name of the BERT/RoBERTa/XLM-R family to its group."""
    if name.startswith("embeddings."):
        return EMBEDDINGS
    m = _LAYER.match(name)
    if m:
        return f"layer.{int(m.group(1))}"
    if name.startswith("pooler."):
        # A pooler feeds only the classification head (e5 ships none, so it is freshly initialised): train it with the head.
        return HEAD
    raise KeyError(name)


def group_sort_key(group: str) -> tuple[int, int]:
    if group == EMBEDDINGS:
        return (0, 0)
    if group.startswith("layer."):
        return (1, int(group.split(".")[1]))
    return (2, 0)


def _layer_norm_param_ids(model: nn.Module) -> tuple[set[int], set[int]]:
    """(ids of every LayerNorm parameter, ids of the LayerNorm biases among them)."""
    ids, biases = set(), set()
    for module in model.modules():
        if isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("LayerNorm"):
            for name, p in module.named_parameters(recurse=False):
                ids.add(id(p))
                if name == "bias":
                    biases.add(id(p))
    return ids, biases


class ParamSpace:
    """The maskable parameters of a model (in model order), the dense head and the frozen rest.

    LayerNorm weights and biases are frozen, as the LT-SFT paper does; ``layer_norm_bias`` makes the base model's
    LayerNorm biases maskable too (BitFit trains them), LayerNorm weights stay frozen. Word/position/type embeddings
    are maskable unless ``freeze_embeddings``. ``freeze`` names further parameters (full names) to keep frozen, e.g.
    an MLM decoder untied from the word embeddings.

    The fingerprint (and the ``base_params`` a delta records) covers the standard maskable set only (``base``), so a
    delta made on a space with LayerNorm biases still composes with every other delta of the same base; and any
    delta may name the base model's LayerNorm biases (``appliable``), so a BitFit delta applies to any space.
    """

    def __init__(
        self,
        model: nn.Module,
        freeze_embeddings: bool = False,
        freeze: Collection[str] = (),
        layer_norm_bias: bool = False,
    ):
        self.model = model
        base = getattr(model, "base_model", model)
        self.prefix = getattr(model, "base_model_prefix", "") if base is not model else ""
        layer_norm, ln_biases = _layer_norm_param_ids(model)
        linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
        base_ids = {id(p) for p in base.parameters()}
        self.maskable: list[ParamInfo] = []
        self.base: list[ParamInfo] = []  # the standard maskable set (no LayerNorm biases): what fingerprints the base
        self.head: list[str] = []  # full names, trained densely, saved as abs
        self.frozen: list[str] = []  # full names
        self.layer_norm_biases: list[str] = []  # base-relative names of the base model's LayerNorm biases
        self._by_name: dict[str, nn.Parameter] = {}
        unknown = []
        freeze = set(freeze)
        for full_name, p in model.named_parameters():
            if id(p) in ln_biases and id(p) in base_ids and full_name not in freeze:
                name = self.strip_prefix(full_name)
                try:
                    group = group_of(name)
                except KeyError:
                    group = None
                if group not in (None, HEAD):
                    self.layer_norm_biases.append(name)
                    self._by_name[name] = p
                    if layer_norm_bias and not (group == EMBEDDINGS and freeze_embeddings):
                        self.maskable.append(ParamInfo(name, tuple(p.shape), p.dtype, group))
                        continue
            if id(p) in layer_norm or full_name in freeze:
                self.frozen.append(full_name)
                continue
            if id(p) not in base_ids:
                self.head.append(full_name)
                self._by_name[full_name] = p
                continue
            name = self.strip_prefix(full_name)
            try:
                group = group_of(name)
            except KeyError:
                unknown.append(name)
                continue
            if group == HEAD:
                self.head.append(full_name)
                self._by_name[full_name] = p
            elif group == EMBEDDINGS and freeze_embeddings:
                self.frozen.append(full_name)
            else:
                info = ParamInfo(name, tuple(p.shape), p.dtype, group)
                self.maskable.append(info)
                self.base.append(info)
                self._by_name[name] = p
        if unknown:
            raise RaysftError(
                f"parameters with no layer group: {', '.join(unknown[:5])}{' …' if len(unknown) > 5 else ''}; "
                "raysft knows the BERT/RoBERTa/XLM-R layout (embeddings.*, encoder.layer.<i>.*): use a model of that family"
            )
        # base-relative names of the maskable weight matrices of nn.Linear layers (Ada-SFT's soft mask covers these)
        self.linear_weights: list[str] = [p.name for p in self.maskable if id(self._by_name[p.name]) in linear]
        self.groups: list[str] = sorted({p.group for p in self.maskable}, key=group_sort_key)
        self.n = sum(p.numel for p in self.maskable)
        # every parameter of the model, frozen ones too (composable-sft's L1 divides by this count)
        self.n_params = sum(p.numel() for p in model.parameters())

    @property
    def appliable(self) -> set[str]:
        """Base-relative names a delta may add to: the maskable parameters and the base's LayerNorm biases."""
        return {p.name for p in self.maskable} | set(self.layer_norm_biases)

    def strip_prefix(self, full_name: str) -> str:
        if self.prefix and full_name.startswith(self.prefix + "."):
            return full_name[len(self.prefix) + 1 :]
        return full_name

    def param(self, name: str) -> nn.Parameter:
        """A maskable parameter by base-relative name, or a head parameter by full name."""
        return self._by_name[name]

    def info(self, name: str) -> ParamInfo:
        for p in self.maskable:
            if p.name == name:
                return p
        raise KeyError(name)

    def group_sizes(self) -> dict[str, int]:
        sizes = {g: 0 for g in self.groups}
        for p in self.maskable:
            sizes[p.group] += p.numel
        return sizes

    def fingerprint(self) -> str:
        """sha256 of the sorted (name, shape, dtype) list of the maskable parameters (design §5)."""
        items = sorted((p.name, list(p.shape), str(p.dtype).replace("torch.", "")) for p in self.base)
        return hashlib.sha256(repr(items).encode()).hexdigest()

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A detached copy of the maskable parameters (θ0 or θ1)."""
        return {p.name: self._by_name[p.name].detach().clone() for p in self.maskable}

    def head_snapshot(self) -> dict[str, torch.Tensor]:
        return {n: self._by_name[n].detach().clone() for n in self.head}
