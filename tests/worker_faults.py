"""Test-only fault for Ray Train workers (tests/test_distributed.py): a worker lost mid sparse phase, injected from
outside the product code.

The test's ``ray.init`` names :func:`setup` as the ``worker_process_setup_hook`` of its runtime_env (with the
repository on ``PYTHONPATH`` and ``RAYSFT_TEST_WORKER_FAULTS`` naming a folder); Ray runs it in every worker process
at its start. It wraps :meth:`raysft.distributed.train_workers._Worker.hooks`, the sparse-phase hooks a trial's
workers build: when the folder holds a file ``arm`` (``step rank delay_s``) and no file ``done``, the worker of that
rank exits (``os._exit``, as on a lost node) right after that sparse step, ``delay_s`` after its checkpoint was
reported (Ray Train registers a reported checkpoint when its controller next polls the workers), and writes ``done``
first, so it happens once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

FOLDER_ENV = "RAYSFT_TEST_WORKER_FAULTS"


def setup() -> None:
    folder = os.environ.get(FOLDER_ENV)
    if not folder:
        return
    from raysft.distributed import train_workers

    original = train_workers._Worker.hooks

    def hooks(self, run, state, dist_info):
        made = original(self, run, state, dist_info)
        step_hook = made.on_sparse_step

        def on_sparse_step(step: int, loss: float) -> None:
            step_hook(step, loss)
            arm, done = Path(folder) / "arm", Path(folder) / "done"
            if not arm.exists() or done.exists():
                return
            at, rank, delay_s = arm.read_text().split()
            if step + 1 == int(at) and self.rank == min(int(rank), self.world - 1):
                done.touch()
                time.sleep(float(delay_s))
                os._exit(1)  # a lost worker, as a dead node would be

        made.on_sparse_step = on_sparse_step
        return made

    train_workers._Worker.hooks = hooks
