"""Live progress of a sweep's trials: a named Ray actor (the board) that trial drivers and their rank-0 Train workers
tell their phase and step, and that the `raysft tune` driver reads to draw what is running. Display only: nothing a
trial computes depends on it (which trials score test is the sweep's :mod:`raysft.sweep.dev_record`).

Nothing here reports to Tune: an intermediate ``tune.report`` would count as a training iteration for ASHA and a
result for Optuna. The board is fire-and-forget for its writers (``push.remote`` without waiting), throttled to one
message per phase change and at most one per ``every_s`` seconds within a phase.
"""

from __future__ import annotations

import time
from typing import Any

from raysft.train.loop import SilentReporter

ACTOR_NAME = "raysft-progress"


class Board:
    """trial id -> its latest state; plus an ordered log of phase changes (so that short phases are not lost between
    two reads). Plain Python: the sweep runs it as a Ray actor (:func:`get_board`)."""

    def __init__(self, clock=time.time):
        self.clock = clock
        self.trials: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []

    def push(self, trial_id: str, fields: dict[str, Any]) -> None:
        now = self.clock()
        state = self.trials.setdefault(trial_id, {"trial_id": trial_id, "started": now})
        fields = dict(fields)
        plan = fields.pop("plan", None)
        if plan is not None:  # steps per phase, for the time-left estimate
            state["plan"] = {**state.get("plan", {}), **plan}
        phase = fields.get("phase")
        if phase is not None and phase != state.get("phase"):
            state["phase_started"] = now
            state.pop("step", None)
            state.pop("total", None)
            if phase == "starting" and "running_since" in state:  # a retried trial: its time counts afresh
                state.pop("running_since")
                state["started"] = now
            if phase == "workers" and "running_since" not in state:
                state["running_since"] = now  # its own work starts: waits for a slot or for θ1 are behind it
            self.events.append({"time": now, "trial_id": trial_id, **fields})
        state.update(fields)
        state["updated"] = now

    def read(self, since: int = 0) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], int]:
        """(every trial's state, the phase changes after event number ``since``, the next ``since``)."""
        return {k: dict(v) for k, v in self.trials.items()}, self.events[since:], len(self.events)


_CLASS = None


def get_board(name: str = ACTOR_NAME):
    """The sweep's board as a Ray actor (created by the `raysft tune` driver, found by name by trial drivers and
    workers); `raysft lang` keeps its own under another name."""
    global _CLASS
    if _CLASS is None:
        import ray

        _CLASS = ray.remote(num_cpus=0)(Board)
    return _CLASS.options(name=name, get_if_exists=True).remote()


def find_board():
    """The board if a sweep driver made one, else None (a Train run outside a sweep reports nowhere)."""
    import ray

    try:
        return ray.get_actor(ACTOR_NAME)
    except ValueError:
        return None


def push(board, trial_id: str | None, **fields) -> None:
    """Fire and forget: a lost progress message never stops a trial."""
    if board is None or trial_id is None:
        return
    try:
        board.push.remote(trial_id, fields)
    except Exception:
        pass


class BoardReporter:
    """The training loop's ``Reporter`` (start / step / end) writing to the board: the phase and its total at its
    start, then step and loss at most every ``every_s`` seconds, and the last step at its end."""

    def __init__(self, board, trial_id: str, every_s: float = 2.0):
        self.board, self.trial_id, self.every_s = board, trial_id, every_s
        self.phase, self.total, self.done, self.last = "", 0, 0, 0.0
        self.loss = float("nan")

    def start(self, phase: str, total: int) -> None:
        self.phase, self.total, self.done, self.last = phase, total, 0, time.monotonic()
        push(self.board, self.trial_id, phase=phase, step=0, total=total)

    def step(self, loss: float) -> None:
        self.done += 1
        self.loss = loss
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            push(self.board, self.trial_id, step=self.done, total=self.total, loss=loss)

    def end(self) -> None:
        push(self.board, self.trial_id, step=self.done, total=self.total, loss=self.loss)

    def note(self, **fields) -> None:
        push(self.board, self.trial_id, **fields)


class NullReporter(SilentReporter):
    """The loop's silent reporter, plus the board's ``note`` (a trial with no progress board)."""

    def note(self, **fields) -> None:
        pass
