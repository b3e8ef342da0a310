"""Distortion tasks end to end: the predictor scores the reference continuation (bits per byte), and every
config in configs/ parses and runs on tiny local files in the upstream format."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from harness.backends.openai import ScoringRefused
from harness.config import load_config
from harness.pipeline.distortion import score_continuations
from harness.pipeline.record import Recorder
from harness.pipeline.run import format_table, run
from harness.pipeline.stages import Item
from harness.prompts import render
from harness.records import ScoreRequest, ScoreResult, Usage
from harness.tasks import load_task
from tests.conftest import REPO, need_pack
from tests.test_tasks_hub import (
    _dpr_rows,
    _hotpot_upstream,
    _longhealth,
    _qasper_hub_row,
    _qasper_papers,
    _write_json,
    _write_jsonl,
)

SMOL = "gguf/smollm2-135m"
ARMS = ["compressed", "full-context", "no-context"]


@pytest.fixture(autouse=True)
def _offline_datasets(offline_datasets: None) -> None:
    """Every test here reads local files only (see conftest.offline_datasets)."""


def _msg(role: str, content: str) -> dict[str, Any]:
    return {"role": role, "content": content}


def _wildchat_file(tmp_path: Path) -> str:
    rows = [
        {"conversation_hash": "w1", "language": "English", "toxic": False,
         "conversation": [_msg("user", "What is the capital of France?"),
                          _msg("assistant", "The capital of France is Paris."),
                          _msg("user", "And the capital of Italy?"),
                          _msg("assistant", "The capital of Italy is Rome.")]},
        {"conversation_hash": "w2", "language": "English", "toxic": False,
         "conversation": [_msg("user", "Name three primary colours."),
                          _msg("assistant", "Red, yellow and blue — café colours, too.")]},
    ]
    return _write_jsonl(tmp_path / "wildchat-train.jsonl", rows)


# a word sequence the model cannot guess without the prefix, repeated: with the prefix it is copyable
_RARE = ("violet anchor seventeen marble quietly harbour lantern oxide tundra pepper velvet comet "
         "saddle quartz meadow ripple falcon ember cobalt thimble")


def _fineweb_file(tmp_path: Path) -> str:
    rows = [
        {"id": "repeat", "url": "http://a", "text": f"{_RARE}\n{_RARE}"},
        {"id": "prose", "text": "The museum opened in 1901 and was rebuilt after the fire of 1923. Its collection "
                                "grew quickly, with paintings, maps and old coins donated by local families who "
                                "wanted the town's history kept in one place for everyone to see."},
    ]
    return _write_jsonl(tmp_path / "fineweb-train.jsonl", rows)


def _out(tmp_path: Path) -> dict[str, Any]:
    return {"dir": str(tmp_path / "out"), "cache": str(tmp_path / "cache.sqlite"), "store": str(tmp_path / "store.db")}


def _jsonl(folder: Path, kind: str) -> list[dict[str, Any]]:
    f = folder / f"{kind}.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []


FINEWEB_OPTIONS = {"prefix_tokens": 20, "continuation_tokens": 12}


def _distortion_cfg(tmp_path: Path, task: str, path: str):
    opts = {"path": path, **(FINEWEB_OPTIONS if task == "fineweb" else {})}
    return load_config(REPO / "configs" / f"{task}.yaml", {
        "task": {"size": 2, "options": opts},
        # float32 pinned: the bits per byte are checked against the float32 `smollm2` fixture to 1e-3
        "models": {"compressor": {"model": SMOL, "dtype": "float32"}, "predictor": {"model": SMOL, "dtype": "float32"}},
        "arms": ARMS,
        "generation": {"compressor": {"max_new_tokens": 8}},
        "output": _out(tmp_path),
    })


@pytest.mark.parametrize("task", ["wildchat", "fineweb"])
def test_distortion_run_scores_reference_bits_per_byte(tmp_path: Path, task: str, smollm2) -> None:
    need_pack("smollm2-135m")
    path = _wildchat_file(tmp_path) if task == "wildchat" else _fineweb_file(tmp_path)
    cfg = _distortion_cfg(tmp_path, task, path)
    s = run(cfg, quiet=True)
    folder = Path(s["run_dir"])
    rows = {r["arm"]: r for r in s["rows"]}
    assert set(rows) == set(ARMS)
    for r in rows.values():
        assert r["errors"] == 0 and r["scored"] == 2 and r["accuracy"] is None
        assert r["bits_per_byte"] > 0 and len(r["bits_per_byte_ci"]) == 2
        assert r["predictor_usage"]["calls"] == 2 and r["predictor_usage"]["completion_tokens"] == 0
    assert not _jsonl(folder, "errors")

    samples = {x.id: x for x in load_task(cfg.task.name, size=2, options=cfg.task.options)}
    scores = _jsonl(folder, "scores")
    assert len(scores) == 6 and {x["metric"] for x in scores} == {"bits_per_byte"}
    for x in scores:
        ref = samples[x["sample_id"]].answers[0]
        d = x["detail"]
        assert x["correct"] is None and math.isfinite(x["value"]) and x["value"] > 0
        assert d["bytes"] == len(ref.encode("utf-8")) and d["n_tokens"] > 0 and d["total_nats"] < 0
        assert x["value"] == pytest.approx(-d["total_nats"] / math.log(2) / d["bytes"], rel=1e-12)
    for arm, r in rows.items():  # the table's mean is the mean of the rows
        vals = [x["value"] for x in scores if x["arm"] == arm]
        assert r["bits_per_byte"] == pytest.approx(sum(vals) / len(vals))
    preds = _jsonl(folder, "predictions")  # nothing generated: the predictor only scored
    assert len(preds) == 6 and all(p["text"] == "" and p["error"] is None for p in preds)

    # the value equals −Σ log2 p / bytes from an independent score call on a separate backend
    sid = sorted(samples)[0]
    smp = samples[sid]
    msgs = render(cfg.prompts.full_context, question=smp.question, context=smp.context, choices="")
    req = ScoreRequest(messages=tuple((m["role"], m["content"]) for m in msgs), continuation=smp.answers[0])
    (res,) = smollm2.score([req])
    expect = -sum(res.logprobs) / math.log(2) / len(smp.answers[0].encode("utf-8"))
    got = next(x for x in scores if x["sample_id"] == sid and x["arm"] == "full-context")
    assert got["value"] == pytest.approx(expect, rel=1e-3)
    assert got["detail"]["n_tokens"] == len(res.logprobs)

    table = format_table(s)
    assert "bpb " in table and "lower is better" in table and (folder / "table.md").read_text() == table
    # the rows reach the store, linked to predictions
    from harness import results

    view = results.load(cfg.output.store)["predictions_scored"]
    assert len(view) == 6 and set(view["metric"]) == {"bits_per_byte"}

    if task == "fineweb":  # a repeated rare-word sequence is copyable from the prefix, not guessable without it
        by = {(x["sample_id"], x["arm"]): x["value"] for x in scores}
        assert by[("repeat", "full-context")] < by[("repeat", "no-context")]

    again = run(cfg, quiet=True)  # scoring goes through the response cache too
    assert again["model_loads"] == 0 and again["model_calls"] == 0
    assert [r["bits_per_byte"] for r in again["rows"]] == [r["bits_per_byte"] for r in s["rows"]]


# ----------------------------------------------------------------------------- failures are errors, never scores


class _StubScorer:
    """A backend that scores by calling `fn` and cannot count tokens."""

    context_window = None

    def __init__(self, fn):
        self.fn = fn
        self.calls = 0

    def count_tokens(self, text: str) -> None:
        return None

    def count_prompt_tokens(self, request: Any) -> None:
        return None

    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        self.calls += 1
        return self.fn(requests)


def _refuse(_reqs):
    raise ScoringRefused("openai/x: the server's prompt log-probs disagree with its own generation log-probs; "
                         "refusing to use it as a scorer")


def _crash(_reqs):
    raise RuntimeError("device lost\nsecond line")


@pytest.mark.parametrize(("fn", "expect"), [
    (_refuse, "openai/x: the server's prompt log-probs disagree"),
    (_crash, "RuntimeError: device lost second line"),
    (lambda reqs: [ScoreResult([], [], Usage(), error="HTTP 500 after 4 retries") for _ in reqs],
     "HTTP 500 after 4 retries"),
    (lambda reqs: [ScoreResult([1], [-math.inf], Usage()) for _ in reqs], "non-finite log-prob"),
])
def test_failed_scoring_is_an_error_never_a_score(tmp_path: Path, fn, expect: str) -> None:
    cfg = load_config(REPO / "configs" / "fineweb.yaml", {
        "task": {"options": {"path": _fineweb_file(tmp_path), **FINEWEB_OPTIONS}},
        "models": {"predictor": {"batch_size": 1}},  # chunks of 2: a refusal stops after the first call
        "output": _out(tmp_path)})
    samples = load_task("fineweb", options=cfg.task.options) * 2
    items = [Item(s, "no-context") for s in samples]
    folder = tmp_path / "rows"
    writer = Recorder(folder)
    be = _StubScorer(fn)
    done = score_continuations(be, items, cfg, writer, {})
    writer.close()
    assert done == items
    assert all(it.score is None and it.error and expect in it.error and "\n" not in it.error for it in items)
    errs = _jsonl(folder, "errors")
    assert len(errs) == 4 and all(e["stage"] == "predict" and expect in e["error"] for e in errs)
    assert not _jsonl(folder, "scores")
    if fn is _refuse:
        assert be.calls == 1


def test_scoring_off_server_is_a_one_line_error_in_the_run(tmp_path: Path) -> None:
    """A predictor that cannot score: every sample is an error with the backend's one-line reason; no scores."""
    cfg = load_config(REPO / "configs" / "fineweb.yaml", {
        "task": {"size": 2, "options": {"path": _fineweb_file(tmp_path), **FINEWEB_OPTIONS}},
        "models": {"predictor": {"model": "openai/some-model", "base_url": "http://127.0.0.1:9/v1",
                                 "scoring": "off"}},
        "arms": ["no-context"], "output": _out(tmp_path)})
    s = run(cfg, quiet=True)
    (row,) = s["rows"]
    assert row["errors"] == 2 and row["scored"] == 0 and row["bits_per_byte"] is None
    errs = _jsonl(Path(s["run_dir"]), "errors")
    assert [e["error"] for e in errs] == ["openai/some-model: scoring is off for this model; set scoring: echo to "
                                          "enable"] * 2
    assert "| no-context |" in format_table(s)


# ----------------------------------------------------------------------------- configs


CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_parses(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.arms and cfg.models.predictor.model


def _financebench_rows() -> list[dict[str, Any]]:
    page = "Revenue was 10. Costs were 4. Net income was 6."
    ev = {"evidence_text": "Net income was 6.", "doc_name": "ACME_2022_10K", "evidence_page_num": 3,
          "evidence_text_full_page": page}
    row = {"financebench_id": "fb1", "company": "Acme", "doc_name": "ACME_2022_10K", "question": "Net income?",
           "answer": "6", "evidence": [ev]}
    return [row, {**row, "financebench_id": "fb2", "question": "Costs?", "answer": "4",
                  "evidence": [{**ev, "evidence_text": "Costs were 4."}]}]


def _local_file(task: str, tmp_path: Path) -> str:
    """A tiny local file in the task's upstream format."""
    if task == "longhealth":
        return _write_json(tmp_path / "benchmark_v5.json", _longhealth(tmp_path))
    if task == "qasper":
        return _write_jsonl(tmp_path / "qasper-test.jsonl", [_qasper_hub_row(p) for p in _qasper_papers()])
    if task == "hotpotqa":
        return _write_json(tmp_path / "hotpot_dev_distractor_v1.json", _hotpot_upstream())
    if task in ("nq-open", "triviaqa"):
        return _write_json(tmp_path / "retrieved.json", _dpr_rows())
    if task == "financebench":
        return _write_jsonl(tmp_path / "financebench_open_source.jsonl", _financebench_rows())
    if task == "wildchat":
        return _wildchat_file(tmp_path)
    assert task == "fineweb"
    return _fineweb_file(tmp_path)


HUB_TASKS = ["longhealth", "qasper", "hotpotqa", "nq-open", "triviaqa", "financebench", "wildchat", "fineweb"]


@pytest.mark.parametrize("task", HUB_TASKS)
def test_hub_task_config_runs_on_a_local_file(tmp_path: Path, task: str, capsys: pytest.CaptureFixture) -> None:
    """`harness run configs/<task>.yaml --set task.options.path=<local upstream file>` on 2 samples."""
    need_pack("smollm2-135m")
    from harness.cli import main

    sets = {"task.size": 2, "task.options.path": _local_file(task, tmp_path), "arms": "[no-context]",
            "models.compressor.model": SMOL, "models.predictor.model": SMOL,
            "generation.predictor.max_new_tokens": 4, "output.dir": str(tmp_path / "out"),
            "output.cache": str(tmp_path / "cache.sqlite"), "output.store": str(tmp_path / "store.db")}
    if task == "fineweb":
        sets |= {f"task.options.{k}": v for k, v in FINEWEB_OPTIONS.items()}
    argv = ["run", str(REPO / "configs" / f"{task}.yaml"), "-q"]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    (summary_file,) = (tmp_path / "out").glob("*/summary.json")
    (row,) = json.loads(summary_file.read_text())["rows"]
    assert row["n"] == 2 and row["errors"] == 0 and row["scored"] == 2
    if task in ("wildchat", "fineweb"):
        assert row["bits_per_byte"] > 0 and "bpb " in out
    else:
        assert row["accuracy"] is not None and "bpb" not in out


def test_mean_ci_and_bpb_summary() -> None:
    from scipy import stats

    from harness.metrics import mean_with_ci
    from harness.pipeline.distortion import bpb_summary

    vals = [1.2, 0.9, 1.5, 1.1]
    m, lo, hi = mean_with_ci(vals)
    ref = stats.t.interval(0.95, len(vals) - 1, loc=stats.tmean(vals), scale=stats.sem(vals))
    assert m == pytest.approx(1.175) and (lo, hi) == pytest.approx(ref)
    assert mean_with_ci([2.0]) == (2.0, None, None)
    with pytest.raises(ValueError):
        mean_with_ci([])
    assert bpb_summary([]) == {"bits_per_byte": None, "bits_per_byte_ci": None}
    wide = bpb_summary([0.1, 3.0])
    assert wide["bits_per_byte_ci"][0] == 0.0 and wide["bits_per_byte_ci"][1] > 3.0  # bpb ≥ 0: lo clipped


def test_truncation_keeps_the_text_before_the_continuation(smollm2) -> None:
    """With overflow: truncate a continuation prompt loses the start of its context, not its end."""
    from harness.pipeline.distortion import KeepTail
    from harness.pipeline.stages import fit_request
    from harness.records import GenParams, GenRequest

    text = " ".join(f"word{i}" for i in range(200))
    be = KeepTail(smollm2)
    tail = be.truncate_text(text, 20)
    assert text.endswith(tail) and "word199" in tail and "word0 " not in tail
    assert abs(smollm2.count_tokens(tail) - 20) <= 2
    be.context_window = 120  # shadows the model's window on the wrapper only

    def build(t: str) -> GenRequest:
        return GenRequest.chat([{"role": "user", "content": f"Document so far:\n{t}\n\nContinue."}],
                               GenParams(max_new_tokens=10))

    req, truncated, err = fit_request(be, build, text, "truncate")
    assert err is None and truncated
    body = req.messages[0][1]
    assert "word199\n\nContinue." in body and "word0 " not in body
    assert smollm2.count_prompt_tokens(req) + 10 <= 120
