"""Deep-Research mode, more: readable frontier-plot labels, the judge role in a research run, and OpenAI tool calls
as the planning protocol (against the real llama-cpp-python server).

Model tests use real small models (smollm2-135m in float32); fakes are named in each test's docstring.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from harness.analyze.research import frontier_plot, label_boxes
from harness.config import parse_config
from tests.conftest import need_pack

# ---------------------------------------------------------------- frontier plot labels (pure)


def _overlaps(ll: np.ndarray, sizes: np.ndarray) -> list[tuple[int, int]]:
    out = []
    for i in range(len(ll)):
        for j in range(i + 1, len(ll)):
            a0, a1, b0, b1 = ll[i], ll[i] + sizes[i], ll[j], ll[j] + sizes[j]
            if a0[0] < b1[0] and b0[0] < a1[0] and a0[1] < b1[1] and b0[1] < a1[1]:
                out.append((i, j))
    return out


def test_labels_of_coincident_points_do_not_overlap():
    """Three cells sharing one cost and accuracy (as smollm2, 0.5b and predictor-only did) and a near neighbour:
    every label box is apart from every other, and the placement is deterministic."""
    anchors = np.array([[100.0, 50.0], [100.0, 50.0], [100.0, 50.0], [103.0, 52.0], [300.0, 200.0]])
    sizes = np.array([[60.0, 10.0], [80.0, 10.0], [55.0, 10.0], [40.0, 10.0], [30.0, 10.0]])
    ll = label_boxes(anchors, sizes)
    assert _overlaps(ll, sizes) == []
    assert np.array_equal(ll, label_boxes(anchors, sizes))
    assert np.allclose(ll[4], anchors[4] + 4.0)  # a lone point keeps the plain offset
    near_top = label_boxes(anchors, sizes, bounds=(0.0, 0.0, 400.0, 75.0))  # the axes end just above the points
    assert _overlaps(near_top, sizes) == [] and (near_top[:4, 1] + sizes[:4, 1] <= 75.0).all()
    right = label_boxes(anchors[:3], sizes[:3], bounds=(0.0, 0.0, 150.0, 400.0))  # no room on the right: left
    assert _overlaps(right, sizes[:3]) == [] and (right[:, 0] + sizes[:3, 0] <= 100.0).all()


def test_frontier_plot_labels_of_coincident_cells_do_not_overlap(tmp_path: Path):
    """The rendered plot: the label boxes of three cells at one point do not overlap in either panel."""
    rows = [dict(arm=arm, compressor=comp, accuracy=1 / 3, acc_lo=0.0, acc_hi=0.8, samples=3, predictor_dollars=0.006,
                 predictor_flops=1.5e11, compressor_flops=None)
            for arm, comp in (("compressor-predictor", "gguf/smollm2-135m"),
                              ("compressor-predictor", "gguf/qwen2.5-coder-0.5b"), ("predictor-only", None))]
    import matplotlib.figure

    seen = []
    orig = matplotlib.figure.Figure.savefig

    def spy(fig, *a, **kw):  # measure the labels as drawn, then save as usual
        r = fig.canvas.get_renderer()
        for ax in fig.axes:
            seen.append([t.get_window_extent(r) for t in ax.texts if t.get_text()])
        return orig(fig, *a, **kw)

    matplotlib.figure.Figure.savefig = spy
    try:
        files = frontier_plot(pd.DataFrame(rows), tmp_path / "f.png")
    finally:
        matplotlib.figure.Figure.savefig = orig
    assert files and files[0].stat().st_size > 0
    assert seen and all(len(b) == 3 for b in seen)
    for boxes in seen:
        ll = np.array([[b.x0, b.y0] for b in boxes])
        sz = np.array([[b.width, b.height] for b in boxes])
        assert _overlaps(ll, sz) == []


# ---------------------------------------------------------------- the judge role in a research run (real smollm2)


def _fb_file(tmp: Path) -> str:
    """Two FinanceBench rows with free-text answers (the judge's samples), in the upstream jsonl format."""
    page = "Acme sells freight services in Ohio. Its main risk is fuel prices. Revenue rose on new contracts."
    rows = []
    for rid, q, a, ev in (("fb1", "What is Acme's main risk?", "Fuel prices", "Its main risk is fuel prices."),
                          ("fb2", "Why did Acme's revenue rise?", "New contracts", "Revenue rose on new contracts.")):
        rows.append({"financebench_id": rid, "company": "Acme", "doc_name": "ACME_2022_10K", "question": q,
                     "answer": a, "evidence": [{"evidence_text": ev, "doc_name": "ACME_2022_10K",
                                                "evidence_page_num": 3, "evidence_text_full_page": page}]})
    p = tmp / "financebench_open_source.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def _judge_cfg(tmp: Path, judge: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "research-judge",
        "task": {"name": "financebench", "size": 2, "seed": 0, "options": {"path": _fb_file(tmp), "subset": "text"}},
        "models": {"predictor": {"model": "gguf/smollm2-135m", "dtype": "float32", "batch_size": 4},
                   "judge": judge},
        "research": {"arms": ["no-retrieval", "oracle-evidence"]},
        "generation": {"predictor": {"max_new_tokens": 8}},
        "overflow": "truncate",
        "prices": {"gguf/smollm2-135m": {"input_per_million": 1.0, "output_per_million": 4.0}},
        "output": {"dir": str(tmp / "out"), "cache": str(tmp / "cache.sqlite"), "store": str(tmp / "store.db")},
    }


def test_judge_scores_research_answers_and_its_cost_is_its_roles(tmp_path: Path):
    """A research run on free-text FinanceBench answers with `models.judge` (real smollm2, float32): every answer
    gets a `judge` score (the counted metric), one judge usage row per prediction under the judge's model, and the
    research rows count the judge's tokens, FLOPs and dollars as their own role (not the predictor's)."""
    need_pack("smollm2-135m")
    from harness.analyze.frames import prediction_frame
    from harness.analyze.research import research_frames
    from harness.research.run import run_research
    from harness.results import load

    judge = {"model": "gguf/smollm2-135m", "dtype": "float32", "batch_size": 4}
    summary = run_research(parse_config(_judge_cfg(tmp_path, judge)), quiet=True)
    assert "judge tok in/out" in summary["table"]
    fr = load(str(tmp_path / "store.db"))
    preds = fr["predictions"]
    assert len(preds) == 4 and preds["error"].isna().all()
    sc = fr["scores"]
    assert sorted(sc["prediction_id"]) == sorted(preds["prediction_id"]) and set(sc["metric"]) == {"judge"}
    pf = prediction_frame(fr)
    assert set(pf["metric"]) == {"judge"} and (pf["status"] == "ok").all()
    u = fr["usage"]
    ju = u[u["call_kind"] == "judge"]
    assert sorted(ju["ref_id"]) == sorted(preds["prediction_id"]) and (ju["prompt_tokens"] > 0).all()
    models = fr["models"].set_index("model_id")
    assert ju["model_id"].notna().all() and set(models.loc[ju["model_id"].astype(int), "name"]) == {"smollm2-135m"}
    assert (ju["flops"] > 0).all() and (ju["dollars"] > 0).all()
    cells, _ = research_frames(fr)
    for r in cells.itertuples():
        mine = ju[ju["ref_id"].isin(preds[preds["cell_id"] == r.cell_id]["prediction_id"])]
        assert r.judge_prompt_tokens == int(mine["prompt_tokens"].sum())
        assert r.judge_flops == pytest.approx(float(mine["flops"].sum()))
        assert r.judge_dollars == pytest.approx(float(mine["dollars"].sum()))
        pu = u[(u["call_kind"] == "predict") & u["ref_id"].isin(preds[preds["cell_id"] == r.cell_id]["prediction_id"])]
        assert r.predictor_prompt_tokens == int(pu["prompt_tokens"].sum())  # the judge is not the predictor's cost


class _Fail500(BaseHTTPRequestHandler):
    """A fake OpenAI-compatible server that answers every request with HTTP 500 (fault injection)."""

    def log_message(self, *a: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": {"message": "injected judge failure"}}')


def test_a_failed_judge_call_is_an_error_not_a_wrong_answer(tmp_path: Path):
    """The judge is an `openai/` spec pointing at a local fake server that returns 500 to every call (fault
    injection; the predictor is real smollm2): each answer is stored, gets no score, and an error row of stage
    score names the judge; the cell counts it as an error (status error, stage score), never as wrong."""
    need_pack("smollm2-135m")
    from harness.analyze.frames import cell_frame, prediction_frame
    from harness.research.run import run_research
    from harness.results import load

    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Fail500)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        judge = {"model": "openai/judge", "base_url": f"http://127.0.0.1:{srv.server_address[1]}/v1",
                 "max_retries": 0}
        run_research(parse_config(_judge_cfg(tmp_path, judge)), quiet=True)
    finally:
        srv.shutdown()
    fr = load(str(tmp_path / "store.db"))
    preds = fr["predictions"]
    assert len(preds) == 4 and preds["error"].isna().all() and (preds["text"].str.len() > 0).all()
    assert fr["scores"].empty
    err = fr["errors"]
    assert len(err) == 4 and set(err["stage"]) == {"score"} and err["message"].str.startswith("judge: ").all()
    assert err["message"].str.contains("500|InternalServerError").all()
    assert set(err["ref_id"]) == set(preds["cell_id"])  # tied to the cell the answer belongs to
    pf = prediction_frame(fr)
    assert (pf["status"] == "error").all() and set(pf["error_stage"]) == {"score"}
    cells = cell_frame(fr)[0]
    assert (cells["errors"] == 2).all() and cells["accuracy"].isna().all()


# ---------------------------------------------------------------- planning by OpenAI tool calls (research.protocol)

#: research cell ids of `_ids_cfg` written by the harness before `research.protocol` existed (commit e891882)
OLD_RESEARCH_IDS = {"compressor-predictor": "research-f1de121f04/compressor-predictor/9bf2e3b5",
                    "predictor-only": "research-f1de121f04/predictor-only",
                    "no-retrieval": "research-f1de121f04/no-retrieval",
                    "oracle-evidence": "research-f1de121f04/oracle-evidence"}


def _ids_cfg(**research: Any) -> dict[str, Any]:
    return {"name": "ids", "task": {"name": "synthetic-multidoc", "size": 2, "seed": 0, "options": {"n_templates": 8}},
            "models": {"predictor": {"model": "openai/smollm2", "base_url": "http://127.0.0.1:1/v1"},
                       "compressor": {"model": "gguf/smollm2-135m", "dtype": "float32"}},
            "research": {"top_k": 2, "max_subqueries": 2, "rounds": 2, **research}, "output": {"store": "x.db"}}


def test_protocol_stays_out_of_cell_ids_while_unset():
    """Cell ids are those an older harness stored, with `protocol` unset or json; `tools` makes new cells."""
    from harness.research.run import plan_cells

    def ids(**kw: Any) -> dict[str, str]:
        return {c.arm: c.cell_id for c in plan_cells(parse_config(_ids_cfg(**kw)))}

    assert ids() == OLD_RESEARCH_IDS == ids(protocol="json")
    assert not set(ids(protocol="tools").values()) & set(OLD_RESEARCH_IDS.values())
    assert "protocol" not in parse_config(_ids_cfg()).research.model_dump(mode="json")


def test_tools_protocol_on_a_local_predictor_is_one_config_error(tmp_path: Path, capsys: pytest.CaptureFixture):
    """A gguf/ predictor cannot take tool calls: `harness run` exits 2 with one line naming research.protocol,
    before any model loads."""
    import yaml

    from harness.cli import main

    d = _ids_cfg(protocol="tools")
    d["models"]["predictor"] = {"model": "gguf/smollm2-135m"}
    d["output"] = {"dir": str(tmp_path / "out"), "store": str(tmp_path / "s.db")}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(d))
    assert main(["run", str(p), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "research.protocol: tools" in err[0] and "gguf/" in err[0]
    assert not (tmp_path / "s.db").exists()


class _ToolReplies:
    """A fake backend (fault injection, not a model): each reply is a Generation with the given tool calls; records
    every request."""

    def __init__(self, calls: list[list[dict[str, str]] | None]):
        self.calls, self.seen = list(calls), []

    def generate(self, reqs: list[Any]) -> list[Any]:
        from harness.records import Generation, Usage

        self.seen += reqs
        return [Generation("", [], None, Usage(10, 5, 0.01), "tool_calls", tool_calls=self.calls.pop(0))
                for _ in reqs]

    def close(self) -> None:
        pass


def test_a_reply_without_a_tool_call_or_with_bad_arguments_is_a_planning_failure():
    """Scripted tool replies (fault injection): no tool call, another tool, arguments that are not the plan: each is
    a recorded planning failure with the raw reply in the trace, never a guess; a good call is parsed like JSON."""
    from harness.config import Prompts
    from harness.records import Document, GenParams, Sample
    from harness.research.driver import drive
    from harness.research.episode import Context, Trace, episode
    from harness.research.protocol import PLAN_TOOL
    from harness.research.search import SearchTool

    s = Sample("s0", "In which town was the founder of Acme Logistics born?",
               (Document("d1", "Acme Logistics was founded by Clara Mensah.", "Acme", is_gold=True),), ("Brinmoor",))
    gp = GenParams(max_new_tokens=8)
    ctx = Context(arm="predictor-only", search=SearchTool(list(s.documents)), prompts=Prompts(), top_k=1,
                  max_subqueries=2, rounds=1, plan_params=gp, answer_params=gp, compress_params=gp, protocol="tools")
    cases = [(None, "reply has no tool call"), ([{"name": "search", "arguments": "{}"}], "calls tool 'search'"),
             ([{"name": "plan", "arguments": '{"subqueries": [{"query": "founder'}], "not JSON"),
             ([{"name": "plan", "arguments": '{"subqueries": [], "done": false}'}], "no non-empty 'subqueries'")]
    for calls, why in cases:
        be, tr, outs = _ToolReplies([calls]), Trace("c", s.id), []
        drive([(episode(ctx, s, tr), outs.append)], {"predictor": be})
        (req,) = be.seen
        tool = json.loads(req.tool)
        assert tool["name"] == PLAN_TOOL["name"] and "plan tool" in req.messages[0][1]
        assert tool["parameters"]["properties"]["subqueries"]["maxItems"] == 2  # max_subqueries
        assert outs[0].answer is None and outs[0].error.startswith("planning failure (plan, round 0)")
        assert why in outs[0].error and [st["kind"] for st in tr.steps] == ["plan"]
        assert tr.steps[0]["payload"]["protocol"] == "tools" and tr.steps[0]["payload"].get("tool_calls") == calls
    good = [{"name": "plan", "arguments": '{"subqueries": [{"query": "founder of Acme", "subtask": "who"}], '
                                          '"done": false}'}]
    be, tr, outs = _ToolReplies([good, None]), Trace("c", s.id), []
    drive([(episode(ctx, s, tr), outs.append)], {"predictor": be})
    assert outs[0].error is None and [st["kind"] for st in tr.steps] == ["plan", "search", "answer"]
    assert tr.steps[0]["payload"]["subqueries"] == [{"query": "founder of Acme", "subtask": "who"}]
    assert be.seen[1].tool is None  # the answer is text


@pytest.mark.server
def test_tools_protocol_against_the_real_llama_cpp_server(llama_server: str, tmp_path: Path):
    """`research.protocol: tools` with `openai/smollm2` on the real llama-cpp-python server, which constrains a forced
    tool call to the tool's JSON schema: each plan is a call of `plan` whose arguments parse (subqueries searched,
    answered); the trace payload records the protocol and the raw call. With 8 planning tokens the call is cut
    mid-JSON: a recorded planning failure, no guess."""
    from harness.research.protocol import parse_plan
    from harness.research.run import run_research
    from harness.results import load

    def cfg(sub: str, **research: Any) -> dict[str, Any]:
        (tmp_path / sub).mkdir()
        d = _ids_cfg(**{"protocol": "tools", "arms": ["predictor-only"], "rounds": 1, "plan_max_new_tokens": 160,
                        **research})
        d["task"]["options"] |= {"context_tokens": 120, "n_distractors": 2}
        d["models"] = {"predictor": {"model": "openai/smollm2", "base_url": llama_server, "max_concurrency": 2}}
        d["generation"] = {"predictor": {"max_new_tokens": 12}}
        d["overflow"] = "truncate"
        d["output"] = {"dir": str(tmp_path / sub / "out"), "cache": None, "store": str(tmp_path / sub / "s.db")}
        return d

    run_research(parse_config(cfg("ok")), quiet=True)
    fr = load(str(tmp_path / "ok" / "s.db"))
    st = fr["trace_steps"]
    plans = st[st["kind"] == "plan"]
    assert len(plans) == 2 and plans["error"].isna().all()
    for pj in plans["payload_json"]:
        pay = json.loads(pj)
        assert pay["protocol"] == "tools" and pay["tool_calls"][0]["name"] == "plan"
        parsed = parse_plan(pay["tool_calls"][0]["arguments"], 2)
        assert pay["subqueries"] == [{"query": q.query, "subtask": q.subtask} for q in parsed.subqueries]
    assert (st["kind"] == "search").sum() >= 2 and (st["kind"] == "answer").sum() == 2
    assert fr["predictions"]["error"].isna().all()

    run_research(parse_config(cfg("cut", plan_max_new_tokens=8)), quiet=True)
    fr = load(str(tmp_path / "cut" / "s.db"))
    st = fr["trace_steps"]
    assert list(st["kind"]) == ["plan", "plan"] and st["error"].str.startswith("planning failure (plan").all()
    assert all(json.loads(p)["tool_calls"] for p in st["payload_json"])  # the cut call is kept
    assert fr["predictions"]["error"].str.startswith("planning failure").all() and fr["scores"].empty
