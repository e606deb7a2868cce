"""Reading results back out of MLflow: `raysft compare`, `raysft export` (a trial's task delta + a model card), and
`raysft apply` (base model + SFTs → a plain Hugging Face folder). MLflow itself is only touched through
:mod:`raysft.tracking`."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from raysft.errors import RaysftError
from raysft.tracking import record
from raysft.tracking.store import TrackingURI

LOWER_IS_BETTER = ("loss/", "time/", "train_loss", "delta_bytes", "optimizer_state_bytes", "trained_entries", "density",
                   "peak_memory_bytes")


def lower_is_better(metric: str) -> bool:
    return metric.startswith(LOWER_IS_BETTER)


@dataclass
class RunRow:
    run_id: str
    name: str
    kind: str
    trial_id: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    score: float
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.params.get("method", "?")

    def describe(self, keys: set[str] | None = None) -> str:
        """The method and the searched values (``keys``: the params that differ between the runs shown)."""
        keys = set(self.params) if keys is None else keys
        budget = {k.split("/", 1)[1]: v for k, v in self.params.items() if k.startswith("budget/") and k in keys}
        parts = [self.method]
        if budget:
            top = sorted(((g, float(v)) for g, v in budget.items()), key=lambda kv: -kv[1])[:3]
            parts.append("budget " + ", ".join(f"{g}={v:.2f}" for g, v in top))
        for key in sorted(keys):
            if key.startswith("budget/") or key in DESCRIBE_SKIP or key not in self.params:
                continue
            v = self.params[key]
            try:
                v = f"{float(v):.3g}" if "." in v or "e" in v else v
            except ValueError:
                pass
            parts.append(f"{key}={v}")
        return " ".join(parts)


DESCRIBE_SKIP = {"method", "model", "task", "target_langs", "metric", "n", "k"}


@dataclass
class Ranking:
    experiment: object
    uri: TrackingURI
    metric: str
    task_metric: str
    langs: list[str]
    rows: list[RunRow]
    client: object = None

    def varying(self) -> set[str]:
        """The params whose values differ between the runs shown (what the sweep searched)."""
        keys = {k for r in self.rows for k in r.params}
        return {k for k in keys if len({r.params.get(k) for r in self.rows}) > 1}


def _rows(c, experiment_id: str) -> list[RunRow]:
    from raysft.tracking.store import trial_runs

    out = []
    for r in trial_runs(c, experiment_id):
        tags = r.data.tags
        out.append(RunRow(
            run_id=r.info.run_id, name=r.info.run_name or "", kind=tags.get("raysft.kind", ""),
            trial_id=tags.get("trial_id", ""), status=r.info.status, params=dict(r.data.params),
            metrics=dict(r.data.metrics), score=float("nan"), tags=dict(tags),
        ))
    return out


def rank(tracking_uri: str | None, experiment: str, metric: str | None = None, top: int | None = None) -> Ranking:
    """The experiment's trial and train runs that have ``metric``, best first."""
    from raysft.tracking.store import connect, get_experiment, resolve_uri

    metric = metric or record.DEFAULT_METRIC
    if top is not None and top < 1:
        raise RaysftError(f"--top {top}: show at least 1 run")
    uri = resolve_uri(tracking_uri)
    c = connect(uri, create=False)
    exp = get_experiment(c, uri, experiment)
    rows = _rows(c, exp.experiment_id)
    if not rows:
        raise RaysftError(f"experiment '{exp.name}' has no trial runs yet: run raysft tune {exp.name} (or raysft train) first")
    have = [r for r in rows if isinstance(r.metrics.get(metric), float) and math.isfinite(r.metrics[metric])]
    if not have:
        names = sorted({k for r in rows for k in r.metrics if not k.startswith("loss/")})
        shown = ", ".join(names[:15]) + (" …" if len(names) > 15 else "")
        raise RaysftError(f"no run in experiment '{exp.name}' has the metric '{metric}': known metrics are {shown or 'none'}")
    sign = 1 if lower_is_better(metric) else -1
    for r in have:
        r.score = r.metrics[metric]
    have.sort(key=lambda r: (sign * r.score, r.name))
    task_metric = next((r.params["metric"] for r in have if r.params.get("metric")), "acc")
    langs = sorted({k.rsplit("/", 1)[1] for r in have for k in r.metrics if k.startswith(f"{task_metric}/dev/")} - {"avg"})
    targets = {lang for r in have for lang in r.params.get("target_langs", "").split(",") if lang and lang != "all"}
    if targets:  # the target languages (the source language's score is in the model card)
        langs = [lang for lang in langs if lang in targets]
    return Ranking(exp, uri, metric, task_metric, langs, have[:top] if top else have, c)


# ------------------------------------------------------------------------------------------------------------ pareto
# `--pareto X,Y`: a short name per axis (or any logged metric); the score is higher-better, the costs lower-better.
PARETO_AXES = {
    "score": "objective", "objective": "objective",
    "k": "trained_entries", "entries": "trained_entries",
    "bytes": "delta_bytes", "delta_bytes": "delta_bytes",
    "time": "time/total_s", "memory": "peak_memory_bytes", "mem": "peak_memory_bytes",
}
PARETO_LABELS = {
    "objective": "dev score (targets' average)", "trained_entries": "K (trained entries)",
    "delta_bytes": "delta size (bytes)", "time/total_s": "wall time (s)", "peak_memory_bytes": "peak memory (bytes)",
}


def pareto_metric(axis: str, task_metric: str) -> str:
    """An axis name as given to --pareto → the metric it reads (the task's metric name, f1 or acc, is the score)."""
    name = axis.strip()
    if name in (task_metric, "f1", "acc"):
        return "objective" if name == task_metric else f"{name}/dev/avg"
    return PARETO_AXES.get(name, name)


def pareto_front(points: list[tuple[float, float]], higher: tuple[bool, bool]) -> list[int]:
    """The indices of the points no other point dominates (at least as good on both axes, better on one)."""
    def key(p):
        return tuple(v if up else -v for v, up in zip(p, higher))

    keyed = [key(p) for p in points]
    front = []
    for i, a in enumerate(keyed):
        if not any(b[0] >= a[0] and b[1] >= a[1] and b != a for b in keyed):
            front.append(i)
    return front


@dataclass
class Pareto:
    x: str
    y: str
    rows: list[RunRow]
    front: list[RunRow]
    plot: Path


def pareto(tracking_uri: str | None, experiment: str, axes: str, plot: Path | None = None) -> Pareto:
    """The experiment's runs on two metrics (``axes`` = "X,Y"), their Pareto front, and a plot marking it."""
    from raysft.tracking.store import connect, get_experiment, resolve_uri

    names = [a for a in axes.split(",")]
    if len(names) != 2 or not all(n.strip() for n in names):
        raise RaysftError(f"--pareto {axes!r}: give two axes separated by a comma, e.g. --pareto f1,delta_bytes "
                          f"(any two of score, k, bytes, time, memory, or metric names)")
    uri = resolve_uri(tracking_uri)
    c = connect(uri, create=False)
    exp = get_experiment(c, uri, experiment)
    rows = _rows(c, exp.experiment_id)
    if not rows:
        raise RaysftError(f"experiment '{exp.name}' has no trial runs yet: run raysft tune {exp.name} (or raysft train) first")
    task_metric = next((r.params["metric"] for r in rows if r.params.get("metric")), "acc")
    x, y = (pareto_metric(n, task_metric) for n in names)
    if x == y:
        raise RaysftError(f"--pareto {axes}: both axes read '{x}': give two different ones")

    def finite(r, m):
        v = r.metrics.get(m)
        return isinstance(v, float) and math.isfinite(v)

    have = [r for r in rows if finite(r, x) and finite(r, y)]
    if not have:
        missing = [m for m in (x, y) if not any(finite(r, m) for r in rows)]
        names_known = sorted({k for r in rows for k in r.metrics if not k.startswith("loss/")})
        raise RaysftError(f"no run in experiment '{exp.name}' has the metric '{(missing or [x])[0]}': known metrics are "
                          f"{', '.join(names_known[:15]) or 'none'}")
    higher = (not lower_is_better(x), not lower_is_better(y))
    front_idx = pareto_front([(r.metrics[x], r.metrics[y]) for r in have], higher)
    front = sorted((have[i] for i in front_idx), key=lambda r: r.metrics[x])
    plot = plot or Path("runs") / "compare" / f"{exp.name}-pareto-{_slug(x)}-{_slug(y)}.png"
    pareto_plot(have, set(front_idx), x, y, plot, f"{exp.name}: {len(front)} of {len(have)} runs on the Pareto front")
    return Pareto(x, y, have, front, plot)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")


def pareto_plot(rows: list[RunRow], front: set[int], x: str, y: str, path: Path, title: str) -> Path:
    """Every run as a point coloured by method, the front's points ringed and joined by a step line, each front point
    labelled with its run name; a cost (lower is better) on the horizontal axis and a score on the vertical one when
    the pair is one of each; a log scale for an axis spanning more than 100x; written atomically (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not lower_is_better(x) and lower_is_better(y):
        x, y = y, x
    fig = Figure(figsize=(7.5, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    methods = sorted({r.method for r in rows})
    colours = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]
    for i, m in enumerate(methods):
        pts = [(r.metrics[x], r.metrics[y]) for r in rows if r.method == m]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=28, color=colours[i % len(colours)], label=m, zorder=2)
    pts = sorted(((rows[i].metrics[x], rows[i].metrics[y], rows[i].name or rows[i].run_id[:8]) for i in front))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=110, facecolors="none", edgecolors="black", linewidths=1.4,
               label="Pareto front", zorder=3)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], color="black", linewidth=1, drawstyle="steps-post", zorder=1)
    for px, py, name in pts:
        ax.annotate(name, (px, py), textcoords="offset points", xytext=(5, 5), fontsize=7)
    for values, scale in (([r.metrics[x] for r in rows], ax.set_xscale), ([r.metrics[y] for r in rows], ax.set_yscale)):
        if min(values) > 0 and max(values) / min(values) > 100:
            scale("log")
    ax.set_xlabel(PARETO_LABELS.get(x, x) + (" ↓" if lower_is_better(x) else " ↑"))
    ax.set_ylabel(PARETO_LABELS.get(y, y) + (" ↓" if lower_is_better(y) else " ↑"))
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path


def outcome_of_runs(rows: list[RunRow]):
    """Best searched trial vs default (:func:`raysft.outcome.versus_default`) over an experiment's runs."""
    from raysft.outcome import Row, versus_default

    return versus_default([
        Row(id=r.trial_id or r.run_id[:8], method=r.method, dev=r.metrics.get(record.DEFAULT_METRIC),
            test=r.metrics.get("avg/test"), default=r.tags.get("raysft.default") == "true",
            final=r.status == "FINISHED" and r.kind == "trial")
        for r in rows
    ])


def confirmed_run(c, experiment_id: str, rows: list[RunRow]) -> RunRow:
    """The sweep trial of the configuration the latest ``raysft confirm`` found best (the parent run's tag
    ``raysft.confirmed_best``)."""
    from raysft.tracking.store import all_runs

    parents = [r for r in all_runs(c, experiment_id, "tags.`raysft.kind` = 'sweep'") if r.data.tags.get("raysft.confirmed_best")]
    if not parents:
        raise RaysftError("no sweep of this experiment has been confirmed: run raysft confirm EXPERIMENT first, or drop --confirmed")
    parent = max(parents, key=lambda r: r.info.start_time)
    label = parent.data.tags["raysft.confirmed_best"]
    match = [r for r in rows if r.trial_id == label and r.tags.get("mlflow.parentRunId") == parent.info.run_id]
    if not match:
        raise RaysftError(f"the confirmed best trial {label} has no finished run in this experiment: pass --run-id")
    return match[0]


# ------------------------------------------------------------------------------------------------------------ export
def check_target(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise RaysftError(f"export target {out} exists and is not empty: choose another --out or pass --force")


def _publish(staging: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(staging, out)


def export_run(tracking_uri: str | None, experiment: str, out: Path, *, run_id: str | None = None, best: bool = False,
               metric: str | None = None, force: bool = False, confirmed: bool = False) -> dict:
    """Write a trial's task delta, its metrics, config, plots and a model card README.md into ``out``."""
    from raysft.tracking.store import connect, download, get_experiment, get_run, resolve_uri

    if bool(run_id) == bool(best):
        raise RaysftError("give exactly one of --run-id ID and --best")
    if confirmed and not best:
        raise RaysftError("--confirmed goes with --best (the confirmed best configuration): drop --run-id or --confirmed")
    check_target(out, force)
    if run_id:
        uri = resolve_uri(tracking_uri)
        c = connect(uri, create=False)
        exp = get_experiment(c, uri, experiment)
        if len(run_id) < 32:  # a prefix, as raysft compare shows
            matches = [r.run_id for r in _rows(c, exp.experiment_id) if r.run_id.startswith(run_id)]
            if len(matches) > 1:
                raise RaysftError(f"run id prefix '{run_id}' matches {len(matches)} runs in '{exp.name}': give more of it")
            run_id = matches[0] if matches else run_id
        run = get_run(c, uri, run_id, exp)
        if run.data.tags.get("raysft.kind") not in ("trial", "train"):
            raise RaysftError(f"run {run_id} is a sweep's parent run, not a trial: pass one of its trials' run ids (raysft compare {exp.name})")
        metric = metric or record.DEFAULT_METRIC
    else:
        ranking = rank(tracking_uri, experiment, metric)
        uri, exp, metric, c = ranking.uri, ranking.experiment, ranking.metric, ranking.client
        finished = [r for r in ranking.rows if r.status == "FINISHED"]
        if not finished:
            raise RaysftError(f"no finished run in experiment '{exp.name}' has '{metric}': wait for the sweep or pass --run-id")
        chosen = confirmed_run(c, exp.experiment_id, finished) if confirmed else finished[0]
        run = get_run(c, uri, chosen.run_id, exp)
    rid = run.info.run_id
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        delta = download(c, rid, record.DELTA_FILE, staging)
        if delta is None:
            raise RaysftError(
                f"run {rid} has no task delta (status {run.info.status}"
                f"{', stopped early' if run.data.tags.get('raysft.stopped') else ''}): export a FINISHED run"
            )
        metrics_file = download(c, rid, record.METRICS_FILE, staging)
        download(c, rid, record.CONFIG_FILE, staging)
        download(c, rid, "plots", staging)
        metrics = json.loads(metrics_file.read_text()) if metrics_file else {}
        info = {
            "tracking_uri": uri.uri, "experiment": exp.name, "run_id": rid, "run_name": run.info.run_name,
            "trial_id": run.data.tags.get("trial_id"), "metric": metric, "score": run.data.metrics.get(metric),
            "lang_sfts": language_sfts(metrics, staging / record.CONFIG_FILE, staging),
        }
        (staging / "export.json").write_text(json.dumps(info, indent=2))
        (staging / "README.md").write_text(model_card(run, metrics, staging, info))
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return info


def language_sfts(metrics: dict, config_file: Path, staging: Path | None = None) -> dict[str, str]:
    """The language SFTs the trial was evaluated with: language → file. Local ones (a folder or the store) are copied
    into ``staging/lang_sfts/`` so the export is self-contained; hub ones are named by repo."""
    langs = metrics.get("lang_sfts") or []
    if not langs or not config_file.is_file():
        return {}
    import yaml

    source = (yaml.safe_load(config_file.read_text()) or {}).get("lang_sfts")
    if not source:
        return {}
    from raysft.store import source_folder

    if source.startswith("hub:"):
        from raysft.tasks.langcodes import hub_repo

        return {lang: hub_repo(source.removeprefix("hub:"), lang) for lang in langs}
    folder = source_folder(source)
    out = {}
    for lang in langs:
        path = folder / f"{lang}.safetensors"
        if staging is not None and path.is_file():
            (staging / "lang_sfts").mkdir(exist_ok=True)
            shutil.copy2(path, staging / "lang_sfts" / path.name)
            out[lang] = f"lang_sfts/{path.name}"
        else:
            out[lang] = str(path)
    return out


def composition_lines(metrics: dict) -> list[str]:
    """The model card's task-only vs composed table (the task's metric), for the languages with a language SFT."""
    composed, alone, metric = metrics.get("composed") or {}, metrics.get("task_only") or {}, metrics.get("metric", "acc")
    splits = [s for s in ("dev", "test") if composed.get(s)]
    if not splits:
        return []
    lines = ["", f"### Composition ({metric}): θ0 + task vs θ0 + task + the language's SFT", "",
             "| language | " + " | ".join(f"{s} task | {s} +lang | {s} Δ" for s in splits) + " |",
             "|---|" + "---:|" * (3 * len(splits))]
    for lang in composed[splits[0]]:
        cells = []
        for s in splits:
            a, b = alone[s][lang][metric], composed[s][lang][metric]
            cells += [f"{a:.4f}", f"{b:.4f}", f"{b - a:+.4f}"]
        lines.append(f"| {lang} | " + " | ".join(cells) + " |")
    if metrics.get("lang_sft_missing"):
        lines += ["", f"No language SFT for {', '.join(metrics['lang_sft_missing'])}: scored task-only."]
    return lines


def _delta_meta(path: Path) -> dict:
    from raysft.sft.delta import SparseDelta

    return SparseDelta.load(path).meta


def model_card(run, metrics: dict, folder: Path, info: dict) -> str:
    meta = _delta_meta(folder / record.DELTA_FILE)
    params = dict(run.data.params)
    base = meta.get("base_model") or params.get("model", "?")
    method = meta.get("method") or params.get("method", "?")
    k, n = int(meta.get("k") or params.get("k") or 0), metrics.get("n") or params.get("n")
    task = meta.get("task") or params.get("task", "?")
    try:
        from raysft.tasks import get_task

        labels = ", ".join(get_task(task).labels)
    except Exception:
        labels = "?"
    size = (folder / record.DELTA_FILE).stat().st_size
    density = f" ({k / int(n):.3%} of {int(n):,} maskable entries)" if n else ""
    lines = [
        f"# {info['experiment']} · {method} task SFT (K = {k:,})",
        "",
        f"A composable sparse fine-tuning (task delta) of **{base}** for the **{task}** task, trained by raysft "
        f"with **{method}**. Exported from MLflow run `{info['run_id']}`"
        + (f" (trial `{info['trial_id']}`)" if info.get("trial_id") else "")
        + f" of experiment `{info['experiment']}`.",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{base}` |",
        f"| method | {method} |",
        f"| K (trained entries) | {k:,}{density} |",
        f"| task | {task} (labels: {labels}) |",
        f"| source language | {meta.get('language') or '?'} |",
        f"| delta | `{record.DELTA_FILE}` ({size / 1024:,.1f} KiB, fingerprint `{meta.get('base_fingerprint', '?')[:12]}…`) |",
        f"| selected by | {info['metric']} = {info['score']:.4f} |" if isinstance(info.get("score"), float) else
        f"| selected by | {info['metric']} |",
        "",
        "## Scores",
        "",
    ]
    splits = [s for s in ("dev", "test") if metrics.get(s)]
    if splits:
        targets = metrics.get("target_langs") or []
        header = "| language | " + " | ".join(f"{s} acc | {s} F1" for s in splits) + " |"
        lines += [header, "|---|" + "---:|" * (2 * len(splits))]
        langs = list(dict.fromkeys(lang for s in splits for lang in metrics[s]))
        for lang in langs:
            cells = [f"{metrics[s].get(lang, {}).get(m, float('nan')):.4f}" for s in splits for m in ("acc", "f1")]
            lines.append(f"| {lang}{'' if lang in targets else ' (source)'} | " + " | ".join(cells) + " |")
        avg = []
        for s in splits:
            for m in ("acc", "f1"):
                vals = [metrics[s][lang][m] for lang in targets if lang in metrics[s]]
                avg.append(f"{sum(vals) / len(vals):.4f}" if vals else "–")
        lines.append("| **average (targets)** | " + " | ".join(avg) + " |")
    else:
        lines.append("(no per-language scores were logged)")
    lines += composition_lines(metrics)
    lang_sfts = info.get("lang_sfts") or {}
    lines += ["", "## Parameters", "", "| parameter | value |", "|---|---|"]
    lines += [f"| {key} | `{value}` |" for key, value in sorted(params.items())]
    # Composition is per target language: the task SFT plus that one language's SFT.
    sft_args = f"--sft {next(iter(lang_sfts.values()))}" if lang_sfts else ""
    lines += [
        "",
        "## How to apply",
        "",
        "Evaluated " + (
            "with the language SFTs " + ", ".join(f"`{lang}`: `{p}`" for lang, p in lang_sfts.items())
            + " (one per target language: compose the task SFT with the SFT of the language you serve; the example"
            " below uses the first)."
            if lang_sfts else "without language SFTs: the task SFT alone, applied to the base model."
        ),
        "",
        "A plain Hugging Face model folder (weights, config, tokenizer):",
        "",
        "```bash",
        f"raysft apply --base {base} --sft {record.DELTA_FILE}{' ' + sft_args if sft_args else ''} --out model/",
        "```",
        "",
        "```python",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "",
        'model = AutoModelForSequenceClassification.from_pretrained("model/")',
        'tokenizer = AutoTokenizer.from_pretrained("model/")',
        "```",
        "",
        "Or compose in place with raysft (the delta adds to the base's weights and sets the classification head):",
        "",
        "```python",
        "from raysft.models import load_for_classification",
        "from raysft.sft.delta import SparseDelta",
        "from raysft.sft.groups import ParamSpace",
        "",
        f'model = load_for_classification("{base}", num_labels={labels.count(",") + 1 if labels != "?" else "N"})',
        "space = ParamSpace(model)",
        f'SparseDelta.load("{record.DELTA_FILE}", space).apply(space)',
        "```",
    ]
    plots = [p for p in ("plots/layers.png", "plots/languages.png") if (folder / p).is_file()]
    if plots:
        lines += ["", "## Figures", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------- apply
def apply_sfts(base: str, sfts: list[Path], out: Path, force: bool = False, device: str = "cpu") -> dict:
    """Base model + SFTs → a Hugging Face folder that AutoModelForSequenceClassification loads. Task SFTs (the ones
    with a head) are applied first, then the others without abs tensors: the order the composed evaluation uses.
    The SFTs are applied on ``device`` (auto, cpu, cuda); the saved weights are the same bytes on any device."""
    import torch

    from raysft.models import load_for_classification, load_tokenizer, model_id
    from raysft.sft.delta import SparseDelta
    from raysft.sft.groups import ParamSpace
    from raysft.tasks import get_task

    if not sfts:
        raise RaysftError("give at least one --sft FILE (the task SFT)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise RaysftError(f"output folder {out} exists and is not empty: choose another --out or pass --force")
    loose = [SparseDelta.load(p) for p in sfts]  # format checks before the model loads
    heads = [i for i, d in enumerate(loose) if d.abs]
    if not heads:
        raise RaysftError(
            "none of the --sft files carries a classification head (abs tensors): include the task SFT "
            f"({record.DELTA_FILE})"
        )
    tasks = {loose[i].meta.get("task") for i in heads} - {None, ""}
    if len(tasks) > 1:
        raise RaysftError(f"the task SFTs are for different tasks ({', '.join(sorted(tasks))}): pass one task SFT")
    task = get_task(tasks.pop()) if tasks else None
    if task is not None:
        num_labels = task.num_labels
    else:  # an imported SFT without a task: the head's output rows
        weights = [t for n, t in loose[heads[0]].abs.items() if n.endswith("weight") and t.dim() == 2]
        num_labels = int(min(weights, key=lambda t: t.shape[0]).shape[0]) if weights else 2

    def frozen_embeddings(d) -> bool:
        try:
            return bool(json.loads(d.meta.get("config") or "{}").get("sft", {}).get("freeze_embeddings"))
        except ValueError:
            return False

    from raysft.train.device import resolve_device

    model = load_for_classification(base, num_labels).to(resolve_device(device))
    space = ParamSpace(model, freeze_embeddings=any(frozen_embeddings(d) for d in loose))
    deltas = [SparseDelta.load(p, space) for p in sfts]  # refuses a delta made for another base, by name
    order = heads + [i for i in range(len(deltas)) if i not in heads]
    with torch.no_grad():
        for i in order:
            deltas[i].apply(space, with_abs=i in heads)  # kept applied: these are the weights to save
    if task is not None:
        model.config.id2label = dict(enumerate(task.labels))
        model.config.label2id = {lab: i for i, lab in enumerate(task.labels)}
    tokenizer = load_tokenizer(base)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    info = {
        "base_model": model_id(base), "sfts": [str(Path(sfts[i]).resolve()) for i in order],
        "kinds": [deltas[i].meta.get("kind", "?") for i in order], "num_labels": num_labels,
        "task": task.name if task else None,
    }
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "raysft_apply.json").write_text(json.dumps(info, indent=2))
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return info
