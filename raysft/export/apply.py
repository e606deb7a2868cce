"""`raysft apply`: a base model and SFTs composed into a plain Hugging Face model folder."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from raysft.errors import RaysftError
from raysft.export.staging import publish
from raysft.tracking import record


def apply_sfts(base: str, sfts: list[Path], out: Path, force: bool = False, device: str = "cpu") -> dict:
    """Base model + SFTs → a Hugging Face folder that AutoModelForSequenceClassification loads. Task SFTs (the ones
    with a head) are applied first, then the others without abs tensors: the order the composed evaluation uses.
    The SFTs are applied on ``device`` (auto, cpu, cuda); the saved weights are the same bytes on any device."""
    import torch

    from raysft.models import load_for_classification, load_tokenizer, model_id
    from raysft.sft.delta import SparseDelta
    from raysft.sft.groups import ParamSpace
    from raysft.tasks import get_task

    if not sfts:
        raise RaysftError("give at least one --sft FILE (the task SFT)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise RaysftError(f"output folder {out} exists and is not empty: choose another --out or pass --force")
    loose = [SparseDelta.load(p) for p in sfts]  # format checks before the model loads
    heads = [i for i, d in enumerate(loose) if d.abs]
    if not heads:
        raise RaysftError(
            "none of the --sft files carries a classification head (abs tensors): include the task SFT "
            f"({record.DELTA_FILE})"
        )
    tasks = {loose[i].meta.get("task") for i in heads} - {None, ""}
    if len(tasks) > 1:
        raise RaysftError(f"the task SFTs are for different tasks ({', '.join(sorted(tasks))}): pass one task SFT")
    task = get_task(tasks.pop()) if tasks else None
    if task is not None:
        num_labels = task.num_labels
    else:  # an imported SFT without a task: the head's output rows
        weights = [t for n, t in loose[heads[0]].abs.items() if n.endswith("weight") and t.dim() == 2]
        num_labels = int(min(weights, key=lambda t: t.shape[0]).shape[0]) if weights else 2

    def frozen_embeddings(d) -> bool:
        try:
            return bool(json.loads(d.meta.get("config") or "{}").get("sft", {}).get("freeze_embeddings"))
        except ValueError:
            return False

    from raysft.train.device import resolve_device

    model = load_for_classification(base, num_labels).to(resolve_device(device))
    space = ParamSpace(model, freeze_embeddings=any(frozen_embeddings(d) for d in loose))
    deltas = [SparseDelta.load(p, space) for p in sfts]  # refuses a delta made for another base, by name
    order = heads + [i for i in range(len(deltas)) if i not in heads]
    with torch.no_grad():
        for i in order:
            deltas[i].apply(space, with_abs=i in heads)  # kept applied: these are the weights to save
    if task is not None:
        model.config.id2label = dict(enumerate(task.labels))
        model.config.label2id = {lab: i for i, lab in enumerate(task.labels)}
    tokenizer = load_tokenizer(base)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    info = {
        "base_model": model_id(base), "sfts": [str(Path(sfts[i]).resolve()) for i in order],
        "kinds": [deltas[i].meta.get("kind", "?") for i in order], "num_labels": num_labels,
        "task": task.name if task else None,
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
