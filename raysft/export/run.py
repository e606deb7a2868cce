"""`raysft export`: one trial's task delta, metrics, config, plots, the language SFTs it was evaluated with and a
model card, read back from MLflow (through :mod:`raysft.tracking`) into one folder."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from raysft.errors import RaysftError
from raysft.export.card import model_card
from raysft.export.staging import check_target, publish
from raysft.results.ranking import confirmed_run, rank, trial_rows
from raysft.tracking import record


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
            matches = [r.run_id for r in trial_rows(c, exp.experiment_id) if r.run_id.startswith(run_id)]
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
        publish(staging, out)
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
