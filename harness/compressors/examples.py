"""Example `python/` compressors, written as a user would write one (see README, "Your own compressor").

    models:
      compressor:
        model: python/harness.compressors.examples:keep_relevant_sentences
        options: {max_sentences: 4}
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    "a an and are as at be by did does do for from had has have how in is it its of on or the their this to "
    "was were what when where which who whom why with after before".split()
)


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 2}


def keep_relevant_sentences(question: str, context: str, max_sentences: int = 4, min_overlap: int = 1) -> str:
    """A rule-based filter: the context's sentences (and lines) that share the most content words with the
    question, at most `max_sentences`, in their original order; a sentence needs `min_overlap` shared words.

    Deterministic: the same (question, context) always gives the same text.
    """
    pieces = [p.strip() for line in context.splitlines() for p in re.split(r"(?<=[.!?])\s+", line) if p.strip()]
    q = _words(question)
    scored = [(len(q & _words(p)), -k, p) for k, p in enumerate(pieces)]
    best = sorted((s for s in scored if s[0] >= min_overlap), reverse=True)[: max(max_sentences, 0)]
    return " ".join(p for _, _, p in sorted(best, key=lambda s: -s[1]))
