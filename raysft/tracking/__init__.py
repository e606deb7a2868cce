"""Tracking: the only place in raysft that imports MLflow (and only when a function here is called).

- :mod:`raysft.tracking.store`: the tracking URI (default ``sqlite:///<cwd>/runs/mlflow.db``, ``--tracking-uri`` or
  ``MLFLOW_TRACKING_URI``; a sqlite store is refused on a multi-node cluster), experiments, reading runs back;
- :mod:`raysft.tracking.record`: what one composed evaluation becomes (params, metrics, artifacts, plots);
- :mod:`raysft.tracking.writer`: the buffered writer (writes wait while the store is down) and one batch of writes;
- :mod:`raysft.tracking.runs`: the run of `raysft train` and of `raysft lang`, a sweep's parent run;
- :mod:`raysft.tracking.trial`: a sweep trial's child run as it opens (params, tags, its resolved ``config.json``) and
  read back for `raysft train --from-run`;
- :mod:`raysft.tracking.callback`: the Tune callback that writes a sweep's child runs from the driver.

Imports go one way: store and record import no other module here; writer imports both; trial imports writer;
callback imports trial and writer; runs imports store, record and writer, and callback only when a sweep asks for
its callback (it imports Ray, which `raysft train` need not load).
"""

from raysft.tracking.record import DEFAULT_METRIC, DELTA_FILE
from raysft.tracking.store import TrackingURI, check_cluster, resolve_uri

__all__ = ["DEFAULT_METRIC", "DELTA_FILE", "TrackingURI", "check_cluster", "resolve_uri"]
