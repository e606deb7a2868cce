"""ASHA that lets the default trials finish.

A sweep's default trials (one per method, enqueued first) are the baseline every searched trial is reported against
(`best dev … vs default …`). Plain ASHA stopped sc-sft's default at its first rung in a `sa-cpu` sweep here, leaving the
baseline with no final score. This scheduler records a default's intermediate scores in the rungs as ASHA does (they
set the bar the searched trials must clear) but never stops it.
"""

from __future__ import annotations

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler


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
