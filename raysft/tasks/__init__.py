"""Task definitions: data loading (``datasets``), label maps and metrics, one module per task, one registry."""

from __future__ import annotations

from raysft.tasks.base import Task, TaskData, cache_dir, data_dir, get_task, metrics
from raysft.tasks.mlm import MlmTask, load_text, mlm_collator, tokenize_for_mlm
from raysft.tasks.nli import NliTask
from raysft.tasks.sa import SaTask

TASKS: dict[str, Task] = {"nli": NliTask(), "sa": SaTask(), "mlm": MlmTask()}

__all__ = [
    "TASKS",
    "Task",
    "TaskData",
    "cache_dir",
    "data_dir",
    "get_task",
    "load_text",
    "metrics",
    "mlm_collator",
    "tokenize_for_mlm",
]
