"""The SFT methods, one module each, registered in one table (name → class and its settings schema)."""

from __future__ import annotations

from raysft.errors import RaysftError
from raysft.sft.methods.ada_sft import AdaptiveSFT
from raysft.sft.methods.ada_sft_topk import AdaptiveTopKSFT
from raysft.sft.methods.base import Method, MethodSettings, Selection, SelectionContext
from raysft.sft.methods.bitfit import BitFit
from raysft.sft.methods.deft_x import DenoisedSFT
from raysft.sft.methods.full import Full
from raysft.sft.methods.lt_sft import LotteryTicketSFT
from raysft.sft.methods.rand_sft import RandomSFT
from raysft.sft.methods.sc_sft import StructuredSFT

METHODS: dict[str, type[Method]] = {
    m.name: m
    for m in (Full, BitFit, LotteryTicketSFT, StructuredSFT, DenoisedSFT, RandomSFT, AdaptiveSFT, AdaptiveTopKSFT)
}


def method_class(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise RaysftError(f"unknown method '{name}': choose one of {', '.join(METHODS)}") from None


def make_method(name: str, settings: dict | MethodSettings | None = None) -> Method:
    cls = method_class(name)
    if settings is None or isinstance(settings, MethodSettings):
        return cls(settings)
    return cls(cls.Settings.model_validate(settings))


__all__ = ["METHODS", "Method", "MethodSettings", "Selection", "SelectionContext", "make_method", "method_class"]
