"""The model card (README.md) of an exported trial: what the delta is, its scores per language, the composition with
the language SFTs, its parameters and how to apply it."""

from __future__ import annotations

from pathlib import Path

from raysft.tracking import record


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
