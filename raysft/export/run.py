"""`raysft export`: one trial's task delta, metrics, config, plots, the language SFTs it was evaluated with and a
model card, read back from MLflow (through :mod:`raysft.tracking`) into one folder. ``--best`` exports what the
latest sweep's verdict (:class:`raysft.outcome.Verdict`) supports: the configuration that beats the default beyond
the seeds' noise, else the default; the best run by a metric only with ``--allow-unconfirmed``."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from raysft.errors import RaysftError
from raysft.export.card import model_card
from raysft.export.staging import check_target, publish
from raysft.results.ranking import Recorded, RunRow, latest_verdict, rank, sweep_trial, trial_rows
from raysft.tracking import record


@dataclass
class Selection:
    """Which run ``--best`` exports, and why, in one line."""

    run: RunRow
    selected_as: str  # "better than the default", "default", "unconfirmed" (--allow-unconfirmed) or "run id"
    line: str  # printed by raysft export
    recorded: Recorded | None  # the verdict it rests on (None: the experiment has no sweep)


def _why_not(recorded: Recorded | None, experiment: str) -> str:
    """Why no configuration is shown to beat the default: the verdict's words, with the fix when one helps."""
    v = recorded.verdict if recorded is not None else None
    if v is None:
        return f"no verdict recorded: run raysft confirm {experiment}"
    if v.best is None or v.default is None or v.dev.n == 0:
        return f"{recorded.source}: {v.judgement()}"
    if v.dev.n == 1:
        return f"{recorded.source}: one seed cannot tell (no CI); run raysft confirm {experiment}"
    return f"{recorded.source}: {v.best} vs default {v.default}, dev {v.dev.mean:+.3f}, {v.dev.ci()}, p={v.dev.p:.3f}"


def select_best(c, experiment, finished: list[RunRow], metric: str, allow_unconfirmed: bool) -> Selection:
    """The run ``raysft export --best`` exports (``finished``: the experiment's finished runs, best ``metric`` first):
    the latest sweep's verdict decides, a ranking on one seed never does unless ``allow_unconfirmed``."""
    recorded = latest_verdict(c, experiment.experiment_id)
    v = recorded.verdict if recorded is not None else None
    if allow_unconfirmed:
        run = finished[0]
        confirmed = v is not None and v.significant and run.trial_id == v.best
        why = (f"the verdict's better configuration is trial {v.best}" if v is not None and v.significant
               else _why_not(recorded, experiment.name))
        return Selection(run, "better than the default" if confirmed else "unconfirmed",
                         f"exporting the best run by {metric}, {run.trial_id or run.run_id[:8]}"
                         + ("" if confirmed else f", unconfirmed ({why})"), recorded)
    if v is not None and v.significant:
        run = sweep_trial(finished, recorded.parent, v.best)
        if run is None:
            raise RaysftError(f"the verdict's best trial {v.best} has no finished run in '{experiment.name}': pass --run-id")
        return Selection(run, "better than the default",
                         f"exporting trial {v.best}: it beats the default beyond the seeds' noise ({recorded.source}: "
                         f"dev {v.dev.mean:+.3f}, {v.dev.ci()}, p={v.dev.p:.3f})", recorded)
    if v is not None and v.default is not None:
        default = sweep_trial(finished, recorded.parent, v.default)
    else:  # no verdict names the default: the sweep's best default trial by the metric
        parent = recorded.parent.info.run_id if recorded is not None else None
        default = next((r for r in finished if r.tags.get("raysft.default") == "true" and r.kind == "trial"
                        and (parent is None or r.tags.get("mlflow.parentRunId") == parent)), None)
    if default is None:
        raise RaysftError(f"no configuration is shown to beat the default ({_why_not(recorded, experiment.name)}) and "
                          f"'{experiment.name}' has no finished default trial to export: pass --allow-unconfirmed "
                          "(the best run by --metric) or --run-id")
    return Selection(default, "default",
                     f"no configuration beats the default beyond the seeds' noise ({_why_not(recorded, experiment.name)}): "
                     f"exporting the default, trial {default.trial_id}; --allow-unconfirmed exports the best "
                     "unconfirmed one", recorded)


def export_run(tracking_uri: str | None, experiment: str, out: Path, *, run_id: str | None = None, best: bool = False,
               metric: str | None = None, force: bool = False, allow_unconfirmed: bool = False) -> dict:
    """Write a trial's task delta, its metrics, config, plots and a model card README.md (with the verdict that chose
    it) into ``out``, laid out as a Hugging Face model repo: ``huggingface-cli upload <owner>/<repo> out`` publishes it
    as it is (the card starts with the hub's YAML metadata) and ``raysft.load_sft("hub:<owner>/<repo>")`` (or the
    folder itself) reads it back. Returns export.json's record (``selection``: the line that says why this run)."""
    from raysft.tracking.store import connect, download, get_experiment, get_run, resolve_uri

    if bool(run_id) == bool(best):
        raise RaysftError("give exactly one of --run-id ID and --best")
    if allow_unconfirmed and not best:
        raise RaysftError("--allow-unconfirmed goes with --best (it picks which run): drop --run-id or --allow-unconfirmed")
    check_target(out, force)
    selection = None
    if run_id:
        uri = resolve_uri(tracking_uri)
        c = connect(uri, create=False)
        exp = get_experiment(c, uri, experiment)
        if len(run_id) < 32:  # a prefix, as raysft compare shows
            matches = [r.run_id for r in trial_rows(c, exp.experiment_id) if r.run_id.startswith(run_id)]
            if len(matches) > 1:
                raise RaysftError(f"run id prefix '{run_id}' matches {len(matches)} runs in '{exp.name}': give more of it")
            run_id = matches[0] if matches else run_id
        run = get_run(c, uri, run_id, exp)
        if run.data.tags.get("raysft.kind") not in ("trial", "train"):
            raise RaysftError(f"run {run_id} is a sweep's parent run, not a trial: pass one of its trials' run ids (raysft compare {exp.name})")
        metric = metric or record.DEFAULT_METRIC
        recorded = latest_verdict(c, exp.experiment_id)
    else:
        ranking = rank(tracking_uri, experiment, metric)
        uri, exp, metric, c = ranking.uri, ranking.experiment, ranking.metric, ranking.client
        finished = [r for r in ranking.rows if r.status == "FINISHED"]
        if not finished:
            raise RaysftError(f"no finished run in experiment '{exp.name}' has '{metric}': wait for the sweep or pass --run-id")
        selection = select_best(c, exp, finished, metric, allow_unconfirmed)
        recorded = selection.recorded
        run = get_run(c, uri, selection.run.run_id, exp)
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
            **verdict_record(run, recorded, selection),
        }
        (staging / "export.json").write_text(json.dumps(info, indent=2))
        (staging / "README.md").write_text(model_card(run, metrics, staging, info))
        publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return info


def verdict_record(run, recorded: Recorded | None, selection: Selection | None) -> dict:
    """What export.json and the model card say of the verdict: why this run (``selected_as``, ``selection``), and
    the verdict itself when it concerns this run (the sweep it comes from, its source, its numbers)."""
    out = {"selected_as": selection.selected_as if selection is not None else "run id",
           "selection": selection.line if selection is not None else None}
    v = recorded.verdict if recorded is not None else None
    trial = run.data.tags.get("trial_id")
    if v is not None and (selection is not None or trial in (v.best, v.default)):
        out["verdict"] = {"source": recorded.source, "sweep_run_id": recorded.parent.info.run_id,
                          "line": v.line(), "judgement": v.judgement(), **json.loads(v.to_json())}
    return out


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
