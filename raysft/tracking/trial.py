"""A sweep trial's child run: what is logged when the trial starts (its params, tags and full resolved config), and
reading that back to rerun the trial in one process (``raysft train SPACE --from-run RUN_ID``).

The resolved config is :func:`raysft.config.trial_config` of the sweep's base config (the space after the sweep's
``--set`` overrides) and the trial's sampled values: the same Config the trial driver (``run_trial`` in
:mod:`raysft.sweep`) builds and trains. It is logged as the artifact ``config.json`` when the run
opens (so a trial stopped early or failed has it too) and again with the trial's final artifacts.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raysft.errors import RaysftError
from raysft.tracking import record
from raysft.tracking.store import TrackingURI, all_runs, connect, download, first_line
from raysft.tracking.writer import log_batch

TRIAL_RUN_KINDS = ("trial", "confirm")  # the child runs of a sweep's Ray trials (confirm: one seed of a configuration)


def trial_params(cfg, sampled: dict) -> tuple[dict[str, str], dict[str, str]]:
    """The params and tags a trial's run gets when it opens, from its resolved config and sampled values."""
    params = record.config_params(cfg, sampled["method"], sampled)
    tags = {"raysft.space": cfg.name}
    if sampled.get("default"):
        tags["raysft.default"] = "true"
    confirm = sampled.get("confirm") or {}
    if confirm:  # a confirm run: one seed of a sweep's configuration (not ranked with the sweep's trials)
        tags.update({"raysft.kind": "confirm", "raysft.confirm_config": str(confirm.get("config")),
                     "raysft.confirm_seed": str(confirm.get("seed"))})
    return params, tags


def open_trial_run(c, experiment_id: str, parent_run_id: str, trial_id: str, cfg, sampled: dict,
                   started_ms: int | None = None) -> str:
    """The run of one trial under the sweep's parent run (the same run again for a retried or resumed trial) with its
    params, tags and ``config.json``; returns its run id. Safe to repeat (the writer retries it when the store was
    down)."""
    params, tags = trial_params(cfg, sampled)
    found = [
        r for r in all_runs(c, experiment_id, f"tags.trial_id = '{trial_id}'")
        if r.data.tags.get("mlflow.parentRunId") == parent_run_id
    ]
    if found:  # a retried or resumed trial: its run again
        run = found[0]
        if run.info.status != "RUNNING":
            c.update_run(run.info.run_id, status="RUNNING")
    else:
        run = c.create_run(  # started_ms: when Tune started the trial, even if the store answered later
            experiment_id, run_name=f"trial-{trial_id}", start_time=started_ms,
            tags={"mlflow.parentRunId": parent_run_id, "trial_id": trial_id, "raysft.kind": "trial"},
        )
    run_id = run.info.run_id
    log_batch(c, run_id, params, None, tags)
    with tempfile.TemporaryDirectory(prefix="raysft-track-") as d:
        record.log_files(c, run_id, record.write_config_json(Path(d), cfg))
    return run_id


# ------------------------------------------------------------------------------------------------- read it back
@dataclass(frozen=True)
class TrialRun:
    """A trial's child run, read back: what ``raysft train --from-run`` reruns."""

    run_id: str
    trial_id: str
    experiment: str
    sweep_run: str  # the parent run's name (or id)
    cfg: Any  # raysft.config.Config, the trial's full resolved config
    method: str
    seed: int
    num_workers: int  # Ray Train workers the trial ran on
    status: str
    threads: int | None = None  # torch threads of the trial's (rank 0) worker; None: its record does not say

    def line(self, threads: int | None = None) -> str:
        """What is reproduced; ``threads``: the torch threads this rerun uses (the trial's, when it recorded them)."""
        return (f"reproducing trial {self.trial_id} (run {self.run_id}, {self.status.lower()}, sweep {self.sweep_run}, "
                f"experiment '{self.experiment}'): {self.method}, seed {self.seed}"
                + ("" if threads is None else f", {threads} torch thread{'s' if threads != 1 else ''}"))


def _kind_of(tags: dict) -> str:
    kind = tags.get("raysft.kind")
    return {"train": "a `raysft train` run", "sweep": "a sweep's parent run", "lang": "a language SFT's run"}.get(
        kind or "", f"a run of kind '{kind}'" if kind else "a run raysft did not log")


def _resolve_id(c, run_id: str, experiment: str) -> str:
    """A run id prefix (as raysft compare shows it) → the full id, among the runs of ``experiment``."""
    if len(run_id) >= 32:
        return run_id
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return run_id
    matches = [r.info.run_id for r in all_runs(c, exp.experiment_id) if r.info.run_id.startswith(run_id)]
    if len(matches) > 1:
        raise RaysftError(f"run id prefix '{run_id}' matches {len(matches)} runs in '{experiment}': give more of it")
    return matches[0] if matches else run_id


def _config_of(c, run_id: str, trial_id: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="raysft-from-run-") as d:
        for name in (record.CONFIG_JSON_FILE, record.CONFIG_FILE):  # config.yaml: runs logged before config.json
            try:
                path = download(c, run_id, name, Path(d))
            except Exception as e:
                raise RaysftError(f"cannot read the artifacts of run {run_id} ({first_line(e)}): check the store's "
                                  "artifact location") from None
            if path is None:
                continue
            text = path.read_text()
            try:
                if name == record.CONFIG_JSON_FILE:
                    raw = json.loads(text)
                else:
                    import yaml

                    raw = yaml.safe_load(text)
            except Exception as e:
                raise RaysftError(f"run {run_id}: its {name} does not parse ({first_line(e)})") from None
            if isinstance(raw, dict):
                return raw
            raise RaysftError(f"run {run_id}: its {name} holds a {type(raw).__name__}, not a config")
    raise RaysftError(f"run {run_id} (trial {trial_id}) has no {record.CONFIG_JSON_FILE} or {record.CONFIG_FILE} "
                      "artifact (a trial still running, logged by an older raysft): rerun it with --method and --set "
                      "from its params")


def _threads_of(c, run) -> int | None:
    """The torch threads the trial's worker trained with: its metric ``threads``, else its metrics.json artifact's
    ``threads``; None for a run logged before raysft recorded them (or one that never finished)."""
    n = run.data.metrics.get("threads")
    if n is None:
        try:
            with tempfile.TemporaryDirectory(prefix="raysft-from-run-") as d:
                path = download(c, run.info.run_id, record.METRICS_FILE, Path(d))
                n = json.loads(path.read_text()).get("threads") if path is not None else None
        except Exception:  # an unreadable metrics.json: the rerun keeps its process's threads and says so
            n = None
    try:
        n = int(n)
    except (TypeError, ValueError):
        return None
    return n if n >= 1 else None


def trial_of_run(uri: TrackingURI, run_id: str, space: str, experiment: str | None = None) -> TrialRun:
    """The trial whose child run is ``run_id`` (or a prefix of it, in ``experiment``, default the space's name), with
    its full resolved config. Refused (one line, exit code 2) when the run does not exist, is not a sweep trial's
    child run, or belongs to another space than ``space`` (a space's name, as its Config says)."""
    from pydantic import ValidationError

    from raysft.config import Config

    c = connect(uri, create=False)
    run_id = _resolve_id(c, run_id.strip(), experiment or space)
    try:
        run = c.get_run(run_id)
    except Exception as e:
        code = getattr(e, "error_code", "")
        if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or "not found" in str(e).lower():
            raise RaysftError(f"no run '{run_id}' in {uri.uri}: give a trial's run id (raysft compare {space} lists "
                              "the runs; --tracking-uri or MLFLOW_TRACKING_URI for another store)") from None
        raise RaysftError(f"cannot read run {run_id} from {uri.uri} ({first_line(e)})") from None
    if run.info.lifecycle_stage == "deleted":
        raise RaysftError(f"run {run_id} was deleted in {uri.uri}: restore it (mlflow runs restore) or give another")
    tags = run.data.tags
    trial_id, parent = tags.get("trial_id"), tags.get("mlflow.parentRunId")
    if tags.get("raysft.kind") not in TRIAL_RUN_KINDS or not trial_id or not parent:
        raise RaysftError(f"run {run_id} is {_kind_of(tags)}, not a sweep trial's child run: give the run id of a "
                          f"trial-<id> run under a sweep's parent run (raysft compare {space} lists them)")
    try:
        exp_name = c.get_experiment(run.info.experiment_id).name
    except Exception:
        exp_name = run.info.experiment_id
    raw = _config_of(c, run_id, trial_id)
    run_space = tags.get("raysft.space") or raw.get("name")
    if run_space != space:
        raise RaysftError(f"run {run_id} is trial {trial_id} of space '{run_space}' (experiment '{exp_name}'), not of "
                          f"'{space}': run raysft train {run_space} --from-run {run_id}")
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        first = " ".join(str(e).split("\n")[1:3]).strip() or first_line(e)
        raise RaysftError(f"run {run_id}: its logged config is not valid for this raysft ({first})") from None
    params = run.data.params
    for key, logged in (("method", cfg.method), ("seed", str(cfg.seed))):
        if key in params and params[key] != logged:
            raise RaysftError(f"run {run_id}: its config says {key} {logged} but its param {key} is {params[key]}: "
                              "the run's artifacts do not belong to it")
    try:
        sweep_run = c.get_run(parent).info.run_name or parent
    except Exception:
        sweep_run = parent
    return TrialRun(run_id=run.info.run_id, trial_id=trial_id, experiment=exp_name, sweep_run=sweep_run, cfg=cfg,
                    method=cfg.method, seed=cfg.seed, num_workers=int(cfg.tune.num_workers), status=run.info.status,
                    threads=_threads_of(c, run))


__all__ = ["TRIAL_RUN_KINDS", "TrialRun", "open_trial_run", "trial_of_run", "trial_params"]
