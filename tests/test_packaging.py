"""harness stands alone: task defaults, example configs and the FinanceBench sample ship as package data.

The slow tests build the wheel, install it with --no-deps into a fresh venv that sees only .venv's
site-packages (for the dependencies; the checkout is not on its sys.path) and run the CLI from an empty folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.resources import config_catalog, config_names, config_text, financebench_file, task_names
from harness.tasks import TASKS
from harness.tasks.base import task_catalog, task_defaults
from tests.conftest import REPO, need_pack

SOURCE_FINANCEBENCH = REPO.parent / "shared" / "data" / "financebench" / "financebench_open_source.jsonl"


# ----------------------------------------------------------------------------- package data, from the checkout


def test_every_task_has_defaults_with_one_line_help() -> None:
    """Each registered task has a defaults file declaring every option it accepts, each with a help line."""
    assert sorted(TASKS) == task_names()
    for t in task_catalog():
        declared = set(task_defaults(t["name"]).get("options", {}) or {})
        assert declared == set(TASKS[t["name"]].options), t["name"]
        assert t["description"], t["name"]
        for o in t["options"]:
            assert o["help"] and "\n" not in o["help"], (t["name"], o["name"])


def test_missing_task_defaults_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task whose defaults file is missing fails loudly (it used to load silently with empty defaults)."""
    from harness.tasks import load_task

    monkeypatch.setenv("HARNESS_TASKS_DIR", str(tmp_path))
    with pytest.raises(UserError, match=r"synthetic-records.*defaults file .* is missing"):
        load_task("synthetic-records", size=1)
    # a task registered by the user's own code ships no defaults file: its function's defaults apply
    from harness.records import Sample
    from harness.tasks.base import TASKS, TaskSpec

    def mine(size: int, seed: int, split: str | None = None) -> list[Sample]:
        return [Sample(f"s{i}", f"q{seed}?", (), ("a",)) for i in range(size)]

    monkeypatch.setitem(TASKS, "my-own-task", TaskSpec("my-own-task", mine, ()))
    assert [(s.id, s.question) for s in load_task("my-own-task", size=2, seed=1)] == [("s0", "q1?"), ("s1", "q1?")]


def test_configs_are_the_checkout_files_and_parse() -> None:
    """Example configs are the top-level configs/ (one copy); each is a valid YAML mapping with a description."""
    assert config_names() == sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    assert config_text("quickstart") == (REPO / "configs" / "quickstart.yaml").read_text()
    assert config_text("quickstart.yaml") == config_text("quickstart")
    assert all(c["description"] and c["task"] for c in config_catalog())
    with pytest.raises(UserError, match=r"no example config 'nope'; choose one of .*quickstart"):
        config_text("nope")


def test_list_commands_into_a_closed_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """`harness tasks list | head`: a reader that went away is exit 0, not a traceback."""
    from harness.cli import main

    r, w = os.pipe()
    os.close(r)
    out = open(w, "w", buffering=1)
    monkeypatch.setattr(sys, "stdout", out)
    try:
        assert main(["tasks", "list"]) == 0
    finally:
        out.close()


def test_financebench_sample_is_package_data_with_licence() -> None:
    """The FinanceBench sample lives under the package (one copy) with its licence notice."""
    f = financebench_file()
    assert f.is_file() and f.parent.parent.parent.name == "resources"
    notice = (f.parent / "README.md").read_text()
    assert "CC BY-NC 4.0" in notice and "Islam et al. 2023" in notice
    if SOURCE_FINANCEBENCH.exists():
        assert f.read_bytes() == SOURCE_FINANCEBENCH.read_bytes()


def test_financebench_reads_the_shipped_sample_unless_told_otherwise(offline_datasets: None, tmp_path: Path) -> None:
    """Default: the shipped sample (150 rows); `path` wins; another `hub_id` goes to the hub (offline here, so a
    UserError naming it) instead of silently reading the shipped sample."""
    from harness.tasks import load_task

    assert len(load_task("financebench")) == 150
    one = tmp_path / "one.jsonl"
    one.write_text(financebench_file().read_text().splitlines()[0] + "\n")
    assert len(load_task("financebench", options={"path": str(one)})) == 1
    with pytest.raises(UserError, match=r"task\.options\.hub_id: cannot load 'someone/financebench-full'"):
        load_task("financebench", options={"hub_id": "someone/financebench-full"})


# ----------------------------------------------------------------------------- the wheel in a fresh venv


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "HARNESS_TASKS_DIR")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(tmp / "hf-datasets"),
               HF_DATASETS_DISABLE_PROGRESS_BARS="1", PYTHONNOUSERSITE="1")
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{venv, work, wheel}: the wheel built from the checkout, installed alone into a fresh venv."""
    tmp = tmp_path_factory.mktemp("pkg")
    dist = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)],
                   check=True, capture_output=True, text=True, env=_env(tmp), timeout=300)
    (wheel,) = dist.glob("harness-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the dependencies only: .venv's site-packages (never the checkout)
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, text=True, env=_env(tmp), timeout=300)
    work = tmp / "empty"
    work.mkdir()
    return {"venv": venv, "work": work, "tmp": tmp}


def _run(inst: dict[str, Path], *args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(inst["venv"] / "bin" / args[0]), *args[1:]], cwd=inst["work"], capture_output=True,
                       text=True, env=_env(inst["tmp"]), timeout=timeout)
    assert r.returncode == 0, f"{args}: rc {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
def test_wheel_imports_from_the_venv_not_the_checkout(installed: dict[str, Path]) -> None:
    r = _run(installed, "python", "-c", "import harness, sys, json; "
             "print(json.dumps({'file': harness.__file__, 'path': sys.path}))")
    info = json.loads(r.stdout)
    assert Path(info["file"]).resolve().is_relative_to(installed["venv"].resolve())
    assert str(REPO) not in info["path"] and str(REPO / "harness") not in info["path"]


@pytest.mark.slow
def test_wheel_tasks_and_configs_commands(installed: dict[str, Path]) -> None:
    out = _run(installed, "harness", "tasks", "list").stdout
    for name in TASKS:
        assert f"\n{name}  (size " in "\n" + out, name
    assert "    n_distractors: 1  " in out and "    subset: all  " in out  # option: default, then its help
    out = _run(installed, "harness", "configs", "list").stdout
    for name in config_names():
        assert f"\n{name} " in "\n" + out, name
    shown = _run(installed, "harness", "configs", "show", "quickstart").stdout
    assert shown == (REPO / "configs" / "quickstart.yaml").read_text()


@pytest.mark.slow
def test_wheel_runs_a_task_from_an_empty_folder(installed: dict[str, Path]) -> None:
    """`harness configs show quickstart > my.yaml` then `harness run my.yaml` (2 short samples, smollm2 in both
    roles, so it stays fast)."""
    need_pack("smollm2-135m")
    work = installed["work"]
    (work / "my.yaml").write_text(_run(installed, "harness", "configs", "show", "quickstart").stdout)
    sets = ["task.size=2", "task.options.context_tokens=120", "models.predictor.model=gguf/smollm2-135m",
            "arms=[compressed]",
            "generation.compressor.max_new_tokens=16", "generation.predictor.max_new_tokens=4"]
    r = _run(installed, "harness", "run", "my.yaml", "-q", *(a for s in sets for a in ("--set", s)), timeout=600)
    assert "task synthetic-records, 2 samples" in r.stdout
    rows = [" ".join(line.split()) for line in r.stdout.splitlines()]  # the CLI draws the table with rich
    assert any(row.startswith("compressed gguf/smollm2-135m gguf/smollm2-135m 2 ") for row in rows)
    assert (work / "results" / "store.db").is_file()
    assert len(list((work / "results" / "quickstart").glob("*/summary.json"))) == 1


@pytest.mark.slow
def test_editable_install_reads_the_checkout(tmp_path: Path) -> None:
    """`pip install -e .` (hatchling): package data comes from the checkout's folders, and no stale copies of
    tasks/ or configs/ land in site-packages."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", "-e", str(REPO)],
                   check=True, capture_output=True, text=True, env=_env(tmp_path), timeout=300)
    assert not (site / "harness").exists()
    r = subprocess.run([str(py), "-c", "import harness, json; from harness.resources import resource_dir as r; "
                        "print(json.dumps([harness.__file__, str(r('tasks')), str(r('configs'))]))"],
                       cwd=tmp_path, check=True, capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    assert json.loads(r.stdout) == [str(REPO / "harness" / "__init__.py"), str(REPO / "tasks"), str(REPO / "configs")]


@pytest.mark.slow
def test_wheel_loads_financebench(installed: dict[str, Path]) -> None:
    """The financebench task reads the shipped sample: as many samples as the source has rows."""
    src = SOURCE_FINANCEBENCH if SOURCE_FINANCEBENCH.exists() else financebench_file()
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    r = _run(installed, "python", "-c", "import json; from harness.tasks import load_task; "
             "from harness.tasks.hub import FINANCEBENCH_FILE as f; s = load_task('financebench'); "
             "print(json.dumps({'n': len(s), 'ids': sorted(x.id for x in s), 'file': str(f)}))")
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["n"] == len(rows) == 150
    assert info["ids"] == sorted(row["financebench_id"] for row in rows)
    assert Path(info["file"]).resolve().is_relative_to(installed["venv"].resolve())

