"""The sweep's schedulers: ASHA that lets the default trials finish (one seed per trial), and the racing scheduler
(``tune.seeds`` > 1: seeds inside the search, :mod:`raysft.sweep.racing`).

A sweep's default trials (one per method, enqueued first) are the baseline every searched trial is reported against
(`best dev … vs default …`). Plain ASHA stopped sc-sft's default at its first rung in a `sa-cpu` sweep here, leaving the
baseline with no final score. DefaultsFinishASHA records a default's intermediate scores in the rungs as ASHA does (they
set the bar the searched trials must clear) but never stops it.
"""

from __future__ import annotations

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from raysft.stats import CONFIDENCE
from raysft.outcome import seed_scores
from raysft.sweep.racing import race_decision


def is_default(trial) -> bool:
    return bool(((getattr(trial, "config", None) or {}).get("sample") or {}).get("default"))


class DefaultsFinishASHA(AsyncHyperBandScheduler):
    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)  # the score enters its rung either way
        if action == TrialScheduler.STOP and is_default(trial):
            # Private: no public API vetoes a STOP that ASHA already counted (the count only feeds debug_string).
            self._num_stopped -= 1
            return TrialScheduler.CONTINUE
        return action


class RacingScheduler(FIFOScheduler):
    """The racing scheduler (``tune.seeds`` > 1, in ASHA's place): every trial reports once per seed; after each
    report a searched trial is stopped when :func:`raysft.sweep.racing.race_decision` rules it out (worse than a
    default or the leader beyond the seeds' pooled noise, paired by seed); a default always continues. Its record
    of scores is rebuilt from the reports (each carries every seed its trial finished), so a resumed sweep's
    scheduler catches up as its trials report again."""

    def __init__(self, confidence: float = CONFIDENCE):
        super().__init__()
        self.confidence = confidence
        self.scores: dict[str, dict[int, float]] = {}  # configuration (trial id) → seed → dev
        self.defaults: set[str] = set()
        self.stopped: set[str] = set()
        self.reasons: dict[str, str] = {}  # why each stopped trial was stopped

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        scores = seed_scores(result)
        if scores:
            self.scores[trial.trial_id] = scores
        if is_default(trial):
            self.defaults.add(trial.trial_id)
            return TrialScheduler.CONTINUE
        decision = race_decision(self.scores, trial.trial_id, self.defaults, self.stopped, self.confidence)
        if decision.stop:
            self.stopped.add(trial.trial_id)
            self.reasons[trial.trial_id] = decision.why
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        return f"Racing: {len(self.scores)} configurations scored, {len(self.stopped)} stopped."
