"""Tasks: seeded synthetic generators (offline default) and dataset loaders."""

from harness.tasks import hub, synthetic  # noqa: F401  (registers tasks)
from harness.tasks.base import TASKS, TaskSpec, load_task, normalize_question, register_task

__all__ = ["TASKS", "TaskSpec", "load_task", "normalize_question", "register_task"]
