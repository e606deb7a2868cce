"""Writing runs: one run per `raysft train`; per `raysft tune` a parent run and one child run per trial.

A sweep's runs are written from a Tune callback in the driver (never from a trial driver, which ASHA kills), so
every child run ends FINISHED (full evaluation), KILLED (stopped early, or the sweep was interrupted) or FAILED.
Writes go through :class:`raysft.tracking.writer.Writer`: when the tracking store stops answering they wait in memory,
in order, and are retried with backoff; the sweep goes on (every trial's result is also on the sweep's storage) and
what is still unwritten at the end is named, with the fix (`--resume` once the store is back re-logs the missing
trials).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from datetime import datetime
from pathlib import Path

from raysft import storage
from raysft.errors import RaysftError
from raysft.tracking import record
from raysft.tracking.store import (
    TrackingURI,
    check_cluster,
    client,
    connect,
    ensure_experiment,
    first_line,
    resolve_uri,
)
from raysft.tracking.writer import Writer, log_batch, warn

STATE_FILE = "raysft-tracking.json"  # in the sweep's experiment folder: the store, experiment and parent run


# ------------------------------------------------------------------------------------------------------ raysft train
def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


@contextlib.contextmanager
def _single_run(uri: TrackingURI, experiment: str, run_name: str, tags: dict[str, str],
                started: float | None = None, ended: float | None = None):
    """Create a run, yield (client, experiment id, run id); it ends FINISHED, or FAILED if the body raises.
    ``started`` / ``ended`` (epoch seconds): the work's real start and end, when the run is written afterwards (else
    MLflow would show the few seconds of logging as the run's duration)."""
    c = connect(uri)
    exp_id = ensure_experiment(c, uri, experiment)
    run_id = c.create_run(exp_id, start_time=_ms(started), run_name=run_name, tags=tags).info.run_id
    try:
        yield c, exp_id, run_id
        c.set_terminated(run_id, "FINISHED", end_time=_ms(ended))
    except BaseException:
        try:
            c.set_terminated(run_id, "FAILED")
        except Exception:
            pass
        raise


def log_train_run(uri: TrackingURI, experiment: str, cfg, method: str, metrics: dict, out: Path,
                  started: float | None = None, ended: float | None = None,
                  tags: dict[str, str] | None = None) -> tuple[str, str]:
    """One run for `raysft train` (params, metrics, artifacts), written after the training with its real start and
    end (epoch seconds); returns (experiment id, run id). ``tags``: more tags (``raysft.from_run``: the trial run
    that a ``--from-run`` rerun reproduces)."""
    tags = {"raysft.kind": "train", "raysft.out": str(Path(out).resolve()), "raysft.space": cfg.name, **(tags or {})}
    when = datetime.fromtimestamp(started) if started else datetime.now()
    extra = {"time_total_s": ended - started} if started and ended else None
    with _single_run(uri, experiment, f"train-{method}-{when:%Y%m%d-%H%M%S}", tags, started, ended) as (c, exp_id, run_id):
        params = {**record.config_params(cfg, method), **record.final_params(metrics)}
        log_batch(c, run_id, params, record.final_metrics(metrics, extra))
        with tempfile.TemporaryDirectory(prefix="raysft-track-") as d:
            files = record.write_artifacts(Path(d), cfg, metrics, Path(out) / record.DELTA_FILE)
            record.log_files(c, run_id, files)
        c.set_tag(run_id, "raysft.logged", "finished")
    return exp_id, run_id


# ------------------------------------------------------------------------------------------------------- raysft lang
def log_lang_run(uri: TrackingURI, experiment: str, cfg, metrics: dict, delta_path: Path) -> tuple[str, str]:
    """One run per language SFT: its settings, the held-out MLM loss before / head only / after, the phase losses by
    step and times; artifacts the delta (unless it is large), metrics.json and config.yaml."""
    lang = metrics["language"]
    tags = {"raysft.kind": "lang", "raysft.language": lang, "raysft.space": cfg.name, "raysft.sft": str(delta_path)}
    started, ended = metrics.get("started_at"), metrics.get("ended_at")
    run_name = f"lang-{lang}-{metrics['method']}-{datetime.fromtimestamp(started) if started else datetime.now():%Y%m%d-%H%M%S}"
    with _single_run(uri, experiment, run_name, tags, started, ended) as (c, exp_id, run_id):
        params = {"language": lang, "method": metrics["method"], "model": cfg.model, "k": str(metrics["k"]),
                  "n": str(metrics["n"]), "corpus": metrics["corpus"][:6000], "corpus_lines": str(metrics["corpus_lines"]),
                  "train_lines": str(metrics["train_lines"]), "head_fresh": str(metrics["head_fresh"])}
        record.flatten("lang", cfg.lang.model_dump(mode="json"), params)
        values = [(f"mlm_loss/{name}", float(v), 0) for name, v in metrics["mlm_loss"].items()]
        values += [(f"time/{name}", float(v), 0) for name, v in metrics["timings"].items()]
        values += [(f"loss/{phase}", float(v), i) for phase, vs in metrics["losses"].items() for i, v in enumerate(vs)]
        values += [("trained_entries", float(metrics["k"]), 0), ("delta_bytes", float(metrics["delta_bytes"]), 0)]
        if metrics.get("peak_memory_bytes"):
            values.append(("peak_memory_bytes", float(metrics["peak_memory_bytes"]), 0))
        if started and ended:
            values.append(("time/total_s", float(ended - started), 0))
        log_batch(c, run_id, params, values)
        with tempfile.TemporaryDirectory(prefix="raysft-track-") as d:
            files = record.write_artifacts(Path(d), cfg, None, None)
            (Path(d) / record.METRICS_FILE).write_text(json.dumps(metrics, indent=2))
            files[record.METRICS_FILE] = Path(d) / record.METRICS_FILE
            if Path(delta_path).stat().st_size <= LANG_ARTIFACT_MAX_BYTES:
                files[Path(delta_path).name] = Path(delta_path)
            record.log_files(c, run_id, files)
    return exp_id, run_id


LANG_ARTIFACT_MAX_BYTES = 100_000_000  # larger language SFTs stay in the store only (the run's raysft.sft tag)


# ------------------------------------------------------------------------------------------------------------- sweep
def _read_state(experiment_dir: str) -> dict | None:
    uri = storage.join(experiment_dir, STATE_FILE)  # the experiment folder may be any storage URI
    try:
        return json.loads(storage.read_bytes(uri).decode()) if storage.exists(uri) else None
    except Exception:
        return None


def _write_state(experiment_dir: str, state: dict) -> None:
    storage.write_atomic(storage.join(experiment_dir, STATE_FILE), json.dumps(state, indent=2).encode())


def sweep_outcome(results, confidence: float):
    """Best searched trial vs default (:func:`raysft.outcome.versus_default`) from a Tune result grid."""
    try:
        from raysft.outcome import outcome_of

        return outcome_of(results, confidence)
    except Exception as e:
        warn(f"best vs default: {type(e).__name__}: {first_line(e)}")
        return None


def _confidence(base: dict) -> float:
    from raysft.stats import CONFIDENCE

    return float((base.get("tune") or {}).get("confidence", CONFIDENCE))


class SweepTracking:
    """The parent run of one `raysft tune` invocation (the same one again on --resume) and its trial callback."""

    def __init__(self, uri: TrackingURI, experiment: str, experiment_id: str, parent_run_id: str, resumed: bool,
                 base: dict, storage_root: str, experiment_dir: str):
        self.uri, self.experiment, self.experiment_id = uri, experiment, experiment_id
        self.parent_run_id, self.resumed = parent_run_id, resumed
        self.base, self.storage_root, self.experiment_dir = base, storage_root, experiment_dir
        self._callback = None

    @classmethod
    def start(cls, cfg, *, tracking_uri: str | None, experiment: str | None, experiment_dir: str, storage_root: str,
              resume: bool, nodes: int) -> SweepTracking:
        uri = resolve_uri(tracking_uri)
        state = _read_state(experiment_dir) if resume else None
        if state and not uri.explicit:
            uri = TrackingURI(state["tracking_uri"], True)  # the sweep's own store, wherever it is resumed from
        check_cluster(uri, nodes)
        c = connect(uri)
        name = experiment or (state or {}).get("experiment") or cfg.name
        parent, exp_id = None, None
        if state and state.get("tracking_uri") == uri.uri and state.get("parent_run_id"):
            try:
                run = c.get_run(state["parent_run_id"])
                parent, exp_id = run.info.run_id, run.info.experiment_id
                name = state.get("experiment", name)
                count = int(run.data.tags.get("raysft.invocations", "1")) + 1
                c.update_run(parent, status="RUNNING")
                c.set_tag(parent, "raysft.invocations", str(count))
            except Exception as e:
                warn(f"the sweep's parent run {state['parent_run_id']} is gone from {uri.uri} ({first_line(e)}): "
                      "starting a new parent run")
                parent = None
        elif state:
            warn(f"this sweep was tracked in {state.get('tracking_uri')}; its runs continue in {uri.uri} under a new parent")
        if parent is None:
            exp_id = ensure_experiment(c, uri, name)
            tune = cfg.tune
            run = c.create_run(
                exp_id, run_name=f"sweep-{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}",
                tags={"raysft.kind": "sweep", "raysft.storage": experiment_dir, "raysft.space": cfg.name,
                      "raysft.invocations": "1"},
            )
            parent = run.info.run_id
            params = {
                "space": cfg.name, "task": cfg.task, "model": cfg.model, "seed": str(cfg.seed),
                "tune.methods": ",".join(tune.methods), "tune.scheduler": str(tune.scheduler),
                "tune.seed": str(tune.seed), "tune.num_workers": str(tune.num_workers),
                "tune.confidence": str(tune.confidence),  # the confidence its verdicts are stated at (compare)
            }
            log_batch(c, parent, params)
            with tempfile.TemporaryDirectory(prefix="raysft-track-") as d:
                import yaml

                f = Path(d) / record.CONFIG_FILE
                f.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
                c.log_artifact(parent, str(f))
        _write_state(experiment_dir, {"tracking_uri": uri.uri, "experiment": name, "experiment_id": exp_id,
                                      "parent_run_id": parent})
        return cls(uri, name, exp_id, parent, bool(state), cfg.model_dump(mode="json"), storage_root, experiment_dir)

    @classmethod
    def attach(cls, experiment_dir: str, storage_root: str, base: dict, tracking_uri: str | None = None) -> SweepTracking:
        """The parent run of the sweep at ``experiment_dir`` (its tracking state file), to log more child runs under
        it (``raysft confirm``) without starting a new invocation."""
        state = _read_state(experiment_dir)
        if not state or not state.get("parent_run_id"):
            raise RaysftError(f"{experiment_dir} has no tracking state: the sweep was run with --no-track, or elsewhere")
        uri = resolve_uri(tracking_uri)
        if not uri.explicit:
            uri = TrackingURI(state["tracking_uri"], True)
        connect(uri)
        return cls(uri, state["experiment"], state["experiment_id"], state["parent_run_id"], True, base, storage_root,
                   experiment_dir)

    def confirmed_rows(self) -> list:
        """(configuration label, seed, :class:`raysft.outcome.Row`) of every confirm run that already finished under
        this parent run: a confirm started again (after Ctrl-C, a lost session, or with more --top/--seeds) reruns only
        the pairs that are missing."""
        from raysft.outcome import Row
        from raysft.tracking.store import all_runs

        c = client(self.uri.uri)
        runs = all_runs(c, self.experiment_id, f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' "
                                               "and tags.`raysft.kind` = 'confirm' and attributes.status = 'FINISHED'")
        out = []
        for r in runs:
            tags, metrics = r.data.tags, r.data.metrics
            if record.DEFAULT_METRIC not in metrics or "raysft.confirm_seed" not in tags:
                continue
            out.append((tags.get("raysft.confirm_config", "?"), int(tags["raysft.confirm_seed"]), Row(
                id=tags.get("trial_id", r.info.run_id[:8]), method=r.data.params.get("method", "?"),
                dev=metrics[record.DEFAULT_METRIC], test=metrics.get("avg/test"),
                default=tags.get("raysft.default") == "true")))
        return out

    def log_confirm(self, summary, verdict, seeds: list[int]) -> None:
        """The confirm step on the parent run: mean ± sd per configuration, and its verdict
        (:class:`raysft.outcome.Verdict`) as metrics ``confirm_verdict/…`` (effect, CI low/high, p, t, n seeds, on
        dev and test) and tags ``raysft.confirm_verdict…`` (its line, the test's name, the confidence, the tested
        configuration, whether it beats the default, the seeds, and the whole verdict as JSON for
        ``raysft export --best``)."""
        metrics: list[tuple[str, float, int]] = []
        for c in summary:
            label = "default" if c.default else c.label
            for split, sp in (("dev", c.dev), ("test", c.test)):
                if sp.mean is not None:
                    metrics.append((f"confirm/{label}/{split}_mean", sp.mean, 0))
                if sp.sd is not None:
                    metrics.append((f"confirm/{label}/{split}_sd", sp.sd, 0))
        metrics += [(k, v, 0) for k, v in verdict.metrics(record.CONFIRM_VERDICT).items()]
        tags = {"raysft.confirm_seeds": ",".join(map(str, seeds)), **verdict.tags(record.CONFIRM_VERDICT)}
        cb = self._callback
        writer = cb._writer() if cb is not None else Writer(self.uri.uri)
        writer.submit("confirm summary", log_batch, self.parent_run_id, None, metrics, tags)
        if not writer.drain(attempts=3, wait_s=3.0):
            warn(f"the confirm summary could not reach {self.uri.uri}")
        if cb is not None:
            cb.cleanup()

    def callback(self):
        """The Tune callback that writes this sweep's child runs (one instance per invocation)."""
        # Imported here, one way only (callback imports writer and trial, never this module): it imports Ray, which
        # `raysft train` and `raysft lang` need not load to log their runs.
        from raysft.tracking.callback import TrackingCallback

        if self._callback is None:
            self._callback = TrackingCallback(
                self.uri.uri, self.experiment_id, self.parent_run_id, self.base, self.storage_root, self.experiment_dir
            )
        return self._callback

    def finish(self, grid=None, counts: dict | None = None, wall_s: float | None = None,
               status: str | None = None, sections: list[str] | None = None) -> None:
        """End the parent run: FINISHED when every trial ended, KILLED when interrupted, FAILED on an error. With the
        sweep's results, its summary as metrics, tags and a markdown description (``mlflow.note.content``);
        ``sections`` are more markdown for it (the place for best vs default, issue 10)."""
        metrics: list[tuple[str, float, int]] = []
        tags: dict[str, str] = {}
        if grid is not None:
            trials = []
            for r in grid:
                m = r.metrics or {}
                sample = (r.config or {}).get("sample") or {}
                state = "failed" if r.error else "final" if m.get("phase") == "final" else "stopped"
                trials.append({"trial_id": m.get("trial_id"), "method": sample.get("method", "?"), "state": state,
                               **{k: m[k] for k in ("objective", "avg/test", "k", "delta_bytes") if k in m}})
            from raysft.tasks import get_task

            try:
                metric = get_task(self.base.get("task", "")).metric
            except Exception:
                metric = ""
            outcome = sweep_outcome(list(grid), _confidence(self.base))
            if outcome is not None:
                sections = [f"**Best vs default:** {outcome.line()}", *(sections or [])]
            metrics, tags, note = record.sweep_summary(trials, counts, wall_s, self.base.get("name", ""), metric, sections)
            if outcome is not None:
                verdict = outcome.verdict()
                metrics += [(k, float(v), 0) for k, v in outcome.metrics().items()]
                metrics += [(k, v, 0) for k, v in verdict.metrics(record.SWEEP_VERDICT).items()]
                tags.update(verdict.tags(record.SWEEP_VERDICT))
                tags["raysft.best_vs_default"] = outcome.line()
                if outcome.default is not None:
                    tags["raysft.default_trial"] = outcome.default.id
            tags["mlflow.note.content"] = note[:7500]  # MLflow keeps tag values up to 8000 characters
        else:
            for key, v in (counts or {}).items():
                metrics.append((f"dense_{key}", float(v), 0))
            if wall_s is not None:
                metrics.append(("time/sweep_s", float(wall_s), 0))
        cb = self._callback
        if status is None:
            status = "KILLED" if cb is not None and cb.interrupted else "FINISHED"
        writer = cb._writer() if cb is not None else Writer(self.uri.uri)
        writer.submit("sweep summary", log_batch, self.parent_run_id, None,
                      [(k, v, 0) for k, v, _ in metrics if v == v], tags)
        writer.submit("end of the sweep's parent run", lambda c, run_id, st: c.set_terminated(run_id, st),
                      self.parent_run_id, status)
        if not writer.drain(attempts=3, wait_s=3.0):
            warn(
                f"{len(writer.pending)} writes could not reach {self.uri.uri}: every trial's result is in "
                f"{self.experiment_dir}; once the store is back, run the same `raysft tune … --resume` to log them"
            )
        if cb is not None:
            cb.cleanup()


__all__ = ["SweepTracking", "Writer", "log_train_run", "STATE_FILE"]
