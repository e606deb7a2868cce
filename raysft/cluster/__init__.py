"""Running on a Ray cluster: the connection (:mod:`raysft.cluster.connect`), what a trial asks for and what the
cluster holds (:mod:`raysft.cluster.resources`), the sweep's storage and what "shared" means for it
(:mod:`raysft.cluster.storage`, pure) and `raysft doctor`, which checks a cluster before a sweep
(:mod:`raysft.cluster.doctor`, Ray at its edge).

The cluster itself is described by ``cluster.yaml`` (AWS) and ``cluster-local.yaml`` (on-prem machines) at the
repository root; they set ``RAYSFT_STORAGE`` and ``MLFLOW_TRACKING_URI`` on every node, which ``raysft tune`` and
``raysft doctor`` pick up.
"""
