"""The one training sequence: first phase (dense, mask, or a cached θ1) → select → rewind → second phase (sparse or
gated) → delta.

``raysft train`` (:mod:`raysft.train.recipe`), ``raysft lang`` (:mod:`raysft.train.lang`), the Ray Train worker of
every sweep and confirm trial (:mod:`raysft.distributed.train_workers`) and the method contract test all run
:func:`train_sft`. What really differs between them comes in as arguments, nothing else:

- the job (:class:`SFTJob`): the model, the method and K, the training data and how it is batched (a task's padding
  collator, or a seeded MLM masking collator), the loss, the phases' settings and the delta's metadata;
- the ranks (:class:`~raysft.train.parallel.Comm`): one process, or a data-parallel group (sharded batches, DDP in
  the dense phase, one flat all-reduce of K values in the sparse phase, the selection on rank 0);
- :class:`Hooks`: a cached θ1 to load instead of the dense phase (and where to save a computed one), a selection
  cache, a resumed sparse phase, and per-step callbacks (checkpoints);
- the progress reporter.

Every phase setting (precision, activation checkpointing, embedding rows, head lr, warm-up, weight decay, L1) is
read here and so means the same on every path; the seeds too: the first phase draws dropout from ``seed + rank``,
the second from ``seed + SECOND_PHASE_SEED_OFFSET + rank``, and the loaders shuffle with ``seed`` and ``seed + 1``.
Pure torch: nothing here imports Ray or MLflow.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from raysft.config import PhaseConfig, steps_for
from raysft.errors import RaysftError
from raysft.sft.delta import SparseDelta
from raysft.sft.groups import ParamSpace
from raysft.sft.mask import Mask, entries_per_group
from raysft.sft.methods import Method, Selection, SelectionContext
from raysft.train.dropout import recompute_context
from raysft.train.loop import (
    Reporter,
    SilentReporter,
    default_loss,
    note,
    restore,
    seed_second_phase,
    set_dense_trainable,
    train_dense,
    train_gated,
    train_mask_scores,
    train_sparse,
)
from raysft.train.parallel import Comm, mean_losses
from raysft.train.rows import row_subset_embeddings
from raysft.train.spill import SpilledParams, trim_heap


@dataclass
class SFTJob:
    """What one SFT trains: everything about the model, the method and the data, nothing about where it runs."""

    model: nn.Module
    space: ParamSpace
    method: Method
    k: int
    dataset: Any  # a map-style dataset of examples (token ids, and labels for a task)
    collate: Callable[[int], Callable]  # seed → a collate function (a task's padding; MLM's seeded masking)
    dense: PhaseConfig
    mask: PhaseConfig  # Ada-SFT's mask phase
    sparse: PhaseConfig  # the second phase: sparse, or Ada-SFT's gated phase
    seed: int = 0
    # The token ids batches can contain (``embedding_rows``), or None when any row can appear (MLM's random
    # replacement draws from the whole vocabulary): then the embedding trains whole, as without the setting.
    rows: torch.Tensor | None = None
    loss_fn: Callable[[nn.Module, dict], torch.Tensor] = default_loss
    meta: dict[str, str] = field(default_factory=dict)  # the delta's metadata ("k" is set to the entries selected)


@dataclass
class Resume:
    """A sparse phase resumed from a checkpoint: its mask and selection info, and the step it restarts at.
    ``restore(updater, head_opt, schedules)`` puts the checkpoint's state into the fresh optimizers."""

    mask: Mask
    selection: dict
    step: int
    restore: Callable[[Any, Any, list], None]


@dataclass
class SparseRun:
    """A sparse phase's optimizers and plan, as its start hook sees them (a checkpoint saves these)."""

    updater: Any  # raysft.sft.sparse.SparseUpdater
    head_opt: Any  # the head's AdamW, or None
    schedules: list
    steps: int  # the phase's steps
    steps_per_epoch: int


@dataclass
class Hooks:
    """What a caller adds around the sequence. All optional: ``raysft train`` uses none."""

    # A cached θ1 (maskable parameters and head, by name) replaces the dense phase.
    load_theta1: Callable[[], Mapping[str, torch.Tensor]] | None = None
    # Every rank, after each step of a computed dense phase: (step, loss), e.g. to show a shared dense phase's
    # progress to the trials waiting for it.
    on_dense_step: Callable[[int, float], None] | None = None
    # Rank 0, after a computed dense phase: θ1 and the head (live views) to keep for other trials.
    save_theta1: Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]], None] | None = None
    # Rank 0: the selection (default ``method.select(ctx)``), e.g. with a per-θ1 cache shared across trials.
    select: Callable[[Method, SelectionContext], Selection] | None = None
    resume: Resume | None = None
    # Every rank, once the selection is known (or resumed): {"selection", "timings", "losses"} of the phases so far.
    on_selection: Callable[[dict], None] | None = None
    # The sparse phase's optimizers before its first step, and each step's (phase-wide step number, loss).
    on_sparse_start: Callable[[SparseRun], None] | None = None
    on_sparse_step: Callable[[int, float], None] | None = None


@dataclass
class Trained:
    """The sequence's result: the delta (on the host) and what the run's metrics report about its phases."""

    delta: SparseDelta
    mask: Mask  # the selected entries (host)
    selection: dict  # k, the method's info, entries_per_group, zero_delta_selected
    losses: dict[str, list[float]]
    timings: dict[str, float]
    optimizer_state_bytes: int
    first_phase: str  # "dense" | "dense (reused)" | "mask" | "none" | "resumed"
    allreduce_bytes: dict[str, int | None] = field(default_factory=dict)  # per phase, per step (several ranks)
    # Per phase run: what it really ran with (steps, batch, lr, precision, activations recomputed, embedding rows).
    phases: dict[str, dict] = field(default_factory=dict)
    scores: dict[str, torch.Tensor] | None = None  # a mask phase's learned scores


def snapshot(space: ParamSpace, spill: bool = True) -> Mapping[str, torch.Tensor]:
    """The maskable parameters as they are now. With ``spill`` (and a model in host memory) the copy lives in an
    unlinked temp file (:class:`SpilledParams`) read back one tensor at a time, bitwise: no copy of the model in
    memory."""
    on_host = all(space.param(p.name).device.type == "cpu" for p in space.maskable)  # host: spill host models only
    if spill and on_host:
        return SpilledParams((p.name, space.param(p.name)) for p in space.maskable)
    return space.snapshot()


def live_params(space: ParamSpace) -> dict[str, torch.Tensor]:
    """The maskable parameters as they are now, as detached views (no copy): θ1 for a selection that runs before the
    rewind."""
    return {p.name: space.param(p.name).detach() for p in space.maskable}


@contextmanager
def activation_checkpointing(model: nn.Module, on: bool):
    """The model recomputes its layers' activations in backward while inside (HF gradient checkpointing, RNG state
    preserved, so dropout masks and the resulting weights are bitwise the same)."""
    if not on:
        yield
        return
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise RaysftError(
            f"{type(model).__name__} does not support activation checkpointing: set checkpoint_activations: false"
        )
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x names
        enable, disable, key = model.activation_checkpointing_enable, model.activation_checkpointing_disable, "activation"
    else:
        enable, disable, key = model.gradient_checkpointing_enable, model.gradient_checkpointing_disable, "gradient"
    # context_fn: the recomputation in backward runs outside this thread's torch-function modes; it re-enters the
    # byte-mask dropout so the recomputed activations match the saved ones.
    enable(**{f"{key}_checkpointing_kwargs": {"use_reentrant": False, "context_fn": recompute_context}})
    try:
        yield
    finally:
        disable()


def delta_from_updater(updater, space: ParamSpace, meta: dict[str, str]) -> SparseDelta:
    """The trained δ at the masked entries (exactly what the model holds: θ0 + δ) and the head as abs values."""
    mask = updater.mask()
    return SparseDelta(diffs={n: (mask[n], v) for n, v in updater.values().items()}, abs=space.head_snapshot(), meta=meta)


def gated_delta(space: ParamSpace, base: Mapping, gates: dict, meta: dict[str, str]) -> SparseDelta:
    """A gated phase's result as a delta: the gates folded into the weights (dense diffs of the gated weights, the
    model left at base + δ bitwise) and the head as abs values."""
    from raysft.sft.mask_scores import fold_gates

    diffs = {n: (None, d) for n, d in fold_gates(space, base, gates).items()}
    return SparseDelta(diffs=diffs, abs=space.head_snapshot(), meta=meta)


def zero_delta_selected(mask: Mask, ctx: SelectionContext) -> int:
    """Selected entries that the dense phase did not move at all (|Δ| = 0): ties filled in by position."""
    zero = 0
    for name, idx in mask.items():
        d = ctx.theta1[name].reshape(-1) - ctx.theta0[name].reshape(-1).to(ctx.theta1[name].device)
        zero += int((d if idx is None else d[idx.to(d.device)]).eq(0).sum())
    return zero


def _jsonable(info: dict) -> dict:
    return {k: v for k, v in info.items() if isinstance(v, (int, float, str, list, dict))}


def check_job(job: SFTJob) -> None:
    """Refuse phase settings the method cannot honour, before anything trains."""
    gated = []
    if job.method.first_phase == "mask" and job.mask.checkpoint_activations:
        gated.append("mask_phase")
    if job.method.gated_phase and job.sparse.checkpoint_activations:
        gated.append("sparse")
    if gated:
        # W ⊙ M is computed outside the layers (functional_call): a recomputation in backward would not see it.
        raise RaysftError(
            f"{job.method.name} cannot recompute activations in its gated passes: set "
            + " and ".join(f"{g}.checkpoint_activations: false" for g in gated)
        )


def _ran(cfg: PhaseConfig, steps: int, checkpointing: bool, rows: bool) -> dict:
    """What a phase ran with, for the run's metrics: the record that shows a setting was honoured."""
    return {"steps": steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "precision": cfg.precision,
            "checkpoint_activations": checkpointing, "embedding_rows": rows}


def _batches(job: SFTJob, comm: Comm, cfg: PhaseConfig, seed: int):
    """(steps, loader, sampler) of a phase: the job's data batched by ``cfg``, shuffled with ``seed`` (a phase's own
    seed, so each phase draws the same batches on every path)."""
    loader, sampler = comm.loader(job.dataset, job.collate(seed), cfg.batch_size, seed)
    return steps_for(cfg, len(job.dataset)), loader, sampler


def _release(low_memory: bool) -> None:
    if low_memory:
        gc.collect()  # a phase's optimizer state (2 copies of the model) must not wait for a later collection
        trim_heap()


def train_sft(
    job: SFTJob,
    base: Mapping[str, torch.Tensor],
    *,
    comm: Comm | None = None,
    reporter: Reporter = SilentReporter(),
    hooks: Hooks | None = None,
    low_memory: bool = True,
) -> Trained:
    """Train one SFT from ``base`` (θ0, or θ0 + the source language's SFT: selection, rewind and the delta are
    relative to it; the model must hold it on entry). Returns the delta and the phases' record; the model is left at
    base + δ (the head trained).

    ``low_memory`` (default) frees each phase's optimizer before the next and releases the input embedding's weight
    while a row table trains; the same delta, bitwise (bench/memory.py measures the peak)."""
    comm = comm or Comm()
    hooks = hooks or Hooks()
    check_job(job)
    space, model, method = job.space, job.model, job.method
    head0 = space.head_snapshot()
    timings: dict[str, float] = {"dense_s": 0.0, "select_s": 0.0, "sparse_s": 0.0}
    losses: dict[str, list[float]] = {}
    ran: dict[str, dict] = {}
    ctx = SelectionContext(space, job.k, base, seed=job.seed)
    torch.manual_seed(job.seed + comm.rank)  # ranks draw different dropout masks

    if hooks.resume is not None:
        first, mask, sel = "resumed", hooks.resume.mask, hooks.resume.selection
    else:
        t = time.perf_counter()
        first = _first_phase(job, base, ctx, comm, reporter, hooks, timings, losses, ran, low_memory)
        timings["dense_s"] = time.perf_counter() - t
        t = time.perf_counter()
        note(reporter, phase="select")
        payload = None
        if comm.rank == 0:  # the selection runs once; its mask reaches every rank
            selection = hooks.select(method, ctx) if hooks.select else method.select(ctx)
            sel = {
                "k": selection.k, **_jsonable(selection.info),
                "entries_per_group": entries_per_group(selection.mask, space),
                "zero_delta_selected": zero_delta_selected(selection.mask, ctx) if ctx.theta1 is not None else None,
            }
            # The mask crosses ranks and goes into checkpoints; the sparse updater moves it to the device.
            mask = {n: (None if i is None else i.detach().cpu()) for n, i in selection.mask.items()}  # host: see above
            payload = (mask, sel)
        mask, sel = comm.broadcast(payload)
        ctx.theta1 = None  # live views: rewound below
        timings["select_s"] = time.perf_counter() - t

    if hooks.on_selection is not None:
        hooks.on_selection({"selection": sel, "timings": timings, "losses": losses})
    t = time.perf_counter()
    meta = {**job.meta, "k": str(sel["k"])}  # the entries selected (Ada-SFT's gates cover all linear weights)
    cfg = job.sparse
    rows = job.rows if cfg.embedding_rows else None
    optimizer_state: int
    if method.sparse_phase:
        restore(space, base, head0)  # rewind to the base (head too), then train only the selected entries
        seed_second_phase(job.seed, comm.rank)  # a resumed phase then restores its checkpoint's generator state
        steps, loader, sampler = _batches(job, comm, cfg, job.seed + 1)
        sync = comm.grad_sync(sampler)
        resume = hooks.resume

        def on_start(updater, head_opt, schedules):
            if resume is not None:
                resume.restore(updater, head_opt, schedules)
            if hooks.on_sparse_start is not None:
                hooks.on_sparse_start(SparseRun(updater, head_opt, schedules, steps, len(sampler)))

        t_steps = time.perf_counter()
        ran["sparse"] = _ran(cfg, steps, cfg.checkpoint_activations, rows is not None)
        with activation_checkpointing(model, cfg.checkpoint_activations):
            updater, local = train_sparse(
                model, space, mask, loader, steps, cfg, reporter=reporter, grad_sync=sync, loss_fn=job.loss_fn,
                on_step=hooks.on_sparse_step, on_start=on_start, start_step=resume.step if resume else 0, rows=rows,
            )
        timings["sparse_steps_s"] = time.perf_counter() - t_steps  # the optimizer steps, with the step hooks
        losses["sparse"] = mean_losses(comm.gather(local))
        comm.bytes["sparse"] = sync.per_step() if sync is not None else None
        delta = delta_from_updater(updater, space, meta)
        optimizer_state = updater.state_bytes()
        del updater
        _release(low_memory)
    elif method.gated_phase:
        if hooks.resume is not None:
            raise RaysftError(f"{method.name} keeps no sparse checkpoint to resume from: start the trial afresh")
        # M fixed, W trained with W ⊙ M in the forward pass (no rewind: W is still the base after the mask phase)
        gates = method.gates(ctx.scores)
        seed_second_phase(job.seed, comm.rank)
        steps, loader, sampler = _batches(job, comm, cfg, job.seed + 1)
        sync = comm.grad_sync(sampler)
        ran["gated"] = _ran(cfg, steps, cfg.checkpoint_activations, False)
        with activation_checkpointing(model, cfg.checkpoint_activations):
            local = train_gated(model, space, gates, loader, steps, cfg, reporter=reporter, grad_sync=sync)
        losses["gated"] = mean_losses(comm.gather(local))
        comm.bytes["gated"] = sync.per_step() if sync is not None else None
        delta = gated_delta(space, base, gates, meta)
        optimizer_state = 2 * sel["k"] * 4
    else:  # `full`: the first phase's result is the delta
        delta = SparseDelta.from_params(space, base, mask, meta=meta)
        optimizer_state = 2 * space.n * 4
    timings["sparse_s"] = time.perf_counter() - t
    return Trained(delta=delta, mask=mask, selection=sel, losses=losses, timings=timings,
                   optimizer_state_bytes=optimizer_state, first_phase=first, allreduce_bytes=dict(comm.bytes),
                   phases=ran, scores=ctx.scores)


def _first_phase(job: SFTJob, base, ctx: SelectionContext, comm: Comm, reporter, hooks: Hooks, timings, losses,
                 ran: dict, low_memory: bool) -> str:
    """The phase before the selection: fills ``ctx.theta1`` (rank 0) or ``ctx.scores``; returns what ran."""
    space, model, method = job.space, job.model, job.method
    if method.first_phase == "dense" and hooks.load_theta1 is not None:
        t = time.perf_counter()
        theta1 = hooks.load_theta1()  # the cache's θ1: no dense phase to run
        restore(space, {p.name: theta1[p.name] for p in space.maskable}, {n: theta1[n] for n in space.head})
        del theta1
        note(reporter, phase="dense (reused)")
        if comm.rank == 0:
            ctx.theta1 = live_params(space)  # the model holds θ1 until the rewind after the selection (no copy)
        timings["theta1_read_s"] = time.perf_counter() - t
        return "dense (reused)"
    if method.first_phase == "dense":
        cfg = job.dense
        steps, loader, sampler = _batches(job, comm, cfg, job.seed)
        rows = job.rows if cfg.embedding_rows else None
        with (
            activation_checkpointing(model, cfg.checkpoint_activations),
            # the embedding's weight is read back from the base at the end (released meanwhile, low_memory)
            row_subset_embeddings(model, rows, cfg.weight_decay, base if low_memory else None, space) as sub,
        ):
            ran["dense"] = _ran(cfg, steps, cfg.checkpoint_activations, sub is not None)
            set_dense_trainable(space, model, sub)  # before wrapping: DDP registers the parameters that need grads
            module, loss_fn, counter = comm.wrap_dense(model, sampler, job.loss_fn)
            t = time.perf_counter()
            local = train_dense(module, space, loader, steps, cfg, reporter=reporter, loss_fn=loss_fn, rows=sub,
                                on_step=hooks.on_dense_step)
            timings["dense_steps_s"] = time.perf_counter() - t  # the dense phase's optimizer steps
            del module  # the second phase runs on the unwrapped module, without DDP's hooks
        losses["dense"] = mean_losses(comm.gather(local))
        if comm.distributed:
            comm.bytes["dense"] = counter["bytes"] // max(1, steps)
        _release(low_memory)
        if comm.rank == 0:
            ctx.theta1 = live_params(space)  # the model holds θ1 until the rewind after the selection (no copy)
            if hooks.save_theta1 is not None:
                t = time.perf_counter()
                hooks.save_theta1(ctx.theta1, space.head_snapshot())
                timings["theta1_save_s"] = time.perf_counter() - t
        return "dense"
    if method.first_phase == "mask":
        cfg = job.mask
        steps, loader, sampler = _batches(job, comm, cfg, job.seed)
        sync = comm.grad_sync(sampler)
        s = method.settings
        ran["mask"] = _ran(cfg, steps, cfg.checkpoint_activations, False)
        with activation_checkpointing(model, cfg.checkpoint_activations):
            ctx.scores = train_mask_scores(
                model, space, loader, steps, cfg, score_init=s.score_init, score_lr=s.score_lr, grad_sync=sync,
                reporter=reporter, names=method.score_params(space),
            )
        comm.bytes["mask"] = sync.per_step() if sync is not None else None
        return "mask"
    return "none"
