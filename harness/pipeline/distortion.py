"""Distortion tasks (WildChat, FineWeb): score the reference continuation instead of generating.

For samples with `answer_type == "continuation"` the predictor does not generate. It scores the
reference continuation Y (`sample.answers[0]`) teacher-forced, as the assistant's reply to the same
prompt the QA arms use (`cfg.prompts`: the summary for `compressed`, the context for `full-context`
and `gold-context`, nothing for `no-context`). The score is bits per byte,
−Σ log2 p(y_t | prompt, y_<t) / len(Y.encode("utf-8")), lower is better; the end-of-turn token is not
scored (Y may stop mid-text, as FineWeb's does). With `overflow: truncate` the start of the context or
summary is cut (the text right before Y is kept); the row is flagged `truncated_prompt`.

A failed scoring call is an error for that sample (an `errors` row), never a score; a backend that
cannot score at all (e.g. an OpenAI-compatible server whose echo check refused) makes every remaining
sample an error with that one-line message.
"""

from __future__ import annotations

import math
from typing import Any

from harness.config import RunConfig
from harness.errors import UserError
from harness.metrics import MetricResult, bits_per_byte, mean_with_ci
from harness.pipeline.sinks import ErrorRecord, PredictionRecord, ScoreRecord, Sink
from harness.pipeline.stages import Item, add_usage, chunks, predict_request, prompt_json
from harness.records import GenParams, ScoreResult, Usage
from harness.scoring import reply_request

METRIC = "bits_per_byte"


def is_continuation(it: Item) -> bool:
    return it.sample.answer_type == "continuation"


def score_continuations(backend: Any, items: list[Item], cfg: RunConfig, writer: Sink, usage: dict[str, float],
                        progress: Any = None) -> list[Item]:
    """Score the reference continuation of every error-free, unscored continuation item; returns those items.

    Sets `it.score` (a `MetricResult` named "bits_per_byte", `correct=None`) or `it.error`, writes the
    `predictions` (empty text: nothing was generated), `scores` and `errors` rows, and adds each call's
    usage to `usage` (the predictor's accumulator) and to `it.extra["predictor_usage"]`.
    """
    todo = [it for it in items if is_continuation(it) and not it.error and it.score is None]
    jobs = []
    for it in todo:
        reference = it.sample.answers[0] if it.sample.answers else ""
        if not reference.encode("utf-8"):
            _fail(it, writer, "empty reference continuation; nothing to score")
            continue
        summary = it.compression.text if it.compression is not None else None
        # the continuation takes the place of generated tokens in the context-window check
        params = GenParams(max_new_tokens=max(backend.count_tokens(reference) or 0, 1))
        req, trunc, err = predict_request(KeepTail(backend), cfg.prompts, cfg.overflow, it.arm, it.sample, summary,
                                          params)
        it.prediction_truncated = trunc
        if err:
            _fail(it, writer, err)
        else:
            jobs.append((it, reply_request(req.messages, reference)))

    refused: str | None = None
    for part in chunks(jobs, max(cfg.models.predictor.batch_size, 1) * 2):
        results: list[ScoreResult] = []
        if refused is None:
            try:
                results = backend.score([r for _, r in part])
            except UserError as e:  # cannot score at all (refused scorer, no chat template, ...)
                refused = " ".join(str(e).split())
            except Exception as e:  # a failed call: an error for these samples, never a score
                msg = " ".join(f"{type(e).__name__}: {e}".split())[:500]
                results = [ScoreResult([], [], Usage(), error=msg) for _ in part]
        for k, (it, req) in enumerate(part):
            if refused is not None:
                _fail(it, writer, refused)
            else:
                _record(it, results[k], cfg, writer, usage, prompt_json(req))
        if progress is not None:
            progress.update(len(part))
    return todo


class KeepTail:
    """The backend, except that `truncate_text` keeps the last tokens: with `overflow: truncate` a continuation's
    prompt loses the start of its history or prefix, not the text right before Y."""

    def __init__(self, backend: Any):
        self._backend = backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def truncate_text(self, text: str, n_tokens: int) -> str:
        total = self._backend.count_tokens(text) or 0
        if n_tokens <= 0:
            return ""
        if n_tokens >= total:
            return text
        head = self._backend.truncate_text(text, total - n_tokens)
        if text.startswith(head):
            return text[len(head):].lstrip()
        return text[len(text) - len(text) * n_tokens // total:]  # decoding did not round-trip: cut by characters


def bpb_summary(values: list[float]) -> dict[str, Any]:
    """{"bits_per_byte": mean, "bits_per_byte_ci": [lo, hi]} of per-sample bits per byte (Student-t 95% CI,
    lo clipped at 0; the CI is None for fewer than 2 values, both None for none)."""
    if not values:
        return {"bits_per_byte": None, "bits_per_byte_ci": None}
    m, lo, hi = mean_with_ci(values)
    return {"bits_per_byte": m, "bits_per_byte_ci": None if lo is None else [max(0.0, lo), hi]}


def _fail(it: Item, writer: Sink, error: str) -> None:
    it.error, it.error_stage = error, "predict"
    writer.error(ErrorRecord(it.sample.id, "predict", error, arm=it.arm))


def _record(it: Item, r: ScoreResult, cfg: RunConfig, writer: Sink, usage: dict[str, float],
            prompt: Any = None) -> None:
    reference = it.sample.answers[0]
    add_usage(usage, r.usage)
    it.extra["predictor_usage"] = r.usage
    error = r.error
    if error is None and not r.logprobs:
        error = "the scorer returned no log-probs for the reference continuation"
    if error is None and not math.isfinite(r.total):
        error = f"non-finite log-prob of the reference continuation ({r.total})"
    writer.prediction(PredictionRecord(it.sample.id, it.arm, cfg.models.predictor.model, "", r.usage,
                                       it.prediction_truncated, error, kind="score-reference", prompt=prompt))
    if error is not None:
        _fail(it, writer, error)
        return
    n_bytes = len(reference.encode("utf-8"))
    bpb = bits_per_byte(r.total, reference)
    detail = {"n_tokens": len(r.logprobs), "total_nats": r.total, "bytes": n_bytes,
              "bits_per_token": -r.total / math.log(2) / len(r.logprobs), "end_of_turn_scored": False,
              "truncated_prompt": it.prediction_truncated}
    it.score = MetricResult(METRIC, bpb, None, None, (), detail)
    writer.score(ScoreRecord(it.sample.id, it.arm, it.score))
