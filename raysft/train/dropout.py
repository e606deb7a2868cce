"""Dropout that keeps a 1-byte mask for backward on the CPU: the same values and gradients, bitwise, in a quarter of
the memory.

On the CPU, torch's dropout draws a float noise tensor (``bernoulli_(1 - p)``, then ``div_(1 - p)``), multiplies the
input by it, and autograd keeps that float tensor for backward. At batch 16 × 128 on multilingual-e5-small that is
~0.23 GB of a training step's activations (attention probabilities and two hidden states per layer). Inside
:func:`byte_mask_dropout` the same ops run on the same generator in the same order, so the output is bitwise
torch's, but backward keeps ``noise != 0`` (one byte per element) and rebuilds the noise from it with the same
``div_``: the gradient is bitwise torch's too. (On CUDA torch's fused dropout already keeps a byte mask: nothing
changes there.) Pure torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F


class _ByteMaskDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        noise = torch.empty_like(x).bernoulli_(1 - p)  # torch's own CPU dropout: the same draws, in the same order
        noise.div_(1 - p)
        ctx.p, ctx.dtype = p, noise.dtype
        ctx.save_for_backward(noise != 0)
        return x * noise

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (kept,) = ctx.saved_tensors
        noise = kept.to(ctx.dtype)  # 1.0 / 0.0, as bernoulli_ drew them, then scaled exactly as in forward
        noise.div_(1 - ctx.p)
        return grad * noise, None


def _applies(x, p: float, training: bool, inplace: bool) -> bool:
    on_host = x.device.type == "cpu"  # host: the float noise is torch's CPU dropout's; CUDA keeps a byte mask already
    return (training and not inplace and 0.0 < p < 1.0 and type(x) is torch.Tensor and on_host
            and x.is_floating_point() and x.numel() > 0)


@contextmanager
def byte_mask_dropout() -> Iterator[None]:
    """Within the block, ``torch.nn.functional.dropout`` (what ``nn.Dropout`` and transformers' attention call) keeps
    a byte mask for backward on CPU tensors in training; anything else goes to torch's own dropout."""
    original = F.dropout

    def dropout(input, p=0.5, training=True, inplace=False):  # noqa: A002  (torch's signature)
        if _applies(input, p, training, inplace):
            return _ByteMaskDropout.apply(input, p)
        return original(input, p, training, inplace)

    F.dropout = dropout
    try:
        yield
    finally:
        F.dropout = original
