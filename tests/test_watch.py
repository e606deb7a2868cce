"""The sweep display (raysft.sweep.watch) on a scripted run of board states: one line per phase change on a
non-terminal, a live table on a terminal, finished trials as lines, and the time-left estimate's arithmetic. The real
board, fed by a real sweep's trials, is exercised by tests/test_tune.py (phase lines in the captured output)."""

import io

import pytest
from rich.console import Console

from raysft.distributed.progress import Board
from raysft.sweep.watch import SweepWatch, duration, fraction_done, time_left


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_fraction_done_follows_the_plan():
    plan = {"dense": 30, "sparse": 10}
    assert fraction_done({"phase": "loading", "plan": plan}) == 0.0
    assert fraction_done({"phase": "dense", "step": 15, "plan": plan}) == pytest.approx(15 / 40)
    assert fraction_done({"phase": "select", "plan": plan}) == pytest.approx(30 / 40)
    assert fraction_done({"phase": "sparse", "step": 5, "plan": plan}) == pytest.approx(35 / 40)
    assert fraction_done({"phase": "eval", "plan": plan}) == 1.0
    # a reused dense phase is not in the plan: the sparse steps are all there is
    assert fraction_done({"phase": "sparse", "step": 5, "plan": {"sparse": 10}}) == pytest.approx(0.5)


def test_time_left_from_pace_then_from_finished_trials():
    now = 1000.0
    # nothing to go on yet
    assert time_left({"a": {"started": now - 5, "running_since": now - 5, "phase": "loading"}}, 4, 2, now) is None
    # a is a quarter through after 100 s of its own work (the 50 s it waited for θ1 do not count): a trial takes
    # 400 s, 300 s left for a; b, too early to have a pace, has a whole trial less its 10 s (390 s); c waits for θ1:
    # a whole trial (400 s); the 2 trials not started are one wave of 400 s after that
    states = {"a": {"started": now - 150, "running_since": now - 100, "phase": "dense", "step": 10,
                    "plan": {"dense": 20, "sparse": 20}},
              "b": {"started": now - 10, "running_since": now - 10, "phase": "loading"}}
    assert time_left(states, 4, 2, now) == pytest.approx(390 + 400)
    states["c"] = {"started": now - 30, "phase": "waiting for θ1"}
    assert time_left(states, 5, 2, now) == pytest.approx(400 + 400)
    assert time_left({"a": states["a"]}, 1, 2, now) == pytest.approx(300)
    # a finished trial of 200 s (from its workers' start) sets the length of a trial
    states = {"a": {"started": now - 260, "running_since": now - 200, "ended": now, "phase": "done"},
              "b": {"started": now - 50, "running_since": now - 50, "phase": "loading"}}
    assert time_left(states, 3, 1, now) == pytest.approx(150 + 200)
    assert time_left(states, 2, 1, now) == pytest.approx(150)


def _script(watch: SweepWatch, clock: Clock):
    """Two trials through a real Board (the actor's logic, in process); the watch draws each read."""
    board = Board(clock=clock)
    cursor = [0]

    def step(dt, tid, **fields):
        clock.now += dt
        board.push(tid, fields)
        states, events, cursor[0] = board.read(cursor[0])
        watch.update(states, events)

    step(0, "t1", phase="starting", method="sc-sft", desc="sc-sft sparse.lr=0.003")
    step(1, "t2", phase="starting", method="sc-sft", desc="sc-sft sparse.lr=0.0001")
    step(0, "t2", phase="waiting for θ1")
    step(1, "t1", phase="workers")
    step(2, "t1", phase="loading")
    step(3, "t1", plan={"dense": 30, "sparse": 30}, method="sc-sft")
    step(1, "t1", phase="dense", step=0, total=30)
    step(5, "t1", step=12, loss=1.05)  # no phase change: no line
    step(5, "t1", phase="select")
    step(1, "t1", phase="sparse", step=0, total=30)
    step(4, "t1", step=30, loss=0.9, dev=0.41)
    step(1, "t1", phase="eval", total=3)
    step(1, "t1", phase="final", dev=0.44)
    step(1, "t1", phase="done", ended=clock.now + 1, line="trial t1: sc-sft sparse.lr=0.003 → dev 0.4400 (24s)")
    return board.events


def test_non_terminal_one_line_per_phase_change_and_finished_lines():
    out = io.StringIO()
    clock = Clock()
    watch = SweepWatch(Console(file=out, force_terminal=False, width=100), trials=3, concurrent=2, clock=clock)
    assert not watch.live_mode
    with watch:
        events = _script(watch, clock)
    lines = out.getvalue().splitlines()
    phase_lines = [line for line in lines if not line.startswith("trial ")]
    assert len(phase_lines) == len([e for e in events if e["phase"] != "done"]) == 10
    assert [line.split(": ", 1)[1].split(" ·")[0].split(" (")[0].split(",")[0] for line in phase_lines] == [
        "starting", "starting", "waiting for θ1", "workers", "loading", "dense", "select", "sparse", "eval", "final"]
    assert "t1 sc-sft: dense (30 steps)" in phase_lines[5]
    assert "t1 sc-sft: eval (3 languages)" in out.getvalue()
    assert "t1 sc-sft: final, dev 0.4400" in out.getvalue()
    assert lines[-1] == "trial t1: sc-sft sparse.lr=0.003 → dev 0.4400 (24s)"  # the finished line, whole
    assert "1/3 done" not in phase_lines[0] and "0/3 done, 1 running, 2 waiting" in phase_lines[0]
    assert "left" in phase_lines[-1] and "~?" not in phase_lines[-1]  # an estimate once a trial has a pace
    assert all(len(line) <= 200 for line in lines)  # never broken mid-row: one soft-wrapped line each


def test_non_terminal_says_where_each_trial_is_after_a_quiet_minute():
    out = io.StringIO()
    clock = Clock()
    watch = SweepWatch(Console(file=out, force_terminal=False, width=150), trials=2, concurrent=1, clock=clock)
    board = Board(clock=clock)
    cursor = 0
    for dt, fields in [(0, {"phase": "starting", "method": "lt-sft"}), (1, {"plan": {"dense": 96, "sparse": 96}}),
                       (1, {"phase": "dense", "step": 0, "total": 96}), (30, {"step": 20, "loss": 1.1}),
                       (29, {"step": 39, "loss": 0.93}), (2, {"step": 41, "loss": 0.9}), (30, {"step": 60, "loss": 0.8})]:
        clock.now += dt
        board.push("t1", fields)
        states, events, cursor = board.read(cursor)
        watch.update(states, events)
    lines = out.getvalue().splitlines()
    assert [line.split("] ", 1)[1].split(" ·")[0] for line in lines] == [
        "t1 lt-sft: starting", "t1 lt-sft: dense (96 steps)", "t1 lt-sft: dense 41/96, loss 0.9000"]  # 60 s quiet: one


def test_terminal_live_table_of_running_trials():
    out = io.StringIO()
    clock = Clock()
    console = Console(file=out, force_terminal=True, width=120)
    watch = SweepWatch(console, trials=3, concurrent=2, clock=clock)
    assert watch.live_mode
    with watch:
        _script(watch, clock)
        table = watch.table()
        rendered = io.StringIO()
        Console(file=rendered, width=120).print(table)
    text = rendered.getvalue()
    assert "t2" in text and "sc-sft sparse.lr=0.0001" in text and "waiting for θ1" in text
    assert "~48s left" in text  # t1 took 24 s from its workers starting: t2 and the trial not started, 24 s each
    assert not any(" t1 " in line for line in text.splitlines())  # finished: a line above, no longer a row
    assert "1/3 done, 1 running, 1 waiting" in text
    assert "trial t1: sc-sft sparse.lr=0.003 → dev 0.4400 (24s)" in out.getvalue()  # printed above the table


def test_duration():
    assert [duration(x) for x in (None, 5, 75, 3725)] == ["?", "5s", "1m15s", "1h02m"]


def test_board_logs_phase_changes_and_restarts_a_retried_trials_clock():
    clock = Clock()
    board = Board(clock=clock)
    board.push("t", {"phase": "starting", "method": "lt-sft"})
    clock.now += 10
    board.push("t", {"phase": "workers"})
    board.push("t", {"plan": {"dense": 4, "sparse": 4}})
    board.push("t", {"phase": "dense", "step": 0, "total": 4})
    board.push("t", {"step": 2, "loss": 0.5})  # a step: state, not an event
    states, events, cursor = board.read()
    assert [e["phase"] for e in events] == ["starting", "workers", "dense"] and cursor == 3
    assert states["t"]["running_since"] == 1010.0 and states["t"]["plan"] == {"dense": 4, "sparse": 4}
    assert states["t"]["step"] == 2 and fraction_done(states["t"]) == pytest.approx(0.25)
    clock.now += 50
    board.push("t", {"phase": "starting"})  # Tune retries it (a worker was lost)
    states, events, _ = board.read(cursor)
    assert [e["phase"] for e in events] == ["starting"]
    assert "running_since" not in states["t"] and states["t"]["started"] == 1060.0 and "step" not in states["t"]
