"""Ctrl-C ends a sweep gracefully, and the driver knows it did.

Tune's own SIGINT handler stops the run but leaves no trace a caller can read: `tuner.fit()` returns as if the sweep
had finished, and `raysft tune --confirm` used to start its confirm runs on a cut sweep. Here the first Ctrl-C sets
a flag that a Tune stopper turns into "stop every trial" (Tune then checkpoints and returns as usual), so the driver
can skip the confirm step and say how to resume. A second Ctrl-C aborts at once. The flag is a module global: Tune
keeps the stopper in its pickled experiment state, and a copy must still see it.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ray.tune import Stopper

_INTERRUPTED = threading.Event()
_TUNE_HANDLER_ENV = "TUNE_DISABLE_SIGINT_HANDLER"


class InterruptStopper(Stopper):
    """Stops no trial on its own; stops them all once the sweep was interrupted."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return _INTERRUPTED.is_set()


def interrupted() -> bool:
    """Whether the last sweep run under :func:`graceful_interrupt` was interrupted."""
    return _INTERRUPTED.is_set()


@contextmanager
def graceful_interrupt(say: Callable[[str], None] = print) -> Iterator[InterruptStopper]:
    """Within the block, the first SIGINT marks the sweep interrupted (its trials are stopped at the next step of
    Tune's loop); the second one raises KeyboardInterrupt as usual. Off the main thread signals cannot be caught:
    the block then changes nothing (Tune's own handler stays)."""
    _INTERRUPTED.clear()
    if threading.current_thread() is not threading.main_thread():
        yield InterruptStopper()
        return
    previous = signal.getsignal(signal.SIGINT)
    previous_env = os.environ.get(_TUNE_HANDLER_ENV)

    def on_sigint(signum, frame) -> None:
        _INTERRUPTED.set()
        signal.signal(signal.SIGINT, previous)
        say("interrupted: stopping the sweep's trials (Ctrl-C again aborts at once)")

    os.environ[_TUNE_HANDLER_ENV] = "1"  # Tune reads it when the run starts: its handler would replace ours
    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield InterruptStopper()
    finally:
        signal.signal(signal.SIGINT, previous)
        if previous_env is None:
            os.environ.pop(_TUNE_HANDLER_ENV, None)
        else:
            os.environ[_TUNE_HANDLER_ENV] = previous_env
