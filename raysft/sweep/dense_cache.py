"""The dense-phase cache: trials whose dense phase has the same settings share one dense run.

A named Ray actor hands the first trial "compute" and later ones "wait" (then "ready"), so concurrent trials never
compute the same dense phase twice; θ1 lives once on the sweep's storage (`<storage>/dense/<key>/theta1.safetensors`,
any URI Ray's storage_path accepts: a local path, s3://, gs://…), so a resumed sweep finds it there too.

A sweep must not hang on it, so:
- θ1 is published (``done``) by the computing trial's rank-0 Train worker the moment it is written, at the end of
  the dense phase: waiters start their sparse phase while the computing trial runs its own;
- the computing trial holds a *lease*: its driver renews it (``heartbeat``) every few seconds until θ1 is published.
  A trial that dies (its process killed, its node lost) or is stopped by the scheduler (Ray ends it without raising)
  stops renewing; once the lease has expired, the next waiter's claim takes the work over ("compute");
- a trial whose dense phase fails says so (``failed``) and the next claimant computes at once.
Waiters therefore wait at most for a live computing trial's dense phase, plus one lease after it dies.
"""

from __future__ import annotations

import hashlib
import json
import time

import ray

from raysft import storage
from raysft.config import Config
from raysft.store import source_lang_sft_identity

ACTOR_NAME = "raysft-dense-cache"
THETA1_FILE = "theta1.safetensors"


def dense_key(cfg: Config, num_workers: int) -> str:
    """Everything the dense phase's result depends on: model, task and data, dense settings, seed, workers, and the
    source language's SFT that the task SFT trains on top of (its file's identity)."""
    payload = {
        "source_lang_sft": source_lang_sft_identity(cfg),
        "model": cfg.model,
        "task": cfg.task,
        "data": cfg.data.model_dump(),
        # Not the settings proven to leave θ1 bitwise the same (tests/test_rows.py, tests/test_spill.py): a sweep
        # that turns them on or off reuses the θ1 it has.
        "dense": cfg.dense.model_dump(exclude={"embedding_rows", "checkpoint_activations"}),
        "freeze_embeddings": cfg.sft.freeze_embeddings,
        "seed": cfg.seed,
        "num_workers": num_workers,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


LEASE_S = 60.0  # a computing trial that has not renewed its lease for this long is taken for dead


@ray.remote(num_cpus=0)
class DenseCache:
    def __init__(self, root: str, lease_s: float = LEASE_S):
        self.root = root  # a storage URI (raysft.storage)
        self.lease_s = lease_s
        # key -> {"state": "computing", "trial": id, "expires": monotonic time} | {"state": "ready"}
        self.state: dict[str, dict] = {}
        self.computed = 0  # dense phases handed out to compute (a takeover counts again)
        self.reused = 0
        self.takeovers = 0  # leases that expired (a dead or stopped computing trial) and went to a waiter
        self.failures = 0

    def path(self, key: str) -> str:
        return storage.join(self.root, key, THETA1_FILE)

    def claim(self, key: str, trial_id: str, lease_s: float | None = None) -> tuple[str, str]:
        """("compute", path) for the first trial (or the same trial retried, or any trial once the computing one's
        lease has expired), ("wait", path) while a live trial computes, ("ready", path) once θ1 is published."""
        path = self.path(key)
        entry = self.state.get(key)
        if entry is None and storage.exists(path):  # computed by an earlier (resumed) sweep
            entry = self.state[key] = {"state": "ready"}
        if entry is not None and entry["state"] == "ready":
            self.reused += 1
            return ("ready", path)
        now = time.monotonic()
        if entry is None or entry["trial"] == trial_id or entry["expires"] < now:
            if entry is None or entry["trial"] != trial_id:
                self.computed += 1
                if entry is not None:
                    self.takeovers += 1
            lease = self.lease_s if lease_s is None else lease_s
            self.state[key] = {"state": "computing", "trial": trial_id, "expires": now + lease, "lease": lease}
            return ("compute", path)
        return ("wait", path)

    def heartbeat(self, key: str, trial_id: str) -> bool:
        """Renew ``trial_id``'s lease; False when it holds none any more (θ1 published, or taken over)."""
        entry = self.state.get(key)
        if entry is None or entry["state"] != "computing" or entry["trial"] != trial_id:
            return False
        entry["expires"] = time.monotonic() + entry["lease"]
        return True

    def done(self, key: str, trial_id: str | None = None) -> None:
        """θ1 is on storage: every claimant from now on gets "ready"."""
        self.state[key] = {"state": "ready"}

    def failed(self, key: str, trial_id: str | None = None) -> None:
        """The computing trial's dense phase failed: the next claimant computes instead (a trial that no longer
        holds the lease changes nothing)."""
        entry = self.state.get(key)
        if entry and entry["state"] == "computing" and (trial_id is None or entry["trial"] == trial_id):
            del self.state[key]
            self.failures += 1

    def status(self, key: str) -> dict | None:
        entry = self.state.get(key)
        if entry is None:
            return None
        out = dict(entry)
        if "expires" in out:
            out["expires_in"] = out.pop("expires") - time.monotonic()
        return out

    def stats(self) -> dict[str, int]:
        return {"computed": self.computed, "reused": self.reused, "takeovers": self.takeovers,
                "failures": self.failures}


def get_cache(storage_root: str):
    """The sweep's cache actor; θ1 files go under ``<storage_root>/dense``. It lives as long as the `raysft tune`
    driver; θ1 files on storage outlive it for --resume."""
    return DenseCache.options(name=ACTOR_NAME, get_if_exists=True).remote(storage.join(storage_root, "dense"))


def acquire(cache, key: str, trial_id: str, poll_s: float = 2.0, lease_s: float | None = None,
            on_wait=None) -> tuple[str, str]:
    """Block until this trial may compute the dense phase ("compute") or reuse a published one ("ready"); ``on_wait()``
    is called once if it has to wait. It never waits on a dead trial: a computing trial that stops renewing its lease
    loses it to the next claim."""
    waited = False
    while True:
        status, path = ray.get(cache.claim.remote(key, trial_id, lease_s))
        if status != "wait":
            return status, path
        if on_wait is not None and not waited:
            on_wait()
        waited = True
        time.sleep(poll_s)


class Lease:
    """Renews a computing trial's lease from a daemon thread every ``lease_s / 4`` s until θ1 is published (the
    cache answers False) or :meth:`stop`. A killed process renews nothing, which is the point."""

    def __init__(self, cache, key: str, trial_id: str, lease_s: float = LEASE_S):
        import threading

        self.cache, self.key, self.trial_id = cache, key, trial_id
        self.interval = max(0.2, lease_s / 4)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raysft-dense-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not ray.get(self.cache.heartbeat.remote(self.key, self.trial_id)):
                    return
            except Exception:  # the cache is gone (the sweep is ending): nothing left to renew
                return

    def stop(self) -> None:
        self._stop.set()
