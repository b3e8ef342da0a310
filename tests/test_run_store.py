"""`harness run` writes what happened: the text a predictor read, every failure, one usage row per model call.

These use `FakeOpenAI` from tests/test_faults.py, a UNIT-TEST FAKE (a stdlib HTTP server, not a model), so that
runs are cheap and the server can count requests, record each predictor prompt and return a different summary
on every compressor call (a non-deterministic compressor).
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import results
from harness.analyze.frames import cell_frame
from tests.test_faults import KEY, KEY_ENV, FakeOpenAI, _run_cfg


class _Recording:
    """Wraps the fake's answers: compressor summaries carry a call number; predictor prompts are recorded."""

    def __init__(self, fake: FakeOpenAI, delay_s: float = 0.0):
        self.base = type(fake.srv).answer.__get__(fake.srv)
        self.n = itertools.count()
        self.lock = threading.Lock()
        self.prompts: list[str] = []
        self.delay_s = delay_s
        fake.srv.answer = self  # type: ignore[method-assign]

    def __call__(self, body: dict[str, Any]) -> str:
        text = self.base(body)
        if str(body.get("model", "")).endswith("compressor"):
            time.sleep(self.delay_s)
            return f"{text}\n(draft {next(self.n)})"
        with self.lock:
            self.prompts.append("\n".join(str(m.get("content") or "") for m in body.get("messages") or []))
        return text


@pytest.fixture
def fake():
    f = FakeOpenAI()
    yield f
    f.close()


def _cfg(tmp_path: Path, fake: FakeOpenAI, cache: bool = False) -> dict[str, Any]:
    cfg = _run_cfg(tmp_path, fake)
    cfg["output"] = {"dir": str(tmp_path / "out"), "store": str(tmp_path / "store.db"),
                     "cache": str(tmp_path / "cache.sqlite") if cache else None}
    for m in cfg["models"].values():  # plain URLs: secrets are tests/test_faults.py's business
        m["base_url"] = fake.url
    return cfg


def _start(tmp_path: Path, cfg: dict[str, Any], name: str) -> subprocess.Popen:
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, KEY_ENV: KEY, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(p), "-q"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)


def _run(tmp_path: Path, cfg: dict[str, Any], name: str = "run") -> str:
    p = _start(tmp_path, cfg, name)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    return out


def _db(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "store.db")


def _read_what_is_stored(db: sqlite3.Connection, prompts: list[str], skip_runs: tuple[str, ...] = ()) -> int:
    """Every compressed prediction's compression text is in a prompt the predictor received (runs in skip_runs
    left out); returns how many."""
    rows = db.execute("SELECT p.prediction_id, c.text, ce.run_id FROM predictions p JOIN compressions c "
                      "ON c.compression_id = p.compression_id JOIN cells ce ON ce.cell_id = p.cell_id "
                      "WHERE p.arm = 'compressed' AND p.error IS NULL").fetchall()
    rows = [(pid, t) for pid, t, run in rows if run not in skip_runs]
    wrong = [(pid, t) for pid, t in rows if not any(t in pr for pr in prompts)]
    assert not wrong, wrong[:3]
    return len(rows)


def test_a_second_run_reads_the_stored_compression(fake, tmp_path):
    """Two runs, cache off, a compressor that answers differently every call: run 2 reuses the stored
    compressions (no compressor call), so every compressed prediction points at the text its predictor read."""
    rec = _Recording(fake)
    cfg = _cfg(tmp_path, fake)
    out = _run(tmp_path, cfg, "r1")
    n_comp1 = sum(e["model"].endswith("compressor") for e in fake.log)
    assert out.splitlines()[0].endswith(f"model calls {len(fake.log)}"), out  # requests, not batches
    db = _db(tmp_path)
    assert _read_what_is_stored(db, rec.prompts) == 10
    (run1,) = [r for (r,) in db.execute("SELECT run_id FROM runs")]
    db.close()
    rec.prompts.clear()
    _run(tmp_path, cfg, "r2")
    db = _db(tmp_path)
    assert _read_what_is_stored(db, rec.prompts, skip_runs=(run1,)) == 10  # run 2's predictions, run 2's prompts
    assert n_comp1 == 10 and sum(e["model"].endswith("compressor") for e in fake.log) == 10
    assert db.execute("SELECT COUNT(*) FROM compressions").fetchone()[0] == 10
    db.close()


def test_compression_failures_are_kept_per_run(fake, tmp_path):
    """6 of 10 compressions fail (a 401: not retried). Run 1 leaves an error row for each (compressions.error
    and the errors table); run 2 succeeds and replaces the compressions, yet run 1's report still counts its 6
    errors over all 10 samples, and run 2's counts none."""
    fake.reset(plan=["401"] * 6)
    cfg = _cfg(tmp_path, fake)
    _run(tmp_path, cfg, "r1")
    db = _db(tmp_path)
    (run1,) = [r for (r,) in db.execute("SELECT run_id FROM runs")]
    assert db.execute("SELECT COUNT(*) FROM compressions WHERE error IS NOT NULL").fetchone()[0] == 6
    assert db.execute("SELECT COUNT(*) FROM errors WHERE stage = 'compress' AND run_id = ?",
                      (run1,)).fetchone()[0] == 6
    db.close()
    fake.reset()
    _run(tmp_path, cfg, "r2")
    db = _db(tmp_path)
    assert db.execute("SELECT COUNT(*) FROM compressions WHERE error IS NOT NULL").fetchone()[0] == 0
    (run2,) = [r for (r,) in db.execute("SELECT run_id FROM runs WHERE run_id != ?", (run1,))]
    db.close()
    frames = results.load(tmp_path / "store.db")
    for run_id, errors in ((run1, 6), (run2, 0)):
        cells, _, _ = cell_frame(frames, run_id)
        comp = cells[cells["arm"] == "compressed"].iloc[0]
        assert (int(comp["errors"]), int(comp["n"]) + int(comp["errors"])) == (errors, 10), (run_id, comp.to_dict())
        assert int(comp["errors_compress"]) == errors
    summaries = [json.loads((d / "summary.json").read_text()) for d in (tmp_path / "out").iterdir()
                 if json.loads((d / "run.json").read_text())["run_id"] == run1]
    row = next(r for r in summaries[0]["rows"] if r["arm"] == "compressed")
    assert (row["errors"], row["n"]) == (6, 10)


def _usage_vs_requests(tmp_path: Path, fake: FakeOpenAI) -> tuple[int, int, int]:
    db = _db(tmp_path)
    uncached = db.execute("SELECT COUNT(*) FROM usage WHERE cached = 0").fetchone()[0]
    cached = db.execute("SELECT COUNT(*) FROM usage WHERE cached = 1").fetchone()[0]
    db.close()
    return uncached, cached, len(fake.log)


def test_every_model_call_leaves_one_usage_row(fake, tmp_path):
    """Usage rows with cached = false == requests the server counted: after a run, after a rerun (cache on:
    the compressions are reused from the store, the predictions answered by the cache and marked cached), and
    after two concurrent runs on one SQLite store (cache off) that both compress every sample."""
    rec = _Recording(fake, delay_s=0.3)
    _run(tmp_path, _cfg(tmp_path, fake, cache=True), "r1")
    assert _usage_vs_requests(tmp_path, fake) == (30, 0, 30)  # 10 compressions + 20 predictions
    _run(tmp_path, _cfg(tmp_path, fake, cache=True), "r2")
    assert _usage_vs_requests(tmp_path, fake) == (30, 20, 30)  # no new request; 20 cache hits marked cached

    fake.reset()
    (tmp_path / "store.db").unlink()
    for p in tmp_path.glob("store.db-*"):
        p.unlink()
    cfg = _cfg(tmp_path, fake)
    procs = [_start(tmp_path, cfg, f"c{i}") for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
    uncached, cached, requests = _usage_vs_requests(tmp_path, fake)
    assert (uncached, cached) == (requests, 0) and requests >= 40, (uncached, requests)
    db = _db(tmp_path)
    assert db.execute("SELECT COUNT(*) FROM compressions").fetchone()[0] == 10
    assert _read_what_is_stored(db, rec.prompts) == 20
    db.close()


def test_run_table_shows_answered_unparseable_and_truncated():
    """Pure formatting (a hand-made summary, no model): accuracy is labelled as over the answered samples, and
    the answered, unparseable and truncated counts are columns."""
    from harness.pipeline.run import format_table

    row = {"arm": "compressed", "compressor": "c", "predictor": "p", "n": 40, "scored": 30, "errors": 10,
           "answered": 30, "accuracy": 0.5, "accuracy_ci": [0.33, 0.67], "unparseable": 4, "truncated": 3,
           "summary_tokens": 12.0, "token_ratio": 0.1, "predictor_usage": {}}
    lines = format_table({"rows": [row], "usage": {}}).splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = dict(zip(head, [c.strip() for c in lines[2].strip("|").split("|")], strict=True))
    assert cells["accuracy [95% CI] (of answered)"] == "0.500 [0.33, 0.67]"
    assert (cells["n"], cells["answered"], cells["errors"], cells["unparseable"], cells["truncated"]) == (
        "40", "30", "10", "4", "3")


def test_git_commit_is_only_the_harness_checkouts(tmp_path, monkeypatch):
    """An installed harness inside another project's repository records no commit, not that project's."""
    from harness.pipeline import run as run_mod

    repo = tmp_path / "project"
    repo.mkdir()
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "x"], cwd=repo, check=True, env=env)
    installed = repo / "venv" / "site-packages" / "harness" / "pipeline" / "run.py"
    installed.parent.mkdir(parents=True)
    monkeypatch.setattr(run_mod, "__file__", str(installed))
    assert run_mod._git_commit() is None
    monkeypatch.setattr(run_mod, "__file__", str(repo / "harness" / "pipeline" / "run.py"))  # a checkout: its commit
    assert run_mod._git_commit() is not None and len(run_mod._git_commit() or "") == 40
