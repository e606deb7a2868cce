"""The dense-phase cache actor on a real local Ray: claim / wait / publish / fail, the lease that hands the dense phase
of a dead, stopped or hung computing trial to a waiter, the bound on any wait, and θ1 published once per key.

Faults are simulated from outside: a cache handle whose heartbeats fail, a lease renewed with no progress reported (a
trial whose workers hang), an attempt that publishes after it lost the lease."""

import os
import time

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ray = pytest.importorskip("ray")

from raysft.distributed.train_workers import DenseProgress, publish_theta1  # noqa: E402
from raysft.sweep.dense_cache import DenseCache, Lease, acquire  # noqa: E402


@pytest.fixture
def cache(local_ray, tmp_path):
    name = f"cache-{time.monotonic_ns()}"
    actor = DenseCache.options(name=name).remote(str(tmp_path), 30.0)
    actor.actor_name = name
    yield actor
    ray.kill(actor)


def claim(cache, key, trial, lease_s=None, stall_s=None):
    return ray.get(cache.claim.remote(key, trial, lease_s, stall_s))


def write(c, data: bytes) -> None:
    """What the computing attempt's rank-0 worker does with θ1: write it under the attempt's own name."""
    from raysft import storage

    storage.write_atomic(c.write_path, data)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_first_computes_others_wait_until_published(cache):
    first = claim(cache, "k", "t1")
    assert first.status == "compute" and first.attempt and first.write_path != first.path
    assert claim(cache, "k", "t2").status == "wait"
    retried = claim(cache, "k", "t1")  # the same trial retried computes again, as a new attempt
    assert retried.status == "compute" and retried.attempt != first.attempt
    assert claim(cache, "other", "t3").status == "compute"  # another key is independent
    write(retried, b"theta1")
    assert publish_theta1(cache.actor_name, "k", retried.attempt) is True  # what the rank-0 worker calls
    ready = claim(cache, "k", "t2")
    assert ready.status == "ready" and read(ready.path) == b"theta1"
    assert ray.get(cache.stats.remote()) == {"computed": 2, "reused": 1, "takeovers": 0, "stalled": 0, "failures": 0}
    assert publish_theta1(None, "k", retried.attempt) is None  # outside a sweep: nobody to tell


def test_failed_hands_the_work_to_the_next_claimant(cache):
    first = claim(cache, "k", "t1")
    ray.get(cache.failed.remote("k", "t2-1"))  # not the holder: nothing changes
    assert claim(cache, "k", "t2").status == "wait"
    ray.get(cache.failed.remote("k", first.attempt))
    second = claim(cache, "k", "t2")
    assert second.status == "compute"
    write(second, b"theta1")
    assert ray.get(cache.done.remote("k", second.attempt))
    ray.get(cache.failed.remote("k", second.attempt))  # a failure after publishing keeps θ1
    assert claim(cache, "k", "t3").status == "ready"
    assert ray.get(cache.stats.remote())["failures"] == 1


def test_an_expired_lease_goes_to_a_waiter_and_a_renewed_one_does_not(cache):
    held = claim(cache, "k", "t1", lease_s=1.0)
    lease = Lease(cache, "k", held.attempt, lease_s=1.0)  # renewed every 0.25 s
    try:
        for _ in range(5):
            time.sleep(0.5)
            assert claim(cache, "k", "t2").status == "wait"  # 2.5 s > the lease: still held while it is renewed
    finally:
        lease.stop()  # the trial stopped (the scheduler ended it: no done, no failed)
    time.sleep(1.3)
    assert claim(cache, "k", "t2").status == "compute"
    assert ray.get(cache.heartbeat.remote("k", held.attempt)) is False  # the old holder lost it
    assert ray.get(cache.stats.remote())["takeovers"] == 1


@ray.remote(num_cpus=0)
def _lost_message():
    raise ConnectionError("heartbeat lost")


class _FlakyCache:
    """A cache handle whose first ``failures`` heartbeats fail (all of them with None), as a lost message or a busy
    actor would; everything else reaches the real actor."""

    def __init__(self, actor, failures: int | None):
        self.actor, self.failures = actor, failures

    def __getattr__(self, name):
        return getattr(self.actor, name)

    @property
    def heartbeat(self):
        flaky = self

        class Method:
            @staticmethod
            def remote(*args):
                if flaky.failures is None or flaky.failures > 0:
                    if flaky.failures is not None:
                        flaky.failures -= 1
                    return _lost_message.remote()
                return flaky.actor.heartbeat.remote(*args)

        return Method


def test_a_failed_heartbeat_is_retried(cache):
    """With no progress reported (θ1 being written, say), the driver's heartbeats alone hold the lease: two that fail
    cost nothing, the next ones renew it."""
    with pytest.raises(ray.exceptions.RayTaskError):  # a worker for the lost messages, started before the clock runs
        ray.get(_lost_message.remote())
    held = claim(cache, "k", "t1", lease_s=2.0, stall_s=60.0)
    lease = Lease(_FlakyCache(cache, failures=2), "k", held.attempt, lease_s=2.0)  # renewed every 0.5 s
    try:
        for _ in range(10):
            time.sleep(0.5)
            assert claim(cache, "k", "t2").status == "wait"  # 5 s, more than twice the lease
        assert lease.failures == 2 and lease._thread.is_alive()
    finally:
        lease.stop()


def test_a_heartbeat_failure_does_not_hand_the_lease_over_while_the_dense_phase_progresses(cache):
    """Every heartbeat of the driver fails, but the rank-0 worker's dense steps (its real hook) renew the lease; once
    they stop, the lease expires and a waiter takes over."""
    held = claim(cache, "k", "t1", lease_s=2.0, stall_s=2.0)
    lease = Lease(_FlakyCache(cache, failures=None), "k", held.attempt, lease_s=2.0)
    on_dense_step = DenseProgress(cache.actor_name, "k", held.attempt, every_s=0.25)
    try:
        started, step = time.monotonic(), 0
        while time.monotonic() - started < 5.0:  # more than two leases, two stall bounds
            on_dense_step(step, 0.5)
            step += 1
            time.sleep(0.05)
            if step % 10 == 0:
                assert claim(cache, "k", "t2").status == "wait"
        assert lease.failures >= 6
        assert ray.get(cache.status.remote("k"))["step"] > 1
        time.sleep(2.5)  # the workers stop reporting (and the heartbeats still fail)
        assert claim(cache, "k", "t2").status == "compute"
    finally:
        lease.stop()


def test_a_hung_computing_trial_loses_its_lease_after_the_stall_bound_and_cannot_publish(cache):
    """A computing trial whose driver renews its lease but whose workers never report a dense step (hung, or waiting
    for resources) loses the dense phase to a waiter after the stall bound, counted from its claim. When its workers
    wake up and publish, they are refused: the taker's θ1 is the published one."""
    hung = claim(cache, "k", "hung", lease_s=4.0, stall_s=1.5)
    lease = Lease(cache, "k", hung.attempt, lease_s=4.0)
    try:
        started = time.monotonic()
        taken = acquire(cache, "k", "waiter", poll_s=0.2, lease_s=4.0, stall_s=1.5)
        waited = time.monotonic() - started
        assert taken.status == "compute" and 1.0 < waited < 3.5, waited  # the lease itself would hold 4 s
        time.sleep(2.5)
        assert not lease._thread.is_alive()  # its next heartbeat was refused: the driver stops renewing
    finally:
        lease.stop()
    stats = ray.get(cache.stats.remote())
    assert stats["takeovers"] == 1 and stats["stalled"] == 1
    write(hung, b"stale")  # the hung workers wake up and finish their dense phase
    write(taken, b"taker")
    assert ray.get(cache.done.remote("k", taken.attempt)) is True
    assert publish_theta1(cache.actor_name, "k", hung.attempt) is False  # a stale holder's done is refused
    assert read(taken.path) == b"taker" and not os.path.exists(hung.write_path)  # its file removed


def test_a_stale_holder_cannot_publish_first_either(cache):
    """The stale attempt publishing before the taker is refused as well, so the taker's publication is the only
    one: θ1 never changes under a trial that has read it."""
    hung = claim(cache, "k", "hung", lease_s=0.5)
    time.sleep(0.8)
    taken = claim(cache, "k", "waiter")
    assert taken.status == "compute"
    write(hung, b"stale")
    assert ray.get(cache.done.remote("k", hung.attempt)) is False
    assert claim(cache, "k", "third").status == "wait"  # still the taker's to compute
    write(taken, b"taker")
    assert ray.get(cache.done.remote("k", taken.attempt)) is True
    assert read(taken.path) == b"taker"


def test_a_retried_trial_does_not_publish_twice(cache):
    """A trial that published and is then retried (a later phase failed) reads θ1; its driver's fallback done, or a
    restarted worker group's, changes nothing; an attempt of a trial retried before publishing cannot publish once
    the retry's attempt holds the lease."""
    first = claim(cache, "k", "t1")
    write(first, b"first")
    assert publish_theta1(cache.actor_name, "k", first.attempt) is True
    assert ray.get(cache.done.remote("k", first.attempt)) is True  # the driver's fallback: already published
    assert claim(cache, "k", "t1").status == "ready"  # the retried trial reads it
    assert read(first.path) == b"first"
    assert ray.get(cache.stats.remote())["computed"] == 1
    # Retried before publishing (its process died): the old attempt's late publication is refused.
    dead = claim(cache, "other", "t2")
    retry = claim(cache, "other", "t2")
    write(dead, b"dead")
    assert ray.get(cache.done.remote("other", dead.attempt)) is False
    write(retry, b"retry")
    assert ray.get(cache.done.remote("other", retry.attempt)) is True
    assert read(retry.path) == b"retry"
    assert ray.get(cache.stats.remote())["computed"] == 2  # one dense phase per key handed out to compute


def test_no_waiter_waits_past_the_absolute_bound(cache):
    """A live, progressing holder keeps its lease; a waiter stops waiting after max_wait_s and computes alone
    (without the lease: the holder still publishes)."""
    held = claim(cache, "k", "t1", lease_s=2.0, stall_s=60.0)
    lease = Lease(cache, "k", held.attempt, lease_s=2.0)
    try:
        started = time.monotonic()
        alone = acquire(cache, "k", "t2", poll_s=0.2, max_wait_s=1.0)
        assert alone.status == "alone" and alone.attempt is None and time.monotonic() - started < 3.0
        assert ray.get(cache.status.remote("k"))["attempt"] == held.attempt
    finally:
        lease.stop()


def test_dense_progress_is_throttled():
    clock = [0.0]
    sent = []

    class Cache:
        class progress:
            @staticmethod
            def remote(key, attempt, step):
                sent.append(step)

    hook = DenseProgress("unused", "k", "a", every_s=1.0, clock=lambda: clock[0])
    hook.cache = Cache()
    for step in range(10):
        hook(step, 0.1)
        clock[0] += 0.3
    assert sent == [1, 5, 9]  # the first step at once, then one per second


@ray.remote(num_cpus=0)
class _ComputingTrial:
    """A trial driver in its own process that claims the dense phase and renews its lease, then hangs."""

    def start(self, cache, key: str, lease_s: float) -> str:
        claimed = acquire(cache, key, "holder", lease_s=lease_s)
        self.lease = Lease(cache, key, claimed.attempt, lease_s)
        return claimed.status


def test_a_killed_computing_trial_loses_its_dense_phase_to_a_waiter(cache):
    holder = _ComputingTrial.remote()
    assert ray.get(holder.start.remote(cache, "k", 1.0)) == "compute"
    time.sleep(2.0)
    assert claim(cache, "k", "waiter").status == "wait"  # alive and renewing
    ray.kill(holder)  # its process dies, as on a lost node
    started = time.monotonic()
    taken = acquire(cache, "k", "waiter", poll_s=0.2)
    assert taken.status == "compute" and time.monotonic() - started < 5.0
    assert ray.get(cache.stats.remote())["takeovers"] == 1


def test_the_key_ignores_settings_that_leave_theta1_bitwise_the_same():
    from raysft.config import load_config
    from raysft.sweep.dense_cache import dense_key

    base = dense_key(load_config("smoke", []), 1)
    for same in ("dense.embedding_rows=false", "dense.checkpoint_activations=true", "sparse.lr=0.5"):
        assert dense_key(load_config("smoke", [same]), 1) == base, same
    for other in ("dense.lr=0.5", "seed=3", "dense.precision=bf16"):
        assert dense_key(load_config("smoke", [other]), 1) != base, other
    assert dense_key(load_config("smoke", []), 2) != base
