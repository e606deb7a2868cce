"""Fake CUDA tensors with real values, for device checks on a machine without a GPU (tests only).

torch's ``FakeTensorMode`` makes fake CUDA tensors on a CPU build and raises ``FakeTensorDeviceMismatchError`` when
an op mixes devices, but a fake tensor has no values: every data-dependent op (``nonzero``, ``.item()``, a top-K
threshold read back as a float) raises, and a selection is made of such ops. :func:`fake_cuda` keeps the values:
inside it, tensors created on ``cuda:0`` (or moved there) are :class:`FakeCuda` tensors, CPU tensors that report
``device == cuda:0``. A torch-function mode sees every torch call at the Python API (before torch's C++ device
guards, which need a CUDA build), makes the check CUDA makes — all tensor arguments on one device, except 0-dim CPU
tensors (scalars), CPU index tensors, copies and moves — and runs the call on the CPU values. An op that mixes a
fake CUDA tensor with a CPU tensor raises :class:`DeviceMismatch`, where a GPU run would fail.

What it cannot run: autograd's backward and an ``nn.Module`` forward on fake CUDA parameters (torch's C++ device
guards), so the tests drive the tensor code (selection, delta apply/revert, the sparse update, disk → device), not
training steps; ``bench/gpu_check.sh`` runs those on a real GPU.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

CUDA = torch.device("cuda", 0)
_DESCRIPTORS = (type(torch.Tensor.device), property)  # attribute getters and setters
_IN_PLACE_DUNDERS = {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__",
                     "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__"}
# Called on the tensor itself (autograd metadata), not on its values.
_ON_WRAPPER = {"requires_grad_", "register_hook", "register_post_accumulate_grad_hook", "retain_grad",
               "__repr__", "__format__", "__str__", "__hash__", "__len__", "__iter__", "dim", "size", "numel",
               "element_size", "is_floating_point", "stride", "is_contiguous", "__bool__", "__float__", "__int__",
               "__index__", "item", "tolist"}


class DeviceMismatch(RuntimeError):
    """An op mixed a (fake) CUDA tensor with a CPU tensor: a GPU run fails here."""


class FakeCuda(torch.Tensor):
    """A CPU tensor (``elem``) that says it lives on ``cuda:0``."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(
            cls, elem.shape, strides=elem.stride(), storage_offset=elem.storage_offset(), dtype=elem.dtype,
            layout=elem.layout, device=CUDA, requires_grad=elem.requires_grad,
        )

    def __init__(self, elem: torch.Tensor):
        self.elem = elem

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        # What torch runs below the Python API on these tensors (e.g. a Parameter made of one): the CPU values.
        out = func(*tree_map(host, args), **tree_map(host, kwargs or {}))
        return tree_map(lambda x: FakeCuda(x) if isinstance(x, torch.Tensor) else x, out)


def host(t):
    """The values of a (fake CUDA or CPU) tensor as a plain CPU tensor; anything else as it is."""
    return t.elem if isinstance(t, FakeCuda) else t


def _device_of(x) -> str | None:
    if isinstance(x, FakeCuda):
        return "cuda"
    if isinstance(x, torch.Tensor) and x.dim() > 0:  # a 0-dim CPU tensor is a scalar, allowed with CUDA ones
        return x.device.type
    return None


def _target(func_name: str, args, kwargs) -> torch.device | None:
    """The device a move or a factory asks for, if any."""
    if kwargs.get("device") is not None:
        return torch.device(kwargs["device"])
    if func_name == "cuda":
        return CUDA
    if func_name == "cpu":
        return torch.device("cpu")
    if func_name == "to":
        for a in args[1:]:
            if isinstance(a, (torch.device, str)):
                return torch.device(a)
            if isinstance(a, torch.Tensor):
                return a.device
    return None


class FakeCudaMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if isinstance(getattr(func, "__self__", None), _DESCRIPTORS) or name in _ON_WRAPPER:
            with torch._C.DisableTorchFunction():  # .device, .shape, .grad, hooks: the tensor itself
                if name in ("__float__", "__int__", "__bool__", "__index__", "item", "tolist", "__repr__", "__format__",
                            "__str__"):
                    return func(*tree_map(host, args), **kwargs)  # values read back (a sync on a GPU)
                return func(*args, **kwargs)
        if name == "numpy" and args and isinstance(args[0], FakeCuda):
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                            "to host memory first.")
        checked = args[:1] if name == "__getitem__" else (args[0], args[2]) if name == "__setitem__" else (args, kwargs)
        devices = {d for d in map(_device_of, tree_flatten(checked)[0]) if d is not None}
        if len(devices) > 1 and name not in ("copy_", "to", "__getitem__"):
            raise DeviceMismatch(
                f"Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu! "
                f"({name})")
        target = _target(name, args, kwargs)
        plain_args, plain_kwargs = tree_map(host, args), tree_map(host, kwargs)
        if kwargs.get("device") is not None:
            plain_kwargs["device"] = torch.device("cpu")
        if name == "to":  # the dtype part of a move only
            plain_args = [a for a in plain_args if not isinstance(a, (torch.device, str))]
            if len(plain_args) > 1 and isinstance(plain_args[1], torch.Tensor):
                plain_args[1] = plain_args[1].dtype
        if name in ("cuda", "cpu"):
            return FakeCuda(plain_args[0]) if target == CUDA else plain_args[0]
        out = func(*plain_args, **plain_kwargs)
        if ((name.endswith("_") and not name.startswith("__")) or name in _IN_PLACE_DUNDERS) and args and isinstance(
                args[0], torch.Tensor):
            return args[0]  # in place: the values of the tensor itself were written
        if name == "__setitem__":
            return out
        on_cuda = target.type == "cuda" if target is not None else "cuda" in devices
        if not on_cuda:
            return out
        return tree_map(lambda x: FakeCuda(x) if isinstance(x, torch.Tensor) and not isinstance(x, FakeCuda) else x,
                        out)


@contextmanager
def fake_cuda(monkeypatch):
    """Inside: ``torch.empty(..., device=cuda:0)``, ``t.to(cuda:0)`` and the ops on them run as described above.
    (torch's lazy CUDA initialisation, which a CPU build refuses, is skipped for the block.)"""
    monkeypatch.setattr(torch.cuda, "_lazy_init", lambda: None)
    with FakeCudaMode():
        yield CUDA


def to_fake_cuda(model: torch.nn.Module) -> None:
    """Every parameter of ``model`` (in place) as a fake CUDA parameter holding its values."""
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                fake = FakeCuda(p.detach().clone())
                with torch._C.DisableTorchFunction():
                    module._parameters[name] = torch.nn.Parameter(fake, requires_grad=p.requires_grad)
