"""Connecting to Ray: a cluster's address (--address, else RAY_ADDRESS), checked for reachability first, or a local
Ray of our own; the environment Ray reads at start-up."""

from __future__ import annotations

import os
from typing import Any

from raysft.errors import RaysftError


def _check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """ray.init retries an unreachable GCS for minutes: test the TCP port first and fail at once."""
    import socket

    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError) as e:
        raise RaysftError(
            f"cannot reach the Ray cluster at {address} ({e.__class__.__name__}: {e}): "
            "check the address (ray status on the head node) or leave --address out for a local Ray"
        ) from None


def connect(address: str | None, verbose: bool) -> None:
    import ray  # imported where it is used (a heavy import)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if not verbose:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0, no experiment banners or status tables
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"log_to_driver": verbose, "logging_level": "INFO" if verbose else "ERROR"}
    # Inside `ray job submit` (or `ray attach` with RAY_ADDRESS set) the cluster is the one in RAY_ADDRESS.
    address = address or os.environ.get("RAY_ADDRESS", "").strip() or None
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RaysftError(f"cannot reach the Ray cluster at {address} ({str(e).splitlines()[0][:120]}): "
                              "check the address (ray status) or leave --address out for a local Ray") from None
    else:
        # Locally, trial drivers mostly wait on their workers: give Ray more logical CPUs than cores.
        # The dashboard stays on: Ray Train's PlacementGroupCleaner asks the state API whether a controller died
        # (a trial stopped by ASHA); without it the stopped trial's workers keep their placement group forever.
        # address="local": always a Ray of our own, never one that a `ray start` on this machine left in
        # /tmp/ray/ray_current_cluster (which a bare ray.init() would join, and then refuse num_cpus).
        ray.init(address="local", num_cpus=max(4, 2 * (os.cpu_count() or 2)), **kwargs)
