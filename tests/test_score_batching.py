"""Scoring batches cut by length, KV-prefix reuse and its forwarded-token count, on the real smollm2 pack (float32)."""

from __future__ import annotations

import random
import warnings

import pytest

from harness.backends.base import STATS
from harness.backends.transformers import MAX_PADDING, padded_batches
from harness.records import ScoreRequest

PREFIX = (("system", "You compress documents."), ("user", "Summarise: the invoice of 3 May lists 12 items."))


def continuations(tok, n: int = 14, seed: int = 0) -> list[tuple[int, ...]]:
    """`n` continuations of 1–40 real tokens (lengths spread, so uncut batches would be mostly padding)."""
    words = tok("The invoice lists twelve items, dated the third of May, totalling four hundred euros in all.",
                add_special_tokens=False)["input_ids"]
    rng = random.Random(seed)
    lengths = [1, 1, 2, 3, 5, 8, 9, 13, 17, 21, 26, 30, 34, 40][:n]
    return [tuple(rng.choice(words) for _ in range(k)) for k in lengths]


@pytest.mark.parametrize("lengths", [[5, 5, 5], [1, 2, 3, 4, 5, 6, 7, 30], [0, 0, 1, 9, 10, 10, 11, 40, 41], []])
def test_padded_batches_bound_padding_and_rows(lengths):
    """Pure logic: every item once, rows capped, padding ≤ 15% of each batch, zero-length items on their own."""
    batches = padded_batches(lengths, max_rows=4)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        width = max(lengths[i] for i in b)
        assert len(b) <= 4
        assert len(b) * width - sum(lengths[i] for i in b) <= MAX_PADDING * len(b) * width
        assert width > 0 or all(lengths[i] == 0 for i in b)
    assert len(padded_batches([7] * 10, max_rows=4)) == 3


def test_kv_reuse_forwards_each_prefix_once_and_logprobs_match_alone(smollm2):
    """The shared-prefix path forwards the prefix once and the continuations with ≤ 15% padding; it fails when the
    path silently stops reusing the prefix (every request would forward its own prefix: ~14× the bound).
    Its log-probs equal those of scoring each request alone (float32, 1e-4)."""
    conts = continuations(smollm2.tokenizer)
    reqs = [ScoreRequest(messages=PREFIX, continuation_ids=c) for c in conts]
    pre_len = len(smollm2._prompt_ids([{"role": a, "content": c} for a, c in PREFIX], None))
    # lower bound: the prefix once, each continuation but its last token (scored from the previous logit)
    lower = pre_len + sum(len(c) - 1 for c in conts)
    f0 = STATS["forwarded_tokens"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        together = smollm2.score(reqs)
    forwarded = STATS["forwarded_tokens"] - f0
    assert lower <= forwarded <= pre_len + (lower - pre_len) / (1 - MAX_PADDING), (forwarded, lower)
    assert not [w for w in caught if "past_key_values" in str(w.message)]  # the supported cache argument
    alone = [smollm2.score([r])[0] for r in reqs]
    for t, a, c in zip(together, alone, conts, strict=True):
        assert t.error is None and t.token_ids == list(c) == a.token_ids
        assert t.logprobs == pytest.approx(a.logprobs, abs=1e-4)


def test_independent_batches_match_alone(smollm2):
    """Requests with distinct prefixes, batched by length with logits kept from the first prefix end only,
    score as each does alone (float32, 1e-4)."""
    tok = smollm2.tokenizer
    prefixes = ["The quick brown fox", "Once upon a time, in a land far away, there lived", "1, 2, 3,", "A", "B C D"]
    conts = continuations(tok, seed=1)[-5:]  # 21–40 tokens
    reqs = [ScoreRequest(prefix=p, continuation_ids=c) for p, c in zip(prefixes, conts, strict=True)]
    together = smollm2.score(reqs)
    for r, t in zip(reqs, together, strict=True):
        (a,) = smollm2.score([r])
        assert t.token_ids == a.token_ids and t.logprobs == pytest.approx(a.logprobs, abs=1e-4)


def test_ignored_cache_fails_loudly(smollm2, monkeypatch):
    """Fault injection: when the model does not take the cache under the name passed, scoring raises instead of
    scoring continuations without their prefix."""
    monkeypatch.setattr(smollm2, "_cache_arg", "not_a_cache_argument", raising=False)
    reqs = [ScoreRequest(messages=PREFIX, continuation_ids=c) for c in continuations(smollm2.tokenizer, n=4)]
    with pytest.raises(Exception, match="cache"):
        smollm2.score(reqs)
