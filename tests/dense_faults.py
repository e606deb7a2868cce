"""Test-only faults for the trials of a sweep that claim a dense phase (tests/test_tune.py), injected from outside the
product code into the Ray worker processes.

The test runs `raysft tune` with ``RAY_RUNTIME_ENV_HOOK=tests.dense_faults.runtime_env_hook`` (Ray calls it on
``ray.init`` with the job's runtime_env), ``PYTHONPATH`` holding the repository root and ``RAYSFT_TEST_DENSE_FAULTS``
naming a folder. The hook adds a ``worker_process_setup_hook`` (:func:`setup`), which Ray runs in every worker process
at its start: it wraps :class:`raysft.sweep.dense_cache.Lease` (at once, or when that module is first imported), the
lease a trial takes right after it claimed a dense phase. The folder's ``actions`` file lists, one per line, what the
next trials that claim a dense phase do as soon as their lease is taken, before any of the dense phase: ``stop`` (the
process is terminated, SIGTERM, as Ray ends a trial that the scheduler stops: no exception reaches the trial driver)
or ``kill`` (it exits at once, as on a lost node). Each action taken is appended to the folder's ``done`` file.
"""

from __future__ import annotations

import importlib.abc
import os
import signal
import sys
import time
from pathlib import Path

FOLDER_ENV = "RAYSFT_TEST_DENSE_FAULTS"
TARGET = "raysft.sweep.dense_cache"


def runtime_env_hook(runtime_env: dict | None) -> dict:
    """``RAY_RUNTIME_ENV_HOOK``: the job's runtime_env plus this module's worker setup hook."""
    return {**(runtime_env or {}), "worker_process_setup_hook": f"{__name__}.setup"}


def setup() -> None:
    """In every Ray worker process, at its start: wrap the dense cache's Lease now, or as soon as it is imported."""
    if not os.environ.get(FOLDER_ENV):
        return
    if TARGET in sys.modules:
        _patch(sys.modules[TARGET])
    else:
        sys.meta_path.insert(0, _PatchOnImport())


def _patch(module) -> None:
    real = module.Lease

    class FaultyLease(real):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            fault()

    module.Lease = FaultyLease


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of :data:`TARGET` so that the module is patched once executed."""

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        from importlib.util import find_spec

        spec = find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


def fault() -> None:
    """Take the next action of the folder's list, if any."""
    folder = Path(os.environ[FOLDER_ENV])
    actions = folder / "actions"
    todo = actions.read_text().split() if actions.exists() else []
    if not todo:
        return
    actions.write_text("\n".join(todo[1:]))
    with open(folder / "done", "a") as f:
        f.write(todo[0] + "\n")
    if todo[0] == "kill":
        os._exit(1)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)  # terminated meanwhile; never returns into the trial
