"""Retrievers over a list of passages: BM25 (`bm25s`), dense (sentence-transformers, all-MiniLM-L6-v2 from the
offline `minilm-l6` pack) and hybrid (reciprocal-rank fusion of the two). Rankings are deterministic: ties go to
the earlier passage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from harness.errors import UserError

#: reciprocal-rank-fusion constant (Cormack et al. 2009)
RRF_K = 60


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the `k` highest scores, best first, ties broken by the lower index (pure)."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(s.size), -s))[: max(0, min(k, s.size))]
    return order, s[order]


def rrf(rankings: Sequence[np.ndarray], n: int, k0: int = RRF_K) -> np.ndarray:
    """Reciprocal-rank-fusion scores over `n` items: Σ_r 1 / (k0 + rank_r(i)), rank from 1 (pure)."""
    out = np.zeros(n)
    for order in rankings:
        out[np.asarray(order)] += 1.0 / (k0 + np.arange(1, len(order) + 1))
    return out


def _bm25s() -> Any:
    try:
        import bm25s
    except ImportError:
        raise UserError("retrieval: BM25 needs the bm25s package; pip install -e '.[rag]'") from None
    return bm25s


def words(texts: Sequence[str]) -> list[list[str]]:
    """bm25s's tokenizer (lower-cased words, English stopwords dropped), as lists of strings."""
    return _bm25s().tokenize(list(texts), stopwords="en", return_ids=False, show_progress=False)


class BM25:
    """BM25 (bm25s defaults: Lucene variant, k1 1.5, b 0.75) over fixed passages."""

    name = "bm25"

    def __init__(self, texts: Sequence[str]):
        self.n = len(texts)
        self.index = _bm25s().BM25()
        self.index.index(words(texts), show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        q = words([query])[0]
        return np.asarray(self.index.get_scores(q), dtype=np.float64) if q else np.zeros(self.n)


_ENCODERS: dict[str, Any] = {}


def encoder(pack: str = "minilm-l6") -> Any:
    """The sentence-transformers model of an embedding pack, loaded once per process, offline, on the CPU."""
    from harness.backends import packs

    if pack not in _ENCODERS:
        if pack not in packs.EMBED_PACKS:
            raise UserError(f"retrieval.embedder: unknown embedding pack '{pack}'; use one of "
                            f"{', '.join(packs.EMBED_PACKS)}")
        if not packs.embed_present(pack):
            raise UserError(f"retrieval.embedder: the '{pack}' pack is not fetched; run `harness models fetch {pack}`")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise UserError("retrieval: dense retrieval needs sentence-transformers; pip install -e '.[rag]'") from None
        _ENCODERS[pack] = SentenceTransformer(str(packs.embed_dir(pack)), device="cpu", local_files_only=True)
    return _ENCODERS[pack]


def embed(texts: Sequence[str], pack: str = "minilm-l6") -> np.ndarray:
    """Unit-norm float32 embeddings, one row per text."""
    m = encoder(pack)
    return np.asarray(m.encode(list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False,
                               convert_to_numpy=True), dtype=np.float32)


class Dense:
    """Cosine similarity of all-MiniLM-L6-v2 embeddings (exact search: corpora here are small, no faiss)."""

    name = "dense"

    def __init__(self, texts: Sequence[str], pack: str = "minilm-l6"):
        self.pack = pack
        self.emb = embed(texts, pack)

    def scores(self, query: str) -> np.ndarray:
        return (self.emb @ embed([query], self.pack)[0]).astype(np.float64)


class Hybrid:
    """Reciprocal-rank fusion of BM25 and dense rankings (each over the whole corpus)."""

    name = "hybrid"

    def __init__(self, texts: Sequence[str], pack: str = "minilm-l6"):
        self.n = len(texts)
        self.parts = (BM25(texts), Dense(texts, pack))

    def scores(self, query: str) -> np.ndarray:
        return rrf([top_k(p.scores(query), self.n)[0] for p in self.parts], self.n)


def make_retriever(kind: str, texts: Sequence[str], pack: str = "minilm-l6") -> Any:
    if kind == "bm25":
        return BM25(texts)
    if kind == "dense":
        return Dense(texts, pack)
    if kind == "hybrid":
        return Hybrid(texts, pack)
    raise UserError(f"retrieval.retriever: unknown retriever '{kind}'; use bm25, dense or hybrid")
