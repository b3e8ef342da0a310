"""Retrieval for RAG: corpora (`corpus`), retrievers (`retrievers`: BM25, dense, hybrid), the cached retrieval step
that sets each sample's context (`apply`), and pure gold-evidence measures (`gold`)."""

from harness.retrieval.apply import check_retrieval, retrieve_samples, samples_for
from harness.retrieval.gold import gold_support, kept_sentences, recall_at_k, support_precision_recall

__all__ = ["check_retrieval", "gold_support", "kept_sentences", "recall_at_k", "retrieve_samples", "samples_for",
           "support_precision_recall"]
