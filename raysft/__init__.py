"""raysft: sweeps of composable sparse fine-tunings (SFTs) of multilingual encoders.

Use an SFT in your own code (:mod:`raysft.api`):

- ``raysft.load_sft(path_or_hub_id)``: an :class:`~raysft.api.SFT` from a delta file, a folder laid out as its hub
  repo (what ``raysft export`` writes) or ``hub:<owner>/<repo>`` (composable-sft's repos too);
- ``sft.apply(model)``: add it to a Hugging Face model of its base in place; the handle reverts it bitwise
  (``revert()``, or ``with sft.apply(model): …``);
- ``raysft.compose(model, task_sft, lang_sft, …)``: several in one call, the task SFT with its head first.

``import raysft`` stays light: the API (and torch) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raysft.errors import RaysftError

__version__ = "0.1.0"
__all__ = ["SFT", "AppliedDelta", "RaysftError", "compose", "load_sft", "__version__"]

if TYPE_CHECKING:
    from raysft.api import SFT, AppliedDelta, compose, load_sft

_API = {"SFT", "AppliedDelta", "compose", "load_sft"}


def __getattr__(name: str):
    if name in _API:
        from raysft import api

        value = getattr(api, name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'raysft' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _API)
