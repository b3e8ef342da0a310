"""Checks that run before a run or sweep creates any file, and the notice of what a config sends where.

Everything a config names is checked first (output folder, store and cache files, model specs, remote code,
data files), so a bad config stops with one line naming the field and leaves no empty store or cache behind.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harness.config import ModelConfig, RunConfig, TaskConfig
from harness.errors import UserError

SQLITE_MAGIC = b"SQLite format 3\x00"


def check_writable_dir(path: Path, field: str, target: str | Path | None = None) -> None:
    """`path` is a writable folder, or can be made one: its nearest existing ancestor is a folder in which a
    (removed at once) test folder can be created. `target` is what will be written there, for the message."""
    what = target if target is not None else path
    p = Path(path).expanduser()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise UserError(f"{field}: cannot write '{what}': '{p}' is a file, not a folder; choose another path")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".harness-check-", dir=p))
    except OSError as e:
        raise UserError(f"{field}: cannot write '{what}': '{p}' is not writable ({e.strerror}); "
                        "choose a folder you can write") from None


def check_sqlite_file(path: str | Path, field: str, *, what: str, must_exist: bool = False,
                      write: bool = True) -> None:
    """`path` is an SQLite file (or, unless `must_exist`, a new file in a writable folder), not a folder or
    some other file. SQLite in WAL mode also writes beside the file, so its folder must be writable."""
    p = Path(path).expanduser()
    if str(path) == ":memory:":
        return
    if p.is_dir():
        raise UserError(f"{field}: '{path}' is a folder, not a {what} file; give a file path such as '{p / 'x.db'}'")
    if not p.exists():
        if must_exist:
            raise UserError(f"{field}: no {what} at '{path}'; check the path")
        check_writable_dir(p.parent, field, target=path)
        return
    try:
        with open(p, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as e:
        raise UserError(f"{field}: cannot read '{path}' ({e.strerror}); check its permissions") from None
    if head and head != SQLITE_MAGIC:
        raise UserError(f"{field}: '{path}' is not a {what} (not an SQLite file); give a {what} path or a new file")
    if write and not (os.access(p, os.W_OK) and os.access(p.parent, os.W_OK | os.X_OK)):
        raise UserError(f"{field}: '{path}' (or its folder) is not writable; choose a path you can write")


def check_store_url(url: str, field: str, *, must_exist: bool = False, write: bool = True) -> None:
    """A store URL: a local SQLite store is checked with `check_sqlite_file`; PostgreSQL is checked on connect."""
    from harness.store.db import parse_url

    t = parse_url(url)
    if t.dialect == "sqlite" and t.path is not None:
        check_sqlite_file(t.path, field, what="results store", must_exist=must_exist, write=write)


def check_outputs(cfg: RunConfig, *, run_folder: bool) -> None:
    """Output folder (when the run writes JSONL files there), response cache and results store are writable."""
    if run_folder:
        check_writable_dir(cfg.output_dir(), "output.dir")
    if cfg.output.cache:
        check_sqlite_file(cfg.output.cache, "output.cache", what="response cache")
    if cfg.output.store:
        check_store_url(cfg.output.store, "output.store")


def run_models(cfg: RunConfig) -> list[tuple[str, ModelConfig]]:
    """(field, config) of every model a `harness run` of `cfg` uses."""
    m = cfg.models
    out: list[tuple[str, ModelConfig]] = []
    if m.compressor is not None and ("compressed" in cfg.arms or cfg.mi is not None):
        out.append(("models.compressor", m.compressor))
    out.append(("models.predictor", m.predictor))
    if m.scorer is not None and cfg.mi is not None and "scorer" in cfg.mi.scorers:
        out.append(("models.scorer", m.scorer))
    if m.judge is not None:
        out.append(("models.judge", m.judge))
    return out


def _remote_code_files(folder: Path) -> list[str]:
    """Files of a model folder that point at the folder's own Python code (`auto_map`)."""
    out = []
    for name in ("config.json", "tokenizer_config.json"):
        f = folder / name
        try:
            if f.is_file() and "auto_map" in json.loads(f.read_text(encoding="utf-8")):
                out.append(name)
        except (OSError, ValueError):
            continue
    return out


def check_models(models: Iterable[tuple[str, ModelConfig]]) -> None:
    """Resolve every model spec (no weights load) and refuse a model that ships code when trust_remote_code is off."""
    from harness.backends.registry import make_backend

    for field, mc in models:
        if mc.backend == "filter":  # a RAG filter: its kind and knobs (the tokenizer and scorer resolve as models)
            from harness.compressors.filters import filter_options

            filter_options(mc.name, mc.options, field)
            if mc.tokenizer:
                make_backend(ModelConfig(model=mc.tokenizer), field=f"{field}.tokenizer").close()
            continue
        if mc.backend == "python":  # a user's compressor: its module, function and options (and tokenizer) resolve
            from harness.compressors.python import resolve

            resolve(mc.model, mc.options, f"{field}.model")
            if mc.tokenizer:
                make_backend(ModelConfig(model=mc.tokenizer), field=f"{field}.tokenizer").close()
            continue
        be = make_backend(mc, field=f"{field}.model")
        try:
            folder = getattr(getattr(be, "res", None), "folder", None)  # transformers: the resolved folder
            if folder is None and mc.backend == "vllm" and Path(mc.name).expanduser().is_dir():
                folder = Path(mc.name).expanduser()
            if folder is not None and not mc.trust_remote_code:
                files = _remote_code_files(Path(folder))
                if files:
                    raise UserError(
                        f"{field}.model: '{mc.model}' runs its own Python code ({files[0]} has auto_map) and "
                        f"{field}.trust_remote_code is off; set it to true only for code you trust, or use another "
                        "model"
                    )
        finally:
            be.close()


def load_samples(task: TaskConfig, field: str = "task") -> list[Any]:
    """The task's samples; a data file that is not UTF-8 is a one-line error naming it."""
    from harness.tasks import load_task

    try:
        return load_task(task.name, size=task.size, seed=task.seed, split=task.split, options=task.options)
    except UnicodeDecodeError as e:
        path = task.options.get("path")
        what = f"the data file '{path}'" if path else f"the data of task '{task.name}'"
        bad = e.object[e.start:e.start + 1].hex() if isinstance(e.object, bytes) else "?"
        raise UserError(f"{field}.options.path: {what} is not UTF-8 text (byte 0x{bad} at offset {e.start}); "
                        "convert it to UTF-8") from None


def host_of(url: str | None) -> str:
    """scheme://host[:port] of a base URL, without credentials; the OpenAI API when unset."""
    if not url:
        return "https://api.openai.com (the openai client's default)"
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def announce(models: Iterable[tuple[str, ModelConfig]]) -> list[str]:
    """One stderr line per environment variable sent to a host, and per model allowed to run its own code.

    A config names which variable's value goes where (`api_key_env`, `base_url`); this says it before any call.
    Returns the lines printed.
    """
    lines: list[str] = []
    seen: set[tuple[str, str]] = set()
    for field, mc in models:
        if mc.backend == "openai" and mc.api_key_env:
            key = (mc.api_key_env, host_of(mc.base_url))
            if key not in seen:
                seen.add(key)
                lines.append(f"note: {field} sends the value of ${key[0]} (api_key_env) as its API key to {key[1]}")
        if mc.trust_remote_code and mc.backend in ("hf", "vllm"):
            lines.append(f"warning: {field} has trust_remote_code: true; '{mc.model}' may run its own Python code "
                         "on this machine: use it only for a model you trust")
    lines = list(dict.fromkeys(lines))
    for line in lines:
        print(line, file=sys.stderr)
    return lines
