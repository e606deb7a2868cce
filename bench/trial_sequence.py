"""A sweep trial's training sequence, as the Ray Train worker runs it, without Ray: for the GPU check.

A sweep trial runs :func:`raysft.train.phases.train_sft` with the :class:`~raysft.train.phases.Hooks` that
``raysft.distributed.train_workers._Worker.hooks`` builds; this script builds the same hooks from the module's public
helpers (``save_theta1``/``load_theta1``, ``select_with_shared_cache``, ``save_sparse_state``/``read_checkpoint``/
``restore_sparse_state``), minus what needs Ray (publishing θ1 to the cache actor, ``ray.train.report``, the progress
board, dev scores), on one device. For every method in ``raysft.sft.methods.METHODS``:

- ``computing``: the dense phase (or the method's own first phase), θ1 saved to a temp file, the selection through
  the shared selection cache (DeFT-X writes its SVD factors beside θ1), the sparse phase with a checkpoint saved
  mid-phase the way the worker saves one;
- ``reusing`` (methods with a dense first phase): θ1 loaded from that file instead of the dense phase and the
  selection reading the cache, with the same settings: the delta must equal the computing trial's bitwise;
- ``reusing-rank`` (DeFT-X): another rank setting (a rank sweep's next trial) reading the cached SVD factors; its
  mask must equal a selection computed afresh from the same θ0/θ1;
- ``resumed`` (methods with a sparse phase): a fresh model, the checkpoint read back with ``read_checkpoint`` and the
  sparse phase resumed from it (``Resume(..., restore=restore_sparse_state)``): the delta must equal the computing
  trial's bitwise.

On every trial it checks that the tensors a trial keeps (θ0/θ1 handed to the selection, the SVD cache after it is
read back, the mask, the sparse K-vectors and optimizer state, restored ones included, and the model's parameters)
live on ``--device``. Prints one JSON line per method and trial (wall time, the sequence's timings, peak device
memory, ``on_device``, the checks) and a summary line; exits 1 when any check fails.
    python bench/trial_sequence.py --device cpu --shape tiny           # seconds, on a CPU
    python bench/trial_sequence.py --device cuda --shape xlmr-base     # the GPU check (bench/gpu_check.sh)
On CUDA the bitwise checks run with ``torch.use_deterministic_algorithms(True, warn_only=True)`` (the warnings name
any kernel that has no deterministic version); ``--no-deterministic`` leaves the default kernels.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# bench/select.py shadows the standard library's `select`: keep this folder behind the stdlib on sys.path.
_HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (read when its handle is made)

import argparse
import gc
import json
import resource
import tempfile
import time
import traceback
from contextlib import contextmanager

import torch
from torch.utils.data import default_collate

from _common import SHAPES, PeakDeviceMemory, random_batches, random_classifier, sync
from raysft.config import PhaseConfig
from raysft.sft.delta import SparseDelta, base_metadata
from raysft.sft.groups import ParamSpace
from raysft.sft.methods import METHODS, SelectionContext, make_method
from raysft.train.device import resolve_device
from raysft.train.phases import SFTJob, SparseRun, train_sft
from raysft.distributed import train_workers as tw  # must import without Ray (the GPU machine has none)

# Per shape: K, examples, batch, sequence length and the phases' step caps (every phase runs `steps` steps; the
# checkpoint lands after half of the sparse phase).
SIZES = {
    "tiny": dict(k=6_941, examples=32, batch=8, seq_len=16, steps=4),
    "xlmr-base": dict(k=14_155_776, examples=64, batch=16, seq_len=128, steps=4),
}


def settings_for(name: str, space: ParamSpace, energy: float | None = None) -> dict | None:
    if name == "sc-sft":  # 10 % for the embeddings, the rest spread over the layers
        layers = [g for g in space.groups if g != "embeddings"]
        return {"budget": {"embeddings": 0.1, **{g: 0.9 / len(layers) for g in layers}}}
    if name == "deft-x":
        return {"rank_strategy": "energy", "energy": energy or 0.9}
    if name in ("ada-sft", "ada-sft-topk"):
        return {"score_init": 3.0, "score_lr": 0.1}
    return None


class Checker:
    """Collects the tensors found off the run's device (and failed checks) for one trial."""

    def __init__(self, device: torch.device):
        self.device = device
        self.off: list[str] = []
        self.checked = 0

    def tensors(self, label: str, tensors) -> None:
        items = tensors.items() if hasattr(tensors, "items") else enumerate(tensors)
        for name, t in items:
            if isinstance(t, (tuple, list)):
                self.tensors(f"{label}/{name}", {i: x for i, x in enumerate(t)})
                continue
            if not torch.is_tensor(t):
                continue
            self.checked += 1
            if t.device.type != self.device.type:
                self.off.append(f"{label}/{name}: {t.device}")

    def optimizer(self, label: str, opt) -> None:
        if opt is None:
            return
        for pid, st in opt.state.items():
            # AdamW keeps its step count as a host scalar unless capturable/fused: that one is the host's by design
            self.tensors(f"{label}/{pid}", {k: v for k, v in st.items() if k != "step"})

    def model(self, label: str, model) -> None:
        self.tensors(f"{label}/param", dict(model.named_parameters()))
        self.tensors(f"{label}/buffer", dict(model.named_buffers()))


def same_delta(a: SparseDelta, b: SparseDelta) -> tuple[bool, float]:
    """Bitwise equality of two deltas (indices, values, head), and the largest difference found."""
    if set(a.diffs) != set(b.diffs) or set(a.abs) != set(b.abs):
        return False, float("inf")
    same, worst = True, 0.0
    for n, (ia, va) in a.diffs.items():
        ib, vb = b.diffs[n]
        if (ia is None) != (ib is None) or (ia is not None and not torch.equal(ia, ib)):
            return False, float("inf")
        if not torch.equal(va, vb):
            same = False
            worst = max(worst, float((va.float() - vb.float()).abs().max()))
    for n, ta in a.abs.items():
        if not torch.equal(ta, b.abs[n]):
            same = False
            worst = max(worst, float((ta.float() - b.abs[n].float()).abs().max()))
    return same, worst


def compare_delta(got: SparseDelta, ref: SparseDelta, line: dict, fails: list[str], what: str) -> None:
    """Record in the JSON line whether ``got`` is ``ref`` bitwise (and by how much it differs otherwise)."""
    same, worst = same_delta(got, ref)
    line["delta_bitwise_equal_to_computing"] = same
    if not same:
        line["delta_max_abs_diff"] = worst
        fails.append(f"delta differs from {what}")


class DirCheckpoint:
    """What ``read_checkpoint`` reads from a ``ray.train.Checkpoint``: a folder (here a local one)."""

    def __init__(self, path: Path):
        self.path = str(path)

    @contextmanager
    def as_directory(self):
        yield self.path


def rng_states(device: torch.device) -> list:
    """Each rank's generator states, as the worker gathers them for a checkpoint (one rank here)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return [(torch.get_rng_state(), cuda)]


class Trial:
    """One sweep trial's hooks, as ``_Worker.hooks`` builds them (rank 0 of 1), minus Ray."""

    def __init__(self, job: SFTJob, device, check: Checker, *, theta1_path: str | None, mode: str | None,
                 state=None, checkpoint_every: int | None = None, ckpt_root: Path | None = None, fresh_select=None):
        self.job, self.device, self.check = job, device, check
        self.checkpoints: list[Path] = []
        self.select_info: dict = {}
        self.fresh_same: bool | None = None
        method, space = job.method, job.space
        # The worker's own hooks (raysft.distributed.train_workers.trial_hooks); the bench adds its device checks.
        hooks = tw.trial_hooks(method, space, device, theta1_path=theta1_path, theta1_mode=mode, state=state)
        if hooks.select is not None:
            shared_select = hooks.select

            def select(m, ctx: SelectionContext):
                check.tensors("select/theta0", ctx.theta0)
                check.tensors("select/theta1", ctx.theta1)
                selection = shared_select(m, ctx)
                cached = {k: v for c in ctx.cache.values() if isinstance(c, dict) for k, v in c.items()}
                check.tensors("select/cache", cached)  # DeFT-X's SVD factors, read back from the file or computed
                check.tensors("select/mask", {n: i for n, i in selection.mask.items() if i is not None})
                self.select_info = dict(selection.info)
                if fresh_select is not None:  # the same selection computed without the cache
                    fresh = fresh_select.select(SelectionContext(space, ctx.k, ctx.theta0, theta1=ctx.theta1,
                                                                 seed=ctx.seed))
                    self.fresh_same = list(fresh.mask) == list(selection.mask) and all(
                        (i is None and fresh.mask[n] is None) or torch.equal(i, fresh.mask[n])
                        for n, i in selection.mask.items())
                return selection

            hooks.select = select
        info: dict = {}
        handles: dict = {}
        local: list[float] = []
        seen = {"first_step": True}

        def on_selection(record: dict) -> None:
            resumed = state.meta["info"] if state is not None else {"timings": {}, "losses": {}}
            info.update(selection=record["selection"], timings={**record["timings"], **resumed["timings"]},
                        losses={**resumed["losses"], **record["losses"]}, distributed={"world_size": 1})

        def on_start(sparse: SparseRun) -> None:
            handles["sparse"] = sparse
            u = sparse.updater
            check.tensors("sparse_start/updater", {"delta": u.delta, "reference": u.reference,
                                                   **{f"idx/{n}": i for n, i in zip(u.names, u.indices)}})
            check.optimizer("sparse_start/opt", u.optimizer)  # a resumed phase's restored state
            check.optimizer("sparse_start/head_opt", sparse.head_opt)
            check.model("sparse_start/model", job.model)

        def on_step(step: int, loss: float) -> None:
            done = step + 1
            local.append(loss)
            sparse = handles["sparse"]
            if seen.pop("first_step", False):
                check.optimizer("sparse_step/opt", sparse.updater.optimizer)
                check.optimizer("sparse_step/head_opt", sparse.head_opt)
            every = checkpoint_every or sparse.steps_per_epoch
            if ckpt_root is not None and done % every == 0 and done < sparse.steps:
                start = state.step if state is not None else 0
                prior = list(info["losses"].get("sparse", []))[:start]
                ckpt_info = {**info, "losses": {**info["losses"], "sparse": prior + list(local)}}
                folder = ckpt_root / f"sparse-{done:07d}"
                folder.mkdir(parents=True, exist_ok=True)
                tw.save_sparse_state(folder, sparse.updater, sparse.head_opt, sparse.schedules, space,
                                     step=done, steps=sparse.steps, rng=rng_states(device), info=ckpt_info)
                self.checkpoints.append(folder)

        hooks.on_selection, hooks.on_sparse_start, hooks.on_sparse_step = on_selection, on_start, on_step
        self.hooks = hooks


class Bench:
    def __init__(self, args):
        self.args = args
        self.device = resolve_device(args.device)
        self.size = dict(SIZES[args.shape])
        if args.k is not None:
            self.size["k"] = args.k
        self.model = random_classifier(args.shape, self.device)
        self.initial = {k: v.detach().clone() for k, v in self.model.state_dict().items()}  # θ0, every trial's start
        batches = random_batches(self.size["examples"] // self.size["batch"], SHAPES[args.shape]["vocab_size"],
                                 self.size["batch"], self.size["seq_len"])
        self.data = [{k: v[i] for k, v in b.items()} for b in batches for i in range(len(b["labels"]))]
        self.rows = torch.unique(torch.stack([x["input_ids"] for x in self.data]))
        steps, batch = self.size["steps"], self.size["batch"]
        self.phase = PhaseConfig(epochs=1, max_steps=steps, lr=1e-3, batch_size=batch, precision=args.precision)
        self.lines: list[dict] = []

    def job(self, name: str, energy: float | None = None) -> SFTJob:
        """A fresh trial's job: the model back at θ0, a new method and parameter space (the worker builds both)."""
        self.model.load_state_dict(self.initial)
        self.model.train()
        probe = make_method(name)
        space = ParamSpace(self.model, **probe.space_options())
        method = make_method(name, settings_for(name, space, energy))
        k = min(self.size["k"], space.n) if method.uses_k else method.fixed_k(space)
        return SFTJob(model=self.model, space=space, method=method, k=k, dataset=self.data,
                      collate=lambda seed: default_collate, dense=self.phase, mask=self.phase, sparse=self.phase,
                      seed=0, rows=self.rows, meta={"kind": "task", "method": name, **base_metadata(space)})

    def run(self, name: str, kind: str, job: SFTJob, **trial_kw):
        check = Checker(self.device)
        trial = Trial(job, self.device, check, **trial_kw)
        line = {"bench": "trial_sequence", "method": name, "trial": kind, "device": str(self.device),
                "shape": self.args.shape, "precision": self.args.precision}
        trained = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        base = job.space.snapshot()  # θ0 on the run's device (the worker's training_base)
        check.tensors("base", base)
        try:
            with PeakDeviceMemory(self.device) as mem:
                sync(self.device)
                t = time.perf_counter()
                trained = train_sft(job, base, hooks=trial.hooks)
                sync(self.device)
                line["wall_s"] = round(time.perf_counter() - t, 3)
            check.model("after/model", job.model)
            line.update(first_phase=trained.first_phase, k=trained.selection["k"],
                        select_cache=trial.select_info.get("select_cache"),
                        timings={k: round(v, 3) for k, v in trained.timings.items()},
                        peak_device_bytes=mem.peak,
                        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
            if trial.fresh_same is not None:
                line["cached_select_same_as_fresh"] = trial.fresh_same
        except Exception as e:  # reported on the line; the other trials still run
            line["error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        line["on_device"] = not check.off
        line["tensors_checked"] = check.checked
        if check.off:
            line["off_device"] = check.off[:8]
        del base
        return trained, trial, line

    def emit(self, line: dict, failures: list[str]) -> None:
        line["ok"] = not failures and "error" not in line and line["on_device"]
        if failures:
            line["failed"] = failures
        self.lines.append(line)
        print(json.dumps(line), flush=True)

    def method(self, name: str, tmp: Path) -> None:
        cls = METHODS[name]
        theta1_path = str(tmp / f"theta1-{name}.safetensors")
        ckpt_root = tmp / f"ckpt-{name}"
        every = max(1, self.size["steps"] // 2)

        # (a) computing: dense phase, θ1 saved, selection through the shared cache, a checkpoint mid-phase
        first, trial, line = self.run(name, "computing", self.job(name), theta1_path=theta1_path, mode="save",
                                      checkpoint_every=every, ckpt_root=ckpt_root)
        fails = []
        if first is not None:
            if cls.first_phase == "dense":
                if not Path(theta1_path).exists():
                    fails.append("theta1 not saved")
                want = "computed" if name == "deft-x" else "none"
                if trial.select_info.get("select_cache") != want:
                    fails.append(f"select_cache {trial.select_info.get('select_cache')!r}, expected {want!r}")
            if cls.sparse_phase and not trial.checkpoints:
                fails.append("no sparse checkpoint saved")
            line["checkpoints"] = len(trial.checkpoints)
        self.emit(line, fails)
        if first is None:
            return
        ref = first.delta

        # (b) reusing: θ1 from the file, the selection from the cache; same settings: the same delta bitwise
        if cls.first_phase == "dense":
            trained, trial, line = self.run(name, "reusing", self.job(name), theta1_path=theta1_path, mode="load")
            fails = []
            if trained is not None:
                if trained.first_phase != "dense (reused)":
                    fails.append(f"first_phase {trained.first_phase!r}")
                want = "reused" if name == "deft-x" else "none"
                if trial.select_info.get("select_cache") != want:
                    fails.append(f"select_cache {trial.select_info.get('select_cache')!r}, expected {want!r}")
                compare_delta(trained.delta, ref, line, fails, "the computing trial's")
            self.emit(line, fails)
            del trained
            if name == "deft-x":  # a rank sweep's next trial: another energy, the SVD factors from the cache
                job = self.job(name, energy=0.5)
                fresh = make_method(name, settings_for(name, job.space, 0.5))
                trained, trial, line = self.run(name, "reusing-rank", job, theta1_path=theta1_path, mode="load",
                                                fresh_select=fresh)
                fails = []
                if trained is not None:
                    if trial.select_info.get("select_cache") != "reused":
                        fails.append(f"select_cache {trial.select_info.get('select_cache')!r}, expected 'reused'")
                    if trial.fresh_same is not True:
                        fails.append("the cached selection differs from a fresh one")
                self.emit(line, fails)
                del trained

        # (c) resumed: a fresh worker reads the mid-phase checkpoint and finishes the sparse phase
        if cls.sparse_phase and first.first_phase != "resumed":
            fails = []
            ckpts = sorted(ckpt_root.glob("sparse-*"))
            if not ckpts:
                self.emit({"bench": "trial_sequence", "method": name, "trial": "resumed", "device": str(self.device),
                           "shape": self.args.shape, "on_device": True}, ["no checkpoint to resume from"])
                return
            state = tw.read_checkpoint(DirCheckpoint(ckpts[0]))
            trained, trial, line = self.run(name, "resumed", self.job(name), theta1_path=None, mode=None, state=state,
                                            checkpoint_every=every, ckpt_root=tmp / f"ckpt-{name}-resumed")
            line["resumed_from_step"] = state.step
            if trained is not None:
                if trained.first_phase != "resumed":
                    fails.append(f"first_phase {trained.first_phase!r}")
                compare_delta(trained.delta, ref, line, fails, "the uninterrupted trial's")
            self.emit(line, fails)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda")
    ap.add_argument("--shape", default="tiny", choices=sorted(SIZES))
    ap.add_argument("--k", type=int, default=None, help="K (default: the shape's)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: every method)")
    ap.add_argument("--no-deterministic", action="store_true",
                    help="on CUDA, leave the default (possibly non-deterministic) kernels")
    args = ap.parse_args()
    bench = Bench(args)
    if bench.device.type == "cuda" and not args.no_deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    t0 = time.perf_counter()
    cuda = bench.device.type == "cuda"
    name = torch.cuda.get_device_name(bench.device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"trial sequence on {bench.device} ({name}), shape {args.shape}: N = {ParamSpace(bench.model).n:,}, "
          f"{bench.size}", flush=True)
    with tempfile.TemporaryDirectory(prefix="raysft-trial-seq-") as d:
        for m in args.methods.split(","):
            try:
                bench.method(m.strip(), Path(d))
            except Exception as e:
                traceback.print_exc()
                bench.emit({"bench": "trial_sequence", "method": m, "trial": "?", "device": str(bench.device),
                            "error": f"{type(e).__name__}: {e}", "on_device": False}, [])
    bad = [f"{x['method']}/{x['trial']}" for x in bench.lines if not x["ok"]]
    print(json.dumps({"bench": "trial_sequence_summary", "device": str(bench.device), "shape": args.shape,
                      "trials": len(bench.lines), "failed": bad, "ok": not bad,
                      "wall_s": round(time.perf_counter() - t0, 1)}), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
