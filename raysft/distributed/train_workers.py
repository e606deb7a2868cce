"""Ray Train edge: one trial run by Ray Train V2 workers, a thin adapter around the training sequence.

Per worker (:func:`train_loop_per_worker`), over the torch.distributed group that ``TorchTrainer`` sets up (gloo on
CPU, NCCL on GPU), the worker runs :func:`raysft.train.phases.train_sft`, the same function ``raysft train`` runs,
with a :class:`raysft.train.parallel.Comm` of its rank and world (sharded global batches, DDP in the dense phase, one
flat all-reduce of the K-vector and head gradients per sparse step, the selection on rank 0) and what only a trial
adds, as :class:`raysft.train.phases.Hooks`:

- the sweep's dense-phase cache: θ1 loaded instead of the dense phase, or saved after it and published to the cache
  actor; DeFT-X's SVD factors shared beside θ1 (:func:`select_with_shared_cache`);
- checkpoints every ``checkpoint_every`` sparse steps (default: once per epoch) with only the K-sized state: mask
  indices, delta, the K vector's AdamW moments, the head and its optimizer, the schedules, the step and each rank's
  RNG (``sparse_state.safetensors`` + ``sparse_state.json``); each also reports the dev objective ASHA reads. A
  restarted worker group resumes the sparse phase from the latest one (``Resume``) with the same data order;
- evaluation: rank r evaluates languages r, r+W, …; the results are gathered to rank 0, which returns the metrics
  (``run_training``'s schema plus a ``distributed`` section) and reports a final checkpoint holding
  ``task_sft.safetensors`` and ``metrics.json`` (also written to ``out_dir`` when given).

Nothing under ``raysft/sft``, ``raysft/train``, ``raysft/tasks`` or ``raysft/models`` imports Ray; this module
imports it inside the functions that run in a Ray worker or driver, so it loads without Ray (bench/trial_sequence.py
runs its hooks on a GPU machine that has none).
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
from collections.abc import Callable
from typing import Any, Literal

import pyarrow.fs as pafs
import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from raysft import storage
from raysft.config import Config, steps_for
from raysft.distributed.progress import BoardReporter, NullReporter, find_board
from raysft.errors import RaysftError
import safetensors.torch

from raysft.sft.groups import ParamSpace
from raysft.sft.mask import Mask
from raysft.sft.methods import SelectionContext
from raysft.sft.sparse import SparseUpdater
from raysft.train.device import onto
from raysft.train.loop import restore
from raysft.train.parallel import Comm, mean_losses
from raysft.train.phases import Hooks, Resume, SparseRun, Trained, delta_from_updater, train_sft
from raysft.train.spill import HEAP_SLACK, keep_heap_top
from raysft.train.recipe import (
    Run,
    average,
    eval_loaders,
    evaluate,
    evaluation_metrics,
    merge_results,
    peak_memory_bytes,
    prepare,
    primary_scores,
    run_metrics,
    task_job,
    training_base,
    write_outputs,
)

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
    # The sweep's dense-phase cache: "save" θ1 (maskable + head) after the dense phase, or "load" it from
    # theta1_path instead of running the dense phase.
    theta1_path: str | None = None
    theta1_mode: Literal["save", "load"] | None = None
    # With "save" in a sweep: where this computing attempt writes θ1 (its own name; None: theta1_path), the dense-phase
    # cache actor's name, θ1's key and the attempt's id, to report the dense phase's progress and to publish θ1 the
    # moment it is written (waiting trials start their sparse phase then, not when this trial ends).
    theta1_save_path: str | None = None
    theta1_actor: str | None = None
    theta1_key: str | None = None
    theta1_attempt: str | None = None
    dense_ready_at: float | None = None  # a sweep: when (time.time()) this trial's dense phase was settled (θ1 ready or ours to compute)
    started_at: float | None = None  # a sweep: when (time.time()) the trial driver started (timings["start_s"] from it)
    report_dev: bool = False  # each sparse checkpoint also reports the targets' average dev score ("objective")
    # A sweep's trial (tune.test_every_trial false): the final evaluation scores dev first and scores test only when
    # that dev leads this trial's kind ("default" or "searched") in the sweep's dev record (an actor of this name).
    test_if_leading: Literal["default", "searched"] | None = None
    dev_record_actor: str | None = None
    # A sweep's trial: rank 0 tells the sweep's progress board (raysft.distributed.progress) its phase and step.
    trial_id: str | None = None
    progress: bool = False


def workers_from_dict(raw: dict | None) -> WorkersConfig:
    try:
        return WorkersConfig.model_validate(raw or {})
    except ValidationError as e:
        err = e.errors()[0]
        raise RaysftError(f"invalid workers setting '{'.'.join(map(str, err['loc']))}': {err['msg']}") from None


# ---------------------------------------------------------------------------------------------------------- helpers
def save_theta1(uri: str, theta1: dict[str, torch.Tensor], head: dict[str, torch.Tensor]) -> None:
    """θ1 (maskable parameters and head) for the dense-phase cache, written atomically to the sweep's storage
    (any URI: a local path, s3://, gs://…)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in {**theta1, **head}.items()}
    storage.write_atomic(uri, safetensors.torch.save(tensors))


def publish_theta1(actor: str | None, key: str | None, attempt: str | None) -> bool | None:
    """Tell the sweep's dense-phase cache (a named actor) that this attempt wrote θ1: True once published, False when
    refused (the attempt lost its lease: the cache removed its file). None: nobody to tell (outside a sweep), or the
    cache did not answer (the trial driver calls done() again when the trial ends)."""
    if not actor or not key or not attempt:
        return None
    import ray

    try:
        return bool(ray.get(ray.get_actor(actor).done.remote(key, attempt)))
    except Exception:  # a publication lost here costs waiters one lease, never this trial
        return None


class DenseProgress:
    """Rank 0's dense-step hook in a sweep's computing trial: tells the dense-phase cache its step, so that the lease
    proves progress (a trial whose workers hang loses it). Fire and forget, the first step at once, then at most one
    message per ``every_s``."""

    def __init__(self, actor: str, key: str, attempt: str, every_s: float, clock=time.monotonic):
        self.actor, self.key, self.attempt, self.every_s, self.clock = actor, key, attempt, every_s, clock
        self.cache = None
        self.last: float | None = None

    def __call__(self, step: int, loss: float) -> None:
        now = self.clock()
        if self.last is not None and now - self.last < self.every_s:
            return
        self.last = now
        import ray

        try:
            if self.cache is None:
                self.cache = ray.get_actor(self.actor)
            self.cache.progress.remote(self.key, self.attempt, step + 1)
        except Exception:  # a lost report costs at most the lease, never the trial
            pass


def scores_test(actor: str | None, trial_id: str | None, default: bool, dev: float) -> bool:
    """Whether a sweep's trial scores the test sets: its final dev objective, told to the sweep's dev record (a named
    actor, :mod:`raysft.sweep.dev_record`), is at least the best the other finished trials of its kind told. With no
    record (a Train run outside a sweep) or one that does not answer: it does, so a report never lacks a test score
    it might need."""
    if not actor or trial_id is None:
        return True
    import ray

    try:
        return bool(ray.get(ray.get_actor(actor).leads.remote(trial_id, default, dev), timeout=30))
    except Exception:
        return True


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


def select_with_shared_cache(method, ctx: SelectionContext, cache_uri: str | None, device: torch.device):
    """``method.select(ctx)``, with the method's per-θ1 cache read from ``cache_uri`` first (when a trial sharing
    this θ1 wrote it; its tensors reach ``device``, the run's, through :func:`raysft.train.device.onto`) and written
    back when the selection added to it: a DeFT-X rank sweep factors each matrix once per θ1.
    ``selection.info["select_cache"]`` says which: "none" | "computed" | "reused" | "extended"."""
    loaded: set[str] = set()
    if cache_uri and storage.exists(cache_uri):
        try:
            tensors = safetensors.torch.load(storage.read_bytes(cache_uri))
        except Exception:  # a damaged cache only costs the recomputation
            tensors = {}
        if method.load_cache(onto(tensors, device), ctx.cache):
            loaded = set(tensors)
    selection = method.select(ctx)
    status = "none"
    if cache_uri:
        tensors = method.cache_tensors(ctx.cache)
        if tensors and not set(tensors) <= loaded:
            storage.write_atomic(cache_uri, safetensors.torch.save(onto(tensors, "cpu")))  # host: file contents
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


def _no_dropout(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


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
    with checkpoint.as_directory() as d:
        return read_checkpoint_folder(Path(d), name=checkpoint.path)


def read_checkpoint_folder(d: Path, name: str | None = None) -> SparseState | dict:
    """What :func:`save_sparse_state` (or a finished run's final report) wrote into the folder ``d``."""
    from safetensors.torch import load_file

    name = name or str(d)
    if (d / METRICS_FILE).exists() and (d / DELTA_FILE).exists():
        return json.loads((d / METRICS_FILE).read_text())
    if not (d / STATE_JSON).exists():
        raise RaysftError(f"checkpoint {name} holds no {STATE_JSON}: it was not written by raysft")
    meta = json.loads((d / STATE_JSON).read_text())
    if meta.get("format") != STATE_FORMAT:
        raise RaysftError(f"checkpoint {name} has format {meta.get('format')!r}, expected {STATE_FORMAT}")
    return SparseState({k: v.clone() for k, v in load_file(str(d / STATE_TENSORS)).items()}, meta)


@torch.no_grad()
def restore_sparse_state(
    state: SparseState, updater: SparseUpdater, head_opt, schedules: list, space: ParamSpace, rank: int, world: int
) -> None:
    m = state.meta
    if list(updater.names) != m["mask_names"] or updater.k != m["k"]:
        raise RaysftError("the sparse checkpoint's mask does not match the rebuilt one: start the trial afresh")
    device = updater.delta.device
    # The K-sized state reaches the run's device; the generator states stay host tensors (torch's set_rng_state).
    t = {**state.tensors, **onto({k: v for k, v in state.tensors.items() if not k.startswith("rng")}, device)}
    updater.delta.copy_(t["delta"])
    for name in space.head:
        space.param(name).copy_(t[f"head/{name}"])  # copy_ into the parameter: its device
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


def trial_hooks(method, space: ParamSpace, device, *, theta1_path: str | None, theta1_mode: str | None,
                state: SparseState | None = None, rank: int = 0, world: int = 1,
                on_theta1_saved: Callable[[], None] | None = None, theta1_save_path: str | None = None) -> Hooks:
    """The hooks a trial's workers put around the training sequence, without Ray (bench/trial_sequence.py builds
    the same): the sweep's dense-phase cache (θ1 loaded from ``theta1_path`` instead of the dense phase, or saved
    after it to ``theta1_save_path``, default ``theta1_path``, then ``on_theta1_saved``), DeFT-X's SVD factors
    shared beside θ1, and a sparse phase resumed from ``state``."""
    hooks = Hooks()
    if state is None and method.first_phase == "dense" and theta1_path:
        cache_uri = selection_cache_path(theta1_path, method.name)
        hooks.select = lambda m, ctx: select_with_shared_cache(m, ctx, cache_uri, device)
        if theta1_mode == "load":
            hooks.load_theta1 = lambda: load_theta1(theta1_path)
        elif theta1_mode == "save":
            def save(theta1, head):
                save_theta1(theta1_save_path or theta1_path, theta1, head)
                if on_theta1_saved is not None:
                    on_theta1_saved()

            hooks.save_theta1 = save
    if state is not None:
        hooks.resume = Resume(
            state.mask(), state.meta["info"]["selection"], state.step,
            restore=lambda u, h, s: restore_sparse_state(state, u, h, s, space, rank, world),
        )
    return hooks


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
        comm = self.comm = Comm(rank, world, self.device)
        run = self.run = prepare(cfg, self.method_name, device=self.device)
        if self.loop.no_dropout:
            _no_dropout(run.model)
        setup["load_s"] = time.perf_counter() - t  # model, tokenizer, language SFTs
        t = time.perf_counter()
        # Rank 0 fills the tokenised-data cache first; the others then read it rather than racing to write it.
        if rank != 0:
            comm.barrier()
        train_ds = run.task.tokenize(run.task.load_train(run.data), run.tokenizer, cfg.data.max_seq_len)
        if rank == 0:
            comm.barrier()
        setup["data_s"] = time.perf_counter() - t  # training data read and tokenised (or read from the cache)
        first = {"dense": cfg.dense, "mask": cfg.mask_phase}.get(run.method.first_phase)
        plan = {"sparse": steps_for(cfg.sparse, len(train_ds)) if run.method.sparse_phase else 0}
        if first is not None and state is None and self.loop.theta1_mode != "load":
            plan[run.method.first_phase] = steps_for(first, len(train_ds))
        self.progress.note(plan=plan, method=self.method_name)
        space = run.space
        t = time.perf_counter()
        theta0, base = training_base(run)  # base = θ0 + the source language's SFT when there is one
        self.theta0, self.base = theta0, base
        setup["base_s"] = time.perf_counter() - t  # θ0 kept (spilled to a temp file on the CPU)

        dist_info: dict[str, Any] = {"world_size": self.world, "resumed_from_step": 0}
        hooks = self.hooks(run, state, dist_info)
        resumed: dict = {"timings": {}, "losses": {}}
        if state is not None:
            info = state.meta["info"]
            resumed = {"timings": dict(info["timings"]), "losses": dict(info["losses"])}
            dist_info.update(info["distributed"])
            dist_info["resumed_from_step"] = state.step
        nodes = comm.gather(ray.get_runtime_context().get_node_id())  # the Ray node of each rank, this attempt
        dist_info["node_ids"] = nodes
        dist_info["node_ids_per_attempt"] = [*dist_info.get("node_ids_per_attempt", []), nodes]
        self.record = {"dist_info": dist_info, "resumed": resumed}

        trained = train_sft(task_job(run, train_ds), base, comm=comm, reporter=self.progress, hooks=hooks)
        delta, sel = trained.delta, trained.selection
        timings = {**trained.timings, **resumed["timings"], **setup, "sparse_s": trained.timings["sparse_s"]}
        for key in ("dense_s", "select_s"):  # a resumed attempt ran neither: the first attempt's
            timings[key] = resumed["timings"].get(key, trained.timings[key])
        if "sparse_steps_s" in trained.timings:  # the optimizer steps of this attempt: the step loop less its hooks
            steps_s = trained.timings["sparse_steps_s"] - self.callback_s["on_step_s"]
            timings["sparse_steps_s"] = resumed["timings"].get("sparse_steps_s", 0.0) + steps_s
        losses = {**resumed["losses"], **trained.losses}
        if hooks.resume is not None:
            losses["sparse"] = list(resumed["losses"].get("sparse", []))[: hooks.resume.step] + trained.losses["sparse"]
        for phase, key in (("dense", "dense_allreduce_bytes_per_step"), ("mask", "mask_allreduce_bytes_per_step"),
                           ("sparse", "allreduce_bytes_per_sparse_step"), ("gated", "gated_allreduce_bytes_per_step")):
            if trained.allreduce_bytes.get(phase) is not None:
                dist_info[key] = trained.allreduce_bytes[phase]
        if run.method.sparse_phase:
            dist_info["sparse_allreduce_entries"] = sel["k"] + sum(space.param(n).numel() for n in space.head)
        for key, v in self.callback_s.items():
            if key != "on_step_s":
                timings[key] = timings.get(key, 0.0) + v

        if self.loop.verify_sync:  # hashing all N weights on every rank costs seconds: only when asked
            dist_info["worker_param_hashes"] = comm.gather(param_hash(run.model))
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
            # only the targets' dev average decides (not the whole metrics record, with its bootstrap intervals)
            merged = merge_results([r for r, _ in comm.gather((results, None))], run.eval_langs)
            dev = primary_scores(merged).get("dev")
            leading = self.test_leads(None if dev is None else average(dev, run.target_langs, run.task.metric))
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
        gathered = comm.gather((results, passes))
        # The slowest rank's: what the trial waited for.
        timings["eval_s"] = max(p["total"] for _, p in gathered)
        timings["eval_data_s"] = max(p["data"] for _, p in gathered)
        for split in cfg.eval.splits:  # forward passes (predict) over each split, this rank's languages
            timings[f"eval_{split}_s"] = max(sum(v for k, v in p.items() if k.startswith(split + "/")) for _, p in gathered)
        dist_info["eval_pass_s"] = {k: round(v, 3) for _, p in gathered for k, v in p.items() if "/" in k}
        dist_info["eval_langs_per_rank"] = [run.eval_langs[r :: self.world] for r in range(self.world)]
        dist_info["clock"] = clock
        trained.losses, trained.timings = losses, timings
        return self.finish(run, trained, [r for r, _ in gathered], dist_info)

    # ------------------------------------------------------------------------------------------- the seams
    def hooks(self, run: Run, state: SparseState | None, dist_info: dict) -> Hooks:
        """What a Ray trial adds around the training sequence: the sweep's dense-phase cache (θ1 loaded, or saved
        and published), DeFT-X's per-θ1 selection cache beside it, a resumed sparse phase, and the sparse phase's
        checkpoints (with the dev objective ASHA reads) and sync checks."""
        loop, space, rank, world = self.loop, run.space, self.rank, self.world
        mode = loop.theta1_mode
        if mode == "save" and state is None and run.method.first_phase == "dense":
            # A worker group restarted after an earlier one of this trial published θ1 reads it: the dense phase is
            # not computed (nor published) twice. Rank 0 decides for all: every rank must run the same first phase.
            if self.comm.broadcast(storage.exists(loop.theta1_path) if rank == 0 else None):
                mode = "load"

        def saved() -> None:
            dist_info["dense_cache"] = "computed"
            publish_theta1(loop.theta1_actor, loop.theta1_key, loop.theta1_attempt)

        hooks = trial_hooks(run.method, space, self.device, theta1_path=loop.theta1_path, theta1_mode=mode,
                            state=state, rank=rank, world=world, on_theta1_saved=saved,
                            theta1_save_path=loop.theta1_save_path)
        if hooks.load_theta1 is not None:
            dist_info["dense_cache"] = "reused"
        in_sweep = loop.theta1_actor and loop.theta1_key and loop.theta1_attempt
        if hooks.save_theta1 is not None and rank == 0 and in_sweep:
            # Often enough that progress alone would keep the lease (and the stall bound) satisfied.
            tune = self.cfg.tune
            hooks.on_dense_step = DenseProgress(loop.theta1_actor, loop.theta1_key, loop.theta1_attempt,
                                                every_s=min(tune.dense_lease_s, tune.dense_stall_s) / 4)
        info: dict = {}
        handles: dict[str, Any] = {}
        local: list[float] = []

        def on_selection(record: dict) -> None:
            resumed = self.record["resumed"]
            info.update(
                selection=record["selection"],
                timings={**record["timings"], **resumed["timings"]} if state is not None else record["timings"],
                losses={**resumed["losses"], **record["losses"]},
                distributed=self.record["dist_info"],
            )

        def on_start(sparse: SparseRun) -> None:
            handles["sparse"] = sparse

        def on_step(step: int, loss: float) -> None:
            t_cb = time.perf_counter()
            try:
                done = step + 1
                local.append(loss)
                if loop.verify_sync:
                    hashes = self.comm.gather(param_hash(run.model))
                    if len(set(hashes)) != 1:
                        raise RuntimeError(f"workers hold different weights after sparse step {done}: {hashes}")
                    self.sync_checks += 1
                sparse = handles["sparse"]
                every = loop.checkpoint_every or sparse.steps_per_epoch  # default: once per epoch
                if done % every == 0 and done < sparse.steps:
                    start = state.step if state is not None else 0
                    prior = list(info["losses"].get("sparse", []))[:start]
                    self.save_checkpoint(sparse, space, done, prior, local, info)
            finally:
                self.callback_s["on_step_s"] += time.perf_counter() - t_cb

        hooks.on_selection, hooks.on_sparse_start, hooks.on_sparse_step = on_selection, on_start, on_step
        return hooks

    def save_checkpoint(self, sparse: SparseRun, space, done, prior, local, info) -> None:
        t = time.perf_counter()
        dev_before = self.callback_s["dev_s"]
        try:
            self._save_checkpoint(sparse, space, done, prior, local, info)
        finally:
            self.callback_s["checkpoint_s"] += time.perf_counter() - t - (self.callback_s["dev_s"] - dev_before)

    def _save_checkpoint(self, sparse: SparseRun, space, done, prior, local, info) -> None:
        import ray.train

        cuda = torch.cuda.get_rng_state() if self.device.type == "cuda" else None
        gathered = self.comm.gather(((torch.get_rng_state(), cuda), list(local)))
        rng = [g[0] for g in gathered]
        sparse_losses = prior + mean_losses([g[1] for g in gathered])
        self.checkpoints += 1
        dist_info = {
            **info["distributed"],
            "checkpoints_saved": info["distributed"].get("checkpoints_saved", 0) + self.checkpoints,
        }
        info = {**info, "losses": {**info["losses"], "sparse": sparse_losses}, "distributed": dist_info}
        # K too: a multi-objective sweep's metrics are (objective, k), and Tune wants every report to carry both.
        metrics = {"phase": "sparse", "sparse_step": done, "loss": sparse_losses[-1], "k": info["selection"]["k"],
                   "peak_memory_bytes": max(self.comm.gather(peak_memory_bytes()))}
        if self.loop.report_dev:
            t = time.perf_counter()
            metrics["objective"] = self.dev_objective(sparse.updater)
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
                    Path(d), sparse.updater, sparse.head_opt, sparse.schedules, space,
                    step=done, steps=sparse.steps, rng=rng, info=info,
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
        for part in self.comm.gather(scores):
            merged.update(part)
        return sum(merged.values()) / max(1, len(merged))

    def test_leads(self, dev: float | None) -> bool:
        """Whether this trial scores test (:func:`scores_test`; its dev objective is the same on every rank).
        Decided on rank 0, the same answer everywhere. Without a score it scores test."""
        answer = [True]
        if self.rank == 0 and dev is not None and math.isfinite(dev):
            answer = [scores_test(self.loop.dev_record_actor, self.loop.trial_id,
                                  self.loop.test_if_leading == "default", dev)]
        dist.broadcast_object_list(answer, src=0)
        return bool(answer[0])

    # ------------------------------------------------------------------------------------------------- finish
    def finish(self, run: Run, trained: Trained, per_rank, dist_info) -> dict | None:
        import ray.train

        delta, sel = trained.delta, trained.selection
        metric = run.task.metric
        evaluation = evaluation_metrics(run, merge_results(per_rank, run.eval_langs))
        peak = max(self.comm.gather(peak_memory_bytes()))  # the largest worker's
        metrics = {
            **run_metrics(run, trained, evaluation, trained.timings),
            "peak_memory_bytes": peak,
            "distributed": dist_info,
        }
        summary = {
            "phase": "final", "resumed_from_step": dist_info["resumed_from_step"], "k": sel["k"],
            "objective": metrics["avg"].get("dev", float("nan")), "dense_cache": dist_info.get("dense_cache", "none"),
            "delta_bytes": metrics["delta_bytes"], "peak_memory_bytes": peak,
        }
        if self.loop.dense_ready_at is not None:
            summary["dense_ready_at"] = self.loop.dense_ready_at
        dev_ci = metrics["avg_ci"].get("dev")
        if dev_ci is not None:  # the objective's bootstrap interval over the dev examples (metrics.json: avg_ci)
            summary["objective_low"], summary["objective_high"] = dev_ci["low"], dev_ci["high"]
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
    keep_heap_top(HEAP_SLACK)  # a Ray Train worker of raysft's own: its allocator settings are ours to choose
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
