"""Sweeps on real models: exact compression counts, and crash safety under SIGKILL at three points.

The crash tests run `harness sweep` as a subprocess with HARNESS_CRASH_AT, which makes the process SIGKILL
itself right after the N-th stored compression or prediction, or as a stage begins; then the same command is
run again and its rows are compared with a clean run's.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.config import load_sweep_config
from harness.pipeline.sweep import expand, run_sweep
from tests.conftest import REPO, need_pack

N_SAMPLES = 4
M = 2
KEYS = {
    "compressions": "compressor_model_id, task, sample_id, knob_hash, sample_index, seed",
    "predictions": "cell_id, sample_id, COALESCE(compression_id, 0), arm",
    "scores": "prediction_id, metric",
    "usage": "call_kind, ref_id",
    "mi_estimates": "run_id, task, group_id, compressor_model_id, scorer_model_id, knob_hash, mode",
}


def _write_cfg(tmp_path: Path, compressors: list[str], predictors: list[str], arms: list[str]) -> Path:
    cfg = {
        "name": "t-sweep",
        "task": {"name": "synthetic-records", "size": N_SAMPLES, "seed": 3,
                 "options": {"n_templates": 1, "context_tokens": 200}},
        "models": {"compressor": {"model": compressors[0], "batch_size": 4},
                   "predictor": {"model": predictors[0], "batch_size": 4}},
        "arms": arms,
        "generation": {"compressor": {"max_new_tokens": 12}, "predictor": {"max_new_tokens": 6}},
        "mi": {"samples_per_context": M, "scorers": ["self"], "n_boot": 200},
        "sweep": {"compressors": compressors, "predictors": predictors},
        "output": {"dir": str(tmp_path / "out"), "cache": None, "store": str(tmp_path / "store.db")},
    }
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as c:
        out = {t: c.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in KEYS}
        for t, key in KEYS.items():  # no duplicates under any natural key
            dup = c.execute(f"SELECT COUNT(*) FROM (SELECT {key} FROM {t} GROUP BY {key} HAVING COUNT(*) > 1)")
            assert dup.fetchone()[0] == 0, f"duplicated rows in {t}"
        out["errors_in_rows"] = c.execute(
            "SELECT (SELECT COUNT(*) FROM compressions WHERE error IS NOT NULL) + "
            "(SELECT COUNT(*) FROM predictions WHERE error IS NOT NULL)").fetchone()[0]
    return out


def _sweep(cfg: Path, crash: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HARNESS_CRASH_AT", None)
    if crash:
        env["HARNESS_CRASH_AT"] = crash
    return subprocess.run([sys.executable, "-m", "harness.cli", "sweep", str(cfg), "-q"], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=900)


def _requests(out: str) -> int:
    m = re.search(r"generate requests (\d+)", out)
    assert m, out
    return int(m.group(1))


def test_sweep_config_errors_are_one_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"task": {"name": "synthetic-records"},
                                 "sweep": {"compressors": ["gguf/smollm2-135m"], "predictors": ["gguf/smollm2-135m"],
                                           "knobs": {"generation.compressor.max_new_tokenz": [8, 16]}}}))
    r = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", str(p)], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "max_new_tokenz" in r.stderr and "Traceback" not in r.stderr


def test_expand_dedupes_context_arms_and_counts_cells(tmp_path):
    """Pure expansion (no models): C×P compressed cells, one no-context cell per predictor, one unit per C×knob."""
    p = _write_cfg(tmp_path, ["gguf/smollm2-135m", "gguf/gemma3-270m"],
                   ["gguf/smollm2-135m", "gguf/qwen2.5-coder-0.5b", "gguf/gemma3-270m"], ["compressed", "no-context"])
    data = yaml.safe_load(p.read_text())
    data["sweep"]["knobs"] = {"generation.compressor.max_new_tokens": [8, 16],
                              "generation.predictor.max_new_tokens": [4]}
    p.write_text(yaml.safe_dump(data))
    plan = expand(load_sweep_config(p))
    arms = [c.arm for c in plan.cells.values()]
    assert arms.count("compressed") == 2 * 3 * 2 and arms.count("no-context") == 3
    assert len(plan.units) == 2 * 2
    assert len(set(plan.cells)) == len(plan.cells)

    data["sweep"]["knobs"] = {"seed": [0, 1]}  # the seed shapes compressions: one unit per compressor × seed
    p.write_text(yaml.safe_dump(data))
    plan = expand(load_sweep_config(p))
    assert len(plan.units) == 2 * 2
    assert {u.cfg.seed for u in plan.units.values()} == {0, 1}
    for c in plan.cells.values():
        if c.unit:
            assert plan.units[c.unit].cfg.seed == c.cfg.seed


def test_sweep_makes_each_compression_once_for_all_predictors(tmp_path):
    need_pack("smollm2-135m")
    need_pack("qwen2.5-coder-0.5b")
    comps, preds = ["gguf/smollm2-135m", "gguf/qwen2.5-coder-0.5b"], ["gguf/smollm2-135m", "gguf/qwen2.5-coder-0.5b"]
    cfg = load_sweep_config(_write_cfg(tmp_path, comps, preds, ["compressed"]))
    out = run_sweep(cfg, quiet=True)
    c = _counts(tmp_path / "store.db")
    C, P = len(comps), len(preds)
    assert c["compressions"] == C * N_SAMPLES * M  # exactly C·n·M, however many predictors read them
    assert c["predictions"] == C * P * N_SAMPLES
    assert out["generate_requests"] == C * N_SAMPLES * M + C * P * N_SAMPLES
    assert out["model_loads"] == C + P  # each model loaded once per stage (compress, predict)
    with sqlite3.connect(tmp_path / "store.db") as db:
        used = db.execute("SELECT COUNT(DISTINCT compression_id) FROM predictions").fetchone()[0]
        per = db.execute("SELECT compression_id, COUNT(*) FROM predictions GROUP BY compression_id").fetchall()
        mi = db.execute("SELECT COUNT(*) FROM mi_estimates WHERE group_id = '' AND error IS NULL").fetchone()[0]
    assert used == C * N_SAMPLES and all(n == P for _, n in per)  # sample j=0 read by every predictor
    assert mi == C

    again = run_sweep(cfg, quiet=True)  # finished: nothing loaded, nothing asked
    assert again["model_loads"] == 0 and again["generate_requests"] == 0 and again["score_requests"] == 0
    assert _counts(tmp_path / "store.db") == c


@pytest.fixture(scope="module")
def clean_counts(tmp_path_factory):
    need_pack("smollm2-135m")
    d = tmp_path_factory.mktemp("clean")
    cfg = _write_cfg(d, ["gguf/smollm2-135m"], ["gguf/smollm2-135m"],
                     ["compressed", "no-context"])
    r = _sweep(cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    return _counts(d / "store.db"), _requests(r.stdout)


@pytest.mark.parametrize("crash", ["compress:5", "stage:predict", "predict:3"])
def test_sigkill_then_rerun_finishes_with_the_clean_rows(tmp_path, clean_counts, crash):
    want, total_requests = clean_counts
    cfg = _write_cfg(tmp_path, ["gguf/smollm2-135m"], ["gguf/smollm2-135m"], ["compressed", "no-context"])
    r = _sweep(cfg, crash)
    assert r.returncode == -9, (r.returncode, r.stderr[-2000:])
    before = _counts(tmp_path / "store.db")
    assert 0 < before["compressions"] + before["predictions"] < want["compressions"] + want["predictions"] or (
        crash == "stage:predict" and before["predictions"] == 0)
    r2 = _sweep(cfg)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert _counts(tmp_path / "store.db") == want
    # only unfinished work was redone: requests = all − what was already stored
    done = before["compressions"] + before["predictions"]
    assert _requests(r2.stdout) == total_requests - done
    with sqlite3.connect(tmp_path / "store.db") as db:
        assert db.execute("SELECT status FROM runs").fetchone()[0] == "done"


def test_sweep_judges_free_text_answers(tmp_path):
    """The engine's score stage runs the judge role: FinanceBench's free-text answers get a `judge` score with
    the rubric version and raw output, one judge call per prediction; a rerun judges nothing again."""
    need_pack("smollm2-135m")
    import json

    from harness.config import parse_config
    from harness.metrics import JUDGE_RUBRIC_VERSION

    smol = "gguf/smollm2-135m"
    cfg = parse_config({
        "name": "t-judge", "task": {"name": "financebench", "size": 2, "options": {"subset": "text"}},
        "models": {"predictor": {"model": smol}, "judge": {"model": smol}}, "arms": ["no-context"],
        "generation": {"predictor": {"max_new_tokens": 12}},
        "sweep": {"compressors": [smol], "predictors": [smol]},
        "output": {"cache": None, "store": str(tmp_path / "store.db")},
    })  # fmt: skip
    from harness.pipeline.plan import dry_run

    assert dry_run(cfg)["generate_requests"]["judge"] == 2  # the plan counts the judge's calls
    out = run_sweep(cfg, quiet=True)
    assert out["usage"]["judge"]["calls"] == 2 and out["new_rows"]["scores"] == 2
    with sqlite3.connect(tmp_path / "store.db") as db:
        rows = db.execute("SELECT metric, parsed, flags_json, detail_json FROM scores").fetchall()
    assert len(rows) == 2 and {r[0] for r in rows} == {"judge"}
    for _, parsed, flags, detail in rows:
        d = json.loads(detail)
        assert d["rubric_version"] == JUDGE_RUBRIC_VERSION and "judge_raw" in d
        assert parsed in ("CORRECT", "INCORRECT") or "unparseable" in json.loads(flags)
    assert "judge" not in dry_run(cfg)["generate_requests"]
    again = run_sweep(cfg, quiet=True)
    assert "judge" not in again["usage"] and again["new_rows"].get("scores", 0) == 0
