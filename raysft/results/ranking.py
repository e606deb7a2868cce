"""An experiment's trial and train runs read back from MLflow and ranked on one metric (`raysft compare`), the best
searched trial against the default, and the trial a `raysft confirm` found best. MLflow itself is only touched through
:mod:`raysft.tracking`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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


def trial_rows(c, experiment_id: str, kinds: tuple[str, ...] = ("trial", "train")) -> list[RunRow]:
    """The experiment's trial and train runs (and confirm runs when ``kinds`` names them) as rows (``score`` not set
    yet)."""
    from raysft.tracking.store import trial_runs

    out = []
    for r in trial_runs(c, experiment_id, kinds):
        tags = r.data.tags
        out.append(RunRow(
            run_id=r.info.run_id, name=r.info.run_name or "", kind=tags.get("raysft.kind", ""),
            trial_id=tags.get("trial_id", ""), status=r.info.status, params=dict(r.data.params),
            metrics=dict(r.data.metrics), score=float("nan"), tags=dict(tags),
        ))
    return out


def experiment_runs(tracking_uri: str | None, experiment: str, kinds: tuple[str, ...] = ("trial", "train")):
    """(store URI, client, experiment, its trial and train runs as rows); an experiment without runs is refused."""
    from raysft.tracking.store import connect, get_experiment, resolve_uri

    uri = resolve_uri(tracking_uri)
    c = connect(uri, create=False)
    exp = get_experiment(c, uri, experiment)
    rows = trial_rows(c, exp.experiment_id, kinds)
    if not rows:
        raise RaysftError(f"experiment '{exp.name}' has no trial runs yet: run raysft tune {exp.name} (or raysft train) first")
    return uri, c, exp, rows


def rank(tracking_uri: str | None, experiment: str, metric: str | None = None, top: int | None = None) -> Ranking:
    """The experiment's trial and train runs that have ``metric``, best first."""
    metric = metric or record.DEFAULT_METRIC
    if top is not None and top < 1:
        raise RaysftError(f"--top {top}: show at least 1 run")
    uri, c, exp, rows = experiment_runs(tracking_uri, experiment)
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


def outcome_of_runs(rows: list[RunRow], confidence: float | None = None):
    """Best searched trial vs default (:func:`raysft.outcome.versus_default`) over an experiment's runs, paired by the
    seed each run logged."""
    from raysft.outcome import Row, per_seed, versus_default
    from raysft.stats import CONFIDENCE

    def seed(r: RunRow) -> int | None:
        try:
            return int(r.params["seed"])
        except (KeyError, ValueError):
            return None

    # A racing trial's run logged each seed's scores (seed_dev/<seed>): one row per seed, as the sweep judged it.
    return versus_default([
        seeded
        for r in rows
        for seeded in per_seed(Row(
            id=r.trial_id or r.run_id[:8], method=r.method, dev=r.metrics.get(record.DEFAULT_METRIC),
            test=r.metrics.get("avg/test"), default=r.tags.get("raysft.default") == "true",
            final=r.status == "FINISHED" and r.kind == "trial", seed=seed(r)), r.metrics)
    ], CONFIDENCE if confidence is None else confidence)


@dataclass
class Recorded:
    """The verdict recorded on an experiment's latest sweep (:class:`raysft.outcome.Verdict`)."""

    parent: object  # the sweep's parent run
    verdict: object | None  # raysft confirm's when it ran on this sweep, else the sweep's own; None: none recorded
    source: str  # "confirm", "sweep" or "" (none)

    @property
    def confidence(self) -> float | None:
        try:
            return float(self.parent.data.params["tune.confidence"])
        except (KeyError, ValueError):
            return self.verdict.confidence if self.verdict is not None else None


def latest_verdict(c, experiment_id: str) -> Recorded | None:
    """The verdict on the experiment's latest sweep (the newest parent run): the one raysft confirm recorded on it,
    else the sweep's own (its trials' seeds); None when the experiment has no sweep."""
    from raysft.outcome import Verdict
    from raysft.tracking.store import all_runs

    parents = all_runs(c, experiment_id, "tags.`raysft.kind` = 'sweep'")
    if not parents:
        return None
    parent = max(parents, key=lambda r: r.info.start_time)
    for prefix, source in ((record.CONFIRM_VERDICT, "confirm"), (record.SWEEP_VERDICT, "sweep")):
        text = parent.data.tags.get(f"raysft.{prefix}.json")
        if text:
            return Recorded(parent, Verdict.from_json(text), source)
    return Recorded(parent, None, "")


def sweep_trial(rows: list[RunRow], parent, label: str) -> RunRow | None:
    """The finished sweep trial ``label`` (a trial id, as a verdict names it) of the sweep with parent run ``parent``."""
    return next((r for r in rows if r.trial_id == label and r.kind == "trial" and r.status == "FINISHED"
                 and r.tags.get("mlflow.parentRunId") == parent.info.run_id), None)
