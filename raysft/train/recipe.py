"""One training run in one process: first phase → select → sparse phase → composed evaluation.

The stages are separate functions so that the Ray Train edge can run the same code inside its workers.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from raysft import __version__
from raysft.config import Config, steps_for
from raysft.errors import RaysftError
from raysft.models import load_for_classification, load_tokenizer, model_id
from raysft.sft.delta import SparseDelta, base_metadata
from raysft.sft.groups import ParamSpace
from raysft.sft.mask import entries_per_group
from raysft.sft.methods import Method, SelectionContext, make_method
from raysft.tasks import Task, TaskData, get_task
from raysft.train.device import resolve_device
from raysft.train.loop import (
    Reporter,
    model_device,
    SilentReporter,
    predict,
    restore,
    seed_second_phase,
    train_dense,
    train_gated,
    train_mask_scores,
    train_sparse,
)
from raysft.train.rows import data_rows, row_subset_embeddings
from raysft.train.spill import SpilledParams, trim_heap


@dataclass
class Run:
    """Everything a run needs, built and checked before any training starts."""

    cfg: Config
    method: Method
    task: Task
    data: TaskData
    tokenizer: object
    model: torch.nn.Module
    space: ParamSpace
    k: int
    target_langs: list[str]
    eval_langs: list[str]
    source_lang: str | None = None
    lang_sfts: dict[str, SparseDelta] = field(default_factory=dict)
    lang_sft_warnings: list[str] = field(default_factory=list)  # printed, and logged with the run's metrics


class LangSFTWarning(UserWarning):
    """A language SFT the run expected but goes without (``lang_sfts_optional``), or a missing source-language SFT."""


def peak_memory_bytes() -> int:
    """This process's peak memory: resident set size (Linux reports KiB, macOS bytes), or the GPU's peak allocation
    when it is larger."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss = rss if sys.platform == "darwin" else rss * 1024
    gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() and torch.cuda.is_initialized() else 0
    return int(max(rss, gpu))


def task_data(cfg: Config) -> TaskData:
    return TaskData(
        data_dir=cfg.data.dir,
        source_lang=cfg.data.source_lang,
        target_langs=cfg.data.target_langs,
        max_train_examples=cfg.data.max_train_examples,
        max_eval_examples=cfg.data.max_eval_examples,
        seed=cfg.seed,
        source=cfg.data.source,
        use_all_source=cfg.data.use_all_source,
    )


def prepare(
    cfg: Config,
    method_name: str | None = None,
    device: str | torch.device | None = "cpu",  # host: the library default; the CLI passes --device
) -> Run:
    """Resolve and validate everything (task, data, model, method, K, language SFTs) before training; the model is
    moved to ``device`` (``auto``: CUDA when there is one), where every phase of the run then takes place."""
    method_name = method_name or cfg.method
    method = make_method(method_name, cfg.method_settings(method_name))
    task = get_task(cfg.task)
    data = task_data(cfg)
    task.check_data(data)  # a missing data folder (or hub dataset) is reported now, not after the model loads
    targets = task.target_langs(data)
    source = data.source_lang or task.source_lang
    eval_langs = targets + ([source] if source and source not in targets else [])
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    model = load_for_classification(cfg.model, task.num_labels).to(resolve_device(device))
    space = ParamSpace(model, freeze_embeddings=cfg.sft.freeze_embeddings, **method.space_options())
    k = cfg.sft.resolve_k(space.n) if method.uses_k else method.fixed_k(space)
    method.validate(space, k)
    run = Run(cfg, method, task, data, tokenizer, model, space, k, targets, eval_langs, source)
    if cfg.lang_sfts:
        warn: list[str] | None = [] if cfg.lang_sfts_optional else None
        run.lang_sfts = load_lang_sfts(cfg.lang_sfts, space, eval_langs, warn=warn)
        run.lang_sft_warnings = (warn or []) + check_source_lang_sft(run, cfg.lang_sfts_optional)
        for msg in run.lang_sft_warnings:
            warnings.warn(msg, LangSFTWarning, stacklevel=2)
    return run


def load_lang_sfts(
    source: str, space: ParamSpace, langs: list[str], *, warn: list[str] | None = None
) -> dict[str, SparseDelta]:
    """The language SFTs of ``langs`` that ``source`` has (a folder of <lang>.safetensors, the store's folder, or
    ``hub:<repo with {lang}>``). A folder or the store may lack a language (the evaluation reports it as missing);
    a hub source is looked up through :mod:`raysft.tasks.langcodes`: a language its table says is published but
    that cannot be found is an error, or, when ``warn`` is a list, a warning appended to it."""
    if source.startswith("hub:"):
        return _hub_lang_sfts(source.removeprefix("hub:"), space, langs, warn)
    from raysft.store import source_folder

    folder = source_folder(source)
    if source.startswith("store:") and not folder.exists():
        return {}  # nothing trained for this model yet: every language is reported as missing
    if not folder.is_dir():
        raise RaysftError(f"language SFT folder {folder} does not exist: fix lang_sfts or train them with raysft lang")
    out = {}
    for lang in langs:
        path = folder / f"{lang}.safetensors"
        if path.exists():
            out[lang] = check_lang_sft(SparseDelta.load(path, space, check_abs=False), path)
    return out


def check_lang_sft(delta: SparseDelta, path) -> SparseDelta:
    if delta.meta.get("kind") not in (None, "lang"):
        raise RaysftError(f"{path} is a {delta.meta.get('kind')} SFT, not a language SFT: point lang_sfts elsewhere")
    return delta


def check_source_lang_sft(run: Run, optional: bool) -> list[str]:
    """A hub source publishes the source language's SFT (composable-sft trains every task SFT on top of it: `en` for
    NLI, `id` for SA): not finding it is an error, or with ``lang_sfts_optional`` a warning (returned, to be printed
    and logged). A folder or the store holds it only if someone trained it: without it the task SFT trains from θ0
    (``source_lang_sft: false`` in the metrics)."""
    source = run.cfg.lang_sfts
    if not source or not run.source_lang or run.source_lang in run.lang_sfts:
        return []
    if not source.startswith("hub:"):
        return []  # metrics.json says so (source_lang_sft: false)
    from raysft.tasks.langcodes import hub_repo

    template = source.removeprefix("hub:")
    repo = hub_repo(template, run.source_lang)
    what = f"{repo} (the source language {run.source_lang}'s SFT)" if repo else (
        f"a language SFT for the source language {run.source_lang} (its source publishes none)"
    )
    msg = f"lang_sfts {source} has no {what}"
    if not optional:
        raise RaysftError(f"{msg}: go online or fix lang_sfts, or set lang_sfts_optional: true to train from θ0")
    return [f"{msg}: the task SFT trains from θ0 (lang_sfts_optional)"]


def _fetch_hub_sft(repo: str) -> Path | None:
    """``pytorch_diff.bin`` of a hub repo, or of a local folder laid out like one; None when it does not exist."""
    local = Path(repo).expanduser()
    if local.is_absolute() or repo.startswith("."):
        path = local / "pytorch_diff.bin"
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(hf_hub_download(repo, "pytorch_diff.bin"))
    except (RepositoryNotFoundError, EntryNotFoundError):
        return None
    except Exception as e:  # offline, or the hub is unreachable
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise RaysftError(
            f"cannot download the language SFT {repo} ({first}): go online, or train language SFTs with "
            "`raysft lang` and set lang_sfts: store"
        ) from None


def _hub_lang_sfts(template: str, space: ParamSpace, langs: list[str], warn: list[str] | None) -> dict[str, SparseDelta]:
    """composable-sft's published language SFTs (e.g. cambridgeltl/xlmr-lang-sft-{lang}-small, ``{lang}`` filled with
    the source's own code for the language), read through the tensors-only importer. ``template`` may also be a
    local folder laid out like the hub repos (``/mirror/cambridgeltl/xlmr-lang-sft-{lang}-small/pytorch_diff.bin``)."""
    from raysft.sft.delta import import_composable_sft
    from raysft.tasks.langcodes import hub_repo

    out = {}
    for lang in langs:
        repo = hub_repo(template, lang)
        if repo is None:
            continue  # the source publishes none for this language: reported as missing
        path = _fetch_hub_sft(repo)
        if path is None:
            msg = f"the language SFT {repo} for {lang} does not exist"
            if warn is None:
                raise RaysftError(f"{msg}: fix lang_sfts or raysft/tasks/langcodes.py, or set lang_sfts_optional: true")
            warn.append(f"{msg}: {lang} is scored task-only (lang_sfts_optional)")
            continue
        delta = import_composable_sft(path, space)
        delta.meta.update({"kind": "lang", "language": lang, "base_model": repo})
        out[lang] = delta
    return out


def training_base(run: Run, spill: bool = True) -> tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]:
    """(θ0, the base the task SFT trains from). When the source language has a language SFT, it is applied (without
    its head) and left applied, so the task SFT learns on top of it, as composable-sft does; evaluation starts
    again from θ0.

    With ``spill`` (and the model on the CPU) the snapshots live in an unlinked temp file (:class:`SpilledParams`)
    and are read back one tensor at a time, bitwise: θ0 costs no copy of the model in memory."""
    space = run.space
    on_cpu = all(space.param(p.name).device.type == "cpu" for p in space.maskable)  # host: spill only host models
    if spill and on_cpu:
        def snapshot():
            return SpilledParams((p.name, space.param(p.name)) for p in space.maskable)
    else:
        snapshot = space.snapshot
    theta0 = snapshot()
    source = run.lang_sfts.get(run.source_lang)
    if source is None:
        return theta0, theta0
    source.apply(space, with_abs=False)
    return theta0, snapshot()


@contextmanager
def activation_checkpointing(model: torch.nn.Module, on: bool):
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
    enable(**{f"{key}_checkpointing_kwargs": {"use_reentrant": False}})
    try:
        yield
    finally:
        disable()


def live_params(space: ParamSpace) -> dict[str, torch.Tensor]:
    """The maskable parameters as they are now, as detached views (no copy): θ1 for a selection that runs before the
    rewind."""
    return {p.name: space.param(p.name).detach() for p in space.maskable}


def loader(ds, tokenizer, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    collate = DataCollatorWithPadding(tokenizer)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen if shuffle else None, collate_fn=collate)


def eval_loaders(run: Run) -> dict[tuple[str, str], DataLoader]:
    out = {}
    for lang in run.eval_langs:
        for split in run.cfg.eval.splits:
            ds = run.task.tokenize(run.task.load_eval(lang, split, run.data), run.tokenizer, run.cfg.data.max_seq_len)
            # Sorted by length, batches pad little: evaluation is most of a CPU run's forward passes.
            lengths = [len(x) for x in ds["input_ids"]]
            ds = ds.select(sorted(range(len(ds)), key=lengths.__getitem__))
            out[(lang, split)] = loader(ds, run.tokenizer, run.cfg.eval.batch_size, shuffle=False, seed=0)
    return out


def evaluate(
    run: Run, task_delta: SparseDelta, theta0: dict, loaders: dict, composed_only: bool = False,
    reporter: Reporter = SilentReporter(),
) -> dict[str, dict[str, dict[str, dict]]]:
    """Rewind to θ0 and apply the task delta once; per language evaluate θ0 + task, then, when the language has an
    SFT, apply it without its head, evaluate θ0 + task + lang and revert (bitwise back to θ0 + task). Returns
    ``{"task_only" | "composed": {split: {lang: metrics}}}``; a language without an SFT has no composed entry.
    ``composed_only`` (a sweep's intermediate objective) skips the task-only score of languages that have an SFT.
    ``reporter`` sees one step (loss NaN) per language and split scored."""
    restore(run.space, theta0)
    splits = run.cfg.eval.splits
    results: dict[str, dict[str, dict[str, dict]]] = {kind: {s: {} for s in splits} for kind in EVAL_KINDS}
    # (kind, language, its SFT or None) in scoring order: the same list counts the reporter's steps
    passes = []
    for lang in run.eval_langs:
        lang_delta = run.lang_sfts.get(lang)
        if lang_delta is None or not composed_only:
            passes.append(("task_only", lang, None))
        if lang_delta is not None:
            passes.append(("composed", lang, lang_delta))
    reporter.start("eval", len(splits) * len(passes))

    def score(kind: str, lang: str) -> None:
        for split in splits:
            preds, labels = predict(run.model, loaders[(lang, split)])
            results[kind][split][lang] = run.task.metrics(preds, labels)
            reporter.step(float("nan"))

    with task_delta.apply(run.space):
        for kind, lang, lang_delta in passes:
            if lang_delta is None:
                score(kind, lang)
            else:
                with lang_delta.apply(run.space, with_abs=False):
                    score(kind, lang)
    reporter.end()
    return results


EVAL_KINDS = ("task_only", "composed")


def merge_results(parts: list[dict], langs: list[str]) -> dict[str, dict[str, dict[str, dict]]]:
    """Per-rank results of :func:`evaluate` (each rank evaluated some languages) in ``langs`` order."""
    merged: dict = {}
    for part in parts:
        for kind, by_split in part.items():
            for split, by_lang in by_split.items():
                merged.setdefault(kind, {}).setdefault(split, {}).update(by_lang)
    return {kind: {s: {lang: v[lang] for lang in langs if lang in v} for s, v in by_split.items()}
            for kind, by_split in merged.items()}


def evaluation_metrics(run: Run, results: dict) -> dict:
    """The metrics.json entries of an evaluation. ``dev``/``test`` (and the sweep's objective) are the composed
    scores where a language has an SFT (θ0 + lang + task is the product) and task-only elsewhere; both are kept in
    full under ``task_only`` and ``composed``, with their targets' averages, and languages without an SFT are named."""
    metric = run.task.metric
    primary = {
        split: {lang: results["composed"][split].get(lang, m) for lang, m in by_lang.items()}
        for split, by_lang in results["task_only"].items()
    }
    out = {
        "dev": primary.get("dev", {}),
        "test": primary.get("test", {}),
        "avg": {split: average(primary[split], run.target_langs, metric) for split in primary},
        "task_only": results["task_only"],
        "composed": results["composed"],
        "avg_task_only": {s: average(v, run.target_langs, metric) for s, v in results["task_only"].items()},
        "composition": composition_summary(results, run.target_langs, metric),
        "lang_sfts": sorted(run.lang_sfts),
        "lang_sft_source": run.cfg.lang_sfts,
        "lang_sft_missing": [lang for lang in run.target_langs if lang not in run.lang_sfts] if run.cfg.lang_sfts else [],
        "lang_sft_warnings": list(run.lang_sft_warnings),
    }
    return out


def composition_summary(results: dict, targets: list[str], metric: str) -> dict:
    """Task-only vs composed averaged over the same languages (the targets that have a language SFT), and the gain."""
    langs = [lang for lang in targets if any(lang in v for v in results["composed"].values())]
    if not langs:
        return {"langs": []}
    alone = {s: average(results["task_only"][s], langs, metric) for s in results["composed"]}
    both = {s: average(v, langs, metric) for s, v in results["composed"].items()}
    return {"langs": langs, "task_only": alone, "composed": both, "gain": {s: both[s] - alone[s] for s in both}}


def average(results: dict[str, dict[str, float]], langs: list[str], metric: str) -> float:
    vals = [results[lang][metric] for lang in langs if lang in results]
    return sum(vals) / len(vals) if vals else float("nan")


def task_delta_meta(run: Run, k: int) -> dict[str, str]:
    """The metadata every task delta carries (design §5)."""
    cfg = run.cfg
    return {
        "kind": "task", "method": run.method.name, "base_model": model_id(cfg.model),
        **base_metadata(run.space), "k": str(k), "task": cfg.task,
        "language": run.data.source_lang or run.task.source_lang or "", "created_by": f"raysft {__version__}",
        "config": cfg.model_dump_json(),
    }


def delta_from_updater(updater, space: ParamSpace, meta: dict[str, str]) -> SparseDelta:
    """The trained δ at the masked entries (exactly what the model holds: θ0 + δ) and the head as abs values."""
    mask = updater.mask()
    return SparseDelta(diffs={n: (mask[n], v) for n, v in updater.values().items()}, abs=space.head_snapshot(), meta=meta)


def gated_delta(space: ParamSpace, base: dict, gates: dict, meta: dict[str, str]) -> SparseDelta:
    """A gated phase's result as a delta: the gates folded into the weights (dense diffs of the gated weights, the
    model left at base + δ bitwise) and the head as abs values."""
    from raysft.sft.mask_scores import fold_gates

    diffs = {n: (None, d) for n, d in fold_gates(space, base, gates).items()}
    return SparseDelta(diffs=diffs, abs=space.head_snapshot(), meta=meta)


def run_training(run: Run, reporter: Reporter = SilentReporter(), *, low_memory: bool = True) -> tuple[SparseDelta, dict]:
    """One run. ``low_memory`` (default) keeps θ0 on disk (:func:`training_base`), selects on the live θ1 (no copy)
    and frees each phase's optimizer before the next: the same delta, bitwise (bench/memory.py measures the peak)."""
    cfg, space, model = run.cfg, run.space, run.model
    train_ds = run.task.tokenize(run.task.load_train(run.data), run.tokenizer, cfg.data.max_seq_len)
    loaders = eval_loaders(run)
    theta0, base = training_base(run, spill=low_memory)
    head0 = space.head_snapshot()
    timings = {"dense_s": 0.0, "select_s": 0.0, "sparse_s": 0.0, "eval_s": 0.0}
    losses: dict[str, list[float]] = {}
    ctx = SelectionContext(space, run.k, base, seed=cfg.seed)

    t = time.perf_counter()
    if run.method.first_phase == "dense":
        steps = steps_for(cfg.dense, len(train_ds))
        train_loader = loader(train_ds, run.tokenizer, cfg.dense.batch_size, True, cfg.seed)
        rows = data_rows([train_ds], extra=[run.tokenizer.pad_token_id]) if cfg.dense.embedding_rows else None
        with (
            activation_checkpointing(model, cfg.dense.checkpoint_activations),
            row_subset_embeddings(model, rows, cfg.dense.weight_decay, base if low_memory else None, space) as sub,
        ):
            losses["dense"] = train_dense(model, space, train_loader, steps, cfg.dense, reporter=reporter, rows=sub)
        if low_memory:
            gc.collect()  # the dense AdamW state (2 copies of the model) must not wait for a later collection
            trim_heap()
        ctx.theta1 = live_params(space) if low_memory else space.snapshot()
    elif run.method.first_phase == "mask":
        steps = steps_for(cfg.mask_phase, len(train_ds))
        train_loader = loader(train_ds, run.tokenizer, cfg.mask_phase.batch_size, True, cfg.seed)
        s = run.method.settings
        ctx.scores = train_mask_scores(
            model, space, train_loader, steps, cfg.mask_phase,
            score_init=s.score_init, score_lr=s.score_lr, reporter=reporter, names=run.method.score_params(space),
        )
    timings["dense_s"] = time.perf_counter() - t

    t = time.perf_counter()
    selection = run.method.select(ctx)
    timings["select_s"] = time.perf_counter() - t
    zero_selected = zero_delta_selected(selection.mask, ctx) if ctx.theta1 is not None else None
    ctx.theta1 = None  # live views (low_memory) are rewound below; a snapshot is not needed any more

    t = time.perf_counter()
    meta = task_delta_meta(run, selection.k)
    if run.method.sparse_phase:
        restore(space, base, head0)  # rewind to θ0 (head too), then train only the selected entries
        seed_second_phase(cfg.seed)
        steps = steps_for(cfg.sparse, len(train_ds))
        train_loader = loader(train_ds, run.tokenizer, cfg.sparse.batch_size, True, cfg.seed + 1)
        with activation_checkpointing(model, cfg.sparse.checkpoint_activations):
            rows = data_rows([train_ds], extra=[run.tokenizer.pad_token_id]) if cfg.sparse.embedding_rows else None
            updater, losses["sparse"] = train_sparse(
                model, space, selection.mask, train_loader, steps, cfg.sparse, reporter=reporter, rows=rows
            )
        delta = delta_from_updater(updater, space, meta)
        optimizer_state = updater.state_bytes()
        del updater
        if low_memory:
            gc.collect()
            trim_heap()
    elif run.method.gated_phase:
        # M fixed, W trained with W ⊙ M in the forward pass (no rewind: W is still the base after the mask phase)
        gates = run.method.gates(ctx.scores)
        seed_second_phase(cfg.seed)
        steps = steps_for(cfg.sparse, len(train_ds))
        train_loader = loader(train_ds, run.tokenizer, cfg.sparse.batch_size, True, cfg.seed + 1)
        losses["gated"] = train_gated(model, space, gates, train_loader, steps, cfg.sparse, reporter=reporter)
        delta = gated_delta(space, base, gates, meta)
        optimizer_state = 2 * selection.k * 4
    else:
        delta = SparseDelta.from_params(space, base, selection.mask, meta=meta)
        optimizer_state = 2 * space.n * 4
    timings["sparse_s"] = time.perf_counter() - t

    t = time.perf_counter()
    results = evaluate(run, delta, theta0, loaders, reporter=reporter)
    timings["eval_s"] = time.perf_counter() - t

    metrics = {
        "method": run.method.name,
        **device_info(run),
        "k": selection.k,
        "n": space.n,
        "task": cfg.task,
        "metric": run.task.metric,
        **evaluation_metrics(run, results),
        "timings": timings,
        "selection": {
            **{k: v for k, v in selection.info.items() if isinstance(v, (int, float, str, list, dict))},
            "entries_per_group": entries_per_group(selection.mask, space),
            "zero_delta_selected": zero_selected,
        },
        "optimizer_state_bytes": optimizer_state,
        "delta_bytes": delta.nbytes(),
        "losses": {phase: [round(x, 5) for x in v] for phase, v in losses.items()},
        "source_lang_sft": run.source_lang in run.lang_sfts,
        "target_langs": run.target_langs,
    }
    return delta, metrics


def device_info(run: Run) -> dict:
    """Where the run trained and in which precision per phase (metrics.json; the distributed run's too)."""
    cfg = run.cfg
    return {
        "device": str(model_device(run.model)),
        "precision": {"dense": cfg.dense.precision, "mask": cfg.mask_phase.precision, "sparse": cfg.sparse.precision},
    }


def zero_delta_selected(mask, ctx: SelectionContext) -> int:
    """Selected entries that the dense phase did not move at all (|Δ| = 0): ties filled in by position."""
    zero = 0
    for name, idx in mask.items():
        d = ctx.theta1[name].reshape(-1) - ctx.theta0[name].reshape(-1)
        zero += int((d if idx is None else d[idx]).eq(0).sum())
    return zero


def write_outputs(out: Path, delta: SparseDelta, metrics: dict, force: bool = False) -> None:
    """Write into a staging folder beside ``out`` and rename at the end, so ``out`` is never half-written."""
    if out.exists() and any(out.iterdir()) and not force:
        raise RaysftError(f"output folder {out} exists and is not empty: choose another --out or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        delta.save(staging / "task_sft.safetensors")
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_out(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise RaysftError(f"output folder {out} exists and is not empty: choose another --out or pass --force")
