"""The research agent's search tool: `search(query, k)` over a corpus (a task's passage pool or a folder of
.txt/.md/.jsonl documents) with BM25, dense or hybrid retrieval from `harness.retrieval`, results cached in the
response cache under the same keys as `harness.retrieval.apply` (corpus hash, retriever, embedder, query, k)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.config import RetrievalConfig
from harness.errors import UserError
from harness.records import Document, Sample


@dataclass(frozen=True)
class Hit:
    """One retrieved passage: its id, rank (from 1), score, title and text."""

    id: str
    rank: int
    score: float
    title: str
    text: str


def research_corpus(corpus: str, samples: Sequence[Sample], field: str = "research.corpus") -> list[Document]:
    """`task`: every sample's passages pooled and deduplicated by id (FinanceBench: the evidence pages of all its
    companies); else the passages of a folder of .txt/.md/.jsonl files."""
    from harness.retrieval.apply import check_retrieval
    from harness.retrieval.corpus import folder_corpus, task_corpus

    if corpus == "task":
        docs = task_corpus(samples)
        if not docs:
            raise UserError(f"{field}: the task's samples have no passages to search; point it at a folder")
        return docs
    check_retrieval(RetrievalConfig(corpus=corpus), field.rpartition(".")[0] or "research")
    return folder_corpus(corpus, field)


class SearchTool:
    """`search(query, k)` over fixed passages; the index is built on the first query the cache does not answer."""

    def __init__(self, docs: Sequence[Document], retriever: str = "bm25", embedder: str = "minilm-l6",
                 cache: Any = None):
        from harness.retrieval.corpus import corpus_hash

        self.docs = list(docs)
        self.by_id = {d.id: d for d in self.docs}
        self.rc = RetrievalConfig(corpus="task", retriever=retriever, embedder=embedder)  # type: ignore[arg-type]
        self.chash = corpus_hash(self.docs)
        self.cache = cache
        self._index: Any = None
        self.searched = 0  # queries the retriever answered (not the cache)

    def _key(self, query: str, k: int) -> tuple[str, Any, dict[str, Any]]:
        from harness.backends.cache import cache_key
        from harness.retrieval.apply import identity

        ident = identity(self.rc, self.chash)
        req = {"query": query, "k": min(k, len(self.docs))}
        return cache_key("retrieval", ident, req), ident, req

    def ranked(self, query: str, k: int) -> tuple[list[str], list[float]]:
        """Ids and scores of the top `k` passages for `query`, best first (ties: the earlier passage)."""
        from harness.retrieval.corpus import passage_text
        from harness.retrieval.retrievers import make_retriever, top_k

        key, ident, req = self._key(query, k)
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None and all(i in self.by_id for i in hit["ids"]):
            return list(hit["ids"]), [float(x) for x in hit["scores"]]
        if self._index is None:
            self._index = make_retriever(self.rc.retriever, [passage_text(d) for d in self.docs], self.rc.embedder)
        idx, sc = top_k(self._index.scores(query), k)
        self.searched += 1
        res = {"ids": [self.docs[i].id for i in idx], "scores": [float(x) for x in sc]}
        if self.cache is not None:
            self.cache.put(key, "retrieval", ident, req, res)
        return res["ids"], res["scores"]

    def search(self, query: str, k: int) -> list[Hit]:
        """The top `k` passages for `query` as `Hit`s."""
        ids, scores = self.ranked(query, k)
        return [self.hit(i, r, s) for r, (i, s) in enumerate(zip(ids, scores, strict=True), 1)]

    def hit(self, doc_id: str, rank: int = 0, score: float = 0.0) -> Hit:
        d = self.by_id[doc_id]
        return Hit(d.id, rank, score, d.title, d.text)


def passages_text(hits: Sequence[Hit]) -> str:
    """Passages as the reader sees them: `[title]` then the text, blank lines between (like `Sample.context`)."""
    return "\n\n".join((f"[{h.title}]\n" if h.title else "") + h.text for h in hits)
