"""Writing an output folder whole or not at all: the files go into a staging folder beside it, which then replaces
it (`raysft export`, `raysft apply`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from raysft.errors import RaysftError


def check_target(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise RaysftError(f"export target {out} exists and is not empty: choose another --out or pass --force")


def publish(staging: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(staging, out)
