"""Ray Train edge: one trial (first phase → select → sparse phase → evaluation) run by Ray Train V2 workers.

Per worker (:func:`train_loop_per_worker`), over the torch.distributed group that ``TorchTrainer`` sets up (gloo on
CPU, NCCL on GPU):

- Data: :class:`ShardedBatchSampler` draws, step by step, exactly the global batch that the single-process recipe
  draws (same shuffle, same seeded generator) and gives each rank a contiguous slice of it (global batch / world
  size). Uneven slices are weighted so that the averaged gradient is still the global batch's mean.
- Dense phase: DDP over the unwrapped model (``ParamSpace`` is built on the unwrapped module, the loss goes through
  the wrapper); a comm hook counts the bytes DDP all-reduces. Mask phase (Ada-SFT): one flat all-reduce of the score
  and head gradients per step.
- Selection: once, on rank 0; the mask reaches every rank by ``broadcast_object_list``.
- Sparse phase: one flat all-reduce per step of the gathered K-vector gradient and the head gradients (K + head
  entries, never N). Every rank then takes the same AdamW step, so all ranks hold bitwise-identical weights.
- Checkpoints every ``checkpoint_every`` sparse steps (default: once per epoch) hold only the K-sized state: mask
  indices, delta, the K vector's AdamW moments, the head and its optimizer, the schedules, the step and each rank's
  RNG (``sparse_state.safetensors`` + ``sparse_state.json``). A restarted worker group skips the first phase and the
  selection, rebuilds θ0 from the model and continues from that step with the same data order.
- Evaluation: rank r evaluates languages r, r+W, …; the results are gathered to rank 0, which returns the metrics
  (``run_training``'s schema plus a ``distributed`` section) and reports a final checkpoint holding
  ``task_sft.safetensors`` and ``metrics.json`` (also written to ``out_dir`` when given).

Nothing under ``raysft/sft``, ``raysft/tasks`` or ``raysft/models`` imports Ray; this module imports it lazily.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow.fs as pafs
import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from raysft import storage
from raysft.config import Config, steps_for
from raysft.distributed.progress import BoardReporter, NullReporter, find_board
from raysft.errors import RaysftError
import safetensors.torch

from raysft.sft.delta import SparseDelta
from raysft.sft.groups import ParamSpace
from raysft.sft.mask import Mask, entries_per_group
from raysft.sft.methods import SelectionContext
from raysft.sft.sparse import SparseUpdater
from raysft.train.loop import (
    predict,
    restore,
    seed_second_phase,
    set_dense_trainable,
    train_dense,
    train_gated,
    train_mask_scores,
    train_sparse,
)
from raysft.train.recipe import (
    Run,
    delta_from_updater,
    device_info,
    eval_loaders,
    evaluate,
    evaluation_metrics,
    gated_delta,
    live_params,
    merge_results,
    peak_memory_bytes,
    prepare,
    task_delta_meta,
    training_base,
    write_outputs,
    zero_delta_selected,
)
from raysft.train.rows import data_rows, row_subset_embeddings

STATE_FORMAT = "raysft.sparse-state/1"
STATE_TENSORS = "sparse_state.safetensors"
STATE_JSON = "sparse_state.json"
DELTA_FILE = "task_sft.safetensors"
METRICS_FILE = "metrics.json"


# ------------------------------------------------------------------------------------------------------------ config
class WorkersConfig(BaseModel):
    """Ray Train workers for one trial (proposed as the ``workers:`` section of ``Config``)."""

    model_config = ConfigDict(extra="forbid")
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: float = Field(0, ge=0)

    def scaling_config(self):
        from ray.train import ScalingConfig

        resources: dict[str, float] = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            resources["GPU"] = self.gpus_per_worker
        return ScalingConfig(
            num_workers=self.num_workers, use_gpu=self.gpus_per_worker > 0, resources_per_worker=resources
        )


class LoopConfig(BaseModel):
    """What ``train_loop_per_worker`` reads from its ``config`` dict (checked before the workers start)."""

    model_config = ConfigDict(extra="forbid")
    cfg: dict[str, Any]  # Config.model_dump(mode="json")
    method: str | None = None  # None: cfg.method
    checkpoint_every: int | None = Field(None, ge=1)  # sparse steps between checkpoints; None: once per epoch
    out_dir: str | None = None  # rank 0 also writes task_sft.safetensors + metrics.json here
    verify_sync: bool = False  # after every sparse step, check that all ranks hold bitwise-identical weights
    no_dropout: bool = False  # dropout p=0 (exact comparisons with a single-process run)
    fail_at_step: int | None = Field(None, ge=1)  # tests: rank `fail_rank` exits after this sparse step, once
    fail_marker: str | None = None  # the file that makes the failure happen only once
    fail_rank: int = Field(1, ge=0)
    # Ray Train registers a reported checkpoint when its controller next polls the workers (every 2 s by default):
    # a worker lost before that poll restarts from the checkpoint before. Tests wait this long before failing.
    fail_delay_s: float = Field(0.0, ge=0)
    # The sweep's dense-phase cache: "save" θ1 (maskable + head) to theta1_path after the dense phase, or "load" it
    # instead of running the dense phase.
    theta1_path: str | None = None
    theta1_mode: Literal["save", "load"] | None = None
    # With "save" in a sweep: the dense-phase cache actor's name and this θ1's key, to publish θ1 the moment it is
    # written (waiting trials start their sparse phase then, not when this trial ends).
    theta1_actor: str | None = None
    theta1_key: str | None = None
    dense_ready_at: float | None = None  # a sweep: when (time.time()) this trial's dense phase was settled (θ1 ready or ours to compute)
    started_at: float | None = None  # a sweep: when (time.time()) the trial driver started (timings["start_s"] from it)
    report_dev: bool = False  # each sparse checkpoint also reports the targets' average dev score ("objective")
    # A sweep's trial (tune.test_every_trial false): the final evaluation scores dev first and scores test only when
    # that dev leads this trial's kind ("default" or "searched") on the sweep's progress board.
    test_if_leading: Literal["default", "searched"] | None = None
    # A sweep's trial: rank 0 tells the sweep's progress board (raysft.distributed.progress) its phase and step.
    trial_id: str | None = None
    progress: bool = False


def workers_from_dict(raw: dict | None) -> WorkersConfig:
    try:
        return WorkersConfig.model_validate(raw or {})
    except ValidationError as e:
        err = e.errors()[0]
        raise RaysftError(f"invalid workers setting '{'.'.join(map(str, err['loc']))}': {err['msg']}") from None


# -------------------------------------------------------------------------------------------------------------- data
class ShardedBatchSampler:
    """This rank's slice of each global batch, the global batches being exactly the single-process recipe's.

    An index-only ``DataLoader`` built like ``recipe.loader`` (shuffle, generator seeded with ``seed``, batch
    ``global_batch``) yields the global batches, epoch after epoch as ``loop.cycle`` re-iterates; rank r takes the
    r-th of W near-equal contiguous slices. ``scale`` (read by the loss / gradient sync of the step the batch was drawn
    for) is n_r·W/N, which makes the average of the ranks' gradients the global batch's mean (1.0 for even slices);
    a rank whose slice is empty gets one example with scale 0.
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


def sharded_loader(ds, tokenizer, global_batch: int, seed: int, rank: int, world: int):
    sampler = ShardedBatchSampler(len(ds), global_batch, rank, world, seed)
    # A generator of its own: the loader's per-epoch base seed must not draw from the global RNG (dropout's).
    loader = DataLoader(
        ds, batch_sampler=sampler, collate_fn=DataCollatorWithPadding(tokenizer),
        generator=torch.Generator().manual_seed(seed),
    )
    return loader, sampler


# --------------------------------------------------------------------------------------------------- gradient sync
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


# ---------------------------------------------------------------------------------------------------------- helpers
def save_theta1(uri: str, theta1: dict[str, torch.Tensor], head: dict[str, torch.Tensor]) -> None:
    """θ1 (maskable parameters and head) for the dense-phase cache, written atomically to the sweep's storage
    (any URI: a local path, s3://, gs://…)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in {**theta1, **head}.items()}
    storage.write_atomic(uri, safetensors.torch.save(tensors))


def publish_theta1(actor: str | None, key: str | None) -> None:
    """Tell the sweep's dense-phase cache (a named actor) that θ1 is on storage. Outside a sweep: nobody to tell."""
    if not actor or not key:
        return
    import ray

    try:
        cache = ray.get_actor(actor)
    except ValueError:  # no such actor: the trial driver calls done() when the trial ends, as a fallback
        return
    ray.get(cache.done.remote(key))


def load_theta1(uri: str) -> dict[str, torch.Tensor]:
    """The cache's θ1 from the sweep's storage: a local file memory-mapped (no whole-file bytes copy beside the
    tensors), a remote one read whole (a remote store has no mmap). The same tensors, bitwise."""
    fs, path = storage.resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        return safetensors.torch.load_file(path)
    return safetensors.torch.load(storage.read_bytes(uri))


def selection_cache_path(theta1_uri: str, method_name: str) -> str:
    """Where a method's per-θ1 selection cache (DeFT-X's SVD factors) lives: beside the dense-phase cache's θ1."""
    return storage.sibling(theta1_uri, f"select-cache-{method_name}.safetensors")


def select_with_shared_cache(method, ctx: SelectionContext, cache_uri: str | None):
    """``method.select(ctx)``, with the method's per-θ1 cache read from ``cache_uri`` first (when a trial sharing
    this θ1 wrote it) and written back when the selection added to it: a DeFT-X rank sweep factors each matrix once
    per θ1. ``selection.info["select_cache"]`` says which: "none" | "computed" | "reused" | "extended"."""
    loaded: set[str] = set()
    if cache_uri and storage.exists(cache_uri):
        try:
            tensors = safetensors.torch.load(storage.read_bytes(cache_uri))
        except Exception:  # a damaged cache only costs the recomputation
            tensors = {}
        if method.load_cache(tensors, ctx.cache):
            loaded = set(tensors)
    selection = method.select(ctx)
    status = "none"
    if cache_uri:
        tensors = method.cache_tensors(ctx.cache)
        if tensors and not set(tensors) <= loaded:
            storage.write_atomic(cache_uri, safetensors.torch.save(tensors))
            status = "extended" if loaded else "computed"
        elif loaded:
            status = "reused"
    selection.info["select_cache"] = status
    return selection


def param_hash(model: nn.Module) -> str:
    """sha256 of every parameter's bytes, in model order: equal hashes mean bitwise-identical weights."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _gather(obj) -> list:
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _no_dropout(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def _mean_losses(per_rank: list[list[float]]) -> list[float]:
    return [sum(v) / len(v) for v in zip(*per_rank)] if per_rank else []


def _opt_to_files(prefix: str, sd: dict, tensors: dict[str, torch.Tensor]) -> dict:
    scalars: dict[str, dict] = {}
    for pid, st in sd["state"].items():
        for key, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}/{pid}/{key}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = v
    return {"param_groups": _jsonable(sd["param_groups"]), "scalars": scalars}


def _opt_from_files(prefix: str, meta: dict, tensors: dict[str, torch.Tensor]) -> dict:
    state: dict[int, dict] = {}
    for key, t in tensors.items():
        if key.startswith(prefix + "/"):
            pid, name = key[len(prefix) + 1 :].split("/", 1)
            state.setdefault(int(pid), {})[name] = t
    for pid, kv in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(kv)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def dev_scores(run: Run, updater: SparseUpdater, theta0: dict, base: dict, loaders: dict) -> dict[str, float]:
    """Each of ``run.eval_langs``' dev score (the task's metric) mid-way through the sparse phase, on exactly the model
    the final evaluation scores: θ0 + δ so far, composed with the language's SFT where it has one (through the same
    :func:`evaluate`). With a source-language SFT the sparse phase trains θ0 + SFT_lang(source) + δ, which is not
    what the trial is judged on. The weights are put back (base + δ, bitwise) for training to go on."""
    task = delta_from_updater(updater, run.space, {})
    results = evaluate(run, task, theta0, loaders, composed_only=True)
    restore(run.space, base)
    updater.write_back()
    run.model.train()
    metric = run.task.metric
    return {lang: (results["composed"]["dev"].get(lang) or results["task_only"]["dev"][lang])[metric]
            for lang in run.eval_langs}


class TimedLoader:
    """A loader whose passes are timed: ``totals[key]`` gathers the seconds from the start of each pass to its end,
    including what the consumer does between batches (``predict``'s forward passes). Batches are the loader's own."""

    def __init__(self, loader, totals: dict[str, float], key: str):
        self.loader, self.totals, self.key = loader, totals, key

    def __iter__(self):
        t = time.perf_counter()
        try:
            yield from self.loader
        finally:
            self.totals[self.key] = self.totals.get(self.key, 0.0) + time.perf_counter() - t


def _with_splits(cfg: Config, splits: list[str]) -> Config:
    return cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"splits": splits})})


def timed_loaders(loaders: dict[tuple[str, str], Any], totals: dict[str, float]) -> dict[tuple[str, str], TimedLoader]:
    """Each (lang, split) loader timed into ``totals["<split>/<lang>"]``."""
    return {(lang, split): TimedLoader(ld, totals, f"{split}/{lang}") for (lang, split), ld in loaders.items()}


# ------------------------------------------------------------------------------------------------------- checkpoints
@dataclass
class SparseState:
    """A sparse-phase checkpoint read back: K-sized tensors + the JSON side (step, optimizer groups, run info)."""

    tensors: dict[str, torch.Tensor]
    meta: dict

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def mask(self) -> Mask:
        return {n: self.tensors[f"mask/{n}"] for n in self.meta["mask_names"]}


def save_sparse_state(
    folder: Path, updater: SparseUpdater, head_opt, schedules: list, space: ParamSpace, *, step: int, steps: int,
    rng: list[tuple[torch.Tensor, torch.Tensor | None]], info: dict,
) -> None:
    """Write the K-sized state of a sparse phase into ``folder`` (safetensors + JSON; no dense parameter)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for name, idx in zip(updater.names, updater.indices):
        tensors[f"mask/{name}"] = idx.detach().cpu().to(torch.int64).contiguous()
    tensors["delta"] = updater.delta.detach().cpu().contiguous()
    for name in space.head:
        tensors[f"head/{name}"] = space.param(name).detach().cpu().contiguous()
    for r, (cpu_state, cuda_state) in enumerate(rng):
        tensors[f"rng/{r}"] = cpu_state
        if cuda_state is not None:
            tensors[f"rng_cuda/{r}"] = cuda_state
    meta = {
        "format": STATE_FORMAT,
        "step": step,
        "steps": steps,
        "world_size": len(rng),
        "k": updater.k,
        "mask_names": list(updater.names),
        "opt_sparse": _opt_to_files("opt/sparse", updater.optimizer.state_dict(), tensors),
        "opt_head": _opt_to_files("opt/head", head_opt.state_dict(), tensors) if head_opt else None,
        "schedules": [_jsonable(s.state_dict()) for s in schedules],
        "info": _jsonable(info),
    }
    save_file(tensors, str(folder / STATE_TENSORS), metadata={"format": STATE_FORMAT})
    (folder / STATE_JSON).write_text(json.dumps(meta))


def read_checkpoint(checkpoint) -> SparseState | dict:
    """A Ray Train checkpoint: a :class:`SparseState`, or the final metrics dict of a run that had finished."""
    from safetensors.torch import load_file

    with checkpoint.as_directory() as d:
        d = Path(d)
        if (d / METRICS_FILE).exists() and (d / DELTA_FILE).exists():
            return json.loads((d / METRICS_FILE).read_text())
        if not (d / STATE_JSON).exists():
            raise RaysftError(f"checkpoint {checkpoint.path} holds no {STATE_JSON}: it was not written by raysft")
        meta = json.loads((d / STATE_JSON).read_text())
        if meta.get("format") != STATE_FORMAT:
            raise RaysftError(f"checkpoint {checkpoint.path} has format {meta.get('format')!r}, expected {STATE_FORMAT}")
        return SparseState({k: v.clone() for k, v in load_file(str(d / STATE_TENSORS)).items()}, meta)


@torch.no_grad()
def restore_sparse_state(
    state: SparseState, updater: SparseUpdater, head_opt, schedules: list, space: ParamSpace, rank: int, world: int
) -> None:
    t, m = state.tensors, state.meta
    if list(updater.names) != m["mask_names"] or updater.k != m["k"]:
        raise RaysftError("the sparse checkpoint's mask does not match the rebuilt one: start the trial afresh")
    updater.delta.copy_(t["delta"].to(updater.delta.device))
    for name in space.head:
        space.param(name).copy_(t[f"head/{name}"].to(space.param(name).device))
    updater.optimizer.load_state_dict(_opt_from_files("opt/sparse", m["opt_sparse"], t))
    if head_opt is not None and m["opt_head"] is not None:
        head_opt.load_state_dict(_opt_from_files("opt/head", m["opt_head"], t))
    for s, sd in zip(schedules, m["schedules"]):
        s.load_state_dict(sd)
    updater.write_back()  # θ0 + delta at the masked entries: the weights the checkpointed step left
    if m["world_size"] == world:  # same ranks: the same dropout stream as the uninterrupted run
        torch.set_rng_state(t[f"rng/{rank}"])
        if f"rng_cuda/{rank}" in t and torch.cuda.is_available():
            torch.cuda.set_rng_state(t[f"rng_cuda/{rank}"])


# ------------------------------------------------------------------------------------------------------------ worker
class _Worker:
    def __init__(self, loop: LoopConfig, rank: int, world: int):
        self.loop = loop
        self.rank, self.world = rank, world
        self.cfg = Config.model_validate(loop.cfg)
        self.method_name = loop.method or self.cfg.method
        self.sync_checks = 0
        self.checkpoints = 0
        self.progress = NullReporter()
        if loop.progress and loop.trial_id and rank == 0:
            board = find_board()
            if board is not None:
                self.progress = BoardReporter(board, loop.trial_id)
        self.scores: dict | None = None  # a mask phase's learned scores (every rank)
        # Seconds inside the sparse phase's step callbacks: checkpoint saves and dev passes (not optimizer steps).
        self.callback_s = {"checkpoint_s": 0.0, "dev_s": 0.0, "on_step_s": 0.0}

    # ----------------------------------------------------------------------------------------------- entry
    def run(self, checkpoint) -> dict | None:
        import ray.train.torch

        state = read_checkpoint(checkpoint) if checkpoint is not None else None
        if isinstance(state, dict):  # the run had already finished: hand its result back
            return state if self.rank == 0 else None
        cfg, rank, world = self.cfg, self.rank, self.world
        # This attempt's set-up costs (time/* metrics; a resumed run reports its last attempt's). Wall clock stamps
        # (time.time(), comparable across the processes of one machine) go to distributed.clock.
        clock = {"worker_started": time.time()}
        setup: dict[str, float] = {}
        if self.loop.started_at is not None:
            setup["start_s"] = clock["worker_started"] - self.loop.started_at  # trial driver → this worker's loop
        t = time.perf_counter()
        self.progress.note(phase="loading")
        self.device = ray.train.torch.get_device()  # the trial's device: every tensor of this worker lives there
        run = self.run = prepare(cfg, self.method_name, device=self.device)
        if self.loop.no_dropout:
            _no_dropout(run.model)
        setup["load_s"] = time.perf_counter() - t  # model, tokenizer, language SFTs
        t = time.perf_counter()
        # Rank 0 fills the tokenised-data cache first; the others then read it rather than racing to write it.
        if rank != 0:
            dist.barrier()
        train_ds = run.task.tokenize(run.task.load_train(run.data), run.tokenizer, cfg.data.max_seq_len)
        if rank == 0:
            dist.barrier()
        setup["data_s"] = time.perf_counter() - t  # training data read and tokenised (or read from the cache)
        first = {"dense": cfg.dense, "mask": cfg.mask_phase}.get(run.method.first_phase)
        plan = {"sparse": steps_for(cfg.sparse, len(train_ds)) if run.method.sparse_phase else 0}
        if first is not None and state is None and self.loop.theta1_mode != "load":
            plan[run.method.first_phase] = steps_for(first, len(train_ds))
        self.progress.note(plan=plan, method=self.method_name)
        space, model = run.space, run.model
        t = time.perf_counter()
        theta0, base = training_base(run)  # base = θ0 + the source language's SFT when there is one
        self.theta0, self.base = theta0, base
        head0 = space.head_snapshot()
        setup["base_s"] = time.perf_counter() - t  # θ0 kept (spilled to a temp file on the CPU)
        torch.manual_seed(cfg.seed + rank)  # ranks draw different dropout masks

        timings = {"dense_s": 0.0, "select_s": 0.0, "sparse_s": 0.0, "eval_s": 0.0}
        losses: dict[str, list[float]] = {}
        dist_info: dict[str, Any] = {"world_size": self.world, "resumed_from_step": 0}
        if state is None:
            mask, sel = self.first_phase_and_select(run, train_ds, base, timings, losses, dist_info)
        else:
            mask, sel = state.mask(), state.meta["info"]["selection"]
            info = state.meta["info"]
            timings.update(info["timings"])
            losses.update(info["losses"])
            dist_info.update(info["distributed"])
            dist_info["resumed_from_step"] = state.step
        timings.update(setup)
        nodes = _gather(ray.get_runtime_context().get_node_id())  # the Ray node of each rank, this attempt
        dist_info["node_ids"] = nodes
        dist_info["node_ids_per_attempt"] = [*dist_info.get("node_ids_per_attempt", []), nodes]

        meta = task_delta_meta(run, sel["k"])
        t = time.perf_counter()
        if run.method.sparse_phase:
            restore(space, base, head0)  # rewind to the base (head too); a restarted worker is there already
            seed_second_phase(cfg.seed, rank)  # a restarted worker then restores its checkpoint's generator state
            info = {"selection": sel, "timings": timings, "losses": losses, "distributed": dist_info}
            updater = self.sparse_phase(run, train_ds, mask, state, info, losses, dist_info)
            delta = delta_from_updater(updater, space, meta)
            optimizer_state = updater.state_bytes()
        elif run.method.gated_phase:
            if state is not None:
                raise RaysftError(f"{run.method.name} keeps no sparse checkpoint to resume from: start the trial afresh")
            seed_second_phase(cfg.seed, rank)
            gates = run.method.gates(self.scores)
            steps = steps_for(cfg.sparse, len(train_ds))
            loader, sampler = sharded_loader(train_ds, run.tokenizer, cfg.sparse.batch_size, cfg.seed + 1, rank, world)
            sync = FlatAllReduce(world, sampler)
            local = train_gated(model, space, gates, loader, steps, cfg.sparse, grad_sync=sync)
            losses["gated"] = _mean_losses(_gather(local))
            dist_info["gated_allreduce_bytes_per_step"] = sync.per_step()
            delta = gated_delta(space, base, gates, meta)
            optimizer_state = 2 * sel["k"] * 4
        else:
            delta = SparseDelta.from_params(space, base, mask, meta=meta)
            optimizer_state = 2 * space.n * 4
        timings["sparse_s"] += time.perf_counter() - t
        for key, v in self.callback_s.items():
            if key != "on_step_s":
                timings[key] = timings.get(key, 0.0) + v

        if self.loop.verify_sync:  # hashing all N weights on every rank costs seconds: only when asked
            dist_info["worker_param_hashes"] = _gather(param_hash(model))
        dist_info["sync_checks"] = self.sync_checks
        dist_info["checkpoints_saved"] = dist_info.get("checkpoints_saved", 0) + self.checkpoints

        t = time.perf_counter()
        self.progress.note(phase="eval", total=len(run.eval_langs))
        mine = run.eval_langs[rank :: self.world]
        splits = list(cfg.eval.splits)
        if self.loop.test_if_leading and "test" in splits and len(splits) > 1:
            first = [s for s in splits if s != "test"]  # dev first: it decides whether test is scored
            sub = dataclasses.replace(run, eval_langs=mine, cfg=_with_splits(cfg, first))
        else:
            first, sub = splits, dataclasses.replace(run, eval_langs=mine)
        loaders = eval_loaders(sub)
        passes: dict[str, float] = {"data": time.perf_counter() - t}  # the eval sets read and tokenised (cached)
        results = evaluate(sub, delta, theta0, timed_loaders(loaders, passes))
        if first != splits:
            dev = evaluation_metrics(run, merge_results([r for r, _ in _gather((results, None))], run.eval_langs))
            leading = self.test_leads(dev["avg"].get("dev"))
            dist_info["test_scored"] = leading
            if leading:
                t_test = time.perf_counter()
                test_sub = dataclasses.replace(run, eval_langs=mine, cfg=_with_splits(cfg, ["test"]))
                test_loaders = eval_loaders(test_sub)
                passes["data"] += time.perf_counter() - t_test
                more = evaluate(test_sub, delta, theta0, timed_loaders(test_loaders, passes))
                for kind, by_split in more.items():
                    results.setdefault(kind, {}).update(by_split)
        passes["total"] = time.perf_counter() - t
        gathered = _gather((results, passes))
        # The slowest rank's: what the trial waited for.
        timings["eval_s"] = max(p["total"] for _, p in gathered)
        timings["eval_data_s"] = max(p["data"] for _, p in gathered)
        for split in cfg.eval.splits:  # forward passes (predict) over each split, this rank's languages
            timings[f"eval_{split}_s"] = max(sum(v for k, v in p.items() if k.startswith(split + "/")) for _, p in gathered)
        dist_info["eval_pass_s"] = {k: round(v, 3) for _, p in gathered for k, v in p.items() if "/" in k}
        dist_info["eval_langs_per_rank"] = [run.eval_langs[r :: self.world] for r in range(self.world)]
        dist_info["clock"] = clock
        return self.finish(run, delta, sel, [r for r, _ in gathered], timings, losses, optimizer_state, dist_info)

    # ------------------------------------------------------------------------------------- phase 1 + selection
    def first_phase_and_select(self, run: Run, train_ds, theta0, timings, losses, dist_info):
        cfg, space, model, rank, world = self.cfg, run.space, run.model, self.rank, self.world
        ctx = SelectionContext(space, run.k, theta0, seed=cfg.seed)
        t = time.perf_counter()
        if run.method.first_phase == "dense" and self.loop.theta1_mode == "load":
            theta1 = load_theta1(self.loop.theta1_path)  # the cache's θ1: no dense phase to run
            restore(space, {p.name: theta1[p.name] for p in space.maskable}, {n: theta1[n] for n in space.head})
            del theta1
            dist_info["dense_cache"] = "reused"
            self.progress.note(phase="dense (reused)")
            if rank == 0:
                # The model holds θ1 until the rewind after the selection: the selection reads it there (no copy).
                ctx.theta1 = live_params(space)
            timings["theta1_read_s"] = time.perf_counter() - t
        elif run.method.first_phase == "dense":
            steps = steps_for(cfg.dense, len(train_ds))
            loader, sampler = sharded_loader(train_ds, run.tokenizer, cfg.dense.batch_size, cfg.seed, rank, world)
            # The same rows on every rank: the distinct ids of the whole training set, not of the rank's shard.
            rows = data_rows([train_ds], extra=[run.tokenizer.pad_token_id]) if cfg.dense.embedding_rows else None
            # θ0 here is the base the phase starts from: the embedding's weight is read back from it at the end
            with row_subset_embeddings(model, rows, cfg.dense.weight_decay, theta0, space) as sub:
                set_dense_trainable(space, model, sub)  # before wrapping: DDP registers the parameters that need grads
                kwargs = {"device_ids": [self.device.index]} if self.device.type == "cuda" else {}
                ddp = nn.parallel.DistributedDataParallel(model, **kwargs)
                counter = {"bytes": 0}
                ddp.register_comm_hook(counter, _counting_allreduce_hook)

                def loss_fn(m, batch):
                    loss = m(**batch).loss
                    return loss * sampler.scale if sampler.scale != 1.0 else loss

                t_steps = time.perf_counter()
                local = train_dense(
                    ddp, space, loader, steps, cfg.dense, loss_fn=loss_fn, reporter=self.progress, rows=sub
                )
                timings["dense_steps_s"] = time.perf_counter() - t_steps  # the dense phase's optimizer steps
                del ddp  # the sparse phase runs on the unwrapped module, without DDP's hooks
            losses["dense"] = _mean_losses(_gather(local))
            dist_info["dense_allreduce_bytes_per_step"] = counter["bytes"] // max(1, steps)
            if rank == 0:
                t_save = time.perf_counter()
                ctx.theta1 = live_params(space)  # the model holds θ1 until the rewind after the selection (no copy)
                if self.loop.theta1_mode == "save":
                    save_theta1(self.loop.theta1_path, ctx.theta1, space.head_snapshot())
                    dist_info["dense_cache"] = "computed"
                    publish_theta1(self.loop.theta1_actor, self.loop.theta1_key)
                timings["theta1_save_s"] = time.perf_counter() - t_save  # θ1 copied (and written to the cache)
        elif run.method.first_phase == "mask":
            steps = steps_for(cfg.mask_phase, len(train_ds))
            loader, sampler = sharded_loader(train_ds, run.tokenizer, cfg.mask_phase.batch_size, cfg.seed, rank, world)
            sync = FlatAllReduce(world, sampler)
            s = run.method.settings
            ctx.scores = train_mask_scores(
                model, space, loader, steps, cfg.mask_phase,
                score_init=s.score_init, score_lr=s.score_lr, grad_sync=sync, reporter=self.progress,
                names=run.method.score_params(space),
            )
            self.scores = ctx.scores  # every rank holds the same (all-reduced) scores: a gated phase needs them
            dist_info["mask_allreduce_bytes_per_step"] = sync.per_step()
        timings["dense_s"] = time.perf_counter() - t

        t = time.perf_counter()
        self.progress.note(phase="select")
        payload: list = [None]
        if rank == 0:  # selection runs once; its mask reaches every rank
            shared = self.loop.theta1_path if ctx.theta1 is not None else None
            cache_uri = selection_cache_path(shared, run.method.name) if shared else None
            selection = select_with_shared_cache(run.method, ctx, cache_uri)
            mask = {n: (None if i is None else i.detach().cpu()) for n, i in selection.mask.items()}
            sel = {
                "k": selection.k,
                **{k: v for k, v in selection.info.items() if isinstance(v, (int, float, str, list, dict))},
                "entries_per_group": entries_per_group(selection.mask, space),
                "zero_delta_selected": zero_delta_selected(selection.mask, ctx) if ctx.theta1 is not None else None,
            }
            payload = [(mask, _jsonable(sel))]
        dist.broadcast_object_list(payload, src=0)
        mask, sel = payload[0]
        timings["select_s"] = time.perf_counter() - t
        return mask, sel

    # ------------------------------------------------------------------------------------------- sparse phase
    def sparse_phase(self, run: Run, train_ds, mask: Mask, state: SparseState | None, info: dict, losses, dist_info):
        cfg, space, model, rank, world = self.cfg, run.space, run.model, self.rank, self.world
        steps = steps_for(cfg.sparse, len(train_ds))
        loader, sampler = sharded_loader(train_ds, run.tokenizer, cfg.sparse.batch_size, cfg.seed + 1, rank, world)
        sync = FlatAllReduce(world, sampler)
        every = self.loop.checkpoint_every or len(sampler)  # default: once per epoch
        start = state.step if state is not None else 0
        prior = list(losses.get("sparse", []))[:start]
        handles: dict[str, Any] = {}
        local: list[float] = []
        fail_rank = min(self.loop.fail_rank, world - 1)

        clock: dict[str, float] = {}

        def on_start(updater, head_opt, schedules):
            handles.update(updater=updater, head_opt=head_opt, schedules=schedules)
            if state is not None:
                restore_sparse_state(state, updater, head_opt, schedules, space, rank, world)
            clock["steps_from"] = time.perf_counter()

        def on_step(step: int, loss: float):
            t_cb = time.perf_counter()
            try:
                _on_step(step, loss)
            finally:
                self.callback_s["on_step_s"] += time.perf_counter() - t_cb

        def _on_step(step: int, loss: float):
            done = step + 1
            local.append(loss)
            if self.loop.verify_sync:
                hashes = _gather(param_hash(model))
                if len(set(hashes)) != 1:
                    raise RuntimeError(f"workers hold different weights after sparse step {done}: {hashes}")
                self.sync_checks += 1
            if done % every == 0 and done < steps:
                self.save_checkpoint(handles, space, done, steps, prior, local, info, sync)
            if (
                self.loop.fail_at_step == done and rank == fail_rank and self.loop.fail_marker
                and not os.path.exists(self.loop.fail_marker)
            ):
                Path(self.loop.fail_marker).touch()
                time.sleep(self.loop.fail_delay_s)
                os._exit(1)  # a lost worker, as a dead node would be

        rows = data_rows([train_ds], extra=[run.tokenizer.pad_token_id]) if cfg.sparse.embedding_rows else None
        updater, _ = train_sparse(
            model, space, mask, loader, steps, cfg.sparse,
            grad_sync=sync, on_step=on_step, on_start=on_start, start_step=start, reporter=self.progress, rows=rows,
        )
        # The optimizer steps (forward, backward, sync, update) of this attempt: the step loop less its callbacks.
        if "steps_from" in clock:
            steps_s = time.perf_counter() - clock["steps_from"] - self.callback_s["on_step_s"]
            info["timings"]["sparse_steps_s"] = info["timings"].get("sparse_steps_s", 0.0) + steps_s
        losses["sparse"] = prior + _mean_losses(_gather(local))
        if sync.calls:
            dist_info["allreduce_bytes_per_sparse_step"] = sync.per_step()
        dist_info["sparse_allreduce_entries"] = updater.k + sum(space.param(n).numel() for n in space.head)
        return updater

    def save_checkpoint(self, handles, space, done, steps, prior, local, info, sync) -> None:
        t = time.perf_counter()
        dev_before = self.callback_s["dev_s"]
        try:
            self._save_checkpoint(handles, space, done, steps, prior, local, info, sync)
        finally:
            self.callback_s["checkpoint_s"] += time.perf_counter() - t - (self.callback_s["dev_s"] - dev_before)

    def _save_checkpoint(self, handles, space, done, steps, prior, local, info, sync) -> None:
        import ray.train

        cuda = torch.cuda.get_rng_state() if self.device.type == "cuda" else None
        gathered = _gather(((torch.get_rng_state(), cuda), list(local)))
        rng = [g[0] for g in gathered]
        sparse_losses = prior + _mean_losses([g[1] for g in gathered])
        self.checkpoints += 1
        dist_info = {
            **info["distributed"],
            "allreduce_bytes_per_sparse_step": sync.per_step(),
            "checkpoints_saved": info["distributed"].get("checkpoints_saved", 0) + self.checkpoints,
        }
        info = {**info, "losses": {**info["losses"], "sparse": sparse_losses}, "distributed": dist_info}
        # K too: a multi-objective sweep's metrics are (objective, k), and Tune wants every report to carry both.
        metrics = {"phase": "sparse", "sparse_step": done, "loss": sparse_losses[-1], "k": info["selection"]["k"],
                   "peak_memory_bytes": max(_gather(peak_memory_bytes()))}
        if self.loop.report_dev:
            t = time.perf_counter()
            metrics["objective"] = self.dev_objective(handles["updater"])
            self.callback_s["dev_s"] += time.perf_counter() - t
            self.progress.note(dev=metrics["objective"])
        else:
            # Not measured at this checkpoint (nothing ranks on it): NaN, since Tune wants the searcher's metric in
            # every report. Tracking and the outcome tables skip non-finite objectives.
            metrics["objective"] = float("nan")
        if self.loop.dense_ready_at is not None:
            metrics["dense_ready_at"] = self.loop.dense_ready_at
        if self.rank == 0:
            with tempfile.TemporaryDirectory(prefix="raysft-ckpt-") as d:
                save_sparse_state(
                    Path(d), handles["updater"], handles["head_opt"], handles["schedules"], space,
                    step=done, steps=steps, rng=rng, info=info,
                )
                ray.train.report(
                    metrics, checkpoint=ray.train.Checkpoint.from_directory(d), checkpoint_dir_name=f"sparse-{done:07d}"
                )
        else:
            ray.train.report(metrics)

    def dev_objective(self, updater: SparseUpdater) -> float:
        """The targets' average dev score of the model the final evaluation will score (θ0 + the delta so far,
        composed with each language's SFT where it has one), split by language across the ranks."""
        run = self.run
        if not hasattr(self, "_dev_run"):
            mine = run.target_langs[self.rank :: self.world]
            dev_only = _with_splits(run.cfg, ["dev"])
            self._dev_run = dataclasses.replace(run, eval_langs=mine, cfg=dev_only)
            self._dev_loaders = eval_loaders(self._dev_run)
        scores = dev_scores(self._dev_run, updater, self.theta0, self.base, self._dev_loaders)
        merged: dict[str, float] = {}
        for part in _gather(scores):
            merged.update(part)
        return sum(merged.values()) / max(1, len(merged))

    def test_leads(self, dev: float | None) -> bool:
        """Whether this trial scores test: its dev objective (told to the board, the same on every rank) is at least
        the best one the other finished trials of its kind told. Decided on rank 0, the same answer everywhere.
        Without a board (or a score) it scores test: a report never lacks a test score it might need."""
        answer = [True]
        if self.rank == 0 and dev is not None and math.isfinite(dev):
            board = find_board() if self.loop.progress else None
            if board is not None:
                import ray

                kind = self.loop.test_if_leading == "default"
                try:
                    best = ray.get(board.leader_dev.remote(self.loop.trial_id, kind), timeout=30)
                    board.push.remote(self.loop.trial_id, {"final_dev": dev, "default": kind})
                    answer = [best is None or dev >= best]
                except Exception:  # a board that does not answer never costs a test score
                    answer = [True]
        dist.broadcast_object_list(answer, src=0)
        return bool(answer[0])

    # ------------------------------------------------------------------------------------------------- finish
    def finish(self, run: Run, delta, sel, per_rank, timings, losses, optimizer_state, dist_info) -> dict | None:
        import ray.train

        cfg = self.cfg
        evaluation = evaluation_metrics(run, merge_results(per_rank, run.eval_langs))
        metric = run.task.metric
        peak = max(_gather(peak_memory_bytes()))  # the largest worker's
        metrics = {
            "method": run.method.name,
            **device_info(run),
            "k": sel["k"],
            "n": run.space.n,
            "task": cfg.task,
            "metric": metric,
            **evaluation,
            "timings": timings,
            "selection": {k: v for k, v in sel.items() if k != "k"},
            "optimizer_state_bytes": optimizer_state,
            "delta_bytes": delta.nbytes(),
            "peak_memory_bytes": peak,
            "losses": {phase: [round(x, 5) for x in v] for phase, v in losses.items()},
            "source_lang_sft": run.source_lang in run.lang_sfts,
            "target_langs": run.target_langs,
            "distributed": dist_info,
        }
        summary = {
            "phase": "final", "resumed_from_step": dist_info["resumed_from_step"], "k": sel["k"],
            "objective": metrics["avg"].get("dev", float("nan")), "dense_cache": dist_info.get("dense_cache", "none"),
            "delta_bytes": metrics["delta_bytes"], "peak_memory_bytes": peak,
        }
        if self.loop.dense_ready_at is not None:
            summary["dense_ready_at"] = self.loop.dense_ready_at
        for split in metrics["avg"]:
            summary[f"avg/{split}"] = metrics["avg"][split]
            for lang, vals in metrics[split].items():
                summary[f"{metric}/{split}/{lang}"] = vals.get(metric)
        if self.rank != 0:
            ray.train.report(summary)
            return None
        dist_info.setdefault("clock", {})["final_report"] = time.time()
        self.progress.note(phase="final", dev=summary["objective"])
        if self.loop.out_dir:
            write_outputs(Path(self.loop.out_dir), delta, metrics, force=True)
        with tempfile.TemporaryDirectory(prefix="raysft-final-") as d:
            delta.save(Path(d) / DELTA_FILE)
            (Path(d) / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
            ray.train.report(summary, checkpoint=ray.train.Checkpoint.from_directory(d), checkpoint_dir_name="final")
        return metrics


def train_loop_per_worker(config: dict) -> dict | None:
    """The Ray Train V2 worker function: one trial, data-parallel. Rank 0 returns the metrics dict."""
    import ray.train

    ctx = ray.train.get_context()
    loop = LoopConfig.model_validate(config)
    return _Worker(loop, ctx.get_world_rank(), ctx.get_world_size()).run(ray.train.get_checkpoint())


# ------------------------------------------------------------------------------------------------------------ driver
def fit_trial(
    cfg: Config | dict,
    method: str | None = None,
    *,
    num_workers: int,
    cpus_per_worker: float = 1,
    gpus_per_worker: float = 0,
    storage_path: str | os.PathLike,
    name: str,
    max_failures: int = 1,
    controller_failure_limit: int = -1,
    checkpoint_every: int | None = None,
    out_dir: str | os.PathLike | None = None,
    extra: dict | None = None,
    callbacks: list | None = None,
) -> tuple[Path, dict]:
    """Fit one trial with a ``TorchTrainer``; returns (path of the task delta, rank 0's metrics)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    if not isinstance(cfg, Config):
        cfg = Config.model_validate(cfg)
    workers = WorkersConfig(num_workers=num_workers, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker)
    raw = {
        "cfg": cfg.model_dump(mode="json"), "method": method or cfg.method, "checkpoint_every": checkpoint_every,
        "out_dir": str(Path(out_dir).resolve()) if out_dir else None, **(extra or {}),
    }
    try:
        loop = LoopConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        raise RaysftError(f"invalid trial setting '{'.'.join(map(str, err['loc']))}': {err['msg']}") from None
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop.model_dump(),
        scaling_config=workers.scaling_config(),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage_path),
            failure_config=ray.train.FailureConfig(
                max_failures=max_failures, controller_failure_limit=controller_failure_limit
            ),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )
    result = trainer.fit()
    metrics = result.return_value
    if metrics is None and result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            metrics = json.loads((Path(d) / METRICS_FILE).read_text())
    if metrics is None:
        raise RaysftError(f"trial {name} finished without a result: see the Ray Train logs under {storage_path}")
    if loop.out_dir:
        return Path(loop.out_dir) / DELTA_FILE, metrics
    return Path(result.checkpoint.path) / DELTA_FILE, metrics
