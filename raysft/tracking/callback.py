"""The Tune callback that writes a sweep's child runs from the driver (see :mod:`raysft.tracking.runs`; what a child
run gets when it opens: :mod:`raysft.tracking.trial`)."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ray.tune import Callback

from raysft.tracking import record
from raysft.tracking.store import all_runs, first_line
from raysft.tracking.trial import open_trial_run
from raysft.tracking.writer import Writer, local_checkpoint, log_batch, warn


class _NoRun(Exception):
    """A write for a trial whose run could not be opened (the open was refused): dropped, not retried."""

    error_code = "INVALID_STATE"


class TrackingCallback(Callback):
    """A Tune callback (runs in the sweep's driver): a child run per trial, tagged with its trial id."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, base: dict, storage_root: str,
                 experiment_dir: str):
        self.uri, self.experiment_id, self.parent_run_id = uri, experiment_id, parent_run_id
        self.base, self.storage_root, self.experiment_dir = base, storage_root, experiment_dir
        self._init_runtime()

    # Tune pickles its callbacks (tuner.pkl): only the settings travel.
    _SETTINGS = ("uri", "experiment_id", "parent_run_id", "base", "storage_root", "experiment_dir")

    def __getstate__(self):
        return {k: getattr(self, k) for k in self._SETTINGS}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._w: Writer | None = None
        self.runs: dict[str, str] = {}  # trial id → run id
        self.opened: set[str] = set()
        self.ended: set[str] = set()
        self.interrupted = False
        self._scratch: Path | None = None

    def _writer(self) -> Writer:
        if self._w is None:
            self._w = Writer(self.uri)
        return self._w

    def scratch(self) -> Path:
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="raysft-track-"))
        return self._scratch

    def cleanup(self) -> None:
        if self._scratch is not None and (self._w is None or not self._w.pending):
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def _safe(self, what: str, fn: Callable, *args) -> None:
        """A callback must never raise: Tune would end the sweep."""
        try:
            fn(*args)
        except Exception as e:
            warn(f"{what}: {type(e).__name__}: {first_line(e)} (the sweep goes on)")

    def _cfg(self, trial):
        from raysft.config import trial_config

        return trial_config(self.base, trial.config["sample"])

    # ------------------------------------------------------------------------------------------------ operations
    def _op_open(self, c, trial_id: str, cfg, sampled: dict, started_ms: int | None = None) -> None:
        self.runs[trial_id] = open_trial_run(c, self.experiment_id, self.parent_run_id, trial_id, cfg, sampled,
                                             started_ms)

    def _op(self, fn: Callable) -> Callable:
        """An operation on a trial's run: the run id is looked up when the write happens."""
        def op(c, trial_id, *args):
            if trial_id not in self.runs:
                raise _NoRun(f"trial {trial_id} has no run")
            return fn(c, self.runs[trial_id], *args)

        return op

    # ------------------------------------------------------------------------------------------------ trial events
    def _open(self, trial) -> None:
        tid = trial.trial_id
        if tid in self.opened:
            return
        self.opened.add(tid)
        # params, tags and config.json: the trial's resolved config, as the trial driver (run_trial) builds it
        self._writer().submit(f"run of trial {tid}", self._op_open, tid, self._cfg(trial), trial.config["sample"],
                              record.now_ms())

    def _intermediate(self, trial, result: dict) -> None:
        self._open(trial)
        step = result.get("sparse_step")
        if result.get("phase") == "final" or step is None:
            return
        metrics = [("train_loss", float(result["loss"]), int(step))] if "loss" in result else []
        if isinstance(result.get("objective"), (int, float)) and math.isfinite(result["objective"]):
            metrics.append(("objective", float(result["objective"]), int(step)))
        if metrics:
            self._writer().submit(f"metrics of trial {trial.trial_id}", self._op(log_batch), trial.trial_id, None, metrics)
        else:
            self._writer().flush()

    def _finish(self, trial, status: str) -> None:
        tid = trial.trial_id
        if tid in self.ended:
            return
        self._open(trial)
        self.ended.add(tid)
        r = trial.last_result or {}
        cfg = self._cfg(trial)
        metrics_json, delta_path, params, metrics = None, None, {}, []
        tags = {"raysft.logged": status.lower()}
        if status == "FINISHED":
            folder = self.scratch() / tid
            ckpt = local_checkpoint(r.get("checkpoint_path"), self.storage_root, folder)
            if ckpt is not None and (ckpt / record.METRICS_FILE).is_file():
                metrics_json = json.loads((ckpt / record.METRICS_FILE).read_text())
                delta_path = ckpt / record.DELTA_FILE
                params = record.final_params(metrics_json)
                metrics = record.final_metrics(metrics_json, r)
                tags["raysft.checkpoint"] = str(r.get("checkpoint_path"))
                if (metrics_json.get("distributed") or {}).get("test_scored") is False:
                    tags["raysft.test"] = "not scored: its dev did not lead its kind when it finished"
            else:  # no checkpoint on this machine: the report's own numbers
                metrics = [(k, float(v), 0) for k, v in r.items()
                           if isinstance(v, (int, float)) and "/" in k and not isinstance(v, bool)]
        else:
            # What the last report knows (a stopped trial never wrote its delta): its K, wall time and peak memory.
            metrics = [(name, float(r[key]), 0) for key, name in (("time_total_s", "time/total_s"), ("k", "trained_entries"),
                                                                  ("peak_memory_bytes", "peak_memory_bytes"))
                       if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
            if isinstance(r.get("k"), int):
                params = {"k": str(r["k"])}
            if status == "KILLED":
                tags["raysft.stopped"] = "early (scheduler)" if trial.status == "TERMINATED" else "sweep interrupted"
            if status == "FAILED":
                try:
                    msg = str(trial.get_error() or "")
                except Exception:
                    msg = ""
                tags["raysft.error"] = (msg.strip().splitlines() or ["see the trial's error file"])[-1][:500]
        try:
            files = record.write_artifacts(self.scratch() / tid, cfg, metrics_json, delta_path)
        except Exception as e:
            warn(f"artifacts of trial {tid}: {type(e).__name__}: {first_line(e)}")
            files = {}
        w = self._writer()
        w.submit(f"results of trial {tid}", self._op(log_batch), tid, params, metrics)
        w.submit(f"artifacts of trial {tid}", self._op(record.log_files), tid, files)
        ended = record.now_ms()  # the trial's real end, even if the store answers later
        w.submit(f"end of trial {tid}", self._op(lambda c, run_id, t, st, at: (c.set_tag(run_id, "raysft.logged", t),
                                                                                 c.set_terminated(run_id, st, end_time=at))),
                 tid, tags["raysft.logged"], status, ended)
        extra = {k: v for k, v in tags.items() if k != "raysft.logged"}
        if extra:
            w.submit(f"tags of trial {tid}", self._op(lambda c, run_id, tg: log_batch(c, run_id, None, None, tg)), tid, extra)

    def _reconcile(self, trials) -> None:
        """At the end: trials that ended before a resume and were never logged (or whose logging was lost) are logged
        now; trials left unfinished by an interruption end KILLED (a --resume reopens the same run)."""
        ended_here = {t.trial_id for t in trials if t.trial_id in self.ended}
        logged: dict[str, str] = {}
        todo = [t for t in trials if t.trial_id not in ended_here]
        if todo and any(t.status in ("TERMINATED", "ERROR") for t in todo):
            try:
                c = self._writer().client
                for run in all_runs(c, self.experiment_id):
                    if run.data.tags.get("mlflow.parentRunId") == self.parent_run_id and run.data.tags.get("trial_id"):
                        tid = run.data.tags["trial_id"]
                        self.runs.setdefault(tid, run.info.run_id)
                        if run.data.tags.get("raysft.logged") and run.info.status != "RUNNING":
                            logged[tid] = run.data.tags["raysft.logged"]
            except Exception as e:
                warn(f"cannot read back the sweep's runs ({first_line(e)}): finished trials are logged at the next --resume")
                return
        for t in todo:
            if t.status == "TERMINATED":
                if t.trial_id not in logged:
                    final = (t.last_result or {}).get("phase") == "final"
                    self._finish(t, "FINISHED" if final else "KILLED")
            elif t.status == "ERROR":
                if t.trial_id not in logged:
                    self._finish(t, "FAILED")
            elif t.trial_id in self.opened:
                self.interrupted = True
                self.ended.add(t.trial_id)
                self._writer().submit(
                    f"end of trial {t.trial_id}", self._op(lambda c, run_id: c.set_terminated(run_id, "KILLED")), t.trial_id
                )
            else:
                self.interrupted = self.interrupted or t.status in ("PENDING", "PAUSED", "RUNNING")

    # ------------------------------------------------------------------------------------------------ Tune hooks
    def on_trial_start(self, iteration, trials, trial, **info):
        self._safe(f"run of trial {trial.trial_id}", self._open, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._safe(f"metrics of trial {trial.trial_id}", self._intermediate, trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        final = (trial.last_result or {}).get("phase") == "final"
        self._safe(f"results of trial {trial.trial_id}", self._finish, trial, "FINISHED" if final else "KILLED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._safe(f"results of trial {trial.trial_id}", self._finish, trial, "FAILED")

    def on_trial_recover(self, iteration, trials, trial, **info):
        def tag():
            self._open(trial)
            self._writer().submit(
                f"retry of trial {trial.trial_id}",
                self._op(lambda c, run_id: c.set_tag(run_id, "raysft.retried", "true")), trial.trial_id,
            )

        self._safe(f"retry of trial {trial.trial_id}", tag)

    def on_step_end(self, iteration, trials, **info):
        if self._w is not None and self._w.pending:
            self._safe("buffered results", self._w.flush)

    def on_experiment_end(self, trials, **info):
        self._safe("end of the sweep", self._reconcile, trials)
        self._safe("buffered results", self._writer().drain, 2, 2.0)
