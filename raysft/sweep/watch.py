"""What a running sweep shows (rich, no Ray): each running trial (id, method, phase, step/total, loss, latest dev
score), finished trials as lines, and an estimate of the time left.

On a terminal, a live table refreshed in place with finished trials printed above it; anywhere else (a log, CI, a
pipe), one line per phase change, so that a captured `raysft tune` shows what each trial is doing from its start.
It draws what :mod:`raysft.distributed.progress`'s board holds: ``update(states, events)`` with every trial's latest
state and the phase changes since the last call. :func:`watch_sweep` runs it in a driver thread, reading the board.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from raysft.distributed.progress import get_board

# The phases a trial goes through, in order; the training phases' steps (the worker's plan) weigh the estimate.
ORDER = ["starting", "waiting for θ1", "workers", "loading", "mask", "dense", "dense (reused)", "select", "sparse",
         "eval", "final"]
ENDED = ("done", "stopped", "failed")


def fraction_done(state: dict[str, Any]) -> float:
    """How far a trial is through its training steps (0..1), from its plan (steps per phase) and its phase/step."""
    plan: dict[str, int] = state.get("plan") or {}
    total = sum(plan.values())
    phase = state.get("phase", "")
    if phase in ENDED or phase == "final":
        return 1.0
    if not total or phase not in ORDER:
        return 0.0
    here = ORDER.index(phase)
    done = sum(n for p, n in plan.items() if p in ORDER and ORDER.index(p) < here)
    if phase in plan:
        done += min(state.get("step", 0) or 0, plan[phase])
    return min(1.0, done / total)


def time_left(states: dict[str, dict[str, Any]], trials: int, concurrent: int, now: float) -> float | None:
    """Seconds until the sweep ends, roughly: the running trials' remaining time (from their own pace) plus the
    trials not started yet, in waves of ``concurrent``, each as long as a finished (or projected) trial. A trial's
    time counts from ``running_since`` (its workers starting), not from a wait for θ1. None until there is something
    to go on."""
    finished = [s for s in states.values() if s.get("phase") in ENDED]
    running = [s for s in states.values() if s.get("phase") not in ENDED]
    lengths = [s["ended"] - s.get("running_since", s["started"]) for s in finished
               if s.get("phase") == "done" and "ended" in s]
    remaining, projected, unpaced = [], [], []
    for s in running:
        f = fraction_done(s)
        elapsed = now - s["running_since"] if "running_since" in s else 0.0
        if f >= 0.05 and elapsed > 0:
            projected.append(elapsed / f)
            remaining.append(elapsed / f - elapsed)
        else:
            unpaced.append(elapsed)
    per_trial = sum(lengths) / len(lengths) if lengths else (sum(projected) / len(projected) if projected else None)
    if per_trial is None:
        return None
    # trials too early to have a pace of their own: a whole trial, less what they have run
    remaining += [max(0.0, per_trial - elapsed) for elapsed in unpaced]
    pending = max(0, trials - len(states))
    return max(remaining, default=0.0) + math.ceil(pending / max(1, concurrent)) * per_trial


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class SweepWatch:
    """Draws a sweep's progress on ``console``: live when it is a terminal (or ``live=True``), else phase lines."""

    def __init__(self, console: Console, trials: int, concurrent: int, live: bool | None = None, clock=time.time,
                 heartbeat_s: float = 60.0):
        self.console, self.trials, self.concurrent, self.clock = console, trials, concurrent, clock
        self.live_mode = console.is_terminal if live is None else live
        # off a terminal, a phase can run for minutes (a dense phase on CPU): after this long without a line, one
        # line per running trial says where it is (phase, step/total, loss), so a log never goes quiet
        self.heartbeat_s = heartbeat_s
        self.started = self._last_line = clock()
        self.states: dict[str, dict[str, Any]] = {}
        self._live = None

    def __enter__(self):
        if self.live_mode:
            from rich.live import Live

            self._live = Live(self.table(), console=self.console, refresh_per_second=2, transient=True)
            self._live.start()
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.stop()
            self._live = None

    # ------------------------------------------------------------------------------------------------- input
    def update(self, states: dict[str, dict[str, Any]], events: list[dict[str, Any]]) -> None:
        self.states = states
        for event in events:
            if event.get("phase") in ENDED:
                if event.get("line"):
                    # markup=False: the line's "[sc-sft … vs … default …]" is text, which Rich took for a tag
                    self.console.print(event["line"], highlight=False, soft_wrap=True, markup=False,
                                       style="red" if event["phase"] == "failed" else None)
            elif not self.live_mode:
                self.console.print(self.phase_line(event), highlight=False, soft_wrap=True)
            else:
                continue
            self._last_line = self.clock()
        if self._live is not None:
            self._live.update(self.table())
        elif self.clock() - self._last_line >= self.heartbeat_s:
            for line in self.progress_lines():
                self.console.print(line, highlight=False, soft_wrap=True)
            self._last_line = self.clock()

    # ------------------------------------------------------------------------------------------------ output
    def summary(self) -> str:
        ended = sum(1 for s in self.states.values() if s.get("phase") in ENDED)
        running = len(self.states) - ended
        pending = max(0, self.trials - len(self.states))
        left = time_left(self.states, self.trials, self.concurrent, self.clock())
        return (f"{ended}/{self.trials} done, {running} running, {pending} waiting · "
                f"{duration(self.clock() - self.started)} so far, ~{duration(left)} left")

    def phase_line(self, event: dict[str, Any]) -> str:
        tid = event["trial_id"]
        state = self.states.get(tid, {})
        what = state.get("method") or event.get("method") or ""
        phase = event["phase"]
        total = event.get("total")
        detail = f" ({total} steps)" if total and phase in ("dense", "mask", "sparse") else ""
        detail += f" ({total} languages)" if total and phase == "eval" else ""
        dev = event.get("dev", state.get("dev") if phase == "final" else None)
        detail += f", dev {dev:.4f}" if isinstance(dev, float) else ""
        at = duration(event.get("time", self.clock()) - self.started)
        return f"[{at:>6}] {tid} {what}: {phase}{detail} · {self.summary()}"

    def progress_lines(self) -> list[str]:
        """Where each running trial is, one line each (the non-terminal heartbeat)."""
        at = duration(self.clock() - self.started)
        out = []
        for tid, s in sorted(self.states.items()):
            if s.get("phase") in ENDED:
                continue
            step, loss = _step_and_loss(s)
            out.append(f"[{at:>6}] {tid} {s.get('method', '')}: {s.get('phase', '')}{' ' + step if step else ''}"
                       f"{', loss ' + loss if loss else ''} · {self.summary()}")
        return out

    def table(self) -> Table:
        table = Table(title="running trials", title_justify="left", caption=self.summary(), caption_justify="left")
        for col in ("trial", "configuration", "phase", "step", "loss", "dev", "time"):
            table.add_column(col, justify="right" if col in ("step", "loss", "dev", "time") else "left", no_wrap=True)
        now = self.clock()
        for tid, s in sorted(self.states.items()):
            if s.get("phase") in ENDED:
                continue
            step, loss = _step_and_loss(s)
            dev = f"{s['dev']:.4f}" if isinstance(s.get("dev"), float) else ""
            table.add_row(tid, s.get("desc") or s.get("method", ""), s.get("phase", ""), step, loss, dev,
                          duration(now - s["started"]))
        return table


def _step_and_loss(state: dict[str, Any]) -> tuple[str, str]:
    """A running trial's `step/total` and training loss, as text ("" where it has none or is evaluating)."""
    step = f"{state.get('step', 0)}/{state['total']}" if state.get("total") else ""
    training = isinstance(state.get("loss"), float) and state.get("phase") not in ("eval", "final")
    return step, f"{state['loss']:.4f}" if training else ""


def watch_sweep(console, trials: int, concurrent: int, interval_s: float = 1.0):
    """Start drawing the sweep's progress (a thread reading the progress board every ``interval_s``); returns a
    function that draws what is left and stops."""
    import ray  # imported where it is used: the display itself needs no Ray (a heavy import)

    board = get_board()  # created here: it lives as long as this driver; trials find it by name
    watch = SweepWatch(console, trials, concurrent).__enter__()
    stop = threading.Event()
    cursor = [0]

    def read() -> None:
        try:
            states, events, cursor[0] = ray.get(board.read.remote(cursor[0]), timeout=30)
        except Exception:  # a slow or lost read only delays the display
            return
        watch.update(states, events)

    def loop() -> None:
        while not stop.wait(interval_s):
            read()

    thread = threading.Thread(target=loop, name="raysft-watch", daemon=True)
    thread.start()

    def finish() -> None:
        stop.set()
        thread.join(timeout=interval_s + 30)
        read()
        watch.__exit__(None, None, None)

    return finish
