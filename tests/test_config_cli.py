"""Bad configs, unknown backends and missing models: one line on stderr, exit code 2, no traceback."""

from __future__ import annotations

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
