"""Deep-Research mode (harness.research): the planning protocol, search, the episode loop and its round limit,
planning failures, cost per role, resumption after kill -9, and the predictor behind a real llama-cpp-python server.

Model tests use real small models (smollm2-135m in float32); the round-limit and batching tests use a scripted fake
backend (fault injection: it returns fixed replies, which is what those pure-logic checks need).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.config import parse_config
from harness.errors import UserError
from harness.records import Document, Generation, GenParams, Sample, Usage
from harness.research.driver import drive
from harness.research.episode import Context, Trace, episode
from harness.research.protocol import PlanError, parse_plan
from harness.research.search import SearchTool, research_corpus
from tests.conftest import need_pack

# ---------------------------------------------------------------- protocol (pure)


def test_parse_plan_is_strict():
    p = parse_plan('{"subqueries": [{"query": "founder of Acme", "subtask": "who founded it"}, "Acme  town"]}', 3)
    assert [(s.query, s.subtask) for s in p.subqueries] == [("founder of Acme", "who founded it"),
                                                            ("Acme town", "Acme town")]
    assert parse_plan('```json\n{"subqueries": ["a", "b", "c"]}\n```', 2).dropped == 1
    assert parse_plan('{"done": true}', 2, allow_done=True).done
    for bad, allow in [("Sure! Here are the queries: founder of Acme", False), ('{"subqueries": []}', False),
                       ('{"done": true}', False), ('[{"query": "x"}]', False), ('{"subqueries": [{"q": 1}]}', False),
                       ('{"subqueries": ["a"]} and more', False), ("", True)]:
        with pytest.raises(PlanError):
            parse_plan(bad, 3, allow_done=allow)


def test_ratio_ci_and_pareto_front():
    from harness.analyze.research import pareto_front, ratio_ci

    a, lo, hi = ratio_ci([True, True, False, True], [True, True, True, True], n_boot=500)
    assert a == pytest.approx(0.75) and lo <= 0.75 <= hi <= 1.0
    assert ratio_ci([True], [False])[0] is None
    assert pareto_front([1.0, 2.0, 3.0, 0.5], [0.5, 0.4, 0.9, 0.5]) == [3, 2]


# ---------------------------------------------------------------- search


def test_search_on_a_known_folder_corpus_and_its_cache(tmp_path):
    from harness.backends.cache import ResponseCache

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "towns.md").write_text("Ashford lies on the river Wend.\n\nBrinmoor is famous for its cheese fair.\n")
    (folder / "people.txt").write_text("Clara Mensah was born in Brinmoor in 1941.\n")
    (folder / "firms.jsonl").write_text(json.dumps({"id": "acme", "title": "Acme Logistics",
                                                    "text": "Acme Logistics was founded by Clara Mensah."}) + "\n")
    docs = research_corpus(str(folder), [])
    assert sorted(d.id for d in docs) == ["acme", "people.txt#0", "towns.md#0", "towns.md#1"]
    cache = ResponseCache(tmp_path / "cache.sqlite")
    tool = SearchTool(docs, "bm25", cache=cache)
    hits = tool.search("Who founded Acme Logistics?", 2)
    assert hits[0].id == "acme" and hits[0].rank == 1 and len(hits) == 2
    assert tool.search("Where was Clara Mensah born?", 1)[0].id == "people.txt#0"
    assert tool.search("cheese fair", 1)[0].id == "towns.md#1"
    again = SearchTool(docs, "bm25", cache=cache)  # a second tool over the same corpus: answered by the cache
    assert [h.id for h in again.search("Who founded Acme Logistics?", 2)] == [h.id for h in hits]
    assert again.searched == 0 and again._index is None and tool.searched == 3
    with pytest.raises(UserError, match=r"research\.corpus"):
        research_corpus(str(tmp_path / "missing"), [])


def test_task_corpus_pools_every_sample_and_a_bridge_needs_two_searches():
    """synthetic-multidoc with one sample per group: the pooled corpus holds every passage once; the first hop of a
    bridge question finds one gold passage, the second hop (the bridge entity) the other."""
    from harness.tasks.synthetic import synthetic_multidoc

    ss = synthetic_multidoc(size=8, n_templates=8, context_tokens=200, n_distractors=3)
    docs = research_corpus("task", ss)
    assert len(docs) == len({d.id for s in ss for d in s.documents}) == len(docs)
    tool = SearchTool(docs, "bm25")
    s = ss[0]  # In which town was the founder of <firm> born?
    assert s.meta["kind"] == "bridge"
    gold = {d.id: d for d in s.documents if d.is_gold}
    firm = s.meta["named_entities"][0]
    first = tool.search(f"founder of {firm}", 1)[0]
    assert first.id in gold and firm in first.text
    (other,) = [d for i, d in gold.items() if i != first.id]
    assert tool.search(f"{other.title} born", 1)[0].id == other.id


# ---------------------------------------------------------------- the loop with a scripted backend (fault injection)


class Scripted:
    """A fake backend (fault injection, not a model): `reply(request)` gives each text; records every batch."""

    def __init__(self, reply):
        self.reply = reply
        self.batches: list[list[Any]] = []

    def generate(self, reqs):
        self.batches.append(list(reqs))
        return [Generation(self.reply(r), [], None, Usage(10, 5, 0.01)) for r in reqs]

    def close(self):
        pass


def _sample() -> Sample:
    docs = (Document("d1", "Acme Logistics was founded by Clara Mensah.", "Acme Logistics", is_gold=True),
            Document("d2", "Clara Mensah was born in Brinmoor.", "Clara Mensah", is_gold=True),
            Document("d3", "Brinmoor is famous for its cheese fair.", "Brinmoor"))
    return Sample("s0", "In which town was the founder of Acme Logistics born?", docs, ("Brinmoor",))


def _ctx(arm: str, rounds: int, search: SearchTool) -> Context:
    from harness.config import Prompts

    p = GenParams(max_new_tokens=8)
    return Context(arm=arm, search=search, prompts=Prompts(), top_k=1, max_subqueries=2, rounds=rounds,
                   plan_params=p, answer_params=p, compress_params=p, compressor="compressor:fake")


def _planner(done_at_follow_up: bool):
    n = {"k": 0}

    def reply(req):
        user = req.messages[-1][1]
        if user.startswith("Research question") and "Findings so far" not in user:
            return '{"subqueries": [{"query": "founder of Acme Logistics", "subtask": "founder"}, "Acme Logistics"]}'
        if "Findings so far" in user:
            n["k"] += 1
            more = {"subqueries": [f"Clara Mensah born {n['k']}"]}
            return '{"done": true}' if done_at_follow_up else json.dumps(more)
        return "Brinmoor"

    return reply


@pytest.mark.parametrize("rounds", [1, 2, 3])
def test_round_limit_and_parallel_compression(rounds):
    """A predictor that always asks for more stops at `rounds` compress rounds; one round's subqueries are one batch."""
    s = _sample()
    tool = SearchTool(list(s.documents))
    pred, comp = Scripted(_planner(False)), Scripted(lambda r: "summary")
    tr = Trace("c", s.id)
    outs = []
    drive([(episode(_ctx("compressor-predictor", rounds, tool), s, tr), outs.append)],
          {"predictor": pred, "compressor:fake": comp})
    (out,) = outs
    assert out.error is None and out.rounds == rounds and not out.early_stop
    kinds = [st["kind"] for st in tr.steps]
    assert kinds.count("follow-up") == rounds - 1 and kinds[0] == "plan" and kinds[-1] == "answer"
    assert max(st["round"] for st in tr.steps if st["kind"] == "compress") == rounds - 1
    assert [len(b) for b in comp.batches] == [2] + [1] * (rounds - 1)  # round 0's two subqueries in one batch
    assert [st["step"] for st in tr.steps] == list(range(len(tr.steps)))


def test_early_stop_is_recorded():
    s = _sample()
    tool = SearchTool(list(s.documents))
    tr = Trace("c", s.id)
    outs = []
    drive([(episode(_ctx("predictor-only", 3, tool), s, tr), outs.append)], {"predictor": Scripted(_planner(True))})
    assert outs[0].early_stop and outs[0].rounds == 1 and outs[0].error is None
    fu = [st for st in tr.steps if st["kind"] == "follow-up"]
    assert len(fu) == 1 and fu[0]["payload"]["early_stop"] and fu[0]["payload"]["done"]


def test_unparseable_plan_is_a_failure_not_a_guess():
    s = _sample()
    tool = SearchTool(list(s.documents))
    tr = Trace("c", s.id)
    outs = []
    drive([(episode(_ctx("compressor-predictor", 2, tool), s, tr), outs.append)],
          {"predictor": Scripted(lambda r: "I would search for the founder."), "compressor:fake": Scripted(str)})
    assert outs[0].answer is None and outs[0].error.startswith("planning failure (plan, round 0)")
    assert [st["kind"] for st in tr.steps] == ["plan"] and tr.steps[0]["error"] == outs[0].error
    assert tr.steps[0]["payload"]["text"] == "I would search for the founder."


# ---------------------------------------------------------------- real models, through the store


def _cfg(tmp: Path, **research: Any) -> dict[str, Any]:
    return {
        "name": "research-test",
        "task": {"name": "synthetic-multidoc", "size": 2, "seed": 0,
                 "options": {"n_templates": 8, "context_tokens": 120, "n_distractors": 2}},
        "models": {"predictor": {"model": "gguf/smollm2-135m", "dtype": "float32", "batch_size": 4},
                   "compressor": {"model": "gguf/smollm2-135m", "dtype": "float32", "batch_size": 4}},
        "research": {"top_k": 2, "max_subqueries": 2, "rounds": 1, "plan_max_new_tokens": 48, **research},
        "generation": {"compressor": {"max_new_tokens": 24}, "predictor": {"max_new_tokens": 12}},
        "overflow": "truncate",
        "prices": {"gguf/smollm2-135m": {"input_per_million": 1.0, "output_per_million": 4.0}},
        "output": {"dir": str(tmp / "out"), "cache": str(tmp / "cache.sqlite"), "store": str(tmp / "store.db")},
    }


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory):
    """One real run of all four arms (smollm2 plans, compresses and answers; float32), on 2 samples."""
    need_pack("smollm2-135m")
    from harness.research.run import run_research
    from harness.results import load

    tmp = tmp_path_factory.mktemp("research")
    cfg = parse_config(_cfg(tmp))
    summary = run_research(cfg, quiet=True)
    return cfg, summary, load(str(tmp / "store.db"))


def test_loop_end_to_end_with_a_real_model(loop_run):
    _, summary, fr = loop_run
    cells = fr["cells"]
    assert sorted(cells["arm"]) == ["compressor-predictor", "no-retrieval", "oracle-evidence", "predictor-only"]
    preds, steps = fr["predictions"], fr["trace_steps"]
    assert len(preds) == 4 * 2  # one prediction per cell and sample, answered or an error
    scored = set(fr["scores"]["prediction_id"])
    errs = fr["errors"]
    for p in preds.itertuples():
        if p.error is None:
            assert p.prediction_id in scored
        else:  # a failure is an error row and no score, never a 0
            assert p.prediction_id not in scored and (errs["sample_id"] == p.sample_id).any()
    for (cell, _sid), g in steps.groupby(["cell_id", "sample_id"]):
        g = g.sort_values("step")
        assert list(g["step"]) == list(range(len(g)))
        arm = cells.set_index("cell_id").loc[cell, "arm"]
        kinds = list(g["kind"])
        if arm in ("no-retrieval", "oracle-evidence"):
            assert kinds == ["answer"]
        elif g["error"].isna().all():
            assert kinds[0] == "plan" and kinds[-1] == "answer" and "search" in kinds
            if arm == "compressor-predictor":  # one compress step per search, reading its retrieved ids
                srch = [json.loads(x) for x in g[g["kind"] == "search"]["payload_json"]]
                comp = [json.loads(x) for x in g[g["kind"] == "compress"]["payload_json"]]
                assert [c["ids"] for c in comp] == [x["ids"] for x in srch]
    oracle = preds[preds["cell_id"].str.endswith("/oracle-evidence")]
    assert oracle["error"].isna().all()
    assert set(fr["usage"]["call_kind"]) >= {"predict"}
    assert summary["table"].count("\n| ") >= 4 and "MI (bits per token" in summary["table"]


def test_per_role_cost_adds_up_to_the_cell_total(loop_run):
    from harness.analyze.frames import cell_frame

    _, _, fr = loop_run
    cells = cell_frame(fr)[0].set_index("cell_id")
    steps = fr["trace_steps"]
    for cell_id, g in steps.groupby("cell_id"):
        if cells.loc[cell_id, "errors"] == cells.loc[cell_id, "samples"]:
            continue
        by_role = {r: (float(x["flops"].fillna(0).sum()), float(x["dollars"].fillna(0).sum()),
                       int(x["prompt_tokens"].sum() + x["completion_tokens"].sum())) for r, x in g.groupby("role")}
        flops = sum(v[0] for v in by_role.values())
        dollars = sum(v[1] for v in by_role.values())
        assert flops > 0 and cells.loc[cell_id, "flops"] == pytest.approx(flops, rel=1e-9)
        assert cells.loc[cell_id, "dollars"] == pytest.approx(dollars, rel=1e-9) and dollars > 0
        assert cells.loc[cell_id, "tokens"] == sum(v[2] for v in by_role.values())
        assert by_role.get("compressor", (0, 0.0, 0))[1] == 0.0  # local compressors cost FLOPs, no dollars
        if "compressor" in by_role:
            assert cells.loc[cell_id, "comp_prompt_tokens"] == int(g[g["role"] == "compressor"]["prompt_tokens"].sum())


def test_planning_failures_of_a_real_model_are_recorded(tmp_path):
    """smollm2 with 6 planning tokens cannot close its JSON: each episode is a recorded planning failure."""
    need_pack("smollm2-135m")
    from harness.analyze.frames import cell_frame
    from harness.research.run import run_research
    from harness.results import load

    cfg = parse_config(_cfg(tmp_path, arms=["predictor-only"], plan_max_new_tokens=8))
    run_research(cfg, quiet=True)
    fr = load(str(tmp_path / "store.db"))
    st = fr["trace_steps"]
    assert list(st["kind"]) == ["plan", "plan"] and st["error"].str.startswith("planning failure").all()
    assert all(json.loads(p)["text"] for p in st["payload_json"])  # the raw reply is kept
    assert fr["predictions"]["error"].str.startswith("planning failure").all() and fr["scores"].empty
    assert len(fr["errors"]) == 2
    c = cell_frame(fr)[0].iloc[0]
    assert c["errors"] == 2 and (c["accuracy"] is None or np.isnan(c["accuracy"]))


def test_kill_9_mid_trace_then_resume(tmp_path):
    """kill -9 after the plan steps are stored and before any answer: the rerun reads those steps back (no plan
    request is sent again: the response cache is off) and finishes the episodes from the first missing step."""
    need_pack("smollm2-135m")
    import yaml

    from harness.research.run import run_research

    d = _cfg(tmp_path, arms=["compressor-predictor"])
    d["output"]["cache"] = None
    d["models"]["compressor"]["batch_size"] = 1  # two compress batches: a longer window to kill in
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(d))
    db = tmp_path / "store.db"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(path), "-q"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    before: list[tuple] = []
    t0 = time.time()
    try:
        while time.time() - t0 < 600 and proc.poll() is None:
            time.sleep(0.05)
            if not db.exists():
                continue
            try:
                with sqlite3.connect(db) as c:
                    rows = c.execute("SELECT step_id, sample_id, step, kind, created_at, error FROM trace_steps "
                                     "ORDER BY step_id").fetchall()
            except sqlite3.OperationalError:
                continue
            kinds = [r[3] for r in rows]
            if kinds.count("plan") == 2 and "answer" not in kinds:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                before = rows
                break
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert before, "the run ended before it could be killed mid-trace"
    assert proc.returncode == -signal.SIGKILL
    with sqlite3.connect(db) as c:  # no answer yet (a sample whose plan failed has its error prediction)
        assert c.execute("SELECT COUNT(*) FROM predictions WHERE error IS NULL").fetchone()[0] == 0
    ok_plans = [r for r in before if r[3] == "plan" and r[5] is None]
    failed_plans = [r for r in before if r[3] == "plan" and r[5] is not None]
    summary = run_research(parse_config(d), quiet=True)
    with sqlite3.connect(db) as c:
        after = c.execute("SELECT step_id, sample_id, step, kind, created_at, error FROM trace_steps").fetchall()
        n_pred = c.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
    kept = {r[0]: r for r in after}
    assert all(kept[r[0]] == r for r in before)  # stored steps untouched
    assert summary["reused_steps"] >= len([r for r in before if r[5] is None])
    answers = sum(1 for r in after if r[3] == "answer")
    # stored plans read back: only the answers are asked, and a failed plan again (an error step is recomputed)
    assert summary["requests"].get("predictor", 0) == answers + len(failed_plans)
    assert answers == len(ok_plans) and n_pred == 2
    for sid in {r[1] for r in after}:
        steps = sorted(r[2] for r in after if r[1] == sid)
        assert steps == list(range(len(steps)))


# ---------------------------------------------------------------- the predictor behind a real llama-cpp-python server


@pytest.mark.server
def test_predictor_as_an_openai_model_behind_llama_cpp_server(llama_server, tmp_path):
    """The predictor is `openai/smollm2` on the real local server (as a user runs it with a frontier API); the
    compressor is local. Every episode ends scored or as a recorded failure, and the trace's predictor steps carry
    the server's token counts."""
    from harness.research.run import run_research
    from harness.results import load

    d = _cfg(tmp_path, arms=["compressor-predictor", "no-retrieval"])
    d["task"]["size"] = 1
    d["models"]["predictor"] = {"model": "openai/smollm2", "base_url": llama_server, "max_concurrency": 2}
    d["prices"] = {"openai/smollm2": {"input_per_million": 1.0, "output_per_million": 4.0}}
    summary = run_research(parse_config(d), quiet=True)
    fr = load(str(tmp_path / "store.db"))
    st = fr["trace_steps"]
    pred = st[st["role"] == "predictor"]
    assert len(pred) >= 2 and (pred["prompt_tokens"] > 0).all() and (pred["dollars"] > 0).all()
    models = fr["models"].set_index("model_id")
    assert set(models.loc[pred["model_id"].astype(int), "backend"]) == {"openai"}
    nr = fr["predictions"][fr["predictions"]["arm"] == "no-retrieval"]
    assert nr["error"].isna().all() and len(fr["scores"]) >= 1
    assert summary["requests"]["predictor"] >= 2
