"""Pure measures of what retrieval and filters keep of the gold evidence (no model, no I/O)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

_SPACE = re.compile(r"\s+")


def recall_at_k(retrieved_ids: Sequence[str], gold_ids: Iterable[str], k: int | None = None) -> float | None:
    """Share of the gold passages among the first `k` retrieved ids (all when k is None); None without gold."""
    gold = set(gold_ids)
    if not gold:
        return None
    top = set(retrieved_ids if k is None else retrieved_ids[:k])
    return len(gold & top) / len(gold)


def _norm(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def kept_sentences(doc_sentences: Mapping[str, Sequence[str]], text: str) -> set[tuple[str, int]]:
    """The (doc_id, index) of every sentence that appears whole in `text` (whitespace-normalised).

    A filter that keeps a sentence keeps its exact words; a cut sentence (truncation) or a paraphrase does not count.
    """
    t = _norm(text)
    return {(did, i) for did, sents in doc_sentences.items() for i, s in enumerate(sents) if _norm(s) and _norm(s) in t}


def support_precision_recall(kept: Iterable[tuple[str, int]], gold: Iterable[tuple[str, int]]
                             ) -> tuple[float | None, float | None]:
    """Precision (share of kept sentences that are gold; None when nothing is kept) and recall (share of gold
    sentences kept; None without gold) of the gold supporting sentences."""
    k = {(str(a), int(b)) for a, b in kept}
    g = {(str(a), int(b)) for a, b in gold}
    hit = len(k & g)
    return (hit / len(k) if k else None), (hit / len(g) if g else None)


def gold_support(sample_meta: Mapping[str, object], text: str) -> dict[str, float | int | None]:
    """Gold-support precision and recall of a compression `text` for a sample whose meta labels its supporting
    sentences (`doc_sentences`, `supporting_sentences`: synthetic-multidoc, HotpotQA); empty when it has no labels
    (NQ-open, TriviaQA: their gold is passage-level, `has_answer`)."""
    sents = sample_meta.get("doc_sentences")
    support = sample_meta.get("supporting_sentences")
    if not isinstance(sents, Mapping) or not support:
        return {}
    kept = kept_sentences(sents, text)
    p, r = support_precision_recall(kept, [tuple(x) for x in support])  # type: ignore[union-attr]
    return {"support_precision": p, "support_recall": r, "kept_sentences": len(kept)}
