"""Task definitions: data loading (``datasets``), label maps and metrics, one module per task, one registry."""

from __future__ import annotations

from raysft.tasks.base import Task, TaskData, data_dir, metrics
from raysft.tasks.cache import cache_dir
from raysft.tasks.mlm import load_text, mlm_collator, tokenize_for_mlm
from raysft.tasks.registry import TASKS, get_task

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
