"""Bad configs, unknown backends and missing models: one line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.config import load_config, parse_config
from harness.errors import UserError

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "name": "t",
    "task": {"name": "synthetic-records", "size": 2},
    "models": {"compressor": {"model": "gguf/smollm2-135m"}, "predictor": {"model": "gguf/smollm2-135m"}},
}


def run_cli(tmp_path: Path, cfg: dict, *extra: str) -> subprocess.CompletedProcess:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", str(p), "-q", *extra],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )


def assert_one_line_exit2(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_typo_in_field(tmp_path):
    cfg = {**BASE, "models": {**BASE["models"], "predictor": {"modle": "gguf/smollm2-135m"}}}
    r = run_cli(tmp_path, cfg)
    assert_one_line_exit2(r, "models.predictor.modle", "unknown field", "did you mean 'model'")


def test_unknown_backend(tmp_path):
    cfg = {**BASE, "models": {**BASE["models"], "compressor": {"model": "llamacpp/foo"}}}
    r = run_cli(tmp_path, cfg)
    assert_one_line_exit2(r, "models.compressor.model", "unknown backend 'llamacpp'")


def test_missing_model_file(tmp_path):
    cfg = {**BASE, "models": {**BASE["models"], "predictor": {"model": "gguf/./nope/missing.gguf"}}}
    r = run_cli(tmp_path, cfg)
    assert_one_line_exit2(r, "models.predictor.model", "missing.gguf")


def test_missing_hub_model_offline(tmp_path, monkeypatch):
    cfg = {**BASE, "arms": ["no-context"], "models": {"predictor": {"model": "hf/nobody/no-such-model-xyz"}}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", str(p), "-q"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert_one_line_exit2(r, "models.predictor.model", "nobody/no-such-model-xyz")


def test_missing_config_file(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_exit2(r, "nope.yaml", "not found")


def test_unknown_task_and_option(tmp_path):
    r = run_cli(tmp_path, {**BASE, "task": {"name": "no-such-task"}})
    assert_one_line_exit2(r, "task.name", "no-such-task")
    r = run_cli(tmp_path, {**BASE, "task": {"name": "synthetic-records", "options": {"bogus": 1}}})
    assert_one_line_exit2(r, "task.options.bogus")


def test_bad_yaml_and_placeholders(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_config(p)
    bad = {**BASE, "prompts": {"compressor": {"user": "Summarise {context}"}}}
    with pytest.raises(UserError, match=r"prompts.compressor.user must contain \{question\}"):
        parse_config(bad)
    bad = {**BASE, "prompts": {"predictor": {"user": "{question} {summary} {colour}"}}}
    with pytest.raises(UserError, match="unknown placeholder"):
        parse_config(bad)


def test_compressed_arm_needs_compressor():
    cfg = {**BASE, "models": {"predictor": {"model": "gguf/smollm2-135m"}}}
    with pytest.raises(UserError, match=r"models\.compressor"):
        parse_config(cfg)
    ok = parse_config({**cfg, "arms": ["no-context", "full-context"]})
    assert ok.models.compressor is None


def test_set_overrides(tmp_path):
    from harness.cli import _parse_set

    assert _parse_set(["task.size=3", "models.predictor.batch_size=2"]) == {
        "task": {"size": 3},
        "models": {"predictor": {"batch_size": 2}},
    }
    with pytest.raises(UserError, match="KEY=VALUE"):
        _parse_set(["oops"])


def test_trust_remote_code_off_by_default():
    assert parse_config(BASE).models.predictor.trust_remote_code is False


def test_pack_not_fetched(tmp_path):
    cfg = {**BASE, "arms": ["no-context"], "models": {"predictor": {"model": "gguf/gemma3-270m"}}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    import os

    env = {**os.environ, "HARNESS_CACHE": str(tmp_path / "empty-cache")}
    r = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", str(p), "-q"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert_one_line_exit2(r, "models.predictor.model", "harness models fetch gemma3-270m")


# ---------------------------------------------------------------- paths, data files, stores: checked before any file

OPENAI_BASE = {
    "name": "t",
    "task": {"name": "synthetic-records", "size": 2},
    "arms": ["no-context"],
    "models": {"predictor": {"model": "openai/x", "base_url": "http://127.0.0.1:9/v1"}},
}


def _outputs(tmp_path: Path, **over: str) -> dict:
    out = {"dir": str(tmp_path / "out"), "cache": str(tmp_path / "cache.sqlite"), "store": str(tmp_path / "store.db")}
    return {**OPENAI_BASE, "output": {**out, **over}}


def _left_behind(tmp_path: Path, *inputs: str) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name not in {"c.yaml", *inputs})


@pytest.mark.parametrize("field", ["dir", "cache", "store"])
def test_output_path_under_a_file_is_one_line_and_creates_nothing(tmp_path, field):
    (tmp_path / "afile").write_text("x")
    r = run_cli(tmp_path, _outputs(tmp_path, **{field: str(tmp_path / "afile" / "sub")}))
    assert_one_line_exit2(r, f"output.{field}", "afile", "not a folder")
    assert _left_behind(tmp_path, "afile") == []


def test_output_dir_that_cannot_be_created_is_one_line(tmp_path):
    r = run_cli(tmp_path, _outputs(tmp_path, dir="/proc/harness-cannot-write-here"))
    assert_one_line_exit2(r, "output.dir", "/proc", "not writable")
    assert _left_behind(tmp_path) == []


@pytest.mark.parametrize("field", ["store", "cache"])
def test_store_or_cache_that_is_a_folder_or_not_sqlite(tmp_path, field):
    (tmp_path / "adir").mkdir()
    (tmp_path / "notes.txt").write_text("not a database\n")
    r = run_cli(tmp_path, _outputs(tmp_path, **{field: str(tmp_path / "adir")}))
    assert_one_line_exit2(r, f"output.{field}", "is a folder")
    r = run_cli(tmp_path, _outputs(tmp_path, **{field: str(tmp_path / "notes.txt")}))
    assert_one_line_exit2(r, f"output.{field}", "notes.txt", "not an SQLite file")
    assert _left_behind(tmp_path, "adir", "notes.txt") == []
    assert (tmp_path / "notes.txt").read_text() == "not a database\n"


def test_output_dir_with_unknown_placeholder(tmp_path):
    r = run_cli(tmp_path, _outputs(tmp_path, dir=str(tmp_path / "out" / "{nmae}")))
    assert_one_line_exit2(r, "output.dir", "{nmae}", "{name}")
    assert _left_behind(tmp_path) == []


def test_non_utf8_data_file_and_config(tmp_path):
    bad = tmp_path / "rows.jsonl"
    bad.write_bytes(b'{"question": "caf\xe9?", "answer": "x", "context": "c"}\n')
    cfg = {**_outputs(tmp_path), "task": {"name": "hotpotqa", "size": 2, "options": {"path": str(bad)}}}
    r = run_cli(tmp_path, cfg)
    assert_one_line_exit2(r, "task.options.path", "rows.jsonl", "not UTF-8")
    assert _left_behind(tmp_path, "rows.jsonl") == []
    p = tmp_path / "latin1.yaml"
    p.write_bytes(b"name: caf\xe9\ntask: {name: synthetic-records}\n")
    r = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(p)], capture_output=True, text=True,
                       timeout=120)
    assert_one_line_exit2(r, "latin1.yaml", "not UTF-8")


def test_report_and_compare_on_a_file_that_is_not_a_store(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "adir").mkdir()
    for args, needle in ((["report", "notes.txt"], "not an SQLite file"), (["report", "adir"], "is a folder"),
                         (["report", "missing.db"], "no results store"),
                         (["compare", "notes.txt", "a", "b"], "not an SQLite file")):
        r = subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                           cwd=tmp_path, timeout=120)
        assert_one_line_exit2(r, "store", needle)
    assert _left_behind(tmp_path, "notes.txt", "adir") == []


def test_trust_remote_code_refusal_is_one_line(tmp_path):
    """A local model folder whose config points at its own code (auto_map) is refused before anything runs."""
    folder = tmp_path / "custom-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "custom_thing", "max_position_embeddings": 512,
        "auto_map": {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XModel"}}))
    cfg = {**_outputs(tmp_path), "models": {"predictor": {"model": f"hf/{folder}"}}}
    r = run_cli(tmp_path, cfg)
    assert_one_line_exit2(r, "models.predictor", "trust_remote_code", "auto_map")
    assert _left_behind(tmp_path, "custom-model") == []


@pytest.mark.parametrize("cmd", ["run", "sweep"])
def test_bad_model_spec_leaves_no_store_or_cache(tmp_path, cmd):
    cfg = {**_outputs(tmp_path), "models": {"predictor": {"model": "gguf/./nope/missing.gguf"}}}
    if cmd == "sweep":
        cfg["sweep"] = {"compressors": ["openai/c"], "predictors": ["gguf/./nope/missing.gguf"]}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "harness.cli", cmd, str(p), "-q"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert_one_line_exit2(r, "missing.gguf")
    assert _left_behind(tmp_path) == []
