"""The dense-phase cache actor on a real local Ray: claim / wait / publish / fail, and the lease that hands the dense
phase of a dead or stopped computing trial to a waiter (so that no waiter waits forever)."""

import os
import time

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ray = pytest.importorskip("ray")

from raysft.distributed.train_workers import publish_theta1  # noqa: E402
from raysft.sweep.dense_cache import DenseCache, Lease, acquire  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture
def cache(local_ray, tmp_path):
    name = f"cache-{time.monotonic_ns()}"
    actor = DenseCache.options(name=name).remote(str(tmp_path), 30.0)
    actor.actor_name = name
    yield actor
    ray.kill(actor)


def claim(cache, key, trial, lease_s=None):
    return ray.get(cache.claim.remote(key, trial, lease_s))[0]


def test_first_computes_others_wait_until_published(cache):
    assert claim(cache, "k", "t1") == "compute"
    assert claim(cache, "k", "t2") == "wait"
    assert claim(cache, "k", "t1") == "compute"  # the same trial retried computes again
    assert claim(cache, "other", "t3") == "compute"  # another key is independent
    publish_theta1(cache.actor_name, "k")  # what the rank-0 worker calls once θ1 is written
    assert claim(cache, "k", "t2") == "ready"
    assert ray.get(cache.stats.remote()) == {"computed": 2, "reused": 1, "takeovers": 0, "failures": 0}


def test_failed_hands_the_work_to_the_next_claimant(cache):
    assert claim(cache, "k", "t1") == "compute"
    ray.get(cache.failed.remote("k", "t2"))  # not the holder: nothing changes
    assert claim(cache, "k", "t2") == "wait"
    ray.get(cache.failed.remote("k", "t1"))
    assert claim(cache, "k", "t2") == "compute"
    ray.get(cache.done.remote("k", "t2"))
    ray.get(cache.failed.remote("k", "t2"))  # a failure after publishing keeps θ1
    assert claim(cache, "k", "t3") == "ready"
    assert ray.get(cache.stats.remote())["failures"] == 1


def test_an_expired_lease_goes_to_a_waiter_and_a_renewed_one_does_not(cache):
    assert claim(cache, "k", "t1", lease_s=1.0) == "compute"
    lease = Lease(cache, "k", "t1", lease_s=1.0)  # renewed every 0.25 s
    try:
        for _ in range(5):
            time.sleep(0.5)
            assert claim(cache, "k", "t2") == "wait"  # 2.5 s > the lease: still held while it is renewed
    finally:
        lease.stop()  # the trial stopped (the scheduler ended it: no done, no failed)
    time.sleep(1.3)
    assert claim(cache, "k", "t2") == "compute"
    assert ray.get(cache.heartbeat.remote("k", "t1")) is False  # the old holder lost it
    assert ray.get(cache.stats.remote())["takeovers"] == 1


@ray.remote(num_cpus=0)
class _ComputingTrial:
    """A trial driver in its own process that claims the dense phase and renews its lease, then hangs."""

    def start(self, cache, key: str, lease_s: float) -> str:
        status, _ = acquire(cache, key, "holder", lease_s=lease_s)
        self.lease = Lease(cache, key, "holder", lease_s)
        return status


def test_a_killed_computing_trial_loses_its_dense_phase_to_a_waiter(cache):
    holder = _ComputingTrial.remote()
    assert ray.get(holder.start.remote(cache, "k", 1.0)) == "compute"
    time.sleep(2.0)
    assert claim(cache, "k", "waiter") == "wait"  # alive and renewing
    ray.kill(holder)  # its process dies, as on a lost node
    started = time.monotonic()
    status, _ = acquire(cache, "k", "waiter", poll_s=0.2)
    assert status == "compute" and time.monotonic() - started < 5.0
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
