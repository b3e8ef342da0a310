"""Package data: task defaults, example configs and the FinanceBench open-source sample.

One copy of each file is kept in the repository: task defaults in the top-level `tasks/`, example configs in
the top-level `configs/` (the build maps both into the wheel as `harness/resources/tasks` and
`harness/resources/configs`), and the FinanceBench sample with its licence notice in
`harness/resources/data/financebench/`. Everything is read with `importlib.resources`: from the installed
package first, else (a source checkout or an editable install, where `tasks/` and `configs/` are not under
the package) from the checkout's top-level folders. A resource found in neither place is a `UserError`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from harness.errors import UserError

Kind = Literal["tasks", "configs", "data"]
KINDS: tuple[str, ...] = ("tasks", "configs", "data")


def _checkout_root() -> Path | None:
    """The source checkout holding this package (a folder with pyproject.toml above `harness/`), if any."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def resource_dir(kind: Kind) -> Any:
    """The folder (an `importlib.resources` Traversable) of one kind of package data."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    packaged = files("harness.resources") / kind
    if packaged.is_dir():
        return packaged
    root = _checkout_root()
    if root is not None and (root / kind).is_dir():
        return root / kind
    raise UserError(f"harness package data '{kind}' is missing (looked in {packaged}); the installation is "
                    "incomplete: reinstall harness (pip install harness / pip install -e .)")


def _yaml_names(kind: Kind) -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resource_dir(kind).iterdir() if p.name.endswith(".yaml"))


def task_names() -> list[str]:
    """Names of the tasks with shipped defaults (`tasks/<name>.yaml`)."""
    return _yaml_names("tasks")


def config_names() -> list[str]:
    """Names of the example configs (`harness configs list`)."""
    return _yaml_names("configs")


def config_file(name: str) -> Any:
    """An example config by name (with or without `.yaml`); an unknown name is a `UserError` listing the known."""
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    p = resource_dir("configs") / f"{stem}.yaml"
    if not p.is_file():
        raise UserError(f"configs: no example config '{name}'; choose one of {', '.join(config_names())}")
    return p


def config_text(name: str) -> str:
    """The YAML text of an example config (`harness configs show NAME > my.yaml`)."""
    return config_file(name).read_text(encoding="utf-8")


def financebench_file() -> Path:
    """Where the shipped FinanceBench open-source sample lives (150 questions; licence notice in the same folder's
    README.md). Not checked here: the loader falls back to the hub when it is missing."""
    return Path(str(resource_dir("data") / "financebench" / "financebench_open_source.jsonl"))


def _first_sentence(text: str) -> str:
    """The leading comment block's first sentence (command lines, indented by 3+ spaces, skipped)."""
    words: list[str] = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        body = line[1:]
        if body.startswith("   "):
            continue
        words += body.split()
        joined = " ".join(words)
        if ". " in joined or joined.endswith("."):
            break
    s = " ".join(words)
    s = s.split(". ", 1)[0].rstrip(".") + "." if s else ""
    return s if len(s) <= 130 else s[:127] + "..."


def config_catalog() -> list[dict[str, Any]]:
    """Every example config: [{name, kind ("run" or "sweep"), task, description}], sorted by name."""
    import yaml

    out = []
    for name in config_names():
        text = config_text(name)
        data = yaml.safe_load(text) or {}
        task = data.get("task") if isinstance(data, dict) else None
        out.append({
            "name": name,
            "kind": "sweep" if isinstance(data, dict) and data.get("sweep") else "run",
            "task": task.get("name") if isinstance(task, dict) else None,
            "description": _first_sentence(text),
        })
    return out
