"""Information-bottleneck terms of a compression (Zhu et al., ACL 2024) and the ib-oracle's choice.

For a question Q, its answer Y (with aliases) and a compression X̃ of the retrieved passages X, one scorer LM
(float32 log-probs) gives:

- conciseness_bits = −log2 p(X̃|Q): X̃ scored as the reply to "Question: ...\\nRelevant information:", its end of
  turn included, so the empty compression costs −log2 p(<end>|Q) and longer ones cost more;
- correctness_bits = log2 p(Y|X̃,Q) − log2 p(Y|Q): the answer scored after the run's predictor prompt with X̃ as
  the information, against the same prompt with empty information (p(Y|Q)). One prompt for both, so the term
  measures what X̃ says and not the change of template (the no-context prompt against the predictor prompt moved
  smollm2's log2 p("1900") by about 3 bits for an unrelated sentence); the empty compression (abstain) has
  correctness exactly 0. Aliases are combined by log-sum-exp (the probability of saying any
  correct form: `harness.mi.correctness_bits`), not by max, so a sample with many surface forms of one answer is
  not penalised for splitting probability among them;
- ib_score = conciseness − β·correctness (β = 10 as in the paper; lower is better);
- compression rate = tokens of X̃ / tokens of the retrieved passages.

`select_ib` (pure) returns the candidate with the lowest ib_score, ties to the earlier candidate, the empty one
first: when no candidate raises p(Y), abstaining wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.config import Prompt, Prompts
from harness.mi import conciseness_bits, correctness_bits, ib_score
from harness.prompts import choices_block, render
from harness.records import Sample, ScoreRequest, stable_hash

CONCISE_PROMPT = Prompt(system=None, user="Question: {question}\nRelevant information:")
BETA = 10.0


@dataclass(frozen=True)
class IBTerms:
    """Log-probs (nats) of one compression and the IB terms (bits) they give."""

    logp_xt_q: float  # ln p(X̃|Q), end of turn included
    logp_y_xt_q: tuple[float, ...]  # ln p(y_a|X̃,Q) per alias
    logp_y_q: tuple[float, ...]  # ln p(y_a|Q) per alias
    tokens: int = 0  # tokens of X̃
    retrieved_tokens: int = 0  # tokens of the retrieved passages X

    @property
    def conciseness(self) -> float:
        return conciseness_bits(self.logp_xt_q)

    @property
    def correctness(self) -> float:
        return correctness_bits(np.array(self.logp_y_xt_q), np.array(self.logp_y_q))

    def score(self, beta: float = BETA) -> float:
        return ib_score(self.conciseness, self.correctness, beta)

    @property
    def rate(self) -> float | None:
        return self.tokens / self.retrieved_tokens if self.retrieved_tokens else None

    def to_json(self, beta: float = BETA) -> dict[str, Any]:
        return {"conciseness_bits": self.conciseness, "correctness_bits": self.correctness,
                "ib_score": self.score(beta), "beta": beta, "compression_rate": self.rate, "tokens": self.tokens,
                "retrieved_tokens": self.retrieved_tokens, "logp_xt_q": self.logp_xt_q,
                "logp_y_xt_q": list(self.logp_y_xt_q), "logp_y_q": list(self.logp_y_q)}


def select_ib(terms: list[IBTerms], beta: float = BETA) -> int:
    """Index of the candidate with the lowest ib_score; ties go to the earlier candidate (pure)."""
    if not terms:
        raise ValueError("select_ib needs at least one candidate")
    scores = [t.score(beta) for t in terms]
    return int(np.argmin(scores))  # argmin returns the first of equal minima


class IBScorer:
    """Scores compressions' IB terms with one scorer backend (load it in float32: see `harness.compressors`)."""

    def __init__(self, backend: Any, prompts: Prompts | None = None, tokenizer: Any = None):
        self.backend = backend
        self.prompts = prompts or Prompts()
        self.tokenizer = tokenizer or backend

    def key(self) -> str:
        """What the terms depend on: the scorer's identity and the two prompts."""
        return stable_hash([self.backend.identity().key(), CONCISE_PROMPT.model_dump(),
                            self.prompts.predictor.model_dump()])[:16]

    def _answer_reqs(self, sample: Sample, text: str) -> list[ScoreRequest]:
        fields = {"question": sample.question, "choices": choices_block(sample), "summary": text}
        msgs = tuple((m["role"], m["content"]) for m in render(self.prompts.predictor, **fields))
        return [ScoreRequest(messages=msgs, continuation=a) for a in sample.answers]

    def terms(self, sample: Sample, texts: list[str], retrieved_tokens: int = 0) -> list[IBTerms]:
        """IB terms of each compression text of `sample` (one batch of score requests)."""
        if not sample.answers:
            raise ValueError(f"sample {sample.id} has no gold answer: IB correctness needs one")
        concise = tuple((m["role"], m["content"]) for m in render(CONCISE_PROMPT, question=sample.question))
        reqs = [ScoreRequest(messages=concise, continuation=t, append_eos=True) for t in texts]
        na = len(sample.answers)
        reqs += self._answer_reqs(sample, "")
        for t in texts:
            if t:
                reqs += self._answer_reqs(sample, t)
        res = self.backend.score(reqs)
        bad = [r.error for r in res if r.error]
        if bad:
            raise RuntimeError(f"IB scoring failed: {bad[0]}")
        tot = [r.total for r in res]
        base = tuple(tot[len(texts) : len(texts) + na])
        out, k = [], len(texts) + na
        for n, t in enumerate(texts):
            if t:
                y = tuple(tot[k : k + na])
                k += na
            else:
                y = base
            ntok = self.tokenizer.count_tokens(t) if t else 0
            out.append(IBTerms(tot[n], y, base, int(ntok or 0), retrieved_tokens))
        return out

    def close(self) -> None:
        self.backend.close()



def compression_row(sample: Sample, text: str, terms: IBTerms, beta: float = BETA) -> dict[str, Any]:
    """What to store for one compression of a RAG filter: its IB terms, compression rate and, where the task labels
    supporting sentences (synthetic-multidoc), the gold-support precision and recall of what it kept."""
    from harness.retrieval.gold import gold_support

    return {"sample_id": sample.id, **terms.to_json(beta), **gold_support(sample.meta, text)}


TERM_KEYS = ("conciseness_bits", "correctness_bits", "ib_score", "beta", "compression_rate", "tokens",
             "retrieved_tokens", "support_precision", "support_recall")


def terms_row(sample: Sample, text: str, terms: IBTerms, beta: float = BETA) -> dict[str, float | None]:
    """The `compression_terms` values of one compression (a filter's or an LM's): conciseness, correctness,
    ib_score, beta, compression rate, token counts, gold-support precision/recall where labelled, abstain."""
    row = compression_row(sample, text, terms, beta)
    out: dict[str, float | None] = {k: row.get(k) for k in TERM_KEYS if k in row}
    out["abstain"] = float(text == "")
    return out


def store_terms(store: Any, compression_id: int | None, g: Any, run_id: str | None = None) -> None:
    """Write a filter compression's IB terms (`FilterGeneration.terms`) to the store's compression_terms, keyed by
    the scorer that gave them; nothing for a compression without terms (an LM's without `ib_terms`, a filter with no
    scorer)."""
    terms = getattr(g, "terms", None)
    if not terms or compression_id is None:
        return
    ident = getattr(g, "scorer_identity", None)
    mid = store.model_id(ident) if ident is not None else None
    store.add_compression_terms(compression_id, terms, scorer_model_id=mid, run_id=run_id)
