"""What one composed evaluation becomes in MLflow: params, metrics, artifacts (plots drawn with matplotlib's Agg).

Names: params ``method``, ``k``, ``seed``, ``dense.lr``, ``sparse.lr``, …, every searched value (a budget vector as
``budget/<group>``); metrics ``<acc|f1>/<dev|test>/<lang>`` and ``…/avg`` (targets' average), ``objective`` (the
targets' average dev score in the task's metric: what a sweep maximises), ``avg/dev``, ``avg/test``,
``<acc|f1>/<dev|test>/<task_only|composed>/<lang>`` (θ0 + task, θ0 + task + that language's SFT; the plain
``<metric>/<split>/<lang>`` is the composed score where the language has an SFT), ``composition/<split>/<task_only|
composed|gain>`` (averaged over the targets that have a language SFT), ``loss/<phase>`` by step,
``trained_entries``, ``delta_bytes``, ``peak_memory_bytes`` (the largest worker process), ``time/<phase>_s``,
``time/total_s`` (the run's wall time), ``dense_cache_hit``; a racing trial's ``seed_dev/<seed>``,
``seed_test/<seed>`` and ``seed_lang/<split>/<lang>/<seed>`` (each seed's scores); artifacts
``task_sft.safetensors``, ``metrics.json``, ``config.yaml`` and ``config.json`` (the run's full resolved config: a
sweep trial's after its sampled values; ``config.json`` is what ``raysft train --from-run`` reads back),
``plots/layers.png``, ``plots/languages.png``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

DELTA_FILE = "task_sft.safetensors"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
CONFIG_JSON_FILE = "config.json"  # the same resolved config, read back exactly (raysft train --from-run)
DEFAULT_METRIC = "objective"
COMPONENTS = ("attention", "feed_forward", "embeddings", "other")
# A sweep's parent run keeps two verdicts (raysft.outcome.Verdict: metrics <prefix>/…, tags raysft.<prefix>…): the
# sweep's own (its trials' seeds) and raysft confirm's, apart so that a --resume of the sweep cannot replace confirm's.
SWEEP_VERDICT = "verdict"
CONFIRM_VERDICT = "confirm_verdict"


def now_ms() -> int:
    return int(time.time() * 1000)


def _param_value(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def config_json(cfg) -> str:
    """The resolved config as JSON (``Config.model_dump(mode="json")``): ``Config.model_validate(json.loads(...))``
    gives the same Config back."""
    return json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=True)


def write_config_json(folder: Path, cfg) -> dict[str, Path]:
    """``config.json`` in ``folder``; returns artifact path → local file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_JSON_FILE).write_text(config_json(cfg))
    return {CONFIG_JSON_FILE: folder / CONFIG_JSON_FILE}


def flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    """Nested settings as params: ``budget: {layer.0: .4}`` → ``budget/layer.0``."""
    if isinstance(value, dict) and value:
        for k, v in value.items():
            flatten(f"{prefix}/{k}" if prefix else str(k), v, out)
    elif value is not None:
        out[prefix] = _param_value(value)[:6000]


def config_params(cfg, method: str, sampled: dict | None = None) -> dict[str, str]:
    """Params of one run from its resolved config (and the values a sweep sampled for it)."""
    out: dict[str, str] = {
        "method": method, "model": cfg.model, "task": cfg.task, "seed": str(cfg.seed),
        "sft.density": _param_value(cfg.sft.density) if cfg.sft.density is not None else "",
        "sft.k": str(cfg.sft.k) if cfg.sft.k is not None else "",
        "freeze_embeddings": str(cfg.sft.freeze_embeddings),
        "target_langs": ",".join(cfg.data.target_langs or []) or "all",
    }
    phases = ["dense", "sparse", "mask_phase"]
    try:
        from raysft.sft.methods import method_class

        m = method_class(method)
        phases = [p for p, used in (("dense", m.first_phase == "dense"), ("mask_phase", m.first_phase == "mask"),
                                    ("sparse", bool(m.sparse_phase))) if used]
    except Exception:
        pass
    for phase in phases:
        p = getattr(cfg, phase)
        for key in ("lr", "epochs", "batch_size", "min_steps", "max_steps", "weight_decay", "l1", "warmup_ratio", "head_lr"):
            val = getattr(p, key)
            if val is not None:
                out[f"{phase}.{key}"] = _param_value(val)
    try:
        settings = cfg.method_settings(method).model_dump(mode="json")
    except Exception:
        settings = {}
    for key, val in settings.items():
        flatten(key, val, out)
    if sampled:
        for key, val in {**sampled.get("settings", {}), **sampled.get("overrides", {})}.items():
            flatten(key, val, out)
    return {k: v for k, v in out.items() if v != ""}


def final_params(metrics: dict) -> dict[str, str]:
    return {"k": str(metrics["k"]), "n": str(metrics.get("n", "")), "metric": metrics.get("metric", "")}


def final_metrics(metrics: dict, extra: dict | None = None) -> list[tuple[str, float, int]]:
    """(key, value, step) of a metrics.json (the recipe's schema) and the Tune report that carried it."""
    out: list[tuple[str, float, int]] = []
    targets = metrics.get("target_langs") or []
    losses = metrics.get("losses") or {}
    last_step = max(0, len(losses.get("sparse") or []) - 1)
    for split in ("dev", "test"):
        by_lang = metrics.get(split) or {}
        for lang, vals in by_lang.items():
            for name, v in vals.items():
                out.append((f"{name}/{split}/{lang}", float(v), 0))
        for name in sorted({n for vals in by_lang.values() for n in vals}):
            vals = [by_lang[lang][name] for lang in targets if lang in by_lang and name in by_lang[lang]]
            if vals:
                out.append((f"{name}/{split}/avg", sum(vals) / len(vals), 0))
    for kind in ("task_only", "composed"):  # θ0 + task and θ0 + task + lang, per language
        for split, by_lang in (metrics.get(kind) or {}).items():
            for lang, vals in by_lang.items():
                for name, v in vals.items():
                    out.append((f"{name}/{split}/{kind}/{lang}", float(v), 0))
    for split, v in (metrics.get("avg_task_only") or {}).items():
        if not math.isnan(v):
            out.append((f"avg/{split}/task_only", float(v), 0))  # every target, θ0 + task
    composition = metrics.get("composition") or {}
    for part in ("task_only", "composed", "gain"):  # over the targets with a language SFT only: comparable
        for split, v in (composition.get(part) or {}).items():
            out.append((f"composition/{split}/{part}", float(v), 0))
    for split, v in (metrics.get("avg") or {}).items():
        out.append((f"avg/{split}", float(v), 0))
    if "dev" in (metrics.get("avg") or {}):
        out.append(("objective", float(metrics["avg"]["dev"]), last_step))
    out.append(("trained_entries", float(metrics["k"]), 0))
    if metrics.get("n"):
        out.append(("density", metrics["k"] / metrics["n"], 0))
    for key in ("delta_bytes", "optimizer_state_bytes", "peak_memory_bytes", "threads"):  # threads: --from-run's
        if metrics.get(key) is not None:
            out.append((key, float(metrics[key]), 0))
    for key, v in (metrics.get("timings") or {}).items():
        out.append((f"time/{key}", float(v), 0))
    for phase, vals in losses.items():
        out.extend((f"loss/{phase}", float(v), i) for i, v in enumerate(vals))
    zero = (metrics.get("selection") or {}).get("zero_delta_selected")
    if zero is not None:
        out.append(("zero_delta_selected", float(zero), 0))
    extra = extra or {}
    if "dense_cache" in extra and extra["dense_cache"] != "none":
        out.append(("dense_cache_hit", 1.0 if extra["dense_cache"] == "reused" else 0.0, 0))
    if extra.get("time_total_s") is not None:
        out.append(("time/total_s", float(extra["time_total_s"]), 0))
    if extra.get("seeds_done") and isinstance(extra.get("objective"), (int, float)):
        # racing (raysft.sweep.racing): metrics.json is the last seed's run; the objective is the mean over the
        # trial's seeds, and each seed's dev and test scores are logged beside it
        out = [m for m in out if m[0] != "objective"] + [("objective", float(extra["objective"]), last_step),
                                                          ("seeds_done", float(extra["seeds_done"]), 0)]
        out += [(k, float(v), 0) for k, v in extra.items() if k.startswith(("seed_dev/", "seed_test/", "seed_lang/"))
                and isinstance(v, (int, float))]
    return [(k, v, s) for k, v, s in out if isinstance(v, float) and math.isfinite(v)]


def as_entities(params: dict[str, str] | None = None, metrics: list[tuple[str, float, int]] | None = None,
                tags: dict[str, str] | None = None):
    """MLflow entities, in batches that log_batch accepts (≤ 1000 metrics, ≤ 100 params, ≤ 100 tags, ≤ 1000 in
    all)."""
    from mlflow.entities import Metric, Param, RunTag

    ts = now_ms()
    ms = [Metric(k, v, ts, s) for k, v, s in (metrics or [])]
    ps = [Param(k, v) for k, v in (params or {}).items()]
    tg = [RunTag(k, v) for k, v in (tags or {}).items()]
    batches = []
    while ms or ps or tg:
        batches.append((ms[:800], ps[:100], tg[:100]))
        ms, ps, tg = ms[800:], ps[100:], tg[100:]
    return batches


# ----------------------------------------------------------------------------------------------------------- plots
def entries_by_component(delta_path: Path) -> dict[str, dict[str, int]]:
    """group → component → trained entries, read from a delta file's tensor shapes (no model needed)."""
    import struct

    from raysft.sft.groups import ParamInfo, group_of, group_sort_key

    with open(delta_path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    out: dict[str, dict[str, int]] = {}
    for key, info in header.items():
        if key == "__metadata__" or not key.endswith("/val"):
            continue
        name = key[: -len("/val")]
        try:
            group = group_of(name)
        except KeyError:
            continue
        count = math.prod(info["shape"]) if info["shape"] else 1
        comp = ParamInfo(name, (count,), None, group).component
        out.setdefault(group, {}).setdefault(comp, 0)
        out[group][comp] += count
    return dict(sorted(out.items(), key=lambda kv: group_sort_key(kv[0])))


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def layer_plot(counts: dict[str, dict[str, int]], path: Path, title: str) -> Path:
    """Stacked bars: trained entries per layer group, attention vs feed-forward (and embeddings, other)."""
    groups = list(counts)
    fig = _figure(max(4.0, 0.55 * len(groups) + 2), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    bottom = [0] * len(groups)
    colours = {"attention": "#4C72B0", "feed_forward": "#DD8452", "embeddings": "#55A868", "other": "#8172B3"}
    for comp in COMPONENTS:
        vals = [counts[g].get(comp, 0) for g in groups]
        if any(vals):
            ax.bar(groups, vals, bottom=bottom, label=comp.replace("_", "-"), color=colours[comp])
            bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("trained entries")
    ax.set_ylim(0, max(1, max(bottom)) * 1.3)  # room for the legend above the bars
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    ax.legend(fontsize=8, loc="upper right", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    return path


def language_plot(metrics: dict, path: Path, title: str) -> Path:
    """Grouped bars: dev and test score per language in the task's metric; the targets' dev average as a line."""
    metric = metrics.get("metric", "acc")
    splits = [s for s in ("dev", "test") if metrics.get(s)]
    langs = list(dict.fromkeys(lang for s in splits for lang in metrics[s]))
    targets = set(metrics.get("target_langs") or langs)
    fig = _figure(max(4.0, 0.7 * len(langs) + 2), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(splits))
    for i, split in enumerate(splits):
        xs = [j + (i - (len(splits) - 1) / 2) * width for j in range(len(langs))]
        ax.bar(xs, [metrics[split].get(lang, {}).get(metric, 0.0) for lang in langs], width, label=split)
    avg = (metrics.get("avg") or {}).get("dev")
    if avg is not None and math.isfinite(avg):
        ax.axhline(avg, color="grey", linestyle="--", linewidth=1, label="dev avg (targets)")
    ax.set_xticks(range(len(langs)))
    ax.set_xticklabels([lang if lang in targets else f"{lang}\n(source)" for lang in langs], fontsize=8)
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1.25)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right", ncol=3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def write_artifacts(folder: Path, cfg, metrics: dict | None, delta_path: Path | None) -> dict[str, Path]:
    """The files of one run in ``folder``: config.yaml and config.json, and with a final result metrics.json and the
    two plots. Returns artifact path → local file (the delta is logged from where it lies)."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    files[CONFIG_FILE] = folder / CONFIG_FILE
    files.update(write_config_json(folder, cfg))
    if metrics is not None:
        (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        files[METRICS_FILE] = folder / METRICS_FILE
        label = f"{metrics.get('method')} · K={metrics.get('k'):,}"
        files["plots/languages.png"] = language_plot(metrics, folder / "languages.png", f"{cfg.name}: {label}")
    if delta_path is not None and Path(delta_path).is_file():
        files[DELTA_FILE] = Path(delta_path)
        counts = entries_by_component(Path(delta_path))
        title = f"entries per layer group ({metrics.get('method') if metrics else ''}, K={sum(sum(c.values()) for c in counts.values()):,})"
        files["plots/layers.png"] = layer_plot(counts, folder / "layers.png", title)
    return files


def log_files(c, run_id: str, files: dict[str, Path]) -> None:
    for artifact, local in files.items():
        parent = str(Path(artifact).parent)
        c.log_artifact(run_id, str(local), None if parent == "." else parent)


# ------------------------------------------------------------------------------------------------- sweep summary
def sweep_summary(trials: list[dict], counts: dict | None, wall_s: float | None, space: str, metric: str = "",
                  sections: list[str] | None = None) -> tuple[list[tuple[str, float, int]], dict[str, str], str]:
    """The parent run's summary of a sweep: (metrics, tags, markdown description for ``mlflow.note.content``).

    ``trials``: one dict per trial with ``trial_id``, ``method``, ``state`` (final | stopped | failed), and when it
    has them ``objective``, ``avg/test``, ``k``, ``delta_bytes``. ``sections``: more markdown, appended as given
    (the place for the best-vs-default comparison of issue 10)."""
    finals = [t for t in trials if t.get("state") == "final"]
    stopped = [t for t in trials if t.get("state") == "stopped"]
    failed = [t for t in trials if t.get("state") == "failed"]
    metrics: list[tuple[str, float, int]] = [
        ("trials", float(len(trials)), 0), ("trials_final", float(len(finals)), 0),
        ("trials_stopped", float(len(stopped)), 0), ("trials_failed", float(len(failed)), 0),
    ]
    counts = counts or {}
    for key, v in counts.items():
        metrics.append((f"dense_{key}", float(v), 0))
    if counts.get("computed", 0) + counts.get("reused", 0):
        metrics.append(("dense_reuse_rate", counts.get("reused", 0) / (counts.get("computed", 0) + counts.get("reused", 0)), 0))
    if wall_s is not None:
        metrics.append(("time/sweep_s", float(wall_s), 0))

    def scored(ts):
        return [t for t in ts if isinstance(t.get("objective"), (int, float)) and math.isfinite(t["objective"])]

    methods = sorted({t.get("method", "?") for t in trials})
    rows = []
    for m in methods:
        mine = [t for t in trials if t.get("method") == m]
        best_m = max(scored([t for t in mine if t.get("state") == "final"]), key=lambda t: t["objective"], default=None)
        metrics.append((f"method/{m}/trials", float(len(mine)), 0))
        if best_m is not None:
            metrics.append((f"method/{m}/best_objective", float(best_m["objective"]), 0))
        rows.append((m, len(mine), sum(1 for t in mine if t.get("state") == "final"), best_m))
    best = max(scored(finals), key=lambda t: t["objective"], default=None)
    tags: dict[str, str] = {}
    if best is not None:
        metrics.append(("best/objective", float(best["objective"]), 0))
        if isinstance(best.get("avg/test"), (int, float)):
            metrics.append(("best/avg_test", float(best["avg/test"]), 0))
        tags.update({"raysft.best_trial": str(best.get("trial_id", "")), "raysft.best_method": str(best.get("method", ""))})

    score = f"dev {metric}" if metric else "dev score"
    lines = [f"### Sweep `{space}`: {', '.join(methods) or 'no trials'}", ""]
    parts = [f"**{len(trials)} trials**: {len(finals)} evaluated in full, {len(stopped)} stopped early, {len(failed)} failed"]
    if wall_s is not None:
        parts.append(f"{wall_s / 60:.1f} min")
    if counts:
        parts.append(f"dense phases computed {counts.get('computed', 0)}, reused {counts.get('reused', 0)}")
    lines += [" · ".join(parts), ""]
    if best is not None:
        test = f", test {best['avg/test']:.4f}" if isinstance(best.get("avg/test"), (int, float)) else ""
        lines += [f"**Best**: trial `{best.get('trial_id')}` ({best.get('method')}), {score} "
                  f"**{best['objective']:.4f}**{test}", ""]
    lines += [f"| method | trials | evaluated in full | best {score} |", "|---|---:|---:|---:|"]
    for m, n, n_final, b in rows:
        best_cell = "–" if b is None else f"{b['objective']:.4f}"
        lines.append(f"| {m} | {n} | {n_final} | {best_cell} |")
    lines.append("")
    for section in sections or []:  # e.g. best vs default (issue 10)
        lines += [section.strip(), ""]
    lines += ["To compare the trials: this run's child runs in the experiment's **Table** view with the columns "
              "`objective`, `delta_bytes`, `trained_entries`, `time/total_s`, `peak_memory_bytes`, `method` and the "
              "searched params; **Chart** view for `objective` against `delta_bytes`; **Parallel coordinates** from "
              "the searched params to `objective`. `raysft compare " + space + " --pareto score,bytes` draws the front."]
    return metrics, tags, "\n".join(lines)
