"""HotpotQA and NQ-open / TriviaQA through the RAG path (issue #13), on hand-written local files in the upstream
formats (`tests/fixtures/rag/`): the loaders, retrieval (`corpus: task | sample`, bm25 / hybrid, `harness retrieve`
recall@k against the gold passages) and the filters' stored gold-support precision and recall."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.cli import main
from harness.config import RetrievalConfig
from harness.records import Sample
from harness.retrieval import gold_support, recall_at_k, retrieve_samples
from harness.tasks import load_task
from tests.conftest import need, need_pack

FIX = Path(__file__).parent / "fixtures" / "rag"
HOTPOT = FIX / "hotpot_dev_distractor_v1.json"
DPR = {"nq-open": FIX / "nq-dev.json", "triviaqa": FIX / "trivia-dev.json"}


@pytest.fixture(autouse=True)
def _offline_cache(offline_datasets: None) -> None:
    """Every test here reads local files only (see conftest.offline_datasets)."""


def _raw(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text(encoding="utf-8"))


def _hotpot() -> dict[str, Sample]:
    return {s.id: s for s in load_task("hotpotqa", options={"path": str(HOTPOT)})}


def _hub_parquet(folder: Path) -> Path:
    """The fixture in the hub's layout (`hotpotqa/hotpot_qa`, config distractor): parquet files per split with the
    hub's features (`context: {title, sentences}`, `supporting_facts: {title, sent_id}` as sequences of structs)."""
    import datasets

    feats = datasets.Features({
        "id": datasets.Value("string"), "question": datasets.Value("string"), "answer": datasets.Value("string"),
        "type": datasets.Value("string"), "level": datasets.Value("string"),
        "supporting_facts": datasets.Sequence({"title": datasets.Value("string"), "sent_id": datasets.Value("int32")}),
        "context": datasets.Sequence({"title": datasets.Value("string"),
                                      "sentences": datasets.Sequence(datasets.Value("string"))}),
    })
    rows = [{"id": r["_id"], "question": r["question"], "answer": r["answer"], "type": r["type"], "level": r["level"],
             "supporting_facts": {"title": [t for t, _ in r["supporting_facts"]],
                                  "sent_id": [j for _, j in r["supporting_facts"]]},
             "context": {"title": [t for t, _ in r["context"]], "sentences": [s for _, s in r["context"]]}}
            for r in _raw(HOTPOT)]
    d = folder / "distractor"
    d.mkdir(parents=True)
    datasets.Dataset.from_list(rows, features=feats).to_parquet(str(d / "validation-00000-of-00001.parquet"))
    datasets.Dataset.from_list(rows[:1], features=feats).to_parquet(str(d / "train-00000-of-00002.parquet"))
    return folder


# ----------------------------------------------------------------------------- loaders


def test_hotpot_upstream_json_and_hub_parquet_keep_the_dataset_sentences(tmp_path: Path) -> None:
    """Both layouts give the same samples; each paragraph's id is its title, its sentences are the dataset's own
    (so every supporting fact names exactly the sentence upstream names), and the gold spans are those sentences."""
    js = _hotpot()
    pq = {s.id: s for s in load_task("hotpotqa", split="validation", options={"path": str(_hub_parquet(tmp_path))})}
    assert js == pq and len(js) == 3
    for row in _raw(HOTPOT):
        s = js[row["_id"]]
        paras = dict(row["context"])
        assert [d.id for d in s.documents] == [t for t, _ in row["context"]]
        facts = sorted(row["supporting_facts"])
        assert s.meta["supporting_sentences"] == [[t, j] for t, _ in row["context"] for u, j in facts if u == t]
        for did, j in s.meta["supporting_sentences"]:
            assert s.meta["doc_sentences"][did][j] == paras[did][j].strip()  # the exact upstream sentence
        for d in s.documents:
            assert d.is_gold == (d.id in {t for t, _ in row["supporting_facts"]})
            assert [d.text[a:b] for a, b in d.gold_spans] == [
                paras[d.id][j].strip() for t, j in facts if t == d.id]
            assert len(s.meta["doc_sentences"][d.id]) == len(paras[d.id])  # indices as upstream


def test_hotpot_title_ids_are_unique_per_paragraph_text(tmp_path: Path) -> None:
    """One title with two different paragraph texts in a file gets two ids (`T`, `T#2`); equal texts share one."""
    rows = _raw(HOTPOT)[:2]
    rows[1]["context"].append(["Tyler Bates", ["Tyler Bates is a composer.", " He scored \"300\"."]])
    rows.append({**_raw(HOTPOT)[0], "_id": "copy"})
    p = tmp_path / "h.json"
    p.write_text(json.dumps(rows))
    s = {x.id: x for x in load_task("hotpotqa", options={"path": str(p)})}
    assert "Tyler Bates" in [d.id for d in s[rows[0]["_id"]].documents]
    assert [d.id for d in s[rows[1]["_id"]].documents][-1] == "Tyler Bates#2"
    assert [d.id for d in s["copy"].documents] == [d.id for d in s[rows[0]["_id"]].documents]


@pytest.mark.parametrize("task", ["nq-open", "triviaqa"])
def test_dpr_files_keep_passage_ids_and_has_answer(task: str) -> None:
    """DPR retriever output (`nq-dev.json`, `trivia-dev.json`): the ctx ids are the document ids, gold = has_answer."""
    raw = _raw(DPR[task])
    samples = {s.id: s for s in load_task(task, options={"path": str(DPR[task])})}
    for i, row in enumerate(raw):
        s = samples[f"{task}-{i}"]
        assert s.answers == tuple(row["answers"]) and s.question == row["question"]
        assert [(d.id, d.is_gold) for d in s.documents] == [(c["id"], c["has_answer"]) for c in row["ctxs"]]
        assert gold_support(s.meta, s.context) == {}  # passage-level gold only: no support P/R is stored


# ----------------------------------------------------------------------------- retrieval


def _gold_ids(task: str) -> dict[str, set[str]]:
    """Gold passages by hand from the raw file: HotpotQA the supporting-fact titles, DPR the has_answer ctxs."""
    if task == "hotpotqa":
        return {r["_id"]: {t for t, _ in r["supporting_facts"]} for r in _raw(HOTPOT)}
    return {f"{task}-{i}": {c["id"] for c in r["ctxs"] if c["has_answer"]} for i, r in enumerate(_raw(DPR[task]))}


def _path(task: str) -> Path:
    return HOTPOT if task == "hotpotqa" else DPR[task]


def _n_passages(task: str) -> int:
    """Distinct passages of the file (a paragraph or ctx shared by two questions counts once)."""
    if task == "hotpotqa":
        return len({(t, json.dumps(s)) for r in _raw(HOTPOT) for t, s in r["context"]})
    return len({c["id"] for r in _raw(DPR[task]) for c in r["ctxs"]})


@pytest.mark.parametrize("task", ["hotpotqa", "nq-open", "triviaqa"])
@pytest.mark.parametrize("corpus", ["task", "sample"])
def test_bm25_retrieval_recall_against_the_files_gold(task: str, corpus: str) -> None:
    """`corpus: task` ranks the pooled passages of all samples (each shared passage once), `sample` each sample's
    own; recall@k is the share of the hand-read gold passages in the top k, and k covering every passage gives 1."""
    samples = load_task(task, options={"path": str(_path(task))})
    gold = _gold_ids(task)
    out, summary = retrieve_samples(samples, RetrievalConfig(corpus=corpus, retriever="bm25", top_k=2))
    assert summary["passages"] == (_n_passages(task) if corpus == "task" else sum(len(s.documents) for s in samples))
    assert summary["corpora"] == (1 if corpus == "task" else 3) and summary["with_gold"] == 3
    recalls = []
    for s in out:
        ids = s.meta["retrieval"]["ids"]
        assert len(ids) == 2 and s.meta["retrieval"]["recall"] == recall_at_k(ids, gold[s.id])
        assert {d.id for d in s.documents if d.is_gold} == gold[s.id] & set(ids)  # another question's gold is not
        recalls.append(len(gold[s.id] & set(ids)) / len(gold[s.id]))
    assert summary["recall_at_k"] == pytest.approx(sum(recalls) / 3)
    wide, ws = retrieve_samples(samples, RetrievalConfig(corpus=corpus, top_k=_n_passages(task)))
    assert ws["recall_at_k"] == 1.0
    if task == "hotpotqa":  # the retrieved passages' sentences travel with them: gold support can be measured
        for s in wide:
            assert set(s.meta["doc_sentences"]) == {d.id for d in s.documents}


def _retrieve_cfg(tmp_path: Path, task: str, retrieval: dict[str, Any]) -> Path:
    cfg = {"task": {"name": task, "options": {"path": str(_path(task))}},
           "models": {"predictor": {"model": "gguf/smollm2-135m"}}, "arms": ["full-context"], "retrieval": retrieval,
           "output": {"cache": str(tmp_path / "c.sqlite"), "store": None}}
    p = tmp_path / f"{task}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.parametrize("task", ["hotpotqa", "nq-open", "triviaqa"])
def test_retrieve_cli_prints_recall_on_local_files(tmp_path: Path, task: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`harness retrieve` on a local file prints recall@k of the gold passages (the value computed by hand from
    the retrieved ids); a second call reads the response cache."""
    p = _retrieve_cfg(tmp_path, task, {"corpus": "task", "retriever": "bm25", "top_k": 3})
    assert main(["retrieve", str(p), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    samples = load_task(task, options={"path": str(_path(task))})
    got, _ = retrieve_samples(samples, RetrievalConfig(corpus="task", top_k=3))
    gold = _gold_ids(task)
    hand = sum(len(gold[s.id] & set(s.meta["retrieval"]["ids"])) / len(gold[s.id]) for s in got) / 3
    assert out["recall_at_k"] == pytest.approx(hand) and out["passages"] == _n_passages(task)
    assert out["searched"] == 3 and out["with_gold"] == 3
    assert main(["retrieve", str(p)]) == 0
    text = capsys.readouterr().out
    assert f"recall@3: {hand:.3f} over 3 samples with gold passages" in text and "searched 0 of 3" in text


@pytest.mark.slow
def test_hybrid_retrieval_on_pooled_hotpot() -> None:
    """bm25 + all-MiniLM-L6-v2 (offline minilm-l6 pack) fused by reciprocal rank over the pooled HotpotQA paragraphs:
    each question's top 2 holds one of its supporting paragraphs."""
    from harness.backends import packs

    need(packs.embed_present("minilm-l6"), "minilm-l6 pack not fetched (harness models fetch minilm-l6)")
    samples = load_task("hotpotqa", options={"path": str(HOTPOT)})
    out, summary = retrieve_samples(samples, RetrievalConfig(corpus="task", retriever="hybrid", top_k=2))
    gold = _gold_ids("hotpotqa")
    assert summary["passages"] == _n_passages("hotpotqa")
    for s in out:
        assert gold[s.id] & set(s.meta["retrieval"]["ids"])
    assert summary["recall_at_k"] >= 0.5


def test_dpr_rows_without_ctx_ids_pool_apart(tmp_path: Path) -> None:
    """ctxs without an `id` get ids of their own row, so a pooled corpus keeps every question's passages apart."""
    rows = _raw(DPR["nq-open"])
    for r in rows:
        for c in r["ctxs"]:
            del c["id"]
    p = tmp_path / "nq.json"
    p.write_text(json.dumps(rows))
    samples = load_task("nq-open", options={"path": str(p)})
    assert [d.id for d in samples[0].documents][:2] == [f"{samples[0].id}#c0", f"{samples[0].id}#c1"]
    _, summary = retrieve_samples(samples, RetrievalConfig(corpus="task", top_k=1))
    assert summary["passages"] == sum(len(r["ctxs"]) for r in rows)


# ----------------------------------------------------------------------------- filters: gold support


def _hand_support(row: dict[str, Any], text: str) -> tuple[float | None, float, int]:
    """Gold-support precision, recall and kept count of a compression, by hand from the raw HotpotQA row: a sentence
    is kept when its words appear whole in the text; gold = the row's supporting_facts."""
    flat = " ".join(text.split())
    kept = {(t, j) for t, sents in row["context"] for j, s in enumerate(sents) if s.strip() and s.strip() in flat}
    gold = {(t, j) for t, j in row["supporting_facts"]}
    return (len(kept & gold) / len(kept) if kept else None), len(kept & gold) / len(gold), len(kept)


@pytest.mark.slow
def test_filters_store_gold_support_on_hotpot(tmp_path: Path) -> None:
    """A real tiny sweep on the HotpotQA file (retrieval bm25 over each sample's paragraphs, top_k covering them all;
    filter/full, filter/extractive {sentences: 2}, filter/ib-oracle; smollm2 predictor and float32 scorer) stores
    for every compression the gold-support precision and recall of the supporting_facts: full keeps recall 1 at
    precision #supporting / #sentences, the others match the count by hand."""
    need_pack("smollm2-135m")
    from harness.config import parse_sweep_config
    from harness.pipeline.sweep import run_sweep
    from harness.store import Store

    tok = "gguf/smollm2-135m"
    filters = [{"model": "filter/full", "tokenizer": tok},
               {"model": "filter/extractive", "tokenizer": tok, "options": {"sentences": 2}},
               {"model": "filter/ib-oracle", "tokenizer": tok, "options": {"budgets": [1], "max_single": 2}}]
    cfg = parse_sweep_config({
        "name": "hotpot-filters", "task": {"name": "hotpotqa", "size": 2, "options": {"path": str(HOTPOT)}},
        "retrieval": {"corpus": "sample", "retriever": "bm25", "top_k": 5},
        "models": {"compressor": filters[0], "predictor": {"model": tok, "dtype": "float32"},
                   "scorer": {"model": tok, "dtype": "float32"}},
        "arms": ["compressed"], "generation": {"predictor": {"max_new_tokens": 4}},
        "sweep": {"compressors": filters, "predictors": [tok]},
        "output": {"dir": str(tmp_path / "out"), "store": str(tmp_path / "s.db"), "cache": None}})
    out = run_sweep(cfg, quiet=True)
    assert out["predictions"]["errors"] == 0
    raw = {r["_id"]: r for r in _raw(HOTPOT)}
    st = Store.open(str(tmp_path / "s.db"))
    try:
        kinds = {m["model_id"]: m["name"] for m in st.rows("models") if m["backend"] == "filter"}
        comps = st.rows("compressions")
        assert sorted(kinds[c["compressor_model_id"]] for c in comps) == sorted(["full", "extractive",
                                                                               "ib-oracle"] * 2)
        for c in comps:
            kind, row, text = kinds[c["compressor_model_id"]], raw[c["sample_id"]], c["text"]
            terms = st.compression_terms(c["compression_id"])
            p, r, n = _hand_support(row, text)
            assert terms.get("support_recall") == pytest.approx(r), kind
            assert (terms.get("support_precision") is None) if p is None else terms["support_precision"] == \
                pytest.approx(p)
            if kind == "full":
                n_sents = sum(1 for _, sents in row["context"] for s in sents if s.strip())
                assert r == 1.0 and n == n_sents and terms["compression_rate"] == 1.0
                assert terms["support_precision"] == pytest.approx(len(row["supporting_facts"]) / n_sents)
            elif kind == "extractive":
                assert n == 2 and terms["compression_rate"] < 1
            else:  # ib-oracle: abstains (nothing kept) or keeps one sentence
                assert n == (0 if terms["abstain"] else 1)
    finally:
        st.close()


# ----------------------------------------------------------------------------- the example config


CONFIG = Path(__file__).parents[1] / "configs" / "rag-filter-hotpotqa.yaml"


def test_hotpot_filter_config_reads_a_local_file_and_names_a_missing_one(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """configs/rag-filter-hotpotqa.yaml: with `--set task.options.path=FILE` it retrieves the file's questions (recall
    of the supporting paragraphs); its placeholder path, missing, stops tune-filter with one line and exit 2."""
    cache = f"output.cache={tmp_path / 'c.sqlite'}"
    assert main(["retrieve", str(CONFIG), "--json", "--set", f"task.options.path={HOTPOT}", "--set", cache]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["with_gold"] == 3 and out["recall_at_k"] == 1.0 and out["k"] == 5  # k covers each row's paragraphs
    if (CONFIG.parents[1] / "data" / "hotpotqa" / "hotpot_dev_distractor_v1.json").exists():
        pytest.skip("a real HotpotQA file sits at the placeholder path")
    rc = main(["tune-filter", str(CONFIG), "--set", f"output.dir={tmp_path / 'out'}",
               "--set", f"output.store={tmp_path / 's.db'}", "--set", cache])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "task.options.path: 'data/hotpotqa/hotpot_dev_distractor_v1.json' does not exist" in err
