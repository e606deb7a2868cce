"""`raysft apply`: a base model and SFTs composed into a plain Hugging Face model folder."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from raysft.errors import RaysftError
from raysft.export.staging import publish
from raysft.tracking import record


def apply_sfts(base: str, sfts: list[str | Path], out: Path, force: bool = False, device: str = "cpu") -> dict:
    """Base model + SFTs → a Hugging Face folder that AutoModelForSequenceClassification loads, composed by
    :func:`raysft.api.compose` (the same code a user's own program runs): task SFTs (the ones with a head) first,
    then the others without their heads, the order the composed evaluation uses. Each SFT is anything
    :func:`raysft.load_sft` reads (a file, a folder laid out as its hub repo, ``hub:<owner>/<repo>``). The SFTs are
    applied on ``device`` (auto, cpu, cuda); the saved weights are the same bytes on any device."""
    from raysft.api import compose, composition_order, load_sft
    from raysft.models import load_for_classification, load_tokenizer, model_id
    from raysft.train.device import resolve_device

    if not sfts:
        raise RaysftError("give at least one --sft FILE (the task SFT)")
    where = resolve_device(device)  # a device this machine cannot give is refused before anything loads
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise RaysftError(f"output folder {out} exists and is not empty: choose another --out or pass --force")
    loaded = [load_sft(s) for s in sfts]  # format checks before the model loads
    order = composition_order(loaded)
    task_sfts = [s for s, head in order if head]
    if not task_sfts:
        raise RaysftError(
            "none of the --sft files carries a classification head (abs tensors): include the task SFT "
            f"({record.DELTA_FILE})"
        )
    num_labels = task_sfts[0].num_labels or 2
    labels = task_sfts[0].labels
    model = load_for_classification(base, num_labels).to(where)
    compose(model, *loaded)  # kept applied: these are the weights to save; refuses an SFT of another base, by name
    if labels:
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {lab: i for i, lab in enumerate(labels)}
    tokenizer = load_tokenizer(base)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    info = {
        "base_model": model_id(base), "sfts": [_named(s) for s, _ in order],
        "kinds": [s.kind or "?" for s, _ in order], "num_labels": num_labels,
        "task": task_sfts[0].task,
    }
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "raysft_apply.json").write_text(json.dumps(info, indent=2))
        publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return info


def _named(sft) -> str:
    """How raysft_apply.json names an SFT: its hub source as given, else its file's absolute path."""
    return sft.source if str(sft.source).startswith("hub:") else str(Path(sft.path).resolve())
