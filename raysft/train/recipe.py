"""One training run in one process: first phase → select → sparse phase → composed evaluation.

The stages are separate functions so that the Ray Train edge can run the same code inside its workers.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from raysft import __version__
from raysft.config import Config
from raysft.errors import RaysftError
from raysft.models import load_for_classification, load_tokenizer, model_id
from raysft.sft.delta import SparseDelta, base_metadata
from raysft.sft.groups import ParamSpace
from raysft.sft.methods import Method, make_method
from raysft.stats import bootstrap_average
from raysft.tasks import Task, TaskData, get_task
from raysft.train.device import resolve_device
from raysft.train.loop import Reporter, SilentReporter, model_device, predict, restore
from raysft.train.phases import SFTJob, Trained, snapshot, train_sft
from raysft.train.rows import data_rows


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


def _hub_lang_sfts(template: str, space: ParamSpace, langs: list[str], warn: list[str] | None) -> dict[str, SparseDelta]:
    """The language SFTs of hub repos (``{lang}`` filled with the source's own code for the language, e.g.
    composable-sft's cambridgeltl/xlmr-lang-sft-{lang}-small), each laid out as composable-sft's repos
    (``pytorch_diff.bin``, through the tensors-only importer) or as raysft's (one raysft delta at the top level), read
    from the Hugging Face cache or downloaded (:mod:`raysft.models.sft_source`). ``template`` may also be a local
    folder laid out like the hub repos (``/mirror/cambridgeltl/xlmr-lang-sft-{lang}-small/pytorch_diff.bin``)."""
    from raysft.models.sft_source import find_sft_file, is_composable, load_delta
    from raysft.tasks.langcodes import hub_repo

    out = {}
    for lang in langs:
        repo = hub_repo(template, lang)
        if repo is None:
            continue  # the source publishes none for this language: reported as missing
        try:
            path = find_sft_file(f"hub:{repo}")
        except RaysftError as e:
            raise RaysftError(f"language SFT for {lang}: {e}; or train language SFTs with `raysft lang` and set "
                              "lang_sfts: store") from None
        if path is None:
            msg = f"the language SFT {repo} for {lang} does not exist"
            if warn is None:
                raise RaysftError(f"{msg}: fix lang_sfts or raysft/tasks/langcodes.py, or set lang_sfts_optional: true")
            warn.append(f"{msg}: {lang} is scored task-only (lang_sfts_optional)")
            continue
        delta = check_lang_sft(load_delta(path, space, check_abs=False), f"hub:{repo}")
        if is_composable(path):  # composable-sft's files record neither their kind nor their base
            delta.meta.update({"kind": "lang", "language": lang, "base_model": repo})
        out[lang] = delta
    return out


def training_base(run: Run, spill: bool = True) -> tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]:
    """(θ0, the base the task SFT trains from). When the source language has a language SFT, it is applied (without
    its head) and left applied, so the task SFT learns on top of it, as composable-sft does; evaluation starts
    again from θ0. With ``spill`` the snapshots live on disk (:func:`raysft.train.phases.snapshot`)."""
    theta0 = snapshot(run.space, spill)
    source = run.lang_sfts.get(run.source_lang)
    if source is None:
        return theta0, theta0
    source.apply(run.space, with_abs=False)
    return theta0, snapshot(run.space, spill)


def task_job(run: Run, train_ds) -> SFTJob:
    """The task SFT's job for :func:`raysft.train.phases.train_sft` (every path that trains a task SFT builds it
    here): padded batches, the model's own loss, the training data's token ids as the embedding's rows."""
    cfg = run.cfg
    collate = DataCollatorWithPadding(run.tokenizer)
    return SFTJob(
        model=run.model, space=run.space, method=run.method, k=run.k, dataset=train_ds, collate=lambda seed: collate,
        dense=cfg.dense, mask=cfg.mask_phase, sparse=cfg.sparse, seed=cfg.seed,
        rows=data_rows([train_ds], extra=[run.tokenizer.pad_token_id]) if needs_rows(cfg) else None,
        meta=task_delta_meta(run, run.k),
    )


def needs_rows(cfg: Config) -> bool:
    return cfg.dense.embedding_rows or cfg.sparse.embedding_rows


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
            ds = ds.select(length_order(ds))
            out[(lang, split)] = loader(ds, run.tokenizer, run.cfg.eval.batch_size, shuffle=False, seed=0)
    return out


def length_order(ds) -> list[int]:
    """A tokenized Dataset's row positions, shortest first (ties in order), its lengths read as Arrow."""
    import numpy as np
    import pyarrow.compute as pc

    lengths = pc.list_value_length(ds.with_format("arrow")["input_ids"]).to_numpy(zero_copy_only=False)
    return np.argsort(lengths, kind="stable").tolist()


def evaluate(
    run: Run, task_delta: SparseDelta, theta0: dict, loaders: dict, composed_only: bool = False,
    reporter: Reporter = SilentReporter(),
) -> dict[str, dict[str, dict[str, dict]]]:
    """Rewind to θ0 and apply the task delta once; per language evaluate θ0 + task, then, when the language has an
    SFT, apply it without its head, evaluate θ0 + task + lang and revert (bitwise back to θ0 + task). Returns
    ``{"task_only" | "composed": {split: {lang: metrics}}}``; a language without an SFT has no composed entry.
    ``outputs`` beside them holds ``{split: {lang: (preds, labels)}}`` (numpy) of the model each language's dev/test
    score comes from (composed where it has an SFT), for the score's bootstrap interval (not written out).
    ``composed_only`` (a sweep's intermediate objective) skips the task-only score of languages that have an SFT.
    ``reporter`` sees one step (loss NaN) per language and split scored."""
    restore(run.space, theta0)
    splits = run.cfg.eval.splits
    results: dict[str, dict[str, dict[str, dict]]] = {kind: {s: {} for s in splits} for kind in EVAL_KINDS}
    results[OUTPUTS] = {s: {} for s in splits}
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
            # composed is scored after task-only: what stays is the model the language's dev/test score is of
            results[OUTPUTS][split][lang] = (preds.numpy(), labels.numpy())
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
OUTPUTS = "outputs"  # evaluate()'s predictions and labels, merged across ranks like the kinds' metrics


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
    primary = primary_scores(results)
    out = {
        "dev": primary.get("dev", {}),
        "test": primary.get("test", {}),
        "avg": {split: average(primary[split], run.target_langs, metric) for split in primary},
        "avg_ci": average_intervals(run, results),
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


def primary_scores(results: dict) -> dict[str, dict[str, dict]]:
    """{split: {lang: metrics}}: the composed score where a language has an SFT, task-only elsewhere."""
    return {
        split: {lang: results["composed"][split].get(lang, m) for lang, m in by_lang.items()}
        for split, by_lang in results["task_only"].items()
    }


def composition_summary(results: dict, targets: list[str], metric: str) -> dict:
    """Task-only vs composed averaged over the same languages (the targets that have a language SFT), and the gain."""
    langs = [lang for lang in targets if any(lang in v for v in results["composed"].values())]
    if not langs:
        return {"langs": []}
    alone = {s: average(results["task_only"][s], langs, metric) for s in results["composed"]}
    both = {s: average(v, langs, metric) for s, v in results["composed"].items()}
    return {"langs": langs, "task_only": alone, "composed": both, "gain": {s: both[s] - alone[s] for s in both}}


def average_intervals(run: Run, results: dict) -> dict[str, dict]:
    """Per split, the bootstrap interval of the targets' average (``avg``) over their examples, at the config's
    ``tune.confidence`` (:func:`raysft.stats.bootstrap_average`). Computed from the merged results, so a trial's
    interval is the same whichever rank scored which language."""
    out = {}
    for split, by_lang in (results.get(OUTPUTS) or {}).items():
        samples = {lang: by_lang[lang] for lang in run.target_langs if lang in by_lang}
        ci = bootstrap_average(samples, run.task.metric, confidence=run.cfg.tune.confidence)
        if ci is not None:
            out[split] = ci.as_dict()
    return out


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


def run_training(run: Run, reporter: Reporter = SilentReporter(), *, low_memory: bool = True) -> tuple[SparseDelta, dict]:
    """One run in this process: the training sequence (:func:`raysft.train.phases.train_sft`) from the run's base,
    then the composed evaluation. ``low_memory`` (default) keeps θ0 on disk and frees each phase's optimizer before
    the next: the same delta, bitwise (bench/memory.py measures the peak)."""
    cfg = run.cfg
    train_ds = run.task.tokenize(run.task.load_train(run.data), run.tokenizer, cfg.data.max_seq_len)
    loaders = eval_loaders(run)
    theta0, base = training_base(run, spill=low_memory)
    trained = train_sft(task_job(run, train_ds), base, reporter=reporter, low_memory=low_memory)
    t = time.perf_counter()
    results = evaluate(run, trained.delta, theta0, loaders, reporter=reporter)
    timings = {**trained.timings, "eval_s": time.perf_counter() - t}
    return trained.delta, run_metrics(run, trained, evaluation_metrics(run, results), timings)


def run_metrics(run: Run, trained: Trained, evaluation: dict, timings: dict) -> dict:
    """metrics.json of a task SFT (``raysft train`` and every sweep trial: the same schema)."""
    cfg = run.cfg
    return {
        "method": run.method.name,
        **device_info(run),
        "k": trained.selection["k"],
        "n": run.space.n,
        "task": cfg.task,
        "metric": run.task.metric,
        **evaluation,
        "timings": timings,
        "selection": {k: v for k, v in trained.selection.items() if k != "k"},
        "optimizer_state_bytes": trained.optimizer_state_bytes,
        "delta_bytes": trained.delta.nbytes(),
        "losses": {phase: [round(x, 5) for x in v] for phase, v in trained.losses.items()},
        "phases": trained.phases,
        "source_lang_sft": run.source_lang in run.lang_sfts,
        "target_langs": run.target_langs,
    }


def device_info(run: Run) -> dict:
    """Where the run trained, with how many torch threads (they can decide the order of a float sum: ``raysft train
    --from-run`` reruns a trial with its count), and in which precision per phase (metrics.json; the distributed
    run's too, rank 0's)."""
    cfg = run.cfg
    return {
        "device": str(model_device(run.model)),
        "threads": torch.get_num_threads(),
        "precision": {"dense": cfg.dense.precision, "mask": cfg.mask_phase.precision, "sparse": cfg.sparse.precision},
    }


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
