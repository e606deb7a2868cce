"""Where runs live: the tracking URI, the MLflow client, experiments, and reading runs back.

Default store: ``sqlite:///<cwd>/runs/mlflow.db`` (MLflow 3 refuses the ``./mlruns`` file store), artifacts beside
it in ``runs/mlartifacts/<experiment>``. ``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` point at a server instead.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from raysft.errors import RaysftError

# An unreachable server must not stall the sweep's driver for minutes (MLflow's default: 7 retries, backoff 2 s,
# 120 s timeout per request). Set before the first request; a user's own values win.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
TRIAL_KINDS = ("trial", "train")  # runs that hold one composed evaluation (the parent of a sweep is "sweep")


@dataclass(frozen=True)
class TrackingURI:
    uri: str
    explicit: bool  # given by --tracking-uri or MLFLOW_TRACKING_URI (not the default)

    @property
    def is_sqlite(self) -> bool:
        return self.uri.startswith("sqlite:")

    def __str__(self) -> str:
        return self.uri


def default_uri(cwd: Path | None = None) -> str:
    return f"sqlite:///{(cwd or Path.cwd()).resolve() / 'runs' / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path:
    """The database file of a ``sqlite:///`` URI (relative paths are relative to the working directory)."""
    path = uri.split(":///", 1)[1] if ":///" in uri else uri.split("://", 1)[-1]
    return Path(path.split("?", 1)[0])


def resolve_uri(flag: str | None = None) -> TrackingURI:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the default sqlite store; refuses what MLflow 3 cannot use."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    raw = (flag or "").strip() or env
    uri = TrackingURI(raw, True) if raw else TrackingURI(default_uri(), False)
    scheme = uri.uri.split(":", 1)[0].lower() if re.match(r"^[A-Za-z][\w+.-]*://", uri.uri) else ""
    source = "--tracking-uri" if flag else "MLFLOW_TRACKING_URI"
    if not scheme or scheme == "file":
        raise RaysftError(
            f"{source} {uri.uri!r} is a file store, which MLflow 3 refuses: give sqlite:///path/to/mlflow.db "
            "or a server's http://host:port"
        )
    if scheme.split("+", 1)[0] not in _SCHEMES:
        raise RaysftError(
            f"{source} {uri.uri!r}: unknown scheme '{scheme}': give sqlite:///path/to/mlflow.db or http://host:port"
        )
    return uri


def check_cluster(uri: TrackingURI, nodes: int) -> None:
    """A sqlite file on the head node is unreachable from other nodes: refuse it on a multi-node cluster."""
    if uri.is_sqlite and nodes > 1:
        raise RaysftError(
            f"tracking URI {uri.uri} is a file on this machine, but the Ray cluster has {nodes} nodes: on the head node "
            "run `mlflow server --backend-store-uri sqlite:///runs/mlflow.db --host 0.0.0.0 --port 5000` and pass "
            "--tracking-uri http://<head-ip>:5000 (or set MLFLOW_TRACKING_URI)"
        )


def client(uri: TrackingURI | str):
    import logging

    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from mlflow import MlflowClient

    for name in ("mlflow", "alembic"):  # "Creating initial MLflow database tables…" and the like
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=str(uri))


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    m = re.search(r"(Connection refused|Max retries exceeded|Name or service not known|timed out)", str(e))
    return (m.group(1) if m else line)[:160]


def connect(uri: TrackingURI, create: bool = True):
    """A client whose store answers now (a server that is down is reported here, before any trial runs). A sqlite
    store is created when missing only for writing (``create``)."""
    if uri.is_sqlite:
        path = sqlite_path(uri.uri)
        if not path.exists():
            if not create:
                raise RaysftError(
                    f"no tracking store at {path}: run raysft train or raysft tune first, or pass --tracking-uri "
                    "(or set MLFLOW_TRACKING_URI) to where the runs are"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
    c = client(uri)
    try:
        c.search_experiments(max_results=1)
    except Exception as e:  # MlflowException, requests errors, sqlalchemy errors
        fix = (
            "start the server (mlflow server --backend-store-uri sqlite:///… --host 127.0.0.1 --port …) or leave "
            "--tracking-uri out for the local store runs/mlflow.db"
            if not uri.is_sqlite else "check the path and its permissions"
        )
        raise RaysftError(f"cannot reach the tracking store {uri.uri} ({first_line(e)}): {fix}") from None
    return c


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "experiment"


def ensure_experiment(c, uri: TrackingURI, name: str) -> str:
    """The experiment's id, created when missing (its artifacts beside a sqlite store, in runs/mlartifacts)."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise RaysftError(
                f"experiment '{name}' was deleted in {uri.uri}: restore it (mlflow experiments restore "
                f"--experiment-id {exp.experiment_id}) or pass --experiment with another name"
            )
        return exp.experiment_id
    location = None
    if uri.is_sqlite:
        location = (sqlite_path(uri.uri).resolve().parent / "mlartifacts" / _safe_name(name)).as_uri()
    try:
        return c.create_experiment(name, artifact_location=location)
    except Exception:
        exp = c.get_experiment_by_name(name)  # created meanwhile by another process
        if exp is None:
            raise
        return exp.experiment_id


def get_experiment(c, uri: TrackingURI, name: str):
    """An existing experiment by name (or id); unknown → the experiments there."""
    try:
        exp = c.get_experiment_by_name(name)
    except Exception as e:
        raise RaysftError(f"cannot read the tracking store {uri.uri} ({first_line(e)}): check --tracking-uri") from None
    if exp is None and name.isdigit():
        try:
            exp = c.get_experiment(name)
        except Exception:
            exp = None
    if exp is None or exp.lifecycle_stage == "deleted":
        names = sorted(e.name for e in c.search_experiments() if e.name != "Default")
        known = ", ".join(names[:12]) if names else "none yet (run raysft tune or raysft train first)"
        raise RaysftError(f"no experiment '{name}' in {uri.uri}: known experiments are {known}")
    return exp


def all_runs(c, experiment_id: str, filter_string: str = "") -> list:
    out, token = [], None
    while True:
        page = c.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def trial_runs(c, experiment_id: str, kinds: tuple[str, ...] = TRIAL_KINDS) -> list:
    """The runs that hold a composed evaluation: a sweep's trials and `raysft train` runs (not sweep parents; confirm
    runs too when ``kinds`` names them)."""
    return [r for r in all_runs(c, experiment_id) if r.data.tags.get("raysft.kind") in kinds]


def get_run(c, uri: TrackingURI, run_id: str, experiment=None):
    try:
        run = c.get_run(run_id)
    except Exception as e:
        code = getattr(e, "error_code", "")
        if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or "not found" in str(e).lower():
            where = f" in experiment '{experiment.name}'" if experiment is not None else ""
            raise RaysftError(f"no run '{run_id}'{where} at {uri.uri}: list the runs with raysft compare") from None
        raise RaysftError(f"cannot read run {run_id} from {uri.uri} ({first_line(e)})") from None
    if experiment is not None and run.info.experiment_id != experiment.experiment_id:
        raise RaysftError(
            f"run {run_id} belongs to another experiment (id {run.info.experiment_id}), not '{experiment.name}': "
            "pass the run's own experiment"
        )
    return run


def ui_command(uri: TrackingURI, host: str, port: int) -> list[str]:
    """`mlflow ui` on the store (loopback unless told otherwise), in this Python environment."""
    import sys

    if uri.is_sqlite and not sqlite_path(uri.uri).exists():
        raise RaysftError(
            f"no tracking store at {sqlite_path(uri.uri)}: run raysft train or raysft tune first, or pass "
            "--tracking-uri (or set MLFLOW_TRACKING_URI) to where the runs are"
        )
    if not uri.is_sqlite:
        raise RaysftError(
            f"{uri.uri} is a tracking server: open it in a browser; raysft ui serves a local sqlite store"
        )
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri.uri, "--host", host, "--port", str(port),
            "--workers", "1"]


def download(c, run_id: str, path: str, dst: Path) -> Path | None:
    """One artifact (file or folder) of a run into ``dst``; None when the run has no such artifact."""
    parent = str(Path(path).parent)
    names = {f.path for f in c.list_artifacts(run_id, None if parent == "." else parent)}
    if path not in names:
        return None
    return Path(c.download_artifacts(run_id, path, str(dst)))
