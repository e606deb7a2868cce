"""The dense phase trains only the word-embedding rows its data can touch: the same θ1, bitwise, at a fraction of
the memory.

The word-embedding matrix holds most of a multilingual encoder's entries (82 % of multilingual-e5-small's: 250k
rows × 384), but a task's training set uses a few thousand distinct tokens (a small fraction of the rows:
bench/embedding_rows.py prints it). A row no batch contains gets a zero gradient at every step; with no weight
decay, AdamW leaves it, and its zero moments, exactly as they were. So the dense phase can train a table of just
the touched rows (plus the padding row, which the original embedding excludes from the gradient) and write them
back at the end. Every kept row sees the same values and the same arithmetic as in the full matrix: the forward is
an exact gather, the embedding backward sums each row's contributions in token order either way, and AdamW's
update is element-wise. What goes away is the full matrix's gradient, its two AdamW moments and the step's
temporary (four times the matrix's size), and the time AdamW spends sweeping them (bench/embedding_rows.py and
bench/memory.py measure both).

The sparse phase uses the same fact another way (:func:`row_gradients`): the weight stays in the model, and only
the gradient is built for the data's rows, from which the updater gathers its masked entries.

Pure torch. Not for MLM (the data collator substitutes random vocabulary ids, and an MLM decoder tied to the
embedding reaches every row) nor with weight decay (it moves untouched rows too): :func:`row_subset_for` says
when it applies.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from raysft.sft.groups import ParamSpace
from raysft.train.spill import SpilledParams


class RowSubsetEmbedding(nn.Module):
    """Stands in for an ``nn.Embedding`` during the dense phase: ``table`` holds the rows ``rows`` (sorted ids) of
    the original weight; ids are looked up through ``remap`` (-1: not a kept row, an error)."""

    def __init__(self, original: nn.Embedding, rows: torch.Tensor):
        super().__init__()
        weight = original.weight
        self.rows = rows.to(weight.device)
        self.remap = torch.full((weight.shape[0],), -1, dtype=torch.long, device=weight.device)
        self.remap[self.rows] = torch.arange(len(self.rows), device=weight.device)
        pad = original.padding_idx
        self.padding_idx = int(self.remap[pad]) if pad is not None and int(self.remap[pad]) >= 0 else None
        self.table = nn.Parameter(weight.detach().index_select(0, self.rows), requires_grad=True)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        local = self.remap[input_ids]
        if bool((local < 0).any()):  # host: one flag per batch, so a stray id fails loudly instead of reading row -1
            missing = input_ids[local < 0].unique()[:5].tolist()
            raise RuntimeError(f"token ids {missing} are not among the dense phase's kept embedding rows")
        return F.embedding(local, self.table, self.padding_idx)


def data_rows(datasets: Iterable, column: str = "input_ids", extra: Iterable[int | None] = ()) -> torch.Tensor:
    """The sorted distinct token ids of tokenized datasets (a ``datasets.Dataset``, or a list of id lists), with
    ``extra`` ids (the padding id, which the collator adds). A Dataset's column is read as Arrow (its selection or
    shuffle respected) and reduced there: no Python object per token, which at MultiNLI's 393k pairs would be
    gigabytes on every rank."""
    import numpy as np
    import pyarrow.compute as pc

    parts = [np.asarray([int(i) for i in extra if i is not None], dtype=np.int64)]
    for ds in datasets:
        if hasattr(ds, "with_format"):
            ids = pc.unique(pc.list_flatten(ds.with_format("arrow")[column]))
            parts.append(ids.to_numpy(zero_copy_only=False).astype(np.int64, copy=False))
        else:
            parts.append(np.fromiter((i for row in ds for i in row), dtype=np.int64))
    rows = np.unique(np.concatenate(parts))  # sorted
    return torch.from_numpy(rows)  # host: ids read from the data; moved to the model's device


def row_subset_for(model: nn.Module, weight_decay: float) -> nn.Embedding | None:
    """The input embedding the dense phase may train by rows, or None where that would change θ1: weight decay
    (it moves untouched rows too), an embedding tied to another module (an MLM decoder reaches every row), or an
    embedding with ``max_norm``/``scale_grad_by_freq``/``sparse`` (other arithmetic)."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if get else None
    if not isinstance(emb, nn.Embedding) or weight_decay != 0:
        return None
    if emb.max_norm is not None or emb.scale_grad_by_freq or emb.sparse:
        return None
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and getattr(out, "weight", None) is emb.weight:
        return None
    if sum(1 for p in model.parameters() if p is emb.weight) != 1:
        return None
    return emb


@contextmanager
def row_subset_embeddings(
    model: nn.Module,
    rows: torch.Tensor | None,
    weight_decay: float,
    base: Mapping[str, torch.Tensor] | None = None,
    space: ParamSpace | None = None,
) -> Iterator[RowSubsetEmbedding | None]:
    """Within the block the model's input embedding is a :class:`RowSubsetEmbedding` of ``rows`` (the
    original weight frozen, out of the model); on leaving, the trained rows are copied back into the original weight
    and the original module returns. Yields None (and changes nothing) where rows don't apply.

    With ``base`` (what the phase starts from, by ``space`` name: a run's spilled θ0 or base) the original weight's
    memory is released during the phase (nothing reads it: the table holds every row the phase uses) and read back
    from ``base`` at the end, bitwise, before the rows go in: the matrix's size less at the phase's peak
    (bench/memory.py)."""
    emb = row_subset_for(model, weight_decay) if rows is not None else None
    if emb is None:
        yield None
        return
    if emb.padding_idx is not None:  # batches are padded with it: a kept row (outside the gradient, as before)
        device = emb.weight.device
        rows = torch.unique(torch.cat([rows.to(device), torch.tensor([emb.padding_idx], device=device)]))
    sub = RowSubsetEmbedding(emb, rows)
    requires_grad = emb.weight.requires_grad
    emb.weight.requires_grad_(False)
    reload = _reload(emb.weight, base, space)
    if reload is not None:
        emb.weight.data = emb.weight.data.new_empty(0)
    model.set_input_embeddings(sub)
    try:
        yield sub
    finally:
        with torch.no_grad():
            if reload is not None:
                emb.weight.data = reload()
            emb.weight.index_copy_(0, sub.rows, sub.table.detach())
        model.set_input_embeddings(emb)
        emb.weight.requires_grad_(requires_grad)


def _reload(weight: nn.Parameter, base: Mapping[str, torch.Tensor] | None, space: ParamSpace | None):
    """A function giving back ``weight`` as it is now, read from ``base`` (which the caller guarantees is what the
    phase starts from); None when base has no entry for it."""
    if base is None or space is None:
        return None
    name = next((p.name for p in space.maskable if space.param(p.name) is weight), None)
    if name is None or name not in base:
        return None
    if isinstance(base, SpilledParams):  # each read is a fresh tensor from disk
        return lambda: base[name].to(weight.device)
    return lambda: base[name].clone()  # a snapshot in memory: the phase must not write into it


# ------------------------------------------------------------------------------------------------- sparse phase
class _RowGradientLookup(torch.autograd.Function):
    """The embedding lookup with the full weight (an exact forward: every id, kept row or not, reads its own row),
    whose backward builds the gradient of the kept rows only, into ``holder`` (len(rows) × dim), with the same kernel
    and arguments the full lookup's backward uses: each kept row sums its tokens' contributions in token order, as in
    the full matrix."""

    @staticmethod
    def forward(ctx, holder, input_ids, weight, remap, padding_idx, local_padding_idx):
        local = remap[input_ids]
        if bool((local < 0).any()):  # host: one flag per batch, so a stray id fails loudly instead of losing its gradient
            missing = input_ids[local < 0].unique()[:5].tolist()
            raise RuntimeError(f"token ids {missing} are not among the sparse phase's embedding rows")
        ctx.save_for_backward(local)
        ctx.rows, ctx.local_padding_idx = holder.shape[0], local_padding_idx
        return F.embedding(input_ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad_output):
        (local,) = ctx.saved_tensors
        grad = torch.ops.aten.embedding_dense_backward(grad_output, local, ctx.rows, ctx.local_padding_idx, False)
        return grad, None, None, None, None, None


class RowGradients:
    """During the sparse phase the input embedding's gradient is built for the data's rows only, into ``holder``
    (a leaf tensor of len(rows) × dim, outside the model), instead of as the full matrix: that is a zero-fill of the
    whole matrix and a gather over it at every step, for the few thousand rows a batch can touch (bench/sparse_step.py
    --sparse both steps both ways). The weight itself stays where it is (updates are written into it) and every
    lookup without a gradient (evaluation) is the module's own. A masked entry in a row the data never contains gets
    a zero gradient at every step either way, so its δ stays exactly 0 (AdamW and its decay or an L1 term keep a
    zero δ with zero moments at zero)."""

    def __init__(self, emb: nn.Embedding, rows: torch.Tensor):
        self.embedding, self.weight = emb, emb.weight
        device = emb.weight.device
        pad = emb.padding_idx
        if pad is not None:  # batches are padded with it: a kept row (outside the gradient, as in the full lookup)
            rows = torch.unique(torch.cat([rows.to(device), torch.tensor([pad], device=device)]))
        self.rows = rows.to(device)
        self.remap = torch.full((emb.weight.shape[0],), -1, dtype=torch.long, device=device)
        self.remap[self.rows] = torch.arange(len(self.rows), device=device)
        self.local_padding_idx = int(self.remap[pad]) if pad is not None else -1  # aten's "no padding row"
        self.holder = torch.zeros(len(self.rows), emb.weight.shape[1], dtype=emb.weight.dtype, device=device)

    def local_indices(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat indices ``idx`` into the weight → (their positions in ``idx`` whose row is kept, the same entries'
        flat indices into ``holder``)."""
        cols = self.weight.shape[1]
        local_row = self.remap[idx // cols]
        keep = local_row >= 0
        return keep.nonzero().squeeze(1), local_row[keep] * cols + idx[keep] % cols

    def lookup(self, input_ids: torch.Tensor) -> torch.Tensor:
        emb = self.embedding
        if not (torch.is_grad_enabled() and self.holder.requires_grad):
            return F.embedding(input_ids, emb.weight, emb.padding_idx)  # evaluation: the module's own lookup
        return _RowGradientLookup.apply(self.holder, input_ids, emb.weight, self.remap, emb.padding_idx,
                                        self.local_padding_idx)


@contextmanager
def row_gradients(model: nn.Module, rows: torch.Tensor | None) -> Iterator[RowGradients | None]:
    """Within the block, the model's input embedding builds its gradient for ``rows`` only (:class:`RowGradients`;
    the sparse phase's updater reads it from there). Yields None, changing nothing, where that could change a
    result: see :func:`row_subset_for` (weight decay does not matter here: the sparse phase decays δ, not the
    weight, and a zero δ stays zero)."""
    emb = row_subset_for(model, 0.0) if rows is not None else None
    if emb is None:
        yield None
        return
    grads = RowGradients(emb, rows)
    emb.forward = grads.lookup  # the instance's forward: its parameter, name and place in the model stay the same
    try:
        yield grads
    finally:
        del emb.forward
