"""A real model reads the gold evidence of synthetic-records better than no context (issue: tasks)."""

from __future__ import annotations

from scipy.stats import binomtest

from harness.config import load_config
from harness.pipeline.run import run
from tests.conftest import REPO, need_pack


def test_gold_evidence_beats_no_context_mcnemar(tmp_path):
    need_pack("qwen2.5-coder-0.5b")
    over = {
        "task": {"size": 40, "seed": 11},
        "models": {"predictor": {"model": "gguf/qwen2.5-coder-0.5b", "batch_size": 8}},
        "arms": ["gold-context", "no-context"],
        "generation": {"predictor": {"max_new_tokens": 16}},
        "output": {
            "dir": str(tmp_path / "out"),
            "cache": str(tmp_path / "c.sqlite"),
            "store": str(tmp_path / "store.db"),
        },
    }
    cfg = load_config(REPO / "configs" / "quickstart.yaml", over)
    import json
    from pathlib import Path

    summary = run(cfg, quiet=True)
    rows = {r["arm"]: r for r in summary["rows"]}
    assert rows["gold-context"]["errors"] == 0 and rows["no-context"]["errors"] == 0
    scores = [json.loads(x) for x in (Path(summary["run_dir"]) / "scores.jsonl").read_text().splitlines()]
    by = {(s["sample_id"], s["arm"]): s["correct"] for s in scores}
    ids = sorted({s["sample_id"] for s in scores})
    assert len(ids) == 40
    gold = [by[(i, "gold-context")] for i in ids]
    none = [by[(i, "no-context")] for i in ids]
    b = sum(g and not n for g, n in zip(gold, none, strict=True))  # gold right, no-context wrong
    c = sum(n and not g for g, n in zip(gold, none, strict=True))
    p = binomtest(b, b + c, 0.5).pvalue if b + c else 1.0  # exact McNemar
    diff = (sum(gold) - sum(none)) / 40
    print(f"gold {sum(gold)}/40, none {sum(none)}/40, discordant {b}/{c}, exact McNemar p={p:.2e}")
    assert diff >= 0.20, diff
    assert p < 0.01, p
