"""The task registry: every task by name (one instance each)."""

from __future__ import annotations

from raysft.errors import RaysftError
from raysft.tasks.base import Task
from raysft.tasks.mlm import MlmTask
from raysft.tasks.nli import NliTask
from raysft.tasks.sa import SaTask

TASKS: dict[str, Task] = {"nli": NliTask(), "sa": SaTask(), "mlm": MlmTask()}


def get_task(name: str) -> Task:
    """The registered task called ``name`` (:data:`TASKS`)."""
    if name not in TASKS:
        raise RaysftError(f"unknown task {name!r}: known tasks are {', '.join(TASKS)}")
    return TASKS[name]
