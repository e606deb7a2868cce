"""Dropout that keeps a 1-byte mask for backward on the CPU: the same values and gradients, bitwise, in a quarter of
the memory.

On the CPU, torch's dropout draws a float noise tensor (``bernoulli_(1 - p)``, then ``div_(1 - p)``), multiplies the
input by it, and autograd keeps that float tensor for backward: four bytes per element of every dropped-out
activation (attention probabilities and two hidden states per layer in a transformer), a sizeable share of a
training step's activations (bench/memory.py measures a training run's peak memory). Inside
:func:`byte_mask_dropout` the same ops run on the same generator in the same order, so the output is bitwise
torch's, but backward keeps ``noise != 0`` (one byte per element) and rebuilds the noise from it with the same
``div_``: the gradient is bitwise torch's too. (On CUDA torch's fused dropout already keeps a byte mask: nothing
changes there.) Pure torch.

No process-wide state: :func:`byte_mask_dropout` enters a torch-function mode (:class:`ByteMaskDropoutMode`), which
``torch.nn.functional.dropout`` consults through ``handle_torch_function``. torch keeps its stack of such modes per
thread, so only the thread inside the block is affected, ``torch.nn.functional.dropout`` itself is never replaced,
and leaving the block (an exception included) pops the mode again. (A dropout that torch's own Python functions
call from inside another torch function, such as ``F.multi_head_attention_forward``, runs while torch has the mode
popped: it is torch's own dropout, with the same values.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_torch_dropout = F.dropout  # the function torch's handle_torch_function reports for F.dropout (and nn.Dropout)
_active = threading.local()  # .depth: how many ByteMaskDropoutMode this thread is inside


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


def _dropout_args(input, p=0.5, training=True, inplace=False):  # noqa: A002  (torch's signature)
    return input, p, training, inplace


class ByteMaskDropoutMode(TorchFunctionMode):
    """A torch-function mode that routes ``torch.nn.functional.dropout`` on CPU tensors in training to the byte-mask
    dropout (same values and gradients as torch's, bitwise) and every other call, dropout's other cases included,
    to torch's own function. Active only in the thread that entered it, until it leaves.

    torch's autograd engine runs backward without the torch-function modes of the thread that called it: the byte
    mask's own backward needs none, but activations checkpointed in the forward (``torch.utils.checkpoint``,
    non-reentrant) are recomputed there, and must take the byte mask again (same saved tensors as the forward):
    pass :func:`recompute_context` as the checkpoint's ``context_fn``."""

    def __enter__(self):
        _active.depth = getattr(_active, "depth", 0) + 1
        try:
            return super().__enter__()
        except BaseException:
            _active.depth -= 1
            raise

    def __exit__(self, exc_type, exc_val, exc_tb):
        _active.depth -= 1
        return super().__exit__(exc_type, exc_val, exc_tb)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _torch_dropout:
            x, p, training, inplace = _dropout_args(*args, **kwargs)
            if _applies(x, p, training, inplace):
                return _ByteMaskDropout.apply(x, p)
        # torch pops this mode while its handler runs: func goes to torch's own implementation (or to the next
        # mode down the stack), not back here
        return func(*args, **kwargs)


def recompute_context() -> tuple[AbstractContextManager, AbstractContextManager]:
    """A ``context_fn`` for ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False, context_fn=...)`` (HF:
    ``gradient_checkpointing_kwargs={"use_reentrant": False, "context_fn": recompute_context}``): when the
    checkpointed forward runs inside :func:`byte_mask_dropout` (in this thread), its recomputation in backward runs
    inside the mode too, so it draws the same masks (checkpoint restores the generator) through the same byte-mask
    dropout and saves the same tensors; otherwise nothing changes. Without it, a checkpointed forward inside
    :func:`byte_mask_dropout` fails in backward (torch.utils.checkpoint: recomputed values have different metadata)."""
    active = getattr(_active, "depth", 0) > 0
    return nullcontext(), (ByteMaskDropoutMode() if active else nullcontext())


@contextmanager
def byte_mask_dropout() -> Iterator[None]:
    """Within the block, in this thread, ``torch.nn.functional.dropout`` (what ``nn.Dropout`` and transformers'
    attention call) keeps a byte mask for backward on CPU tensors in training; anything else goes to torch's own
    dropout. Other threads and the function object ``torch.nn.functional.dropout`` are untouched. Activations
    checkpointed inside the block need :func:`recompute_context` as their checkpoint's ``context_fn``."""
    with ByteMaskDropoutMode():
        yield
