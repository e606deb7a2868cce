"""The sweep's own actors on a real local Ray: the dense-phase cache and the dev record live as long as the sweep or
confirm that made them (their drivers hold the handles: a named actor dies with its last one, and trials only look
them up by name), and which trials score the test sets is decided by the dev record, with no progress board.

Tune itself is replaced by a stand-in whose trials are Ray tasks run one after the other, with a garbage collection
between them: the first trial's handle is gone by the time the second looks the actors up."""

import gc
import os
import time

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ray = pytest.importorskip("ray")

from raysft.config import load_config  # noqa: E402
from raysft.distributed.progress import find_board  # noqa: E402
from raysft.distributed.train_workers import scores_test  # noqa: E402
from raysft.sweep import dev_record  # noqa: E402
from raysft.sweep.dense_cache import find_cache  # noqa: E402


@ray.remote(num_cpus=0)
def _trial(trial_id: str) -> dict:
    """What a trial driver looks up by name, and the dense phase it claims."""
    cache = find_cache()
    found = {"cache": cache is not None, "dev_record": True}
    try:
        ray.get_actor(dev_record.ACTOR_NAME)
    except ValueError:
        found["dev_record"] = False
    if cache is not None:
        found["claim"] = ray.get(cache.claim.remote("key", trial_id)).status
    return found


class FakeTuner:
    """Tune's Tuner, minus Tune: ``fit`` runs two trials one after the other."""

    seen: list[dict] = []

    def __init__(self, *args, **kwargs):
        pass

    @classmethod
    def can_restore(cls, path) -> bool:
        return False

    def fit(self):
        for trial_id in ("first", "second"):
            FakeTuner.seen.append(ray.get(_trial.remote(trial_id)))
            gc.collect()  # the first trial's handles are gone: only the driver's keep the actors alive
            time.sleep(1.0)
        return []


@pytest.fixture
def fake_tune(local_ray, monkeypatch):
    from ray import tune

    monkeypatch.setattr(tune, "Tuner", FakeTuner)
    FakeTuner.seen = []
    return FakeTuner.seen


def gone(name: str, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name)
        except ValueError:
            return True
        time.sleep(0.2)
    return False


def test_the_dense_cache_outlives_a_confirms_first_trial(fake_tune, tmp_path):
    from raysft.sweep.confirm import _confirm_trials
    from raysft.sweep.dense_cache import ACTOR_NAME

    base = load_config("smoke", []).model_dump(mode="json")
    _confirm_trials(base, [], [1], [{}], root=str(tmp_path), name="confirm", address=None, verbose=False,
                    console=None, tracking=None, max_concurrent=1)
    # The second trial finds the same actor, with the first one's claim in it.
    assert [t["cache"] for t in fake_tune] == [True, True]
    assert [t["claim"] for t in fake_tune] == ["compute", "wait"]
    assert gone(ACTOR_NAME)  # and the confirm's end lets it go: the next sweep starts a fresh one


def test_the_sweeps_actors_live_as_long_as_the_sweep(fake_tune, tmp_path):
    from raysft.sweep.dense_cache import ACTOR_NAME
    from raysft.sweep.tune import run_sweep

    cfg = load_config("smoke", [])
    run_sweep(cfg, trials=2, storage=str(tmp_path), track=False, preflight=False)
    assert fake_tune == [{"cache": True, "dev_record": True, "claim": "compute"},
                         {"cache": True, "dev_record": True, "claim": "wait"}]
    assert gone(ACTOR_NAME) and gone(dev_record.ACTOR_NAME)


def test_which_trials_score_test_is_decided_without_a_progress_board(local_ray):
    assert find_board() is None
    record = dev_record.get_record()
    name = dev_record.ACTOR_NAME
    try:
        assert scores_test(name, "a", False, 0.5)  # the first of its kind
        assert not scores_test(name, "b", False, 0.4)
        assert scores_test(name, "d", True, 0.1)  # the defaults are a kind of their own
        assert scores_test(name, "b", False, 0.6)  # b retried: its own earlier score does not count
        assert not scores_test(name, "a", False, 0.55)
    finally:
        ray.kill(record)
    # A Train run outside a sweep (no record), or a record that is gone: the trial scores test.
    assert scores_test(None, "x", False, 0.0)
    assert scores_test(name, "x", False, 0.0)


def test_the_dev_record_compares_each_trial_with_the_others_of_its_kind():
    record = dev_record.DevRecord()
    assert record.leads("a", False, 0.5)
    assert record.leads("d", True, 0.1)
    assert not record.leads("b", False, 0.4)
    assert record.leads("c", False, 0.5)  # a tie leads: both may be the one best vs default reports
    assert record.leads("a", False, 0.2) is False  # a retried trial is compared with the others only
