"""Tracking: the only place in raysft that imports MLflow (and only when a function here is called).

- :mod:`raysft.tracking.store`: the tracking URI (default ``sqlite:///<cwd>/runs/mlflow.db``, ``--tracking-uri`` or
  ``MLFLOW_TRACKING_URI``; a sqlite store is refused on a multi-node cluster), experiments, reading runs back;
- :mod:`raysft.tracking.record`: what one composed evaluation becomes (params, metrics, artifacts, plots);
- :mod:`raysft.tracking.runs`: the run of `raysft train`, a sweep's parent run, the buffered writer;
- :mod:`raysft.tracking.callback`: the Tune callback that writes a sweep's child runs from the driver.
"""

from raysft.tracking.record import DEFAULT_METRIC, DELTA_FILE
from raysft.tracking.store import TrackingURI, check_cluster, resolve_uri

__all__ = ["DEFAULT_METRIC", "DELTA_FILE", "TrackingURI", "check_cluster", "resolve_uri"]
