"""Where ``datasets`` keeps raysft's Arrow files (its own module: the task definitions and the hub loader both need
it, and neither imports the other for it)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where ``datasets`` keeps its Arrow files for raysft: ``$RAYSFT_CACHE/datasets`` (default ~/.cache/raysft)."""
    root = Path(os.environ.get("RAYSFT_CACHE") or Path.home() / ".cache" / "raysft").expanduser()
    path = root / "datasets"
    path.mkdir(parents=True, exist_ok=True)
    return path
