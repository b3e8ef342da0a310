"""Stages of a run: compress, then predict each arm, then score. One model in memory at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from harness.records import Generation, GenParams, GenRequest, Sample, Usage


@dataclass
class Item:
    """One (sample, arm) unit of work moving through the stages."""

    sample: Sample
    arm: str
    context_tokens: int | None = None
    compression: Generation | None = None
    compression_truncated: bool = False
    prediction: Generation | None = None
    prediction_truncated: bool = False
    error: str | None = None
    error_stage: str | None = None
    score: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def chunks(xs: list, n: int) -> Iterator[list]:
    for i in range(0, len(xs), n):
        yield xs[i : i + n]


def fit_request(
    backend: Any, build: Callable[[str], GenRequest], text: str, policy: str
) -> tuple[GenRequest | None, bool, str | None]:
    """Build a request and make it fit the backend's context window.

    Returns (request, truncated, error). With policy "error" an oversized prompt is an
    error; with "truncate" the variable text is cut from the end and the row is flagged.
    """
    req = build(text)
    window = backend.context_window
    n = backend.count_prompt_tokens(req)
    if window is None or n is None:
        return req, False, None  # cannot tell locally; the server reports overflow as an error
    need = n + req.params.max_new_tokens
    if need <= window:
        return req, False, None
    if policy == "error":
        return (
            None,
            False,
            (
                f"context overflow: prompt {n} + max_new_tokens {req.params.max_new_tokens} tokens "
                f"> context window {window}"
            ),
        )
    excess = need - window
    text_tokens = backend.count_tokens(text) or 0
    keep = text_tokens - excess
    for _ in range(4):  # re-tokenising the cut text can shift a few tokens: re-check and cut more
        if keep <= 0:
            return None, False, f"context overflow: prompt {n} tokens cannot be truncated to fit window {window}"
        req = build(backend.truncate_text(text, keep))
        over = backend.count_prompt_tokens(req) + req.params.max_new_tokens - window
        if over <= 0:
            return req, True, None
        keep -= over + 2
    return None, False, f"context overflow: could not truncate the prompt to fit window {window}"


def predict_request(backend: Any, prompts: Any, overflow: str, arm: str, sample: Sample, summary: str | None,
                    params: GenParams) -> tuple[GenRequest | None, bool, str | None]:
    """The predictor's request for one (sample, arm), fitted to its window: (request, truncated, error).

    `summary` is the compression the compressed arm reads; the other arms read the context (or nothing). The one
    place `harness run` and `harness sweep` build a predictor request (prompts: `harness.prompts.arm_input`).
    """
    from harness.prompts import arm_input, arm_messages

    text, tmpl, key = arm_input(prompts, arm, sample, summary)

    def build(t: str) -> GenRequest:
        return GenRequest.chat(arm_messages(tmpl, key, sample, t), params)

    return fit_request(backend, build, text, overflow)


def prompt_json(x: Any) -> dict[str, Any]:
    """What a model or compressor was given, for the store's `prompt_json`: a generate or score request's chat
    messages (or raw prompt), or for a compressor input without a request (`python/`, `filter/`) its question and
    context."""
    req = x if hasattr(x, "messages") else getattr(x, "request", None)  # a GenRequest or ScoreRequest
    if req is None:
        return {"question": x.sample.question, "context": x.context}
    if req.messages:
        return {"messages": [{"role": r, "content": c} for r, c in req.messages]}
    return {"prompt": getattr(req, "prompt", None) or getattr(req, "prefix", None)}


def progress_bar(total: int, desc: str, quiet: bool, leave: bool = True) -> Any:
    """A tqdm bar on stderr (counts, elapsed and remaining time, "stage k/n" and the run's ETA inside
    `harness.progress.run_progress`) that backends move per finished request; off when `quiet` or not a TTY."""
    from harness.progress import StageBar

    return StageBar(total, desc, quiet, leave=leave)


def run_generation_stage(
    backend: Any,
    jobs: list[tuple[Item, GenRequest]],
    on_done: Callable[[Item, Generation], None],
    chunk: int = 8,
    progress: Any = None,
) -> None:
    """Send requests in chunks; call `on_done` as each chunk finishes (results are written as work finishes)."""
    for part in chunks(jobs, chunk):
        gens = backend.generate([r for _, r in part])
        for (item, _), g in zip(part, gens, strict=True):
            on_done(item, g)
        if progress is not None:
            progress.update(len(part))


def judge_predictions(
    backend: Any,
    seed: int,
    todo: list[tuple[int, Sample, str]],
    on_score: Callable[[int, Any], None],
    on_error: Callable[[int, Sample, str], None],
    *,
    on_usage: Callable[[int, Usage], None] | None = None,
    chunk: int | None = None,
    progress: Any = None,
) -> None:
    """Judge (prediction id, sample, prediction text) items with a judge model: greedy, 8 tokens, the fixed and
    versioned rubric (`harness.metrics.build_judge_messages`, `JUDGE_RUBRIC_VERSION`). Per item `on_usage(pid,
    usage)`, then `on_score(pid, MetricResult)` (raw output and verdict in it) or, for a failed call,
    `on_error(pid, sample, "judge: ...")`: a failure is an error for that sample, never a verdict. `chunk`:
    requests per call (default: all in one)."""
    from harness.metrics import build_judge_messages, judge_score

    params = GenParams(max_new_tokens=8, temperature=0.0, seed=seed)
    jobs = [((pid, s, text), GenRequest.chat(build_judge_messages(s.question, s.answers, text), params))
            for pid, s, text in todo]

    def done(meta: tuple[int, Sample, str], g: Generation) -> None:
        pid, s, text = meta
        if on_usage is not None:
            on_usage(pid, g.usage)
        if g.error:
            on_error(pid, s, f"judge: {g.error}")
            return
        on_score(pid, judge_score(s, text, lambda _m, t=g.text: t))

    run_generation_stage(backend, jobs, done, chunk=chunk or max(len(jobs), 1), progress=progress)


def params_from(gen_cfg: Any, seed: int, logprobs: bool = False) -> GenParams:
    return GenParams(
        max_new_tokens=gen_cfg.max_new_tokens,
        temperature=gen_cfg.temperature,
        top_p=gen_cfg.top_p,
        top_k=gen_cfg.top_k,
        seed=seed,
        logprobs=logprobs,
    )


def add_usage(acc: dict[str, float], u: Usage) -> None:
    acc["calls"] = acc.get("calls", 0) + 1
    acc["prompt_tokens"] = acc.get("prompt_tokens", 0) + u.prompt_tokens
    acc["completion_tokens"] = acc.get("completion_tokens", 0) + u.completion_tokens
    acc["seconds"] = acc.get("seconds", 0.0) + (0.0 if u.cached else u.seconds)
    acc["cached"] = acc.get("cached", 0) + int(u.cached)
