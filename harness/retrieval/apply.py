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


def check_retrieval(rc: RetrievalConfig, field: str = "retrieval") -> None:
    """One-line `UserError` for a corpus folder that is missing or empty, or a dense embedder that is not fetched."""
    if rc.corpus not in ("task", "sample"):
        p = Path(rc.corpus).expanduser()
        if not p.exists():
            raise UserError(f"{field}.corpus: '{rc.corpus}' does not exist; write 'task' (the task's passages), "
                            "'sample' (each sample's own) or a folder of .txt/.md/.jsonl files")
        if not p.is_dir():
            raise UserError(f"{field}.corpus: '{rc.corpus}' is a file; point it at a folder of .txt/.md/.jsonl files")
        folder_corpus(p, f"{field}.corpus")
    if rc.retriever in ("dense", "hybrid"):
        from harness.backends import packs

        if rc.embedder not in packs.EMBED_PACKS:
            raise UserError(f"{field}.embedder: unknown embedding pack '{rc.embedder}'; use one of "
                            f"{', '.join(packs.EMBED_PACKS)}")
        if not packs.embed_present(rc.embedder):
            raise UserError(f"{field}.embedder: the '{rc.embedder}' pack is not fetched; run "
                            f"`harness models fetch {rc.embedder}`")


def identity(rc: RetrievalConfig, chash: str) -> ModelIdentity:
    """What makes a ranking what it is: retriever, embedder, corpus content and the code version."""
    emb = rc.embedder if rc.retriever != "bm25" else ""
    return ModelIdentity("retrieval", f"{rc.retriever}:{emb}", chash, f"v{RETRIEVAL_VERSION}", "")


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
    from harness.backends.cache import cache_key

    check_retrieval(rc)
    if rc.corpus == "sample":  # each sample ranks its own passages (HotpotQA's distractor setting)
        corpora = [task_corpus([s]) for s in samples]
    else:
        shared = task_corpus(samples) if rc.corpus == "task" else folder_corpus(rc.corpus)
        corpora = [shared] * len(samples)
    if not any(corpora):
        raise UserError("retrieval.corpus: the task's samples have no passages to retrieve from")
    hashes = {id(c): corpus_hash(c) for c in corpora}
    results: list[dict[str, Any] | None] = [None] * len(samples)
    keys: list[str] = []
    for n, (s, docs) in enumerate(zip(samples, corpora, strict=True)):
        req = {"query": s.question, "k": min(rc.top_k, len(docs))}
        keys.append(cache_key("retrieval", identity(rc, hashes[id(docs)]), req))
        hit = cache.get(keys[-1]) if cache is not None else None
        ids = {d.id for d in docs}
        if hit is not None and all(i in ids for i in hit["ids"]):
            results[n] = hit
    searched: dict[str, dict[str, Any]] = {}  # cache key -> result, for queries asked twice in this call
    retrievers: dict[int, Any] = {}
    for n, (s, docs) in enumerate(zip(samples, corpora, strict=True)):
        if results[n] is not None or not docs:
            results[n] = results[n] or {"ids": [], "scores": []}
            continue
        if keys[n] not in searched:
            if id(docs) not in retrievers:
                retrievers[id(docs)] = make_retriever(rc.retriever, [passage_text(d) for d in docs], rc.embedder)
                STATS["indexes"] += 1
            idx, sc = top_k(retrievers[id(docs)].scores(s.question), rc.top_k)
            STATS["queries"] += 1
            res = {"ids": [docs[i].id for i in idx], "scores": [float(x) for x in sc]}
            searched[keys[n]] = res
            if cache is not None:
                req = {"query": s.question, "k": min(rc.top_k, len(docs))}
                cache.put(keys[n], "retrieval", identity(rc, hashes[id(docs)]), req, res)
        results[n] = searched[keys[n]]
    sentences: dict[str, list[str]] = {}
    for s in samples:
        sentences.update(s.meta.get("doc_sentences") or {})
    out, recalls = [], []
    for s, docs, res in zip(samples, corpora, results, strict=True):
        assert res is not None
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
