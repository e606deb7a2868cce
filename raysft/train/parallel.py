"""Data parallelism for the training sequence, in pure torch (``torch.distributed``; no Ray).

:class:`Comm` is what differs between one process and the ranks of a data-parallel run: how a phase's batches are
drawn (:class:`ShardedBatchSampler`: every rank's slice of the same global batch), how gradients are averaged
(:class:`FlatAllReduce`, or DDP in the dense phase) and how ranks exchange small objects (the selection's mask,
losses, evaluation results). With one rank every exchange is a no-op and the batches are exactly the global ones,
so ``raysft train``, ``raysft lang`` and a one-worker Ray trial draw the same batches through the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

GradSync = Callable[[list[torch.Tensor]], None]  # all-reduces (averages) gradient tensors in place


class ShardedBatchSampler:
    """This rank's slice of each global batch; with one rank, the global batch itself.

    An index-only ``DataLoader`` (shuffle, generator seeded with ``seed``, batch ``global_batch``) yields the global
    batches, epoch after epoch as ``loop.cycle`` re-iterates; rank r takes the r-th of W near-equal contiguous slices.
    ``scale`` (read by the loss / gradient sync of the step the batch was drawn for) is n_r·W/N, which makes the
    average of the ranks' gradients the global batch's mean (1.0 for even slices); a rank whose slice is empty gets one
    example with scale 0.
    """

    def __init__(self, n: int, global_batch: int, rank: int, world: int, seed: int):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside 0..{world - 1}")
        self.rank, self.world = rank, world
        self.global_loader = DataLoader(
            range(n), batch_size=global_batch, shuffle=True, generator=torch.Generator().manual_seed(seed)
        )
        self.scale = 1.0

    def __len__(self) -> int:
        return len(self.global_loader)

    def __iter__(self):
        for batch in self.global_loader:
            ids = batch.tolist()
            lo, hi = len(ids) * self.rank // self.world, len(ids) * (self.rank + 1) // self.world
            if hi > lo:
                self.scale = (hi - lo) * self.world / len(ids)
                yield ids[lo:hi]
            else:
                self.scale = 0.0
                yield ids[-1:]


def sharded_loader(ds, collate, global_batch: int, seed: int, rank: int = 0, world: int = 1):
    """(loader, sampler): this rank's slices of the seeded global batches of ``ds``, collated by ``collate``."""
    sampler = ShardedBatchSampler(len(ds), global_batch, rank, world, seed)
    # A generator of its own: the loader's per-epoch base seed must not draw from the global RNG (dropout's).
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate, generator=torch.Generator().manual_seed(seed))
    return loader, sampler


class FlatAllReduce:
    """``GradSync``: every gradient flattened into one float32 buffer, one all-reduce (sum), divided by W.

    Counts the bytes it all-reduces. With a sampler, each rank's gradients are first weighted by its slice's scale.
    """

    def __init__(self, world: int, sampler: ShardedBatchSampler | None = None):
        self.world = world
        self.sampler = sampler
        self.calls = 0
        self.total_bytes = 0
        self.last_bytes = 0

    def __call__(self, grads: list[torch.Tensor]) -> None:
        grads = [g for g in grads if g is not None]
        if not grads:
            return
        flat = torch.cat([g.detach().reshape(-1).to(torch.float32) for g in grads])
        scale = self.sampler.scale if self.sampler is not None else 1.0
        if scale != 1.0:
            flat.mul_(scale)
        dist.all_reduce(flat)
        flat.div_(self.world)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n
        self.last_bytes = flat.numel() * flat.element_size()
        self.total_bytes += self.last_bytes
        self.calls += 1

    def per_step(self) -> int | None:
        return self.total_bytes // self.calls if self.calls else None


def _counting_allreduce_hook(state: dict, bucket):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    buf = bucket.buffer()
    state["bytes"] += buf.numel() * buf.element_size()
    return allreduce_hook(None, bucket)


class Comm:
    """The ranks of one data-parallel run (``world`` 1: one process, where every exchange is a no-op).

    A multi-rank ``Comm`` needs an initialised ``torch.distributed`` process group (Ray Train's ``TorchTrainer``
    sets one up: gloo on CPU, NCCL on GPU)."""

    def __init__(self, rank: int = 0, world: int = 1, device: torch.device | None = None):
        self.rank, self.world, self.device = rank, world, device
        self.bytes: dict[str, int | None] = {}  # per phase: bytes all-reduced per step

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def loader(self, ds, collate, global_batch: int, seed: int):
        return sharded_loader(ds, collate, global_batch, seed, self.rank, self.world)

    def grad_sync(self, sampler: ShardedBatchSampler) -> FlatAllReduce | None:
        return FlatAllReduce(self.world, sampler) if self.distributed else None

    def wrap_dense(self, model: nn.Module, sampler: ShardedBatchSampler, loss_fn):
        """(module to train through, its loss, a byte counter): DDP over several ranks, the model itself in one."""
        counter = {"bytes": 0}
        if not self.distributed:
            return model, loss_fn, counter
        device = self.device or next(model.parameters()).device
        kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
        ddp = nn.parallel.DistributedDataParallel(model, **kwargs)
        ddp.register_comm_hook(counter, _counting_allreduce_hook)

        def scaled(m, batch):
            loss = loss_fn(m, batch)
            return loss * sampler.scale if sampler.scale != 1.0 else loss

        return ddp, scaled, counter

    def gather(self, obj: Any) -> list:
        if not self.distributed:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        payload = [obj]
        dist.broadcast_object_list(payload, src=0)
        return payload[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def mean_losses(per_rank: list[list[float]]) -> list[float]:
    """The ranks' losses averaged step by step."""
    return [sum(v) / len(v) for v in zip(*per_rank)] if per_rank else []
