"""End to end: the quickstart config on real models, and a rerun that loads no model and calls none."""

from __future__ import annotations

import json
from pathlib import Path

from harness.config import load_config
from harness.pipeline.run import run
from tests.conftest import REPO, need_pack


def _cfg(tmp_path: Path, **overrides):
    base = {
        "task": {"size": 2},
        "output": {
            "dir": str(tmp_path / "out"),
            "cache": str(tmp_path / "cache.sqlite"),
            "store": str(tmp_path / "store.db"),
        },
    }
    for k, v in overrides.items():
        base[k] = v
    return load_config(REPO / "configs" / "quickstart.yaml", base)


def test_quickstart_rerun_loads_no_model_and_makes_no_calls(tmp_path):
    need_pack("smollm2-135m")
    need_pack("qwen2.5-coder-0.5b")
    cfg = _cfg(tmp_path)
    first = run(cfg, quiet=True)
    assert first["model_loads"] == 2 and first["model_calls"] > 0
    rows = {r["arm"]: r for r in first["rows"]}
    assert set(rows) == {"compressed", "full-context", "no-context"}
    assert all(r["n"] == 2 and r["scored"] + r["errors"] == 2 for r in rows.values())
    assert rows["compressed"]["summary_tokens"] > 0 and 0 < rows["compressed"]["token_ratio"] < 2

    second = run(cfg, quiet=True)
    assert second["model_loads"] == 0 and second["model_calls"] == 0
    assert second["usage"]["predictor"]["cached"] == 6 and second["usage"]["compressor"]["cached"] == 2
    for a, b in zip(first["rows"], second["rows"], strict=True):
        assert a["accuracy"] == b["accuracy"] and a["summary_tokens"] == b["summary_tokens"]
    # each run has its own folder, rows written as JSONL
    d1, d2 = Path(first["run_dir"]), Path(second["run_dir"])
    assert d1 != d2 and d1.exists()
    preds = [json.loads(x) for x in (d1 / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 6 and all("usage" in p for p in preds)
    comps = [json.loads(x) for x in (d1 / "compressions.jsonl").read_text().splitlines()]
    assert len(comps) == 2 and all(c["token_ids"] and c["n_tokens"] == len(c["token_ids"]) for c in comps)


def test_cache_key_covers_model_and_params(tmp_path):
    """A different predictor dtype or generation length is a cache miss, not a stale hit."""
    need_pack("smollm2-135m")
    base = {"arms": ["no-context"], "models": {"predictor": {"model": "gguf/smollm2-135m"}}}
    cfg = _cfg(tmp_path, **base)
    run(cfg, quiet=True)
    again = run(cfg, quiet=True)
    assert again["model_calls"] == 0
    longer = _cfg(tmp_path, **base, generation={"predictor": {"max_new_tokens": 5}})
    assert run(longer, quiet=True)["model_calls"] > 0
    from harness.backends.transformers import effective_dtype

    other = "bfloat16" if effective_dtype("auto", "auto") == "float32" else "float32"
    models = {"predictor": {"model": "gguf/smollm2-135m", "dtype": other}}
    short = {"predictor": {"max_new_tokens": 5}}
    assert run(_cfg(tmp_path, arms=["no-context"], models=models, generation=short), quiet=True)["model_loads"] == 1


def test_overflow_rows_are_errors_or_flagged(tmp_path):
    need_pack("smollm2-135m")
    models = {"predictor": {"model": "gguf/smollm2-135m", "context_window": 256}}
    err = run(_cfg(tmp_path, arms=["full-context"], models=models), quiet=True)
    (row,) = err["rows"]
    assert row["errors"] == 2 and row["accuracy"] is None
    errs = (Path(err["run_dir"]) / "errors.jsonl").read_text()
    assert "context overflow" in errs
    tr = run(_cfg(tmp_path, arms=["full-context"], models=models, overflow="truncate"), quiet=True)
    (row,) = tr["rows"]
    assert row["errors"] == 0 and row["truncated"] == 2 and row["scored"] == 2


def test_run_rows_land_in_the_store(tmp_path):
    """Every number of the run table can be recomputed from the store's rows."""
    need_pack("smollm2-135m")
    from harness import results

    models = {"compressor": {"model": "gguf/smollm2-135m"}, "predictor": {"model": "gguf/smollm2-135m"}}
    gen = {"compressor": {"max_new_tokens": 12}, "predictor": {"max_new_tokens": 6}}
    s = run(_cfg(tmp_path, models=models, generation=gen, arms=["compressed", "no-context"]), quiet=True)
    dfs = results.load(str(tmp_path / "store.db"))
    assert len(dfs["runs"]) == 1 and dfs["runs"]["status"].iloc[0] == "done"
    assert len(dfs["samples"]) == 2 and len(dfs["compressions"]) == 2 and len(dfs["predictions"]) == 4
    view = dfs["predictions_scored"]
    for row in s["rows"]:
        sub = view[view["arm"] == row["arm"]]
        assert sub["correct"].mean() == row["accuracy"]
    comp = view[view["arm"] == "compressed"]
    assert comp["compression_id"].notna().all()
    assert int(dfs["usage"]["completion_tokens"].sum()) == sum(
        int(u["completion_tokens"]) for u in s["usage"].values() if u
    )


def test_judge_role_scores_free_text_answers(tmp_path):
    """FinanceBench's free-text answers are scored by the configured judge; raw output and rubric are stored."""
    need_pack("smollm2-135m")
    from harness.metrics import JUDGE_RUBRIC_VERSION

    over = {
        "task": {"name": "financebench", "size": 2, "options": {"subset": "text"}},
        "models": {"predictor": {"model": "gguf/smollm2-135m"}, "judge": {"model": "gguf/smollm2-135m"}},
        "arms": ["no-context"],
        "generation": {"predictor": {"max_new_tokens": 12}},
    }
    s = run(_cfg(tmp_path, **over), quiet=True)
    scores = [json.loads(x) for x in (Path(s["run_dir"]) / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 2 and {x["metric"] for x in scores} == {"judge"}
    for x in scores:
        assert x["detail"]["rubric_version"] == JUDGE_RUBRIC_VERSION and "judge_raw" in x["detail"]
        assert x["parsed"] in ("CORRECT", "INCORRECT") or "unparseable" in x["flags"]
    assert s["usage"]["judge"]["calls"] == 2


def test_run_summary_is_the_cell_summary():
    """Pure logic (hand-made sample rows, no model): `harness run`'s per-arm numbers are the summariser's: an
    errored sample is counted under errors and not as wrong, unparseable and truncated are counted, token_ratio is
    `metrics.token_ratio` per compression, and a bits-per-byte interval is clipped at 0. (Moved from
    tests/test_report.py with `arm_row`, which now maps a cell's numbers to the run's row.)"""
    import pandas as pd
    import pytest

    from harness.analyze.frames import SAMPLE_COLUMNS, summarize_cell
    from harness.config import parse_config
    from harness.metrics import accuracy_with_ci, mean_with_ci
    from harness.pipeline.run import arm_row

    cfg = parse_config({"task": {"name": "synthetic-records"}, "arms": ["compressed", "no-context"],
                        "models": {"compressor": {"model": "gguf/smollm2-135m"},
                                   "predictor": {"model": "gguf/smollm2-135m"}}})  # fmt: skip

    def row(sid: str, status: str, *, stage: str | None = None, metric: str | None = None, correct=None,
            value=None, flags=(), comp: tuple[int, int, str | None] | None = None, pred: tuple | None = None,
            ptrunc: bool = False) -> dict:
        d = {"sample_id": sid, "status": status, "error_stage": stage, "metric": metric, "correct": correct,
             "value": value, "flags_json": list(flags), "prediction_truncated": ptrunc}
        if comp is not None:  # (summary tokens, context tokens, compression error)
            d |= {"compression_id": sid, "summary_tokens": comp[0], "context_tokens": comp[1],
                  "compression_error": comp[2]}
        if pred is not None:  # (prompt tokens, completion tokens, seconds, cached)
            d |= dict(zip(("pred_prompt_tokens", "pred_completion_tokens", "pred_seconds", "pred_cached"), pred,
                          strict=True))
        return d

    compressed = [
        row("s0", "ok", metric="em", correct=True, value=1.0, comp=(10, 100, None), pred=(40, 2, 0.5, False)),
        row("s1", "ok", metric="em", correct=False, value=0.0, flags=("unparseable",), comp=(20, 200, None),
            pred=(40, 2, 0.5, True), ptrunc=True),
        row("s2", "error", stage="compress", comp=(0, 100, "CUDA OOM")),
        row("s3", "error", stage="predict", comp=(30, 100, None), pred=(40, 2, 0.5, False)),
    ]  # fmt: skip
    no_context = [row("s0", "value", metric="bits_per_byte", value=0.1, pred=(40, 0, 0.5, False)),
                  row("s1", "value", metric="bits_per_byte", value=3.0, pred=(40, 0, 0.5, False))]
    comp, bpb = (arm_row(cfg, arm, summarize_cell(pd.DataFrame(rows, columns=SAMPLE_COLUMNS)))
                 for arm, rows in (("compressed", compressed), ("no-context", no_context)))
    assert (comp["n"], comp["errors"], comp["answered"], comp["scored"]) == (4, 2, 2, 2)
    assert comp["accuracy"] == 0.5 and comp["accuracy_ci"] == pytest.approx(accuracy_with_ci([True, False])[1:])
    assert (comp["unparseable"], comp["truncated"]) == (1, 1)
    assert comp["summary_tokens"] == pytest.approx(20.0)  # 10, 20 and 30 tokens; the errored compression not
    assert comp["token_ratio"] == pytest.approx((0.1 + 0.1 + 0.3) / 3)
    assert comp["predictor_usage"] == {"calls": 3, "prompt_tokens": 120, "completion_tokens": 6,
                                       "seconds": pytest.approx(1.0), "cached": 1}  # fmt: skip
    m, lo, hi = mean_with_ci([0.1, 3.0])
    assert bpb["accuracy"] is None and bpb["bits_per_byte"] == pytest.approx(m) and lo < 0
    assert bpb["bits_per_byte_ci"] == pytest.approx([0.0, hi])


def test_stored_compressions_and_predictions_carry_their_prompts(tmp_path):
    """Every compression and prediction a run stores holds the rendered prompt its model got (prompt_json: the
    chat messages), and that prompt contains the sample's question."""
    need_pack("smollm2-135m")
    import sqlite3

    from harness.tasks import load_task

    models = {"compressor": {"model": "gguf/smollm2-135m"}, "predictor": {"model": "gguf/smollm2-135m"}}
    gen = {"compressor": {"max_new_tokens": 6}, "predictor": {"max_new_tokens": 4}}
    cfg = _cfg(tmp_path, models=models, generation=gen, arms=["compressed", "full-context"])
    run(cfg, quiet=True)
    questions = {s.id: s.question for s in load_task(cfg.task.name, size=cfg.task.size, seed=cfg.task.seed,
                                                       split=cfg.task.split, options=cfg.task.options)}
    with sqlite3.connect(tmp_path / "store.db") as db:
        comps = db.execute("SELECT sample_id, prompt_json FROM compressions").fetchall()
        preds = db.execute("SELECT sample_id, prompt_json FROM predictions").fetchall()
    assert len(comps) == 2 and len(preds) == 4
    for sid, prompt in comps + preds:
        msgs = json.loads(prompt)["messages"]
        assert msgs and questions[sid] in "\n".join(m["content"] for m in msgs), (sid, prompt)
