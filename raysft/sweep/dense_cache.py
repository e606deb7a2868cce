"""The dense-phase cache: trials whose dense phase has the same settings share one dense run.

A named Ray actor hands the first trial "compute" and later ones "wait" (then "ready"), so concurrent trials never
compute the same dense phase twice; θ1 lives once on the sweep's storage (`<storage>/dense/<key>/theta1.safetensors`,
any URI Ray's storage_path accepts: a local path, s3://, gs://…), so a resumed sweep finds it there too.
"""

from __future__ import annotations

import hashlib
import json
import time

import ray

from raysft import storage
from raysft.config import Config

ACTOR_NAME = "raysft-dense-cache"
THETA1_FILE = "theta1.safetensors"


def dense_key(cfg: Config, num_workers: int) -> str:
    """Everything the dense phase's result depends on: model, task and data, dense settings, seed, workers, and the
    source language's SFT that the task SFT trains on top of (its file's identity)."""
    from raysft.store import source_lang_sft_identity

    payload = {
        "source_lang_sft": source_lang_sft_identity(cfg),
        "model": cfg.model,
        "task": cfg.task,
        "data": cfg.data.model_dump(),
        "dense": cfg.dense.model_dump(),
        "freeze_embeddings": cfg.sft.freeze_embeddings,
        "seed": cfg.seed,
        "num_workers": num_workers,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@ray.remote(num_cpus=0)
class DenseCache:
    def __init__(self, root: str):
        self.root = root  # a storage URI (raysft.storage)
        self.state: dict[str, tuple[str, str]] = {}  # key -> ("computing", trial id) | ("ready", path)
        self.computed = 0
        self.reused = 0

    def path(self, key: str) -> str:
        return storage.join(self.root, key, THETA1_FILE)

    def claim(self, key: str, trial_id: str) -> tuple[str, str]:
        """("compute", path) for the first trial (or the same trial retried), ("wait", path) while it runs,
        ("ready", path) afterwards."""
        path = self.path(key)
        state = self.state.get(key)
        if state is None and storage.exists(path):  # computed by an earlier (resumed) sweep
            state = self.state[key] = ("ready", path)
        if state is None or (state[0] == "computing" and state[1] == trial_id):
            if state is None:
                self.computed += 1
            self.state[key] = ("computing", trial_id)
            return ("compute", path)
        if state[0] == "ready":
            self.reused += 1
            return ("ready", path)
        return ("wait", path)

    def done(self, key: str) -> None:
        self.state[key] = ("ready", self.path(key))

    def failed(self, key: str) -> None:
        """The computing trial died: the next claimant computes instead."""
        if self.state.get(key, ("",))[0] == "computing":
            del self.state[key]
            self.computed -= 1

    def stats(self) -> dict[str, int]:
        return {"computed": self.computed, "reused": self.reused}


def get_cache(storage_root: str):
    """The sweep's cache actor; θ1 files go under ``<storage_root>/dense``. It lives as long as the `raysft tune`
    driver; θ1 files on storage outlive it for --resume."""
    return DenseCache.options(name=ACTOR_NAME, get_if_exists=True).remote(storage.join(storage_root, "dense"))


def acquire(cache, key: str, trial_id: str, poll_s: float = 2.0, on_wait=None) -> tuple[str, str]:
    """Block until this trial may compute the dense phase ("compute") or reuse a finished one ("ready");
    ``on_wait()`` is called once if it has to wait."""
    waited = False
    while True:
        status, path = ray.get(cache.claim.remote(key, trial_id))
        if status != "wait":
            return status, path
        if on_wait is not None and not waited:
            on_wait()
        waited = True
        time.sleep(poll_s)
