"""Build the log-prob arrays of `harness.mi` from a scorer backend.

For one question group of N contexts with M sampled compressions each, every compression
z_ij is scored under every context x_l of the group: logp[i, j, l] = ln p(z_ij | x_l, q).
The prefix is the compressor's own prompt rendered with x_l; the scored span is the
compression only (EOS included where the compressor emitted it).

- Scorer = the compressor (same identity): the exact token ids of z are scored.
- Scorer = a proxy: z's text is tokenised by the proxy, plus the proxy's end-of-turn token
  when the compressor stopped on EOS; results say `tokenization: "proxy"`.
- Scorer = the compressor but a compression without token ids (an `openai/` compressor): its text is
  scored the same way, `tokenization: "text"`; never an empty id span.
- mode "conditional" (default) holds the question fixed and swaps only the context,
  p(z | x_l, q_i): an estimate of I(X;Z|Q). mode "paper" scores each x_l with its own
  question q_l, as He et al.'s released code does (the marginal then runs over contexts
  whose questions differ, which estimates something closer to I(X,Q;Z)).

Requests are sent grouped by context, so the transformers backend forwards each prefix
once and reuses its KV cache for all N·M continuations (servers get the same order, which
their prefix caches can use).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.backends.base import STATS
from harness.config import Prompt
from harness.prompts import render
from harness.records import Generation, Message, Sample, ScoreRequest


@dataclass
class GroupLogp:
    """logp (N, M, N) for one group, or the reason it failed."""

    group_id: str
    sample_ids: list[str]
    logp: np.ndarray | None
    tokens: np.ndarray  # (N, M) compression lengths in compressor tokens (EOS counted)
    tokenization: str  # "exact-ids", "proxy", or "text" (the compressor scoring its own text: it gave no ids)
    error: str | None = None
    forwarded_tokens: int = 0
    lower_bound_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def score_group(
    scorer: Any,
    samples: list[Sample],
    compressions: list[list[Generation]],
    prompt: Prompt,
    *,
    exact_ids: bool,
    mode: str = "conditional",
    progress: Any = None,
) -> GroupLogp:
    """Score every compression of the group under every context of the group.

    With a `progress` bar, requests go to the scorer one context at a time (the continuations under one
    context share its prefix's KV cache) and the bar advances; without one, in a single call.
    """
    n = len(samples)
    m = len(compressions[0])
    tokens = np.array([[len(g.token_ids) or g.usage.completion_tokens for g in row] for row in compressions])
    # exact ids only when every compression has them (an openai/ compressor returns none): else the text is scored
    if exact_ids and not all(g.token_ids for row in compressions for g in row):
        exact_ids, tokenization = False, "text"
    else:
        tokenization = "exact-ids" if exact_ids else "proxy"
    reqs: list[ScoreRequest] = []
    prefixes = []
    for x in samples:
        for i, row in enumerate(compressions):
            # conditional: z_ij keeps the exact question it was generated for (q_i), only the context changes
            # (a group's questions can differ in case or spacing: groups are keyed on the normalised text)
            q = x.question if mode == "paper" else samples[i].question
            msgs = tuple((d["role"], d["content"]) for d in render(prompt, question=q, context=x.context))
            if msgs not in prefixes:
                prefixes.append(msgs)
            for g in row:
                if exact_ids:
                    reqs.append(ScoreRequest(messages=msgs, continuation_ids=tuple(g.token_ids)))
                else:
                    reqs.append(ScoreRequest(messages=msgs, continuation=g.text, append_eos=g.finish_reason == "stop"))
    f0 = STATS["forwarded_tokens"]
    if progress is None:
        results = scorer.score(reqs)
    else:
        results = []
        per = n * m
        for a in range(0, len(reqs), per):
            results.extend(scorer.score(reqs[a : a + per]))
            progress.update(len(reqs[a : a + per]))
    forwarded = STATS["forwarded_tokens"] - f0
    logp = np.empty((n, m, n))
    z_len = np.zeros((n, m), dtype=int)
    k = 0
    for ll in range(n):
        for i in range(n):
            for j in range(m):
                r = results[k]
                k += 1
                if r.error is not None:
                    return GroupLogp(samples[0].group_id, [s.id for s in samples], None, tokens, tokenization,
                                     error=f"scoring z[{i},{j}] under x[{ll}] failed: {r.error}")
                logp[i, j, ll] = r.total
                z_len[i, j] = len(r.logprobs)
    # lower bound on forwarded tokens: each prefix once, each continuation once per context
    prefix_tokens = 0
    count = getattr(scorer, "count_prompt_tokens", None)
    if count is not None:
        from harness.records import GenParams, GenRequest

        for msgs in prefixes:
            c = count(GenRequest(messages=msgs, params=GenParams()))
            prefix_tokens += c or 0
    lower = prefix_tokens + n * int(z_len.sum())
    return GroupLogp(samples[0].group_id, [s.id for s in samples], logp, tokens,
                     tokenization, forwarded_tokens=forwarded, lower_bound_tokens=lower)


def reply_request(messages: list[Message] | tuple[tuple[str, str], ...], reply: str, *,
                  append_eos: bool = False) -> ScoreRequest:
    """Score `reply` as the assistant's turn after the chat `messages` (the scorer adds its generation prompt).

    `append_eos` also scores the scorer's end-of-turn token (a reply that ends there).
    """
    msgs = tuple((m["role"], m["content"]) if isinstance(m, dict) else (m[0], m[1]) for m in messages)
    return ScoreRequest(messages=msgs, continuation=reply, append_eos=append_eos)


def candidate_logp(scorer: Any, samples: list[Sample], candidates: list[str], prompt: Prompt) -> np.ndarray:
    """(N, C) log-probs of fixed candidate summaries under each context (for exact-enumeration checks)."""
    reqs = []
    for x in samples:
        msgs = render(prompt, question=x.question, context=x.context)
        reqs.extend(reply_request(msgs, c, append_eos=True) for c in candidates)
    res = scorer.score(reqs)
    bad = [r.error for r in res if r.error]
    if bad:
        raise RuntimeError(f"candidate scoring failed: {bad[0]}")
    return np.array([r.total for r in res]).reshape(len(samples), len(candidates))
