"""The per-worker training loop: dense, mask (Ada-SFT) and sparse phases, and prediction.

Pure torch: usable in one process and inside Ray Train workers. Whatever a distributed run must add (gradient
all-reduce, sharded loaders) comes in through ``GradSync`` and the loaders it passes; nothing here imports Ray.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from raysft.config import PhaseConfig
from raysft.sft.groups import ParamSpace
from raysft.sft.mask import Mask
from raysft.sft.mask_scores import MaskScores, gated_call
from raysft.sft.sparse import SparseUpdater
from raysft.train.dropout import byte_mask_dropout
from raysft.train.parallel import GradSync
from raysft.train.rows import RowSubsetEmbedding, row_gradients
from raysft.train.spill import HeapTrimmer

class Reporter(Protocol):
    def start(self, phase: str, total: int) -> None: ...
    def step(self, loss: float) -> None: ...
    def end(self) -> None: ...


def note(reporter: Reporter, **fields) -> None:
    """Tell a reporter that keeps a trial's state (a sweep's progress board) something beyond the steps, e.g. the
    phase between two loops; reporters without ``note`` ignore it."""
    tell = getattr(reporter, "note", None)
    if tell is not None:
        tell(**fields)


class SilentReporter:
    def start(self, phase: str, total: int) -> None:
        pass

    def step(self, loss: float) -> None:
        pass

    def end(self) -> None:
        pass


def seed_second_phase(seed: int, rank: int = 0) -> None:
    """Reseed torch's global generator (dropout) before the second phase (sparse or gated), so that its randomness
    does not depend on what this process ran before: a sweep trial that reuses a cached θ1 never ran the dense phase,
    and used to train its sparse phase on other dropout masks than the trial that computed θ1 (same config and seed,
    another delta and dev score). Ranks keep distinct masks (seed + rank), as in the first phase."""
    torch.manual_seed(seed + SECOND_PHASE_SEED_OFFSET + rank)


SECOND_PHASE_SEED_OFFSET = 1_000  # apart from the first phase's seed + rank for any realistic number of ranks


def cycle(loader: DataLoader) -> Iterator[dict]:
    """Batches forever, reshuffling each epoch (the sampler's generator advances)."""
    epoch = 0
    while True:
        if hasattr(getattr(loader, "sampler", None), "set_epoch"):
            loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def linear_schedule(optimizer: torch.optim.Optimizer, steps: int, warmup_ratio: float):
    warmup = int(warmup_ratio * steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def set_trainable(space: ParamSpace, maskable: bool, head: bool = True) -> None:
    for p in space.model.parameters():
        p.requires_grad_(False)
    if maskable:
        for info in space.maskable:
            space.param(info.name).requires_grad_(True)
    if head:
        for name in space.head:
            space.param(name).requires_grad_(True)


def set_dense_trainable(space: ParamSpace, model: nn.Module, rows: RowSubsetEmbedding | None = None) -> list[nn.Parameter]:
    """The dense phase's trainable set (every maskable parameter and the head); returns the maskable ones. With
    ``rows`` the swapped-out embedding weight stays frozen and its row table trains instead (at the end of the list:
    AdamW updates each tensor on its own, so the order changes no value)."""
    set_trainable(space, maskable=True)
    body = [space.param(p.name) for p in space.maskable]
    if rows is None:
        return body
    in_model = {id(p) for p in model.parameters()}
    for p in body:
        if id(p) not in in_model:
            p.requires_grad_(False)
    rows.table.requires_grad_(True)  # set_trainable froze every model parameter first
    return [p for p in body if id(p) in in_model] + [rows.table]


def l1_per_entry(cfg: PhaseConfig, space: ParamSpace) -> float:
    """The L1 coefficient per trained entry: ``cfg.l1`` is composable-sft's (its trainer adds
    l1 · Σ|θ − θ0| / N to the loss, N the model's parameter count), so the same number means the same penalty."""
    return cfg.l1 / space.n_params if cfg.l1 else 0.0


def head_params(space: ParamSpace) -> list[nn.Parameter]:
    return [space.param(n) for n in space.head]


def default_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """The model's own loss (a task head's cross-entropy)."""
    return model(**batch).loss


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def model_device(model: nn.Module) -> torch.device:
    """Where a phase runs: the device of the model's parameters (the one rule; batches follow the model)."""
    return next(model.parameters()).device


def autocast(device: torch.device, precision: str = "fp32"):
    """The forward (and so the backward) of a step under bf16 autocast when ``precision == "bf16"``.

    Only the matmul-heavy ops run in bfloat16; the parameters stay float32 master weights and their gradients come
    back float32 (autocast casts copies), so optimizer states, the sparse δ and saved deltas are float32 as before.
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision {precision!r}: use fp32 or bf16")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _run_steps(
    batches: Iterable[dict],
    steps: int,
    loss_fn: Callable[[dict], torch.Tensor],
    update: Callable[[], None],
    reporter: Reporter,
    phase: str,
    device: torch.device,
    on_step: Callable[[int, float], None] | None = None,
    precision: str = "fp32",
) -> list[float]:
    losses = []
    reporter.start(phase, steps)
    it = iter(batches)
    heap = HeapTrimmer() if device.type == "cpu" else None  # host: glibc's heap holds host memory only
    for step in range(steps):
        # Byte masks for dropout's backward on the CPU: torch's values bitwise, less memory. Backward is inside too:
        # activation checkpointing recomputes the forward there and must keep the same masks.
        with byte_mask_dropout():
            with autocast(device, precision):
                loss = loss_fn(_to(next(it), device))
            loss.float().backward()  # backward outside the autocast region, as torch recommends
        update()
        if heap is not None:
            heap.after_step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"{phase} loss became {value} at step {step}: lower the learning rate")
        losses.append(value)
        reporter.step(value)
        if on_step:
            on_step(step, value)
    reporter.end()
    return losses


def train_dense(
    model: nn.Module,
    space: ParamSpace,
    loader: DataLoader,
    steps: int,
    cfg: PhaseConfig,
    *,
    reporter: Reporter = SilentReporter(),
    grad_sync: GradSync | None = None,
    loss_fn: Callable[[nn.Module, dict], torch.Tensor] = default_loss,
    rows: RowSubsetEmbedding | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Dense fine-tuning of every maskable parameter and the head (LayerNorms frozen). With ``rows`` (the model's
    input embedding swapped for a :class:`RowSubsetEmbedding`) the embedding is trained through its row table.
    ``on_step(step, loss)`` after each step."""
    body = set_dense_trainable(space, model, rows)
    model.train()
    optimizer = torch.optim.AdamW(
        [
            {"params": body, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
            {"params": head_params(space), "lr": cfg.head_lr or cfg.lr, "weight_decay": cfg.weight_decay},
        ]
    )
    schedule = linear_schedule(optimizer, steps, cfg.warmup_ratio)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # L1 toward θ0 (cfg.l1, composable-sft's full_l1_reg): the subgradient of l1 · Σ|θ − θ0| / N over the SFT's
    # entries (the maskable parameters; not the head), added after the gradient sync (every rank holds the same
    # weights, so the same term). The phase starts at θ0: its starting values are the reference.
    per_entry = l1_per_entry(cfg, space)
    anchors = [(p, p.detach().clone()) for p in body] if per_entry else []

    def update():
        if grad_sync is not None:
            grad_sync([p.grad for p in trainable if p.grad is not None])
        for p, p0 in anchors:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.add_(torch.sign(p.detach() - p0), alpha=per_entry)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)

    device = model_device(model)
    return _run_steps(
        cycle(loader), steps, lambda b: loss_fn(model, b), update, reporter, "dense", device, on_step=on_step,
        precision=cfg.precision,
    )


def train_head(
    model: nn.Module,
    space: ParamSpace,
    loader: DataLoader,
    steps: int,
    lr: float,
    *,
    reporter: Reporter = SilentReporter(),
    loss_fn: Callable[[nn.Module, dict], torch.Tensor] = default_loss,
    precision: str = "fp32",
) -> list[float]:
    """Only the head trains (the encoder stays at its current weights): fits a freshly initialised head."""
    set_trainable(space, maskable=False)
    model.train()
    optimizer = torch.optim.AdamW(head_params(space), lr=lr, weight_decay=0.0)

    def update():
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    device = model_device(model)
    return _run_steps(
        cycle(loader), steps, lambda b: loss_fn(model, b), update, reporter, "head", device, precision=precision
    )


def train_mask_scores(
    model: nn.Module,
    space: ParamSpace,
    loader: DataLoader,
    steps: int,
    cfg: PhaseConfig,
    *,
    score_init: float,
    score_lr: float,
    reporter: Reporter = SilentReporter(),
    grad_sync: GradSync | None = None,
    names: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Ada-SFT phase 1: W frozen, scores S learned through W ⊙ sigmoid(S) (for ``names``, default every maskable
    parameter); the head trains densely."""
    set_trainable(space, maskable=False)
    model.train()
    scores = MaskScores(space, score_init, names)
    optimizer = torch.optim.AdamW(
        [
            {"params": list(scores.parameters()), "lr": score_lr, "weight_decay": 0.0},
            {"params": head_params(space), "lr": cfg.head_lr or cfg.lr, "weight_decay": cfg.weight_decay},
        ]
    )
    schedule = linear_schedule(optimizer, steps, cfg.warmup_ratio)
    trainable = list(scores.parameters()) + head_params(space)

    def update():
        if grad_sync is not None:
            grad_sync([p.grad for p in trainable if p.grad is not None])
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)

    device = model_device(model)
    _run_steps(
        cycle(loader), steps, lambda b: scores(model, **b).loss, update, reporter, "mask", device,
        precision=cfg.precision,
    )
    return scores.learned()


def train_gated(
    model: nn.Module,
    space: ParamSpace,
    gates: dict[str, torch.Tensor],
    loader: DataLoader,
    steps: int,
    cfg: PhaseConfig,
    *,
    reporter: Reporter = SilentReporter(),
    grad_sync: GradSync | None = None,
) -> list[float]:
    """Ada-SFT (the report's) step 2: the gates M fixed, the gated weights W trained densely with the forward pass
    using W ⊙ M; the head trains densely too. The weights are left unfolded (see ``fold_gates``)."""
    set_trainable(space, maskable=False)
    model.train()
    device = model_device(model)
    gates = {n: m.to(device) for n, m in gates.items()}
    weights = [space.param(n) for n in gates]
    for w in weights:
        w.requires_grad_(True)
    heads = head_params(space)
    optimizer = torch.optim.AdamW(
        [
            {"params": weights, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
            {"params": heads, "lr": cfg.head_lr or cfg.lr, "weight_decay": cfg.weight_decay},
        ]
    )
    schedule = linear_schedule(optimizer, steps, cfg.warmup_ratio)
    trainable = weights + heads

    def update():
        if grad_sync is not None:
            grad_sync([p.grad for p in trainable if p.grad is not None])
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)

    return _run_steps(
        cycle(loader), steps, lambda b: gated_call(model, space, gates, **b).loss, update, reporter, "gated", device,
        precision=cfg.precision,
    )


def train_sparse(
    model: nn.Module,
    space: ParamSpace,
    mask: Mask,
    loader: DataLoader,
    steps: int,
    cfg: PhaseConfig,
    *,
    reporter: Reporter = SilentReporter(),
    grad_sync: GradSync | None = None,
    loss_fn: Callable[[nn.Module, dict], torch.Tensor] = default_loss,
    on_step: Callable[[int, float], None] | None = None,
    on_start: Callable[[SparseUpdater, torch.optim.Optimizer | None, list], None] | None = None,
    start_step: int = 0,
    rows: torch.Tensor | None = None,
) -> tuple[SparseUpdater, list[float]]:
    """Train only the masked entries (K-sized AdamW state) and the head (dense).

    ``on_start(updater, head_opt, schedules)`` runs before the first step: a distributed run restores a checkpoint
    into them there and keeps them to save the next one. ``start_step`` resumes the phase at that step: the first
    ``start_step`` batches are skipped (the data order stays the uninterrupted run's), only the remaining steps run,
    and ``on_step`` gets phase-wide step numbers. The returned losses are those of the steps run. ``rows`` (the
    training data's token ids): the input embedding's gradient is built for those rows only (bitwise the same
    result; :func:`raysft.train.rows.row_gradients`).
    """
    with row_gradients(model, rows) as row_grads:
        return _train_sparse(model, space, mask, loader, steps, cfg, reporter=reporter, grad_sync=grad_sync,
                             loss_fn=loss_fn, on_step=on_step, on_start=on_start, start_step=start_step,
                             row_grads=row_grads)


def _train_sparse(model, space, mask, loader, steps, cfg, *, reporter, grad_sync, loss_fn, on_step, on_start,
                  start_step, row_grads):
    """:func:`train_sparse` inside its row-gradient context."""
    set_trainable(space, maskable=False)
    model.train()
    updater = SparseUpdater(space, mask, lr=cfg.lr, weight_decay=cfg.weight_decay, l1=l1_per_entry(cfg, space),
                            rows=row_grads)
    heads = head_params(space)
    head_opt = torch.optim.AdamW(heads, lr=cfg.head_lr or cfg.lr, weight_decay=cfg.weight_decay) if heads else None
    schedules = [linear_schedule(updater.optimizer, steps, cfg.warmup_ratio)]
    if head_opt:
        schedules.append(linear_schedule(head_opt, steps, cfg.warmup_ratio))

    def update():
        if grad_sync is not None:
            # The K-vector, not the dense gradients, crosses the wire.
            grad_sync([updater.grad] + [p.grad for p in heads if p.grad is not None])
        updater.step()
        updater.zero_grad()
        if head_opt:
            head_opt.step()
            head_opt.zero_grad(set_to_none=True)
        for s in schedules:
            s.step()

    device = model_device(model)
    try:
        if on_start is not None:
            on_start(updater, head_opt, schedules)
        batches = cycle(loader)
        for _ in range(start_step):
            next(batches)
        step_cb = (lambda i, v: on_step(start_step + i, v)) if on_step and start_step else on_step
        losses = _run_steps(
            batches, max(0, steps - start_step), lambda b: loss_fn(model, b), update, reporter, "sparse", device, step_cb,
            precision=cfg.precision,
        )
    finally:
        updater.close()
    return updater, losses


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    device = model_device(model)
    preds, labels = [], []
    for batch in loader:
        batch = _to(batch, device)
        gold = batch.pop("labels")
        # host: predictions and labels are a few ints per example, gathered for the metrics (and across ranks)
        preds.append(model(**batch).logits.argmax(-1).cpu())  # host: see above
        labels.append(gold.cpu())  # host: see above
    return torch.cat(preds), torch.cat(labels)


@torch.no_grad()
def restore(space: ParamSpace, theta: dict[str, torch.Tensor], head: dict[str, torch.Tensor] | None = None) -> None:
    """Rewind the maskable parameters (and the head) to saved values, bitwise."""
    for name, value in theta.items():
        space.param(name).copy_(value)
    for name, value in (head or {}).items():
        space.param(name).copy_(value)
