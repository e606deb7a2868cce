"""Where an SFT comes from: a delta file, a folder laid out as a hub model repo, or ``hub:<owner>/<repo>``.

One lookup for every reader of SFTs: :func:`raysft.load_sft`, ``raysft apply --sft``, ``raysft eval --task-sft`` and
a space's ``lang_sfts: hub:<repo with {lang}>``. A source is

- a file: a raysft delta (``.safetensors``, :mod:`raysft.sft.delta`) or composable-sft's ``pytorch_diff.bin``;
- a folder laid out as an SFT's hub model repo: the one raysft delta at its top level (``raysft export`` writes
  ``task_sft.safetensors`` beside its README.md model card and config.yaml; a language SFT's repo holds its
  ``<lang>.safetensors``), else composable-sft's ``pytorch_diff.bin`` (its repos' layout); subfolders are not read
  (an export's ``lang_sfts/`` copies stay out of it);
- ``hub:<owner>/<repo>``: that repo's snapshot in the Hugging Face cache (``$HF_HOME/hub``, ``$HF_HUB_CACHE``), read
  as a folder; downloaded with ``huggingface_hub`` when the cache lacks it (its top-level delta files only), never
  with ``HF_HUB_OFFLINE=1``. ``hub:`` followed by a local folder (absolute, or starting with ``.`` or ``~``) reads
  that folder: a mirror laid out like the hub repos.
"""

from __future__ import annotations

import os
from pathlib import Path

from raysft.errors import RaysftError

HUB = "hub:"
COMPOSABLE_FILE = "pytorch_diff.bin"  # composable-sft's file name in its hub repos
# What a snapshot of an SFT repo needs: the delta files at its top level (fnmatch patterns, as huggingface_hub's).
SNAPSHOT_PATTERNS = ["*.safetensors", COMPOSABLE_FILE]
SNAPSHOT_IGNORE = ["*/*"]
WHAT = "a raysft delta (.safetensors), a folder laid out as its hub repo, or hub:<owner>/<repo>"


def is_local(repo: str) -> bool:
    """Whether the part after ``hub:`` names a local folder (a mirror laid out like the hub repos), not a repo id."""
    return Path(repo).expanduser().is_absolute() or repo.startswith((".", "~"))


def find_sft_file(source: str | os.PathLike) -> Path | None:
    """The SFT file ``source`` names (see the module's doc). None when a ``hub:`` source does not exist (no such
    repo, or a repo or mirror folder holding no SFT); a hub the machine cannot reach, a path that does not exist or
    a folder holding no SFT raise RaysftError."""
    text = os.fspath(source)
    if isinstance(text, str) and text.startswith(HUB):
        repo = text[len(HUB):].strip()
        if not repo:
            raise RaysftError(f"'{text}' names no repo: write hub:<owner>/<repo>")
        folder = Path(repo).expanduser() if is_local(repo) else hub_snapshot(repo)
        if folder is None or not folder.is_dir():
            return None
        return sft_in_folder(folder)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        found = sft_in_folder(path)
        if found is None:
            raise RaysftError(
                f"folder {path} holds no SFT (no raysft delta .safetensors and no {COMPOSABLE_FILE} at its top level): "
                f"give {WHAT}"
            )
        return found
    hint = f" (for a hub repo write hub:{text})" if _looks_like_repo(text) else ""
    raise RaysftError(f"SFT '{text}' does not exist{hint}: give {WHAT}")


def sft_file(source: str | os.PathLike) -> Path:
    """:func:`find_sft_file`, with a hub source that does not exist refused in one line."""
    found = find_sft_file(source)
    if found is None:
        raise RaysftError(
            f"{os.fspath(source)} holds no SFT (no such repo, or no raysft delta .safetensors and no {COMPOSABLE_FILE} "
            "at its top level): check the repo id, or fetch it where the hub is reachable (with the same HF_HOME)"
        )
    return found


def sft_in_folder(folder: Path) -> Path | None:
    """A folder laid out as an SFT's hub repo: its raysft delta (the one top-level .safetensors file whose header
    says it is one), else composable-sft's ``pytorch_diff.bin``; None when it holds neither. Several deltas are
    refused: the caller must say which."""
    from raysft.sft.delta import delta_format

    deltas = [p for p in sorted(folder.glob("*.safetensors")) if p.is_file() and delta_format(p) is not None]
    if len(deltas) > 1:
        names = ", ".join(p.name for p in deltas)
        raise RaysftError(f"folder {folder} holds {len(deltas)} raysft deltas ({names}): give the file itself")
    if deltas:
        return deltas[0]
    diff = folder / COMPOSABLE_FILE
    return diff if diff.is_file() else None


def hub_snapshot(repo: str) -> Path | None:
    """The snapshot of the hub model repo ``repo`` with its top-level delta files: from the Hugging Face cache, else
    downloaded. None when the hub has no such repo; unreachable (offline, ``HF_HUB_OFFLINE=1``) and not cached: one
    line naming the fix."""
    from huggingface_hub import snapshot_download  # imported where it is used (a heavy import)
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError

    kwargs = {"allow_patterns": SNAPSHOT_PATTERNS, "ignore_patterns": SNAPSHOT_IGNORE}
    try:
        return Path(snapshot_download(repo, local_files_only=True, **kwargs))
    except HFValidationError:
        raise RaysftError(f"'{repo}' is not a hub repo id: write hub:<owner>/<repo>, or give a local path") from None
    except Exception:  # not in the cache (LocalEntryNotFoundError), or an incomplete snapshot: ask the hub
        pass
    try:
        return Path(snapshot_download(repo, **kwargs))
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return None
    except Exception as e:  # offline, HF_HUB_OFFLINE=1, the hub unreachable, gated
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise RaysftError(
            f"cannot get the SFT repo {repo} from the Hugging Face hub ({first}): go online, or download it where the "
            "hub is reachable (huggingface-cli download, with the same HF_HOME)"
        ) from None


def load_delta(path: Path, space, *, check_abs: bool = True):
    """The SparseDelta in an SFT file, checked against ``space`` (its base model's fingerprint, names and shapes):
    a raysft delta as saved, or composable-sft's ``pytorch_diff.bin`` imported (tensors only)."""
    from raysft.sft.delta import SparseDelta, import_composable_sft

    if is_composable(path):
        return import_composable_sft(path, space)
    return SparseDelta.load(path, space, check_abs=check_abs)


def is_composable(path: Path) -> bool:
    """Whether an SFT file is composable-sft's (a torch.save file such as its ``pytorch_diff.bin``): every file not
    named ``*.safetensors``; a raysft delta is always a ``.safetensors`` file."""
    return Path(path).suffix != ".safetensors"


def _looks_like_repo(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))
