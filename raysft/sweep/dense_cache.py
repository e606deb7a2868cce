"""The dense-phase cache: trials whose dense phase has the same settings share one dense run.

A named Ray actor hands the first trial "compute" and later ones "wait" (then "ready"), so concurrent trials never
compute the same dense phase twice; θ1 lives once on the sweep's storage (`<storage>/dense/<key>/theta1.safetensors`,
any URI Ray's storage_path accepts: a local path, s3://, gs://…), so a resumed sweep finds it there too. The sweep's
driver (``raysft tune``, ``raysft confirm``) creates the actor and holds its handle until its last trial is over: a
named actor dies with its last handle, and trials only look it up by name (:func:`find_cache`).

A sweep cannot hang on it:
- θ1 is published (``done``) by the computing trial's rank-0 Train worker the moment it is written, at the end of
  the dense phase: waiters start their sparse phase while the computing trial runs its own;
- each "compute" is an *attempt* with its own id, and holds a *lease* that two things keep: the trial's driver
  renews it (``heartbeat``, every quarter of ``tune.dense_lease_s``; a failed heartbeat is retried at the next one),
  and its rank-0 worker reports each dense-phase step (``progress``, throttled), which renews it too. A trial that
  dies (its process killed, its node lost) or is stopped by the scheduler (Ray ends it without raising) renews
  nothing; once the lease has expired, the next waiter's claim takes the work over ("compute");
- a lease must also show progress: an attempt that has reported no dense step for ``tune.dense_stall_s`` (counted
  from its claim, so a model that never loads or a worker group that never gets its resources counts too) loses the
  work to the next waiter, however alive its driver is;
- a trial whose dense phase fails says so (``failed``) and the next claimant computes at once;
- the absolute bound: a waiter that has waited ``tune.dense_wait_s`` (the holder still alive and progressing) stops
  waiting and computes the dense phase itself ("alone"), keeping its θ1 to itself. It does not take the lease over:
  a dense phase longer than the bound would otherwise be taken over, and restarted, forever. The cost is one more
  dense phase per waiter past the bound.
Waiters therefore wait at most for a live, progressing computing trial's dense phase, bounded by ``dense_wait_s``,
or one lease (or one stall bound) after it dies or hangs.

θ1 is published at most once per key: an attempt writes θ1 under a name of its own (:func:`attempt_file`), and
``done`` — one call at a time in the actor — checks that the attempt still holds the lease and only then moves its
file to the published name and marks the key ready. An attempt that lost the lease (a takeover after a stall, or a
retried trial's new attempt) is refused and its file removed: the published θ1 is never overwritten by a stale
holder's, nor changes under a trial that already read it. A repeated ``done`` of the attempt that published (its
driver's fallback, a worker group restarted after publishing) is answered True and changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import NamedTuple

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
STALL_S = 900.0  # a computing attempt that has reported no dense step for this long is taken for hung
WAIT_S = 6 * 3600.0  # a waiter that has waited this long computes the dense phase itself


def attempt_file(attempt: str) -> str:
    """The name one computing attempt writes θ1 under, beside the published file, before ``done`` publishes it."""
    return f"theta1.attempt-{attempt}.safetensors"


class Claim(NamedTuple):
    """A claim's answer. ``status``: "compute" (this attempt computes θ1), "wait" (a live trial computes it),
    "ready" (published: read ``path``), or "alone" (:func:`acquire` stopped waiting: compute it, publish nothing)."""

    status: str
    path: str  # the published θ1
    attempt: str | None = None  # "compute": renew, report progress and publish under this id
    write_path: str | None = None  # "compute": where this attempt writes θ1 before publishing it


@ray.remote(num_cpus=0)
class DenseCache:
    def __init__(self, root: str, lease_s: float = LEASE_S, stall_s: float = STALL_S):
        self.root = root  # a storage URI (raysft.storage)
        self.lease_s = lease_s
        self.stall_s = stall_s
        # key -> {"state": "computing", "trial", "attempt", "expires", "lease", "progress_at", "stall", "step"}
        #      | {"state": "ready", "attempt": the attempt that published, or None (found on storage)}
        self.state: dict[str, dict] = {}
        self.attempts = 0
        self.computed = 0  # dense phases handed out to compute (a takeover counts again)
        self.reused = 0
        self.takeovers = 0  # leases lost (a dead, stopped or hung computing trial) that went to a waiter
        self.stalled = 0  # of those, the ones lost for showing no progress while still renewed
        self.failures = 0

    def path(self, key: str) -> str:
        return storage.join(self.root, key, THETA1_FILE)

    def attempt_path(self, key: str, attempt: str) -> str:
        return storage.join(self.root, key, attempt_file(attempt))

    def claim(self, key: str, trial_id: str, lease_s: float | None = None, stall_s: float | None = None) -> Claim:
        """"compute" for the first trial (or the same trial retried, or any trial once the computing attempt's lease
        has expired or it stalled), "wait" while a live attempt computes, "ready" once θ1 is published."""
        path = self.path(key)
        entry = self.state.get(key)
        if entry is None and storage.exists(path):  # computed by an earlier (resumed) sweep
            entry = self.state[key] = {"state": "ready", "attempt": None}
        if entry is not None and entry["state"] == "ready":
            self.reused += 1
            return Claim("ready", path)
        now = time.monotonic()
        lost = entry is not None and self._lost(entry, now)
        if entry is not None and entry["trial"] != trial_id and not lost:
            return Claim("wait", path)
        # A retried trial gets a new attempt too: its earlier one (a dead process) may no longer publish.
        if entry is None or entry["trial"] != trial_id:
            self.computed += 1
            if entry is not None:
                self.takeovers += 1
                if lost == "stalled":
                    self.stalled += 1
        self.attempts += 1
        attempt = f"{trial_id}-{self.attempts}"
        lease = self.lease_s if lease_s is None else lease_s
        self.state[key] = {"state": "computing", "trial": trial_id, "attempt": attempt, "expires": now + lease,
                           "lease": lease, "progress_at": now, "stall": self.stall_s if stall_s is None else stall_s,
                           "step": None}
        return Claim("compute", path, attempt, self.attempt_path(key, attempt))

    @staticmethod
    def _lost(entry: dict, now: float) -> str | None:
        if entry["expires"] < now:
            return "expired"
        if now - entry["progress_at"] > entry["stall"]:
            return "stalled"
        return None

    def _holds(self, key: str, attempt: str) -> dict | None:
        entry = self.state.get(key)
        if entry is None or entry["state"] != "computing" or entry["attempt"] != attempt:
            return None
        return entry

    def heartbeat(self, key: str, attempt: str) -> bool:
        """Renew ``attempt``'s lease; False when it holds none any more (θ1 published, or taken over)."""
        entry = self._holds(key, attempt)
        if entry is None:
            return False
        entry["expires"] = time.monotonic() + entry["lease"]
        return True

    def progress(self, key: str, attempt: str, step: int) -> bool:
        """The attempt's rank-0 worker finished dense step ``step``: the lease is alive and making progress."""
        entry = self._holds(key, attempt)
        if entry is None:
            return False
        now = time.monotonic()
        entry.update(progress_at=now, expires=now + entry["lease"], step=step)
        return True

    def done(self, key: str, attempt: str) -> bool:
        """``attempt`` wrote θ1 (to its :meth:`attempt_path`): published (True) if it still holds the lease; every
        claimant from now on gets "ready". A stale attempt is refused (False) and its file removed."""
        entry = self.state.get(key)
        if entry is not None and entry["state"] == "ready" and entry["attempt"] == attempt:
            return True  # published already, by this very attempt
        if self._holds(key, attempt) is None:
            storage.delete(self.attempt_path(key, attempt))
            return False
        storage.move(self.attempt_path(key, attempt), self.path(key))
        self.state[key] = {"state": "ready", "attempt": attempt}
        return True

    def failed(self, key: str, attempt: str) -> None:
        """The computing attempt's dense phase failed: the next claimant computes instead (an attempt that no
        longer holds the lease changes nothing)."""
        if self._holds(key, attempt) is not None:
            del self.state[key]
            self.failures += 1
            storage.delete(self.attempt_path(key, attempt))

    def status(self, key: str) -> dict | None:
        entry = self.state.get(key)
        if entry is None:
            return None
        out = dict(entry)
        if "expires" in out:
            now = time.monotonic()
            out["expires_in"] = out.pop("expires") - now
            out["since_progress"] = now - out.pop("progress_at")
        return out

    def stats(self) -> dict[str, int]:
        return {"computed": self.computed, "reused": self.reused, "takeovers": self.takeovers,
                "stalled": self.stalled, "failures": self.failures}


def get_cache(storage_root: str):
    """The sweep's cache actor; θ1 files go under ``<storage_root>/dense``. Only a sweep's (or confirm's) driver
    calls this, and holds the handle until its last trial is over; θ1 files on storage outlive it for --resume."""
    return DenseCache.options(name=ACTOR_NAME, get_if_exists=True).remote(storage.join(storage_root, "dense"))


def find_cache():
    """The running sweep's cache actor, or None (no sweep driver holds one: nothing to share θ1 with). Trials never
    create it: an actor a trial created would die with that trial."""
    try:
        return ray.get_actor(ACTOR_NAME)
    except ValueError:
        return None


def acquire(cache, key: str, trial_id: str, poll_s: float = 2.0, lease_s: float | None = None,
            stall_s: float | None = None, max_wait_s: float = WAIT_S, on_wait=None) -> Claim:
    """Block until this trial may compute the dense phase ("compute"), reuse a published one ("ready"), or has
    waited ``max_wait_s`` ("alone": compute it without publishing); ``on_wait()`` is called once if it has to wait.
    It never waits on a dead or hung trial: a computing attempt that stops renewing its lease, or shows no progress
    for ``stall_s``, loses it to the next claim. A cache that no longer answers is waited on within the same bound."""
    started = time.monotonic()
    waited, path = False, ""
    while True:
        left = max_wait_s - (time.monotonic() - started)
        try:
            claim = ray.get(cache.claim.remote(key, trial_id, lease_s, stall_s), timeout=max(1.0, min(30.0, left)))
        except ray.exceptions.GetTimeoutError:  # a busy actor (publishing a large θ1): ask again
            claim = Claim("wait", path)
        except ray.exceptions.ActorDiedError:  # the sweep's driver is gone with its cache: nothing to share with
            return Claim("alone", path)
        if claim.status != "wait":
            return claim
        path = claim.path
        left = max_wait_s - (time.monotonic() - started)
        if left <= 0:
            return Claim("alone", path)
        if on_wait is not None and not waited:
            on_wait()
        waited = True
        time.sleep(min(poll_s, left))


class Lease:
    """Renews a computing attempt's lease from a daemon thread every ``lease_s / 4`` s until θ1 is published or the
    lease is lost (the cache answers False), or :meth:`stop`. A heartbeat that fails (the actor busy, a lost message)
    is retried at the next one, on the same schedule (a slow failure does not delay it): three may fail in a row
    before the lease can expire. A killed process renews nothing, which is the point."""

    def __init__(self, cache, key: str, attempt: str, lease_s: float = LEASE_S):
        self.cache, self.key, self.attempt = cache, key, attempt
        self.interval = max(0.2, lease_s / 4)
        self.failures = 0  # heartbeats that failed and were retried
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raysft-dense-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        due = time.monotonic() + self.interval
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            due = max(due + self.interval, time.monotonic())
            try:
                held = ray.get(self.cache.heartbeat.remote(self.key, self.attempt), timeout=self.interval)
            except ray.exceptions.ActorDiedError:  # the sweep is ending: nothing left to renew
                return
            except Exception:
                self.failures += 1
                continue
            if not held:
                return

    def stop(self) -> None:
        self._stop.set()
