"""Dataset loaders in `harness.tasks.hub`, each on a small local file in its upstream format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.errors import UserError
from harness.tasks import load_task
from harness.tasks.hub import FINANCEBENCH_FILE, FINEWEB_QUESTION, WILDCHAT_QUESTION, parse_plain_number
from tests.conftest import need


@pytest.fixture(autouse=True)
def _offline_cache(offline_datasets: None) -> None:
    """Every test here reads local files only (see conftest.offline_datasets)."""


def _write_json(path: Path, obj: Any) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


# ----------------------------------------------------------------------------- LongHealth


def _lh_question(no: int, q: str, options: list[str], correct: str, loc: dict[str, Any]) -> dict[str, Any]:
    d = {"No": no, "question": q, "correct": correct, "answer_location": loc}
    d.update({f"answer_{c}": o for c, o in zip("abcde", options, strict=True)})
    return d


def _longhealth(tmp_path: Path) -> dict[str, Any]:
    t1 = "Discharge letter. " + "Filler text. " * 20 + "Diagnosis: acute appendicitis." + " More." * 10
    frac_start = t1.index("Diagnosis") / len(t1)
    frac_end = (t1.index("appendicitis.") + len("appendicitis.")) / len(t1)
    return {
        "patient_01": {
            "name": "Anna Alpha", "birthday": "1970-01-01", "diagnosis": "appendicitis",
            "texts": {"text_0": "Admission note for Anna Alpha. " * 5, "text_1": t1},
            "questions": [
                _lh_question(1, "What was Anna Alpha diagnosed with?",
                             ["Flu", "Acute appendicitis", "Gout", "Asthma", "Cold"], "Acute appendicitis",
                             {"text_1": {"start": [frac_start], "end": [frac_end]}}),
                _lh_question(2, "When was Anna Alpha admitted?", ["Mon", "Tue", "Wed", "Thu", "Fri"], "Wed",
                             {"text_0": {"start": [0.0], "end": [0.2]}}),
            ],
        },
        "patient_02": {
            "name": "Bob Beta", "birthday": "1960-02-02", "diagnosis": "gout",
            "texts": {"text_0": "Bob Beta letter one. " * 4, "text_1": "Bob Beta letter two. " * 4},
            "questions": [_lh_question(1, "What does Bob Beta have?", ["Gout", "Flu", "Cold", "Asthma", "None"],
                                       "Gout", {"text_0": {"start": [0.1], "end": [0.3]}})],
        },
        "patient_03": {
            "name": "Cara Gamma", "birthday": "1950-03-03", "diagnosis": "asthma",
            "texts": {"text_0": "Cara Gamma letter. " * 4},
            "questions": [_lh_question(1, "What does Cara Gamma have?", ["Gout", "Flu", "Cold", "Asthma", "None"],
                                       "Asthma", {"text_0": {"start": [0.0], "end": [1.0]}})],
        },
    }


def test_longhealth_parses_choices_gold_and_spans(tmp_path: Path) -> None:
    data = _longhealth(tmp_path)
    path = _write_json(tmp_path / "benchmark_v5.json", data)
    samples = load_task("longhealth", options={"path": path})
    assert len(samples) == 4
    by_id = {s.id: s for s in samples}
    s = by_id["patient_01-q1"]
    assert s.answer_type == "choice"
    assert s.choices == ("Flu", "Acute appendicitis", "Gout", "Asthma", "Cold")
    assert s.answers == ("Acute appendicitis", "B")
    assert {d.id for d in s.documents} == {"patient_01/text_0", "patient_01/text_1"}
    gold = [d for d in s.documents if d.is_gold]
    assert [d.id for d in gold] == ["patient_01/text_1"]
    a, b = gold[0].gold_spans[0]
    assert "Diagnosis: acute appendicitis" in gold[0].text[a - 1:b + 1]
    assert sorted(d.title for d in s.documents) == ["Document 1", "Document 2"]
    assert s.meta["distractor_patients"] == []
    assert s.group_id  # registry fills the normalised question


def test_longhealth_distractors_budget_and_size(tmp_path: Path) -> None:
    path = _write_json(tmp_path / "benchmark_v5.json", _longhealth(tmp_path))
    opts = {"path": path, "n_distractor_patients": 1, "context_tokens": None}
    s1 = load_task("longhealth", seed=3, options=opts)
    s2 = load_task("longhealth", seed=3, options=opts)
    assert [x.documents for x in s1] == [x.documents for x in s2]
    for s in s1:
        pid = s.id.split("-")[0]
        assert len(s.meta["distractor_patients"]) == 1
        others = [d for d in s.documents if not d.id.startswith(pid)]
        assert others and not any(d.is_gold for d in others)
    tight = load_task("longhealth", options={"path": path, "n_distractor_patients": 2, "context_tokens": 10})
    for s in tight:  # budget too small for anything but the gold texts, which are always kept
        assert s.documents and all(d.is_gold for d in s.documents)
    full = load_task("longhealth", seed=5, options={"path": path})
    assert [s.id for s in load_task("longhealth", size=2, seed=5, options={"path": path})] == [s.id for s in full[:2]]
    with pytest.raises(UserError, match="n_distractor_patients"):
        load_task("longhealth", options={"path": path, "n_distractor_patients": 5})


def test_longhealth_malformed_rows(tmp_path: Path) -> None:
    data = _longhealth(tmp_path)
    del data["patient_02"]["questions"][0]["correct"]
    path = _write_json(tmp_path / "bad.json", data)
    with pytest.raises(UserError, match=r"patient_02-q1.*'correct'"):
        load_task("longhealth", options={"path": path})
    data = _longhealth(tmp_path)
    data["patient_03"]["questions"][0]["correct"] = "Not an option"
    with pytest.raises(UserError, match=r"patient_03-q1.*'correct' matches none"):
        load_task("longhealth", options={"path": _write_json(tmp_path / "bad2.json", data)})
    with pytest.raises(UserError, match=r"task\.options\.path"):
        load_task("longhealth")  # no hub copy and no path
    with pytest.raises(UserError, match="does not exist"):
        load_task("longhealth", options={"path": str(tmp_path / "missing.json")})


# ----------------------------------------------------------------------------- FinanceBench (real sample file)


def _financebench_file() -> Path:
    """The real sample file; skips when absent, fails under CI=true."""
    need(FINANCEBENCH_FILE.exists(), f"FinanceBench sample not present at {FINANCEBENCH_FILE}")
    return FINANCEBENCH_FILE


def test_parse_plain_number() -> None:
    assert parse_plain_number("$1,577.00") == (1577.0, "$")
    assert parse_plain_number("1.9%") == (1.9, "%")
    assert parse_plain_number("-0.02") == (-0.02, "")
    assert parse_plain_number("$400,000,000 increase.") is None
    assert parse_plain_number("Yes") is None


def test_financebench_counts_and_subsets() -> None:
    _financebench_file()
    every = load_task("financebench")
    numeric = load_task("financebench", options={"subset": "numeric"})
    text = load_task("financebench", options={"subset": "text"})
    single = load_task("financebench", options={"subset": "numeric", "single_evidence_only": True})
    assert len(every) == 150
    assert len(numeric) == 52 and len(text) == 98
    assert len(single) == 29 and all(s.meta["n_evidence"] == 1 for s in single)
    assert all(s.answer_type == "number" and not s.meta["needs_judge"] for s in numeric)
    assert all(s.answer_type == "text" and s.meta["needs_judge"] for s in text)
    capex = next(s for s in numeric if s.id == "financebench_id_03029")
    assert capex.answers == ("$1577.00", "1577") and capex.meta["number"] == 1577.0
    assert [s.id for s in load_task("financebench", size=10, seed=1)] == [s.id for s in
                                                                           load_task("financebench", seed=1)[:10]]


def test_financebench_gold_context_holds_evidence() -> None:
    path = _financebench_file()
    rows = {r["financebench_id"]: r for r in map(json.loads, path.read_text().splitlines())}
    for s in load_task("financebench"):
        assert s.documents and all(d.is_gold and d.gold_spans for d in s.documents)
        gold = s.gold_context()
        for e in rows[s.id]["evidence"]:
            assert e["evidence_text"].strip() in gold
            assert e["evidence_text_full_page"] in s.context


def test_financebench_full_context_same_company_within_budget() -> None:
    path = _financebench_file()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    company_docs: dict[str, set[str]] = {}
    for r in rows:
        company_docs.setdefault(r["company"], set()).update(e["doc_name"] for e in r["evidence"])
    full = load_task("financebench", options={"context": "full", "context_tokens": 3000})
    added = 0
    for s in full:
        extra = [d for d in s.documents if not d.is_gold]
        gold = [d for d in s.documents if d.is_gold]
        assert len(gold) == len(s.meta["evidence_pages"])
        assert all(d.id.split("#")[0] in company_docs[s.meta["company"]] for d in extra)
        assert not {d.id for d in extra} & set(s.meta["evidence_pages"])
        assert len(s.context) <= 3000 * 4 or not extra
        added += bool(extra)
    assert added > 50
    tiny = load_task("financebench", options={"context": "full", "context_tokens": 1})
    assert all(d.is_gold for s in tiny for d in s.documents)


def test_financebench_local_rows_and_malformed(tmp_path: Path) -> None:
    page = "Revenue was 10. Costs were 4. Net income was 6."
    row = {"financebench_id": "fb1", "company": "Acme", "doc_name": "ACME_2022_10K", "question": "Net income?",
           "answer": "6", "evidence": [{"evidence_text": "Net income was 6.", "doc_name": "ACME_2022_10K",
                                        "evidence_page_num": 3, "evidence_text_full_page": page}]}
    other = {**row, "financebench_id": "fb2", "question": "Revenue?", "answer": "Revenue was ten dollars.",
             "evidence": [{**row["evidence"][0], "evidence_page_num": 4, "evidence_text": "Revenue was 10.",
                           "evidence_text_full_page": "Page four. Revenue was 10."}]}
    path = _write_jsonl(tmp_path / "fb.jsonl", [row, other])
    samples = {s.id: s for s in load_task("financebench", options={"path": path, "context": "full"})}
    s = samples["fb1"]
    assert s.answer_type == "number" and samples["fb2"].answer_type == "text"
    gold = next(d for d in s.documents if d.is_gold)
    assert gold.id == "ACME_2022_10K#3" and gold.text[slice(*gold.gold_spans[0])] == "Net income was 6."
    assert [d.id for d in s.documents if not d.is_gold] == ["ACME_2022_10K#4"]
    del other["evidence"][0]["evidence_text_full_page"]
    bad = _write_jsonl(tmp_path / "bad.jsonl", [row, other])
    with pytest.raises(UserError, match=r"row 1 \(id fb2\).*evidence_text_full_page"):
        load_task("financebench", options={"path": bad})
    with pytest.raises(UserError, match=r"task\.options\.subset"):
        load_task("financebench", options={"path": path, "subset": "floats"})


# ----------------------------------------------------------------------------- QASPER


def _qasper_answer(spans: list[str], evidence: list[str], *, unanswerable: bool = False,
                   free_form: str = "") -> dict[str, Any]:
    return {"unanswerable": unanswerable, "extractive_spans": spans, "yes_no": None, "free_form_answer": free_form,
            "evidence": evidence, "highlighted_evidence": evidence}


def _qasper_papers() -> list[dict[str, Any]]:
    """Two papers in the upstream (list-of-objects) form."""
    p1_method = "We train a BiLSTM tagger on the CoNLL corpus."
    return [
        {"id": "paper1", "title": "Tagging", "abstract": "We study tagging.",
         "full_text": [{"section_name": "Introduction", "paragraphs": ["Tagging matters.", ""]},
                       {"section_name": "Method", "paragraphs": [p1_method, "We use Adam."]}],
         "figures_and_tables": [{"caption": "Table 1: Results on CoNLL.", "file": "t1.png"}],
         "qas": [
             {"question": "What model do they use?", "question_id": "q1",
              "answers": [{"answer": _qasper_answer(["BiLSTM tagger"], [p1_method]), "annotation_id": "a1",
                           "worker_id": "w1"},
                          {"answer": _qasper_answer(["BiLSTM", "tagger"], [p1_method]), "annotation_id": "a2",
                           "worker_id": "w2"},
                          {"answer": _qasper_answer([], [], free_form="an LSTM"), "annotation_id": "a3",
                           "worker_id": "w3"}]},
             {"question": "Do they use BERT?", "question_id": "q2",
              "answers": [{"answer": _qasper_answer([], [], unanswerable=True), "annotation_id": "a4",
                           "worker_id": "w1"}]},
             {"question": "Which dataset?", "question_id": "q3",
              "answers": [{"answer": _qasper_answer([], [], free_form="CoNLL"), "annotation_id": "a5",
                           "worker_id": "w1"}]},
         ]},
        {"id": "paper2", "title": "Tables", "abstract": "Tables.",
         "full_text": [{"section_name": None, "paragraphs": ["Results are in a table."]}],
         "figures_and_tables": [{"caption": "Table 2: F1 of 91.2 on CoNLL.", "file": "t2.png"}],
         "qas": [{"question": "What F1 do they get?", "question_id": "q4",
                  "answers": [{"answer": _qasper_answer(["91.2"], ["FLOAT SELECTED: Table 2: F1 of 91.2 on CoNLL."]),
                               "annotation_id": "a6", "worker_id": "w1"}]}]},
    ]


def _columns(records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {k: [r[k] for r in records] for k in records[0]} if records else {}


def _qasper_hub_row(p: dict[str, Any]) -> dict[str, Any]:
    """One paper in the hub (arrow `Sequence` = dict of lists) form."""
    qas = [{**q, "answers": _columns(q["answers"])} for q in p["qas"]]
    return {**p, "full_text": _columns(p["full_text"]), "figures_and_tables": _columns(p["figures_and_tables"]),
            "qas": _columns(qas)}


def test_qasper_hub_and_upstream_forms(tmp_path: Path) -> None:
    papers = _qasper_papers()
    hub = _write_jsonl(tmp_path / "qasper-test.jsonl", [_qasper_hub_row(p) for p in papers])
    upstream = _write_json(tmp_path / "qasper-test-v0.3.json", {p["id"]: {k: v for k, v in p.items() if k != "id"}
                                                                for p in papers})
    for path in (hub, upstream):
        samples = {s.id: s for s in load_task("qasper", options={"path": path})}
        assert sorted(samples) == ["q1", "q4"]  # unanswerable and free-form-only questions dropped
        s = samples["q1"]
        assert s.answers == ("BiLSTM tagger", "BiLSTM, tagger")
        assert [d.title for d in s.documents] == ["Abstract", "Introduction", "Method", "Figures and tables"]
        gold = [d for d in s.documents if d.is_gold]
        assert [d.title for d in gold] == ["Method"]
        assert gold[0].text[slice(*gold[0].gold_spans[0])] == "We train a BiLSTM tagger on the CoNLL corpus."
        t = samples["q4"]
        assert [d.title for d in t.documents if d.is_gold] == ["Figures and tables"]
        assert t.meta["paper_id"] == "paper2"
    no_caps = load_task("qasper", options={"path": hub, "include_captions": False})
    assert all("Figures and tables" not in [d.title for d in s.documents] for s in no_caps)


def test_qasper_malformed(tmp_path: Path) -> None:
    papers = _qasper_papers()
    del papers[1]["qas"][0]["question"]
    path = _write_jsonl(tmp_path / "q.jsonl", [_qasper_hub_row(p) for p in papers])
    with pytest.raises(UserError, match=r"row 1 \(id q4\).*'question'"):
        load_task("qasper", options={"path": path})


# ----------------------------------------------------------------------------- HotpotQA


def _hotpot_upstream() -> list[dict[str, Any]]:
    return [
        {"_id": "h1", "question": "Which city hosts the band's label?", "answer": "Paris", "type": "bridge",
         "level": "hard", "supporting_facts": [["Band", 1], ["Label", 0]],
         "context": [["Band", ["The Band is a group.", " It signed to Label."]],
                     ["Label", ["Label is based in Paris.", " It was founded in 1990."]],
                     ["Other", ["Other is unrelated."]]]},
        {"_id": "h2", "question": "Are A and B both cats?", "answer": "yes", "type": "comparison",
         "level": "easy", "supporting_facts": [["A", 0], ["B", 0]],
         "context": [["A", ["A is a cat."]], ["Noise", ["Noise."]], ["B", ["B is a cat."]]]},
    ]


def _hotpot_hub(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["_id"], "question": row["question"], "answer": row["answer"], "type": row["type"],
            "level": row["level"],
            "supporting_facts": {"title": [t for t, _ in row["supporting_facts"]],
                                 "sent_id": [s for _, s in row["supporting_facts"]]},
            "context": {"title": [t for t, _ in row["context"]], "sentences": [s for _, s in row["context"]]}}


def test_hotpotqa_upstream_json_and_hub_parquet(tmp_path: Path) -> None:
    import datasets

    upstream = _write_json(tmp_path / "hotpot_dev_distractor_v1.json", _hotpot_upstream())
    folder = tmp_path / "hub"
    folder.mkdir()
    datasets.Dataset.from_list([_hotpot_hub(r) for r in _hotpot_upstream()]).to_parquet(
        str(folder / "validation-00000.parquet"))
    datasets.Dataset.from_list([_hotpot_hub(_hotpot_upstream()[0])]).to_parquet(str(folder / "train-00000.parquet"))
    for path in (upstream, str(folder)):
        samples = {s.id: s for s in load_task("hotpotqa", options={"path": path})}
        assert sorted(samples) == ["h1", "h2"]  # folder: the split's files only
        s = samples["h1"]
        assert s.answers == ("Paris",) and s.meta["type"] == "bridge" and s.meta["level"] == "hard"
        assert [d.title for d in s.documents] == ["Band", "Label", "Other"]
        assert [d.is_gold for d in s.documents] == [True, True, False]
        band, label = s.documents[0], s.documents[1]
        assert band.text == "The Band is a group. It signed to Label."
        assert [band.text[a:b] for a, b in band.gold_spans] == ["It signed to Label."]
        assert [label.text[a:b] for a, b in label.gold_spans] == ["Label is based in Paris."]
        assert [d.id for d in s.documents] == ["Band", "Label", "Other"]  # a paragraph's id is its title
        assert s.meta["sentence_labels"] == {"Band": [0, 1], "Label": [1, 0], "Other": [0]}
        assert s.meta["doc_sentences"]["Label"] == ["Label is based in Paris.", "It was founded in 1990."]
        assert s.meta["supporting_sentences"] == [["Band", 1], ["Label", 0]]
        assert "Label is based in Paris." in s.gold_context() and "Other" not in s.gold_context()
    assert len(load_task("hotpotqa", size=1, options={"path": upstream})) == 1


def test_hotpotqa_malformed(tmp_path: Path) -> None:
    rows = _hotpot_upstream()
    del rows[1]["answer"]
    with pytest.raises(UserError, match=r"row 1 \(id h2\).*'answer'") as err:
        load_task("hotpotqa", options={"path": _write_json(tmp_path / "h.json", rows)})
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- NQ-open / TriviaQA


def _dpr_rows() -> list[dict[str, Any]]:
    def ctx(i: int, text: str, has: bool | None) -> dict[str, Any]:
        c = {"id": f"w{i}", "title": f"T{i}", "text": text, "score": str(90 - i)}
        if has is not None:
            c["has_answer"] = has
        return c

    return [
        {"question": "who wrote hamlet", "answers": ["William Shakespeare", "Shakespeare"],
         "ctxs": [ctx(1, "Hamlet is a play.", False), ctx(2, "It was written by William Shakespeare.", True),
                  ctx(3, "Shakespeare again.", True)]},
        {"question": "capital of france", "answers": ["Paris"],
         "ctxs": [ctx(4, "The capital is Paris.", None), ctx(5, "Lyon is big.", None)]},
        {"question": "largest planet", "answers": ["Jupiter"],
         "ctxs": [ctx(6, "Saturn has rings.", False), ctx(7, "Mars is red.", False)]},
    ]


@pytest.mark.parametrize("task", ["nq-open", "triviaqa"])
def test_dpr_topk_gold_and_aliases(tmp_path: Path, task: str) -> None:
    path = _write_json(tmp_path / "retrieved.json", _dpr_rows())
    samples = {s.id: s for s in load_task(task, options={"path": path, "top_k": 2})}
    assert sorted(samples) == [f"{task}-0", f"{task}-1", f"{task}-2"]
    s = samples[f"{task}-0"]
    assert s.answers == ("William Shakespeare", "Shakespeare")
    assert [d.id for d in s.documents] == ["w1", "w2"]  # top_k
    assert [d.is_gold for d in s.documents] == [False, True]
    gold = s.documents[1]
    assert gold.text[slice(*gold.gold_spans[0])] == "William Shakespeare"
    assert s.meta["scores"] == [89.0, 88.0]
    assert [d.is_gold for d in samples[f"{task}-1"].documents] == [True, False]  # has_answer absent: string match
    assert not samples[f"{task}-2"].meta["has_gold"]
    wide = {s.id: s for s in load_task(task, options={"path": path, "top_k": 3})}
    assert [len(wide[f"{task}-{i}"].documents) for i in range(3)] == [3, 2, 2]


def test_dpr_malformed(tmp_path: Path) -> None:
    rows = _dpr_rows()
    del rows[2]["ctxs"][1]["text"]
    path = _write_json(tmp_path / "r.json", rows)
    with pytest.raises(UserError, match=r"row 2 \(id nq-open-2\).*ctxs\[1\]\.text"):
        load_task("nq-open", options={"path": path})
    with pytest.raises(UserError, match=r"task\.options\.top_k"):
        load_task("nq-open", options={"path": path, "top_k": 0})
    with pytest.raises(UserError, match=r"task\.options\.path"):
        load_task("triviaqa")


# ----------------------------------------------------------------------------- WildChat, FineWeb


def _wildchat_rows() -> list[dict[str, Any]]:
    def msg(role: str, content: str) -> dict[str, Any]:
        return {"role": role, "content": content, "language": "English", "toxic": False}

    return [
        {"conversation_hash": "c1", "model": "gpt-4", "language": "English", "toxic": False,
         "conversation": [msg("user", "Hi"), msg("assistant", "Hello!"), msg("user", "Tell a joke"),
                          msg("assistant", "Why did the chicken cross the road?")]},
        {"conversation_hash": "c2", "model": "gpt-4", "language": "French", "toxic": False,
         "conversation": [msg("user", "Bonjour"), msg("assistant", "Salut")]},
        {"conversation_hash": "c3", "model": "gpt-3.5", "language": "English", "toxic": True,
         "conversation": [msg("user", "bad"), msg("assistant", "no")]},
        {"conversation_hash": "c4", "model": "gpt-3.5", "language": "English", "toxic": False,
         "conversation": [msg("user", "Only a question")]},
    ]


def test_wildchat_history_and_reply(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "wildchat.jsonl", _wildchat_rows())
    samples = load_task("wildchat", options={"path": path})
    assert [s.id for s in samples] == ["c1-t3"]
    s = samples[0]
    assert s.answer_type == "continuation" and s.question == WILDCHAT_QUESTION and s.group_id == "wildchat"
    assert s.answers == ("Why did the chicken cross the road?",)
    assert [(d.title, d.text) for d in s.documents] == [("user", "Hi"), ("assistant", "Hello!"),
                                                        ("user", "Tell a joke")]
    assert s.meta["messages"][-1] == {"role": "user", "content": "Tell a joke"}
    first = load_task("wildchat", options={"path": path, "turn": "first"})[0]
    assert first.answers == ("Hello!",) and len(first.documents) == 1
    anyone = load_task("wildchat", options={"path": path, "language": None, "skip_toxic": False})
    assert sorted(s.id for s in anyone) == ["c1-t3", "c2-t1", "c3-t1"]
    assert {s.group_id for s in anyone} == {"wildchat"}
    rows = _wildchat_rows()
    del rows[1]["conversation"]
    with pytest.raises(UserError, match=r"row 1 \(id c2\).*'conversation'"):
        load_task("wildchat", options={"path": _write_jsonl(tmp_path / "bad.jsonl", rows)})


def test_fineweb_prefix_and_continuation(tmp_path: Path) -> None:
    long_text = "one two three\nfour five  six seven eight nine ten"
    rows = [{"id": "d1", "text": long_text, "url": "http://a"}, {"id": "d2", "text": "too short"},
            {"id": "d3", "text": " ".join(f"w{i}" for i in range(20))}]
    path = _write_jsonl(tmp_path / "fineweb.jsonl", rows)
    samples = {s.id: s for s in load_task("fineweb", options={"path": path, "prefix_tokens": 5,
                                                              "continuation_tokens": 3})}
    assert sorted(samples) == ["d1", "d3"]
    s = samples["d1"]
    assert s.documents[0].text == "one two three\nfour five"
    assert s.answers == ("six seven eight",)
    assert s.answer_type == "continuation" and s.question == FINEWEB_QUESTION and s.group_id == "fineweb"
    assert samples["d3"].answers == ("w5 w6 w7",)
    assert len(load_task("fineweb", size=1, options={"path": path, "prefix_tokens": 5,
                                                     "continuation_tokens": 3})) == 1
    with pytest.raises(UserError, match=r"row 1 \(id d2\).*'text'"):
        load_task("fineweb", options={"path": _write_jsonl(tmp_path / "bad.jsonl", [rows[0], {"id": "d2"}])})


def test_financebench_other_company_pages_are_seeded_distractors() -> None:
    """`other_company_pages: N` adds N evidence pages of other companies' questions; gold pages stay; seeded."""
    from harness.tasks import load_task

    opts = {"subset": "numeric", "single_evidence_only": True, "other_company_pages": 3, "context_tokens": 100000}
    a = load_task("financebench", size=5, seed=0, options=opts)
    b = load_task("financebench", size=5, seed=0, options=opts)
    plain = {s.id: s for s in load_task("financebench", size=5, seed=0, options={**opts, "other_company_pages": 0})}
    assert [[d.id for d in s.documents] for s in a] == [[d.id for d in s.documents] for s in b]
    for s in a:
        gold = [d for d in s.documents if d.is_gold]
        others = [d for d in s.documents if not d.is_gold]
        assert {d.id for d in gold} == {d.id for d in plain[s.id].documents}
        assert len(others) == 3
        company = s.meta["doc_name"].split("_")[0]
        assert all(not d.id.startswith(company + "_") for d in others)  # other companies' filings


# ----------------------------------------------------------------------------- local-qa (your own data)


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_local_qa_reads_context_documents_answers_and_choices(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "mine.jsonl", [
        {"id": "a", "question": "Who founded Acme?", "answer": "Ada", "context": "Acme was founded by Ada."},
        {"question": "Which year?", "answers": ["1967", "in 1967"], "group": "g1",
         "documents": ["Nothing here.", {"title": "Acme", "text": "Founded in 1967.", "gold": True}]},
        {"id": "c", "question": "Pick one", "answer": "B", "choices": ["red", "blue"], "answer_type": "choice",
         "context": "The sky is blue."},
    ])
    by_id = {s.id: s for s in load_task("local-qa", options={"path": str(f)})}
    assert set(by_id) == {"a", "row-1", "c"}
    a, b, c = by_id["a"], by_id["row-1"], by_id["c"]
    assert a.answers == ("Ada",) and a.context == "Acme was founded by Ada." and a.answer_type == "text"
    assert a.group_id == "who founded acme?"  # the default group: the normalised question
    assert b.answers == ("1967", "in 1967") and b.group_id == "g1" and len(b.documents) == 2
    assert [d.is_gold for d in b.documents] == [False, True] and b.gold_context().strip() == "[Acme]\nFounded in 1967."
    assert c.answer_type == "choice" and c.choices == ("red", "blue")
    # seeded order and size: a smaller size is a prefix of a larger one
    ids3 = [s.id for s in load_task("local-qa", size=3, seed=1, options={"path": str(f)})]
    assert [s.id for s in load_task("local-qa", size=2, seed=1, options={"path": str(f)})] == ids3[:2]


@pytest.mark.parametrize(("row", "needle"), [
    ({"answer": "x", "context": "y"}, "field 'question' is missing"),
    ({"question": "q", "context": "y"}, "field 'answer' is missing"),
    ({"question": "q", "answer": "x"}, "field 'context' is missing"),
    ({"question": "q", "answer": "x", "documents": [3]}, "field 'documents[0]'"),
    ({"question": "q", "answer": "x", "context": "y", "answer_type": "essay"}, "field 'answer_type'"),
    ({"question": "q", "answer": "A", "context": "y", "answer_type": "choice"}, "field 'choices' is missing"),
])
def test_local_qa_bad_rows_name_row_and_field(tmp_path: Path, row: dict[str, Any], needle: str) -> None:
    f = _jsonl(tmp_path / "bad.jsonl", [{"question": "ok", "answer": "1", "context": "c"}, row])
    with pytest.raises(UserError) as e:
        load_task("local-qa", options={"path": str(f)})
    assert "local-qa: row 1" in str(e.value) and needle in str(e.value) and "\n" not in str(e.value)


def test_local_qa_needs_a_path() -> None:
    with pytest.raises(UserError, match=r"task\.options\.path"):
        load_task("local-qa")
