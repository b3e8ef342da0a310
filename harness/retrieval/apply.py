"""Retrieve each sample's passages and make them its context, with results cached by corpus, retriever, query and k.

A cached result (passage ids, ranks, scores) is the X that every filter and predictor of any run over the same
corpus sees: `retrieve_samples` asks the retriever only for queries the cache does not hold, and loads no
retriever (no index, no embedding model) when it holds them all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.config import RetrievalConfig
from harness.errors import UserError
from harness.records import Document, ModelIdentity, Sample
from harness.retrieval.corpus import corpus_hash, folder_corpus, passage_text, task_corpus
from harness.retrieval.gold import recall_at_k
from harness.retrieval.retrievers import make_retriever, top_k

#: retriever calls made in this process (queries searched, indexes built): the caching tests read it
STATS = {"queries": 0, "indexes": 0}
#: bumped when the same corpus, retriever and query would rank differently (tokeniser, fusion, scoring)
RETRIEVAL_VERSION = 1


def check_retrieval(rc: RetrievalConfig, field: str = "retrieval") -> list[Document] | None:
    """One-line `UserError` for a corpus folder that is missing or empty, or a dense embedder that is not fetched.
    Returns the folder's passages (parsed once, here), None for `task` and `sample`."""
    folder = None
    if rc.corpus not in ("task", "sample"):
        p = Path(rc.corpus).expanduser()
        if not p.exists():
            raise UserError(f"{field}.corpus: '{rc.corpus}' does not exist; write 'task' (the task's passages), "
                            "'sample' (each sample's own) or a folder of .txt/.md/.jsonl files")
        if not p.is_dir():
            raise UserError(f"{field}.corpus: '{rc.corpus}' is a file; point it at a folder of .txt/.md/.jsonl files")
        folder = folder_corpus(p, f"{field}.corpus")
    if rc.retriever in ("dense", "hybrid"):
        from harness.backends import packs

        if rc.embedder not in packs.EMBED_PACKS:
            raise UserError(f"{field}.embedder: unknown embedding pack '{rc.embedder}'; use one of "
                            f"{', '.join(packs.EMBED_PACKS)}")
        if not packs.embed_present(rc.embedder):
            raise UserError(f"{field}.embedder: the '{rc.embedder}' pack is not fetched; run "
                            f"`harness models fetch {rc.embedder}`")
    return folder


def shared_corpus(rc: RetrievalConfig, samples: Sequence[Sample], field: str = "retrieval") -> list[Document] | None:
    """`rc` checked (`check_retrieval`) and the passages every query ranks: a folder's (parsed once) or, for `task`,
    every sample's pooled; None for `sample` (each sample ranks its own)."""
    folder = check_retrieval(rc, field)
    if folder is not None:
        return folder
    return task_corpus(samples) if rc.corpus == "task" else None


def identity(rc: RetrievalConfig, chash: str) -> ModelIdentity:
    """What makes a ranking what it is: retriever, embedder, corpus content and the code version."""
    emb = rc.embedder if rc.retriever != "bm25" else ""
    return ModelIdentity("retrieval", f"{rc.retriever}:{emb}", chash, f"v{RETRIEVAL_VERSION}", "")


class Ranker:
    """The top `k` passages of one corpus for a query: from the response cache when it holds them (key: corpus hash,
    retriever, embedder, query, k), else from the retriever, built on the first query the cache does not answer;
    retriever calls are counted in `STATS`. `retrieve_samples` and the research search tool both rank through it."""

    def __init__(self, docs: Sequence[Document], rc: RetrievalConfig, cache: Any = None):
        self.docs = list(docs)
        self.ids = {d.id for d in self.docs}
        self.rc = rc
        self.chash = corpus_hash(self.docs)
        self.cache = cache
        self.index: Any = None

    def key(self, query: str, k: int) -> tuple[str, ModelIdentity, dict[str, Any]]:
        """The cache key of (`query`, `k`) over this corpus, with the identity and request it hashes."""
        from harness.backends.cache import cache_key

        ident = identity(self.rc, self.chash)
        req = {"query": query, "k": min(k, len(self.docs))}
        return cache_key("retrieval", ident, req), ident, req

    def rank(self, query: str, k: int) -> tuple[dict[str, Any], bool]:
        """`{"ids", "scores"}` of the top `k` passages, best first (ties: the earlier passage), and whether the
        retriever (not the cache) answered."""
        key, ident, req = self.key(query, k)
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None and all(i in self.ids for i in hit["ids"]):
            return hit, False
        if self.index is None:
            self.index = make_retriever(self.rc.retriever, [passage_text(d) for d in self.docs], self.rc.embedder)
            STATS["indexes"] += 1
        idx, sc = top_k(self.index.scores(query), k)
        STATS["queries"] += 1
        res = {"ids": [self.docs[i].id for i in idx], "scores": [float(x) for x in sc]}
        if self.cache is not None:
            self.cache.put(key, "retrieval", ident, req, res)
        return res, True


def retrieve_samples(samples: Sequence[Sample], rc: RetrievalConfig, cache: Any = None
                     ) -> tuple[list[Sample], dict[str, Any]]:
    """Each sample with its `top_k` retrieved passages as documents, and a summary (recall@k, cache hits).

    `corpus`: `task` pools every sample's passages, `sample` ranks each sample's own passages (the distractor
    setting: a synthetic-multidoc group shares one question over samples whose facts differ, so a pooled corpus
    mixes contradicting passages about one entity), else a folder (`folder_corpus`).
    A retrieved passage is gold for a sample when the sample had it as a gold document. `meta["retrieval"]` holds
    the ids, ranks, scores and recall@k; `meta["doc_sentences"]` is extended to every retrieved passage that any
    sample labels (synthetic-multidoc), so gold-support measures see the sentences of the context.
    """
    shared = shared_corpus(rc, samples)
    if shared is None:  # each sample ranks its own passages (HotpotQA's distractor setting)
        corpora = [task_corpus([s]) for s in samples]
    else:
        corpora = [shared] * len(samples)
    if not any(corpora):
        raise UserError("retrieval.corpus: the task's samples have no passages to retrieve from")
    rankers = {id(c): Ranker(c, rc, cache) for c in corpora}
    hashes = {i: r.chash for i, r in rankers.items()}
    results: list[dict[str, Any]] = []
    keys: list[str] = []
    done: dict[str, dict[str, Any]] = {}  # cache key -> result, for queries asked twice in this call
    searched: set[str] = set()  # keys the retriever (not the cache) answered
    for s, docs in zip(samples, corpora, strict=True):
        ranker = rankers[id(docs)]
        keys.append(ranker.key(s.question, rc.top_k)[0])
        if not docs:
            results.append({"ids": [], "scores": []})
            continue
        if keys[-1] not in done:
            done[keys[-1]], fresh = ranker.rank(s.question, rc.top_k)
            if fresh:
                searched.add(keys[-1])
        results.append(done[keys[-1]])
    sentences: dict[str, list[str]] = {}
    for s in samples:
        sentences.update(s.meta.get("doc_sentences") or {})
    out, recalls = [], []
    for s, docs, res in zip(samples, corpora, results, strict=True):
        by_id = {d.id: d for d in docs}
        k = min(rc.top_k, len(docs))
        gold = {d.id: d for d in s.documents if d.is_gold}
        recall = recall_at_k(res["ids"], gold, k)
        if recall is not None:
            recalls.append(recall)
        new_docs = tuple(gold.get(i) or Document(id=i, text=by_id[i].text, title=by_id[i].title) for i in res["ids"])
        meta = dict(s.meta)
        meta["retrieval"] = {"retriever": rc.retriever, "corpus": hashes[id(docs)], "k": k, "ids": res["ids"],
                             "ranks": list(range(1, len(res["ids"]) + 1)), "scores": res["scores"], "recall": recall}
        if sentences:
            meta["doc_sentences"] = {i: sentences[i] for i in res["ids"] if i in sentences}
        out.append(dataclasses.replace(s, documents=new_docs, meta=meta))
    summary = {"retriever": rc.retriever, "corpus": rc.corpus, "corpora": len(hashes),
               "passages": sum(len(c) for c in {id(c): c for c in corpora}.values()), "k": rc.top_k,
               "queries": len(set(keys)), "searched": len(searched),
               "recall_at_k": sum(recalls) / len(recalls) if recalls else None, "with_gold": len(recalls)}
    return out, summary


def samples_for(cfg: Any, samples: list[Sample], cache: Any = None) -> list[Sample]:
    """The samples a run config's stages read: retrieved (`cfg.retrieval`) or as the task made them. The one call a
    pipeline makes after loading a task; pass the run's response cache so retrieval is shared and resumable."""
    if getattr(cfg, "retrieval", None) is None:
        return list(samples)
    return retrieve_samples(samples, cfg.retrieval, cache)[0]
