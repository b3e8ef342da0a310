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


def research_corpus(corpus: str, samples: Sequence[Sample], field: str = "research.corpus", retriever: str = "bm25",
                    embedder: str = "minilm-l6") -> list[Document] | None:
    """`task`: every sample's passages pooled and deduplicated by id (FinanceBench: the evidence pages of all its
    companies); `sample`: None (each sample searches its own passages, `sample_search`); else the passages of a
    folder of .txt/.md/.jsonl files. The corpus, retriever and embedder are checked once (`check_retrieval`), which
    parses the folder once."""
    from harness.retrieval.apply import shared_corpus

    rc = RetrievalConfig(corpus=corpus, retriever=retriever, embedder=embedder)  # type: ignore[arg-type]
    docs = shared_corpus(rc, samples, field.rpartition(".")[0] or "research")
    if corpus == "sample":
        if not any(s.documents for s in samples):
            raise UserError(f"{field}: sample: the task's samples have no passages to search; point it at a folder")
        return None
    if docs is None or (corpus == "task" and not docs):
        raise UserError(f"{field}: the task's samples have no passages to search; point it at a folder")
    return docs


class SearchTool:
    """`search(query, k)` over fixed passages; the index is built on the first query the cache does not answer."""

    def __init__(self, docs: Sequence[Document], retriever: str = "bm25", embedder: str = "minilm-l6",
                 cache: Any = None):
        from harness.retrieval.apply import Ranker

        self.ranker = Ranker(docs, RetrievalConfig(corpus="task", retriever=retriever, embedder=embedder),  # type: ignore[arg-type]
                             cache)
        self.docs = self.ranker.docs
        self.by_id = {d.id: d for d in self.docs}
        self.searched = 0  # queries the retriever answered (not the cache)

    @property
    def _index(self) -> Any:
        """The retriever's index; None until a query the cache does not answer."""
        return self.ranker.index

    def ranked(self, query: str, k: int) -> tuple[list[str], list[float]]:
        """Ids and scores of the top `k` passages for `query`, best first (ties: the earlier passage)."""
        res, fresh = self.ranker.rank(query, k)
        self.searched += fresh
        return list(res["ids"]), [float(x) for x in res["scores"]]

    def search(self, query: str, k: int) -> list[Hit]:
        """The top `k` passages for `query` as `Hit`s."""
        ids, scores = self.ranked(query, k)
        return [self.hit(i, r, s) for r, (i, s) in enumerate(zip(ids, scores, strict=True), 1)]

    def hit(self, doc_id: str, rank: int = 0, score: float = 0.0) -> Hit:
        d = self.by_id[doc_id]
        return Hit(d.id, rank, score, d.title, d.text)


class SampleSearch:
    """`research.corpus: sample`: one `SearchTool` per sample over its own passages, built on first use."""

    def __init__(self, retriever: str = "bm25", embedder: str = "minilm-l6", cache: Any = None):
        self.retriever, self.embedder, self.cache = retriever, embedder, cache
        self.tools: dict[str, SearchTool] = {}

    def __call__(self, sample: Sample) -> SearchTool:
        if sample.id not in self.tools:
            self.tools[sample.id] = SearchTool(sample.documents, self.retriever, self.embedder, self.cache)
        return self.tools[sample.id]

    @property
    def searched(self) -> int:
        return sum(t.searched for t in self.tools.values())


def passages_text(hits: Sequence[Hit]) -> str:
    """Passages as the reader sees them: `[title]` then the text, blank lines between (like `Sample.context`)."""
    return "\n\n".join((f"[{h.title}]\n" if h.title else "") + h.text for h in hits)
