"""Where a run's tensors live: one device per run (or per Ray Train worker), chosen once.

The rule: the model, θ0/θ1 snapshots, selection scores, masks, the sparse K-vectors and top-K histograms all live on
the device of the model's parameters; every helper takes the device of its inputs. Host copies are made only where
the data leaves the run (a delta file, a broadcast mask, predictions for the metrics) and say so with a ``host``
comment.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from raysft.errors import RaysftError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None): the first CUDA device when there is one, else the CPU; ``cpu``; ``cuda`` or ``cuda:N``."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RaysftError(
                f"--device {spec}: this torch ({torch.__version__}) sees no CUDA device: use --device cpu (or auto), "
                "or run on a machine with a GPU and a CUDA build of torch"
            )
        try:
            device = torch.device(spec)
        except RuntimeError:
            raise RaysftError(f"--device {spec} is not a device: write cuda or cuda:N") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RaysftError(
                f"--device {spec}: there are only {torch.cuda.device_count()} CUDA device(s): use cuda:0 … "
                f"cuda:{torch.cuda.device_count() - 1}"
            )
        return device
    raise RaysftError(f"--device {spec!r} is not one of auto, cpu, cuda (or cuda:N)")


def onto(tensors: Mapping[str, torch.Tensor], device: str | torch.device) -> dict[str, torch.Tensor]:
    """The one way tensors read from disk (θ1, SVD factors, checkpoints) reach the run's device: each moved there,
    a no-op for those already on it. Weights are the exception: they are copied into the model's parameters
    (``restore``, ``SparseDelta.apply``), which copy across devices, so a model-sized read never doubles on the
    device."""
    return {name: t.to(device) for name, t in tensors.items()}
