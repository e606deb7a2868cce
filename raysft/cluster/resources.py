"""What a trial asks Ray for, and what the cluster can give: a trial driver's and its Train workers' resources, the
concurrency they allow, the node types the autoscaler may still start, and the refusal of a trial no node can hold."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from raysft.cluster.storage import DRIVER_RESOURCE
from raysft.errors import RaysftError

if TYPE_CHECKING:  # annotations only: the config pulls in torch, these helpers need none of it
    from raysft.config import Config


def driver_resources(cluster: dict[str, float]) -> dict[str, float]:
    """A trial driver's resources. On a cluster that advertises ``raysft_driver`` (the head node of cluster.yaml),
    one unit of it and no CPU: drivers (and their Train controllers, which Ray pins to the driver's node) stay on the
    head, as many at once as the head has units, and every CPU of the worker nodes is left to Train workers.
    Elsewhere (a local Ray) 1 CPU, as before: a bundle that asks for nothing is refused by Tune."""
    if cluster.get(DRIVER_RESOURCE, 0) >= 1:
        return {"CPU": 0, DRIVER_RESOURCE: 1}
    return {"CPU": 1}


def resources_per_trial(cfg: Config, cluster: dict[str, float] | None = None) -> dict[str, float]:
    """The trial driver's resources plus its Train workers' (what one running trial holds)."""
    need = dict(driver_resources(cluster or {}))
    need["CPU"] += cfg.tune.num_workers * cfg.tune.cpus_per_worker
    need["GPU"] = cfg.tune.num_workers * cfg.tune.gpus_per_worker
    return need


def default_max_concurrent(cfg: Config, cluster: dict[str, float]) -> int:
    need = resources_per_trial(cfg, cluster)
    fits = [math.floor(cluster.get(r, 0) / n) for r, n in need.items() if n > 0]
    return max(1, min(fits)) if fits else 1


def autoscaling_node_types() -> list[dict]:
    """The node types the cluster's autoscaler may still start (``ray up``'s available_node_types, as Ray publishes
    them in the GCS), shaped like ``ray.nodes()`` entries; empty without an autoscaler."""
    try:
        from ray._private.state import state  # Ray is imported where it is used (a heavy import)

        config = state.get_cluster_config()
    except Exception:  # an older GCS, or no autoscaler: nothing to add
        return []
    if config is None:
        return []
    return [
        {"NodeManagerAddress": f"autoscaled {g.name or 'node type'} (up to {g.max_count if g.max_count >= 0 else 'any'})",
         "Resources": dict(g.resources)}
        for g in config.node_group_configs if g.max_count != 0
    ]


def cluster_capacity(cluster: dict[str, float]) -> dict[str, float]:
    """The cluster's resources now, or what its autoscaler may grow it to (GPU workers with min 0 start with none):
    the larger of the two, per resource (a sweep's concurrency follows the GPUs it can get)."""
    try:
        from ray._private.state import state

        most = state.get_max_resources_from_cluster_config() or {}
    except Exception:
        most = {}
    return {k: max(cluster.get(k, 0), most.get(k, 0)) for k in set(cluster) | set(most)}


def _check_fits(need: dict[str, float], nodes: list[dict], what: str, fix: str) -> None:
    """Refuse ``what`` (a worker, a job) needing ``need`` that no node (alive, or one the autoscaler may start) can
    hold: one line naming the nodes and ``fix``."""
    for node in nodes:
        res = node.get("Resources", {})
        if all(res.get(r, 0) >= n for r, n in need.items() if n > 0):
            return
    have = ", ".join(f"{n.get('NodeManagerAddress')}: {n.get('Resources', {}).get('CPU', 0):g} CPU "
                     f"{n.get('Resources', {}).get('GPU', 0):g} GPU" for n in nodes)
    raise RaysftError(f"no node can hold {what} with {need['CPU']:g} CPU and {need['GPU']:g} GPU (nodes: {have}): {fix}")


def check_resources(cfg: Config, nodes: list[dict]) -> None:
    """Refuse a trial whose workers no node (alive, or one the autoscaler may start) can hold, before any trial
    starts."""
    _check_fits({"CPU": cfg.tune.cpus_per_worker, "GPU": cfg.tune.gpus_per_worker}, nodes, "a worker",
                "lower tune.cpus_per_worker / tune.gpus_per_worker or add nodes")


def check_lang_resources(cfg: Config, nodes: list[dict]) -> None:
    """Refuse language jobs no node can hold (a space giving each job a GPU, e.g. the nli and sa presets, on a
    machine without one), before any job is submitted: Ray would otherwise keep the job waiting for ever."""
    _check_fits({"CPU": cfg.lang.cpus_per_job, "GPU": cfg.lang.gpus_per_job}, nodes, "a language job",
                "lower lang.cpus_per_job / lang.gpus_per_job (e.g. --set lang.gpus_per_job=0 --device cpu on a machine "
                "without a GPU) or add nodes")
