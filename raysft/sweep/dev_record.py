"""Which trials of a sweep score the test sets (``tune.test_every_trial: false``): the sweep's record of each finished
trial's final dev objective, by kind (the default trials, or the searched ones).

A trial scores test only when its dev leads its kind among the trials finished so far, so the trials that best vs
default reports always have test scores. The record belongs to the sweep, not to its display: ``raysft tune``'s
driver creates it as a named actor (:func:`get_record`) and holds the handle until its last trial is over; the Ray
Train worker asks it by name (``raysft.distributed.train_workers.scores_test``), and with no record (a Train run
outside a sweep) the trial scores test.
"""

from __future__ import annotations

ACTOR_NAME = "raysft-dev-record"


class DevRecord:
    """trial id -> (is a default trial, its final dev objective). Plain Python: the sweep runs it as a Ray actor."""

    def __init__(self):
        self.devs: dict[str, tuple[bool, float]] = {}

    def leads(self, trial_id: str, default: bool, dev: float) -> bool:
        """Record ``trial_id``'s final dev and say whether it is at least the best that the other trials of its kind
        recorded (a retried trial replaces its own score). One call: two trials finishing together are compared in
        the order the record sees them."""
        best = max((d for tid, (kind, d) in self.devs.items() if tid != trial_id and kind == default), default=None)
        self.devs[trial_id] = (default, dev)
        return best is None or dev >= best


_CLASS = None


def get_record():
    """The sweep's record as a Ray actor, created by the `raysft tune` driver (which holds the handle: the actor dies
    with its last one); trials' workers find it by name."""
    global _CLASS
    if _CLASS is None:
        import ray  # imported where it is used (a heavy import)

        _CLASS = ray.remote(num_cpus=0)(DevRecord)
    return _CLASS.options(name=ACTOR_NAME, get_if_exists=True).remote()
