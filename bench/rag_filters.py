"""Retrieval recall@k and what each RAG filter keeps on synthetic-multidoc (offline, CPU).

    python bench/rag_filters.py [--size 40] [--k 5] [--oracle 4]

Prints recall@k of the gold passages for bm25 / dense / hybrid (each sample ranks its own passages), then for
each filter over the BM25-retrieved contexts: mean compression rate (tokens kept / tokens retrieved, smollm2's
tokenizer) and gold-support precision / recall of the supporting sentences; with --oracle N, the ib-oracle
(smollm2 float32 scorer, beta 10) on the first N samples with its mean IB terms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from harness.backends.transformers import TransformersBackend
    from harness.compressors.filters import FilterCompressor
    from harness.compressors.ib import IBScorer
    from harness.config import RetrievalConfig
    from harness.records import GenParams
    from harness.retrieval import gold_support, retrieve_samples
    from harness.tasks import load_task

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=40)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--oracle", type=int, default=0)
    ap.add_argument("--dense", action="store_true", help="also dense and hybrid recall (loads MiniLM)")
    a = ap.parse_args()
    samples = load_task("synthetic-multidoc", size=a.size, seed=0)
    print(f"synthetic-multidoc: {len(samples)} samples, {len(samples[0].documents)} passages each, k={a.k}")
    retrieved = None
    for r in ("bm25", "dense", "hybrid") if a.dense else ("bm25",):
        t = time.time()
        out, s = retrieve_samples(samples, RetrievalConfig(corpus="sample", retriever=r, top_k=a.k))
        print(f"  recall@{a.k} {r:<6} {s['recall_at_k']:.3f}  ({time.time() - t:.1f} s)")
        retrieved = retrieved or out
    assert retrieved is not None
    tok = TransformersBackend("gguf", "smollm2-135m", dtype="float32")
    filters = [("full", {}), ("truncate", {"tokens": 128}), ("extractive", {"sentences": 2}),
               ("extractive", {"sentences": 4}), ("extractive", {"tokens": 64})]
    print("| filter | rate | support precision | support recall |\n|---|---|---|---|")
    for kind, opts in filters:
        f = FilterCompressor(f"filter/{kind}", opts, tokenizer=tok)
        rates, ps, rs = [], [], []
        for smp in retrieved:
            text = f.text(smp)
            rates.append(tok.count_tokens(text) / tok.count_tokens(smp.context))
            g = gold_support(smp.meta, text)
            if g.get("support_precision") is not None:
                ps.append(g["support_precision"])
            rs.append(g["support_recall"])
        p = statistics.mean(ps) if ps else float("nan")
        print(f"| {kind} {opts} | {statistics.mean(rates):.3f} | {p:.3f} | {statistics.mean(rs):.3f} |")
    if a.oracle:
        be = TransformersBackend("gguf", "smollm2-135m", dtype="float32", batch_size=8)
        o = FilterCompressor("filter/ib-oracle", {"budgets": [1, 2, 4], "max_single": 4}, tokenizer=tok,
                             ib=IBScorer(be, tokenizer=tok))
        t = time.time()
        rows = []
        for smp in retrieved[: a.oracle]:
            [gen] = o.compress([(o.prepare(smp, "error")[0], GenParams())])
            det = o.details[smp.id]
            c = next(x for x in det["candidates"] if x["name"] == det["chosen"])
            rows.append((det["chosen"], c, gold_support(smp.meta, gen.text)))
        print(f"ib-oracle on {a.oracle} samples ({time.time() - t:.0f} s): chosen {[r[0] for r in rows]}")
        for key in ("compression_rate", "conciseness_bits", "correctness_bits", "ib_score"):
            print(f"  mean {key}: {statistics.mean(r[1][key] for r in rows):.3f}")
        print(f"  mean support recall: {statistics.mean(r[2]['support_recall'] for r in rows):.3f}")


if __name__ == "__main__":
    main()
