"""A sweep's outcome as text: one line per finished trial (a Tune callback feeding the progress board) and a
multi-objective sweep's Pareto front. Best vs default itself is :mod:`raysft.outcome`."""

from __future__ import annotations

import time

from raysft.distributed.progress import find_board, push
from raysft.outcome import outcome_of
from raysft.stats import CONFIDENCE
from raysft.sweep.space import describe
from raysft.sweep.study import OBJECTIVE


def pareto_front(points: list[tuple[str, float, int]]) -> list[tuple[str, float, int]]:
    """The (name, objective ↑, K ↓) points no other point dominates (at least as good on both, better on one),
    by K ascending."""
    front = [
        p for p in points
        if not any(q[1] >= p[1] and q[2] <= p[2] and (q[1] > p[1] or q[2] < p[2]) for q in points)
    ]
    return sorted(front, key=lambda p: (p[2], -p[1]))


def pareto_lines(grid) -> list[str]:
    """A multi-objective sweep's Pareto front over its fully evaluated trials, one line per trial."""
    points = []
    for result in grid:
        m = result.metrics or {}
        if m.get("phase") == "final" and m.get("k") is not None and m.get(OBJECTIVE) == m.get(OBJECTIVE):
            points.append((f"{m.get('trial_id', '?')}: {describe(result.config['sample'])}", m[OBJECTIVE], int(m["k"])))
    front = pareto_front(points)
    return [f"Pareto front (dev ↑, K ↓), {len(front)} of {len(points)} trials:"] + [
        f"  {name} → dev {score:.4f} at K={k:,}" for name, score, k in front
    ]


def trial_lines_callback(confidence: float = CONFIDENCE):
    """A Tune callback: one line per finished trial (method, key parameters, dev score, time, best vs default and its
    verdict at ``confidence``), handed to the sweep's progress board, whose watcher prints it
    (:mod:`raysft.sweep.watch`). It holds no console or actor handle (Tune pickles its callbacks); the board is found
    by name."""
    from ray.tune import Callback  # imported where it is used (a heavy import)

    class TrialLines(Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            r = trial.last_result or {}
            score = r.get(OBJECTIVE, float("nan"))
            final = r.get("phase") == "final"
            stopped = "" if final else ", stopped early"
            reused = ", dense reused" if r.get("dense_cache") == "reused" else ""
            if "seeds_done" in r:  # racing: the dev is the mean over the seeds it ran
                reused += f", mean of {r['seeds_done']} seed{'s' if r['seeds_done'] != 1 else ''}"
            test = r.get("avg/test")
            test = f" test {test:.4f}" if isinstance(test, (int, float)) else ""
            line = (f"trial {trial.trial_id}: {describe(trial.config['sample'])} → dev {score:.4f}{test} "
                    f"({r.get('time_total_s', 0):.0f}s{reused}{stopped}) · {outcome_of(trials, confidence).line()}")
            push(find_board(), trial.trial_id, phase="done" if final else "stopped", line=line, ended=time.time(),
                 method=trial.config["sample"]["method"])

        def on_trial_error(self, iteration, trials, trial, **info):
            push(find_board(), trial.trial_id, phase="failed", ended=time.time(),
                 line=f"trial {trial.trial_id}: {describe(trial.config['sample'])} failed")

    return TrialLines()
