"""Task registry: a task is a named, seeded function that yields `Sample`s.

A task's defaults live in `tasks/<name>.yaml` (the repository's top-level `tasks/`, shipped in the wheel as
package data: see `harness.resources`), with the fields `name`, `description`, `defaults: {size, split, seed,
options: {...}}` and `help: {option: one line}`. A run config can override size, split, seed and any option the
task declares. A registered task without a defaults file is an error, never silently empty.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.errors import UserError
from harness.records import Sample

TaskFn = Callable[..., list[Sample]]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    fn: TaskFn
    options: tuple[str, ...]  # option names the task accepts
    description: str = ""


TASKS: dict[str, TaskSpec] = {}


def register_task(name: str, options: tuple[str, ...] = (), description: str = "") -> Callable[[TaskFn], TaskFn]:
    """Register `fn(size, seed, split, **options) -> list[Sample]` under `name`."""

    def deco(fn: TaskFn) -> TaskFn:
        if name in TASKS:
            raise RuntimeError(f"task '{name}' registered twice")
        TASKS[name] = TaskSpec(name, fn, tuple(options), description or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def tasks_dir() -> Any:
    """Folder of task YAML defaults: $HARNESS_TASKS_DIR, else the package data's `tasks` (`harness.resources`)."""
    env = os.environ.get("HARNESS_TASKS_DIR")
    if env:
        return Path(env)
    from harness.resources import resource_dir

    return resource_dir("tasks")


def task_file_data(name: str) -> dict[str, Any]:
    """The whole parsed `tasks/<name>.yaml`; a missing or malformed file is a `UserError`."""
    p = tasks_dir() / f"{name}.yaml"
    if not p.is_file():
        spec = TASKS.get(name)
        if spec is not None and not spec.fn.__module__.startswith("harness."):
            return {}  # a user's own task (register_task in their code) ships no defaults file: its arguments' own
        raise UserError(f"task '{name}': defaults file {p} is missing; the installation is incomplete "
                        "(reinstall harness) or $HARNESS_TASKS_DIR points at the wrong folder")
    data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or not isinstance(data.get("defaults", {}) or {}, dict):
        raise UserError(f"task '{name}': {p} must be a mapping with a 'defaults' mapping")
    return data


def task_defaults(name: str) -> dict[str, Any]:
    """`defaults` of `tasks/<name>.yaml` (size, split, seed, options)."""
    return task_file_data(name).get("defaults", {}) or {}


def task_catalog() -> list[dict[str, Any]]:
    """Every registered task with its description and options: [{name, description, size, split, seed,
    options: [{name, default, help}]}], sorted by name (`harness tasks list`)."""
    out = []
    for name in sorted(TASKS):
        data = task_file_data(name)
        d = data.get("defaults", {}) or {}
        opts, helps = d.get("options", {}) or {}, data.get("help", {}) or {}
        out.append({
            "name": name,
            "description": " ".join(str(data.get("description") or TASKS[name].description).split()),
            "size": d.get("size"), "split": d.get("split"), "seed": d.get("seed", 0),
            "options": [{"name": o, "default": opts.get(o), "help": str(helps.get(o, ""))}
                        for o in TASKS[name].options],
        })
    return out


def normalize_question(q: str) -> str:
    """Default group id: the normalised question text."""
    q = unicodedata.normalize("NFKC", q).lower()
    return re.sub(r"\s+", " ", q).strip()


def load_task(
    name: str,
    *,
    size: int | None = None,
    seed: int | None = None,
    split: str | None = None,
    options: dict[str, Any] | None = None,
) -> list[Sample]:
    """Load a registered task with its YAML defaults overridden by the given values."""
    if name not in TASKS:
        raise UserError(f"task.name: unknown task '{name}'; choose one of {', '.join(sorted(TASKS))}")
    spec = TASKS[name]
    d = task_defaults(name)
    opts = dict(d.get("options", {}) or {})
    for k, v in (options or {}).items():
        if k not in spec.options:
            allowed = ", ".join(spec.options) or "none"
            raise UserError(f"task.options.{k}: task '{name}' has no option '{k}'; allowed: {allowed}")
        opts[k] = v
    size = size if size is not None else d.get("size")
    seed = seed if seed is not None else d.get("seed", 0)
    split = split if split is not None else d.get("split")
    samples = spec.fn(size=size, seed=seed, split=split, **opts)
    out = []
    for s in samples:
        if not s.group_id:
            s = Sample(**{**s.__dict__, "group_id": normalize_question(s.question)})
        out.append(s)
    return out
