"""The summaries' MI in research mode (`harness.research.mi`): which subqueries a question group shares (pure), and
real runs (smollm2 plans, compresses, answers and scores, float32) where every group sample searches its own
passages (the estimate is wired to the right contexts) or one pooled corpus (one query finds the same passages for
every sample, so the summaries carry no information about which sample: exactly 0 bits)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.config import parse_config
from harness.research.mi import no_mi_reason, shared_subqueries
from tests.conftest import need_pack


def _step(sid: str, query: str, ids: list[str], subtask: str | None = None, error: str | None = None) -> dict:
    return {"sample_id": sid, "error": error,
            "payload": {"query": query, "subtask": subtask or query, "ids": ids}}


def test_shared_subqueries_groups_by_question_group_and_query_text():
    steps = [_step("a", "Acme founder", ["p1"]), _step("b", "  acme   FOUNDER ", ["p2"], subtask="Acme  founder"),
             _step("c", "Acme founder", ["p3"]),  # another group: not shared with a/b
             _step("a", "Acme town", ["p4"]), _step("b", "Acme town", ["p5"], error="boom"),  # b's failed: not shared
             _step("d", "Acme founder", ["p6"]), _step("a", "Acme founder", ["p9"])]  # a's second: first counts
    group = {"a": "g1", "b": "g1", "d": "g1", "c": "g2"}
    out = shared_subqueries(steps, group, ["d", "a", "b", "c"])
    assert len(out) == 1
    g = out[0]
    assert (g.group_id, g.query, g.subtask) == ("g1", "Acme founder", "Acme founder")
    assert g.contexts == (("d", ("p6",)), ("a", ("p1",)), ("b", ("p2",)))  # sample order, first step per sample
    assert [c[0] for c in shared_subqueries(steps, group, ["d", "a", "b", "c"], cap=2)[0].contexts] == ["d", "a"]
    assert shared_subqueries(steps, group, ["a", "b", "c", "d"], min_contexts=4) == []
    assert shared_subqueries(steps, {"a": "g1", "b": "g2", "c": "g3", "d": "g4"}, ["a", "b", "c", "d"]) == []
    assert "no error-free compress step" in no_mi_reason(0, "task")
    assert "research.corpus: sample" in no_mi_reason(3, "task")


def _cfg(tmp: Path, corpus: str, cache: Path) -> dict[str, Any]:
    return {
        "name": "research-mi-test",
        # one template: both samples ask the same question of different worlds (one group)
        "task": {"name": "synthetic-multidoc", "size": 2, "seed": 0,
                 "options": {"n_templates": 1, "context_tokens": 120, "n_distractors": 2}},
        # qwen plans (smollm2 cannot write this plan's JSON), smollm2 compresses and scores its own summaries
        "models": {"predictor": {"model": "gguf/qwen2.5-coder-0.5b", "dtype": "float32", "batch_size": 4},
                   "compressor": {"model": "gguf/smollm2-135m", "dtype": "float32", "batch_size": 4}},
        "research": {"arms": ["compressor-predictor"], "corpus": corpus, "top_k": 2, "max_subqueries": 2,
                     "rounds": 1, "plan_max_new_tokens": 160},
        "mi": {"samples_per_context": 2, "scorers": ["self"], "n_boot": 200},
        "generation": {"compressor": {"max_new_tokens": 16}, "predictor": {"max_new_tokens": 8}},
        "output": {"dir": str(tmp / "out"), "cache": str(cache), "store": str(tmp / "store.db")},
    }


@pytest.fixture(scope="module")
def plan_cache(tmp_path_factory) -> Path:
    """One response cache for both corpora: the plans (same question, greedy) are asked once."""
    return tmp_path_factory.mktemp("research-mi") / "cache.sqlite"


def _run(tmp: Path, corpus: str, cache: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from harness.research.run import run_research
    from harness.results import load

    summary = run_research(parse_config(_cfg(tmp, corpus, cache)), quiet=True)
    return summary, load(str(tmp / "store.db"))


def _pooled(fr: dict[str, Any]) -> Any:
    mi = fr["mi_estimates"]
    return mi[(mi["group_id"] == "") & (mi["mode"] == "research")]


@pytest.mark.parametrize("corpus", ["sample", "task"])
def test_summaries_mi_of_a_group_sharing_its_subqueries(tmp_path, plan_cache, corpus):
    need_pack("smollm2-135m")
    need_pack("qwen2.5-coder-0.5b")
    from harness.backends.registry import make_backend
    from harness.config import ModelConfig
    from harness.mi import estimate_mi
    from harness.records import ScoreRequest

    summary, fr = _run(tmp_path, corpus, plan_cache)
    [cell] = list(summary["summaries_mi"])
    [pooled] = summary["summaries_mi"][cell]
    assert pooled["error"] is None, pooled
    groups = fr["mi_estimates"][(fr["mi_estimates"]["group_id"] != "") & (fr["mi_estimates"]["mode"] == "research")]
    assert len(groups) == pooled["shared_subqueries"] >= 1 and groups["error"].isna().all()
    assert pooled["n_contexts"] == 2 * len(groups)
    assert pooled["bits"] <= 1.0 + 1e-9  # log2 N with N = 2 contexts
    # the run's table and the report's note show it
    assert "summary MI bits" in summary["table"] and f"{pooled['bits']:.3f} bits [" in summary["table"]
    assert math.isclose(pooled["bits_per_token"], pooled["bits"] / _pooled(fr)["mean_tokens"].iloc[0], rel_tol=1e-9)
    # the cell table's MI columns read the pooled row
    from harness.analyze.frames import cell_frame

    cf = cell_frame(fr)[0]
    assert math.isclose(float(cf.set_index("cell_id").loc[cell, "mi_bits"]), pooled["bits"], rel_tol=1e-9)

    # wiring: score the stored draws (M = 2 per context) under every context's stored prompt, independently
    comps = fr["compressions"]
    draws = comps[comps["knob_hash"].str.contains("/mi/", regex=False)]
    assert len(draws) == 2 * 2 * len(groups) and draws["error"].isna().all()
    be = make_backend(ModelConfig(model="gguf/smollm2-135m", dtype="float32"))
    try:
        for (kh,), g in draws.groupby(["knob_hash"]):
            detail = json.loads(groups[groups["group_id"].str.endswith(kh.rpartition("/")[2])]
                                ["detail_json"].iloc[0])
            sids = detail["samples"]
            prompts = {sid: tuple((m["role"], m["content"]) for m in json.loads(
                g[g["sample_id"] == sid]["prompt_json"].iloc[0])) for sid in sids}
            if corpus == "task":  # one pooled corpus: the same query finds the same passages for both samples
                assert detail["same_passages"] and len(set(prompts.values())) == 1
            logp = np.empty((2, 2, 2))
            for i, sid in enumerate(sids):
                rows = g[g["sample_id"] == sid].sort_values("sample_index")
                for j, ids in enumerate(rows["token_ids_json"]):
                    res = be.score([ScoreRequest(messages=prompts[x], continuation_ids=tuple(json.loads(ids)))
                                    for x in sids])
                    logp[i, j] = [r.total for r in res]
            stored = groups[groups["group_id"].str.endswith(kh.rpartition("/")[2])]["bits"].iloc[0]
            mine = estimate_mi(logp, n_boot=200, seed=0, scorer_is_sampler=True).bits
            assert abs(mine - stored) < 1e-3, (mine, stored)
            if corpus == "task":
                assert stored == pytest.approx(0.0, abs=1e-9)
    finally:
        be.close()


def test_report_groups_research_cells_by_config_and_drops_empty_ones():
    """Pure: three configs in one store; the one whose cells answered nothing is left out, the others are labelled
    with their run and the one setting that differs, newest first."""
    import pandas as pd

    from harness.analyze.research import config_groups

    def knobs(tokens: int) -> str:
        return json.dumps({"research": {"plan_max_new_tokens": tokens, "top_k": 3}, "research_arm": "x",
                           "knob_hash": "h", "seed": 0})

    ids = ["research-a/no-retrieval", "research-a/predictor-only", "research-b/no-retrieval", "research-c/no-retrieval"]
    runs = ["r2", "r2", "r1", "r3"]
    frames = {"runs": pd.DataFrame({"run_id": ["r1", "r2", "r3"], "name": ["dr", "dr", "dr"]}),
              "cells": pd.DataFrame({"cell_id": ids, "knobs_json": [knobs(128), knobs(128), knobs(48), knobs(64)]})}
    cells = pd.DataFrame({"cell_id": ids, "run_id": runs, "samples": [3, 3, 3, 0]})
    out = config_groups(frames, cells)
    assert [b for b, _, _ in out] == ["research-a", "research-b"]  # r2 newer than r1; research-c has no samples
    assert out[0][1] == "dr (research-a, run r2): research.plan_max_new_tokens: 128"
    assert list(out[0][2]["cell_id"]) == ids[:2]
