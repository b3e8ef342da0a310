"""Synthetic task generators: determinism, group structure, gold correctness and context length."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from harness.errors import UserError
from harness.records import Sample
from harness.tasks import TASKS, load_task
from harness.tasks.base import task_defaults
from harness.tasks.synthetic import approx_tokens

RECORDS = "synthetic-records"
FILINGS = "synthetic-filings"
MULTIDOC = "synthetic-multidoc"


def _groups(samples: list[Sample]) -> dict[str, list[Sample]]:
    g: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        g[s.group_id].append(s)
    return g


def _gold_docs(s: Sample):
    return [d for d in s.documents if d.is_gold]


def _span_texts(s: Sample) -> list[str]:
    return [d.text[a:b] for d in _gold_docs(s) for a, b in d.gold_spans]


# --------------------------------------------------------------------------------------------- shared behaviour

ALL_TASKS = [RECORDS, FILINGS, MULTIDOC]


@pytest.mark.parametrize("name", ALL_TASKS)
def test_registered_with_yaml_defaults(name: str) -> None:
    assert name in TASKS
    d = task_defaults(name)
    assert d["size"] > 0
    assert set(d["options"]) <= set(TASKS[name].options)
    assert len(load_task(name)) == d["size"]


@pytest.mark.parametrize("name", ALL_TASKS)
def test_deterministic_and_seed_dependent(name: str) -> None:
    a = load_task(name, size=12, seed=3)
    b = load_task(name, size=12, seed=3)
    c = load_task(name, size=12, seed=4)
    assert a == b
    assert [s.context for s in a] != [s.context for s in c]
    assert len({s.id for s in a}) == 12


@pytest.mark.parametrize("name", ALL_TASKS)
def test_sizes_and_unknown_option(name: str) -> None:
    assert load_task(name, size=0) == []
    assert len(load_task(name, size=5, seed=1)) == 5
    with pytest.raises(UserError, match="no_such_option"):
        load_task(name, size=2, options={"no_such_option": 1})
    with pytest.raises(UserError, match="n_distractors"):
        load_task(name, size=2, options={"n_distractors": -1})


@pytest.mark.parametrize("name", ALL_TASKS)
def test_groups_share_question_and_have_many_contexts(name: str) -> None:
    samples = load_task(name, size=40, seed=0)
    groups = _groups(samples)
    assert len(groups) == task_defaults(name)["options"]["n_templates"]
    for members in groups.values():
        assert len({s.question for s in members}) == 1
        assert len(members) >= 8
        assert len({s.context for s in members}) == len(members)
        assert len({s.answers[0] for s in members}) > 1  # the answer varies with the context


@pytest.mark.parametrize(
    ("name", "tokens"),
    [(RECORDS, 350), (RECORDS, 1200), (RECORDS, 3000), (FILINGS, 1200), (FILINGS, 3000), (MULTIDOC, 600),
     (MULTIDOC, 3000)],
)
def test_context_length_tracks_option(name: str, tokens: int) -> None:
    for s in load_task(name, size=8, seed=2, options={"context_tokens": tokens, "n_distractors": 2}):
        assert 0.7 * tokens <= approx_tokens(s.context) <= 1.3 * tokens


@pytest.mark.parametrize("name", ALL_TASKS)
def test_default_context_length(name: str) -> None:
    tokens = task_defaults(name)["options"]["context_tokens"]
    for s in load_task(name, size=8, seed=9):
        assert 0.7 * tokens <= approx_tokens(s.context) <= 1.3 * tokens


@pytest.mark.parametrize("name", ALL_TASKS)
def test_split_changes_samples_and_ids(name: str) -> None:
    a, b = load_task(name, size=4, split="test"), load_task(name, size=4, split="dev")
    assert [s.context for s in a] != [s.context for s in b]
    assert not {s.id for s in a} & {s.id for s in b}


@pytest.mark.parametrize("name", ALL_TASKS)
def test_gold_context_only_gold_evidence(name: str) -> None:
    for s in load_task(name, size=16, seed=5):
        gold = _gold_docs(s)
        assert gold and all(d.gold_spans for d in gold)
        gc = s.gold_context()
        for t in _span_texts(s):
            assert t in gc
        for d in s.documents:
            if not d.is_gold:
                assert f"[{d.title}]" not in gc
        assert len(gc) < len(s.context)


# --------------------------------------------------------------------------------------------- synthetic-records


def test_records_multiple_choice_correctness() -> None:
    samples = load_task(RECORDS, size=64, seed=7, options={"n_templates": 8, "n_distractors": 3})
    assert len(_groups(samples)) == 8
    for s in samples:
        assert s.answer_type == "choice"
        assert len(s.choices) == 5 == len(set(s.choices)) == s.meta["n_options"]
        text, letter = s.answers
        assert s.choices.count(text) == 1
        assert s.choices["ABCDE".index(letter)] == text
        (target,) = _gold_docs(s)
        assert target.title == "Record of interest"
        assert text.lower() in target.text.lower()
        assert any(text.lower() in t.lower() for t in _span_texts(s))
        assert s.meta["record_fact_bits"] > s.meta["answer_entropy_bits"] == pytest.approx(2.3219, abs=1e-3)
        assert s.meta["template"] == s.group_id
        assert len(s.documents) == 4


def test_records_exactly_one_option_true_for_target() -> None:
    """Every wrong option contradicts the target record's fact for that template."""
    for s in load_task(RECORDS, size=40, seed=11, options={"n_templates": 8}):
        f = s.meta["facts"]
        first = f["episodes"][0]
        truth = {
            "records/q-medication": first["medication"],
            "records/q-diagnosis": first["diagnosis"],
            "records/q-hemoglobin": f["labs"]["Hemoglobin"],
            "records/q-dose": first["dose"],
            "records/q-birth-year": f["birth_date"].split()[-1],
            "records/q-diagnosis-date": " ".join(first["diagnosed"].split()[1:]),
            "records/q-creatinine": f["labs"]["Creatinine"],
            "records/q-name": f["name"],
        }[s.group_id]
        assert [c == truth for c in s.choices].count(True) == 1
        assert truth == s.answers[0]


def test_records_earliest_episode_is_first_and_distractor_options_are_plausible() -> None:
    samples = load_task(RECORDS, size=40, seed=1, options={"n_facts": 3, "n_distractors": 4})
    seen_in_other_records = 0
    for s in samples:
        eps = s.meta["facts"]["episodes"]
        assert len(eps) == 3
        lines = [ln for ln in _gold_docs(s)[0].text.splitlines() if "diagnosed with" in ln]
        assert [ln.split(" diagnosed with ")[1].rstrip(".") for ln in lines] == [e["diagnosis"] for e in eps]
        others = " ".join(d.text for d in s.documents if not d.is_gold)
        seen_in_other_records += sum(c in others for c in s.choices if c != s.answers[0])
    assert seen_in_other_records > len(samples)  # hard distractors come from the other records


@pytest.mark.parametrize(("k", "n_templates"), [(2, 1), (3, 2), (1, 4)])
def test_records_distinct_values_gives_exactly_k_contexts_per_group(k: int, n_templates: int) -> None:
    """With distinct_values=k every group of N > k samples holds exactly k distinct contexts, each k-th sample a
    copy (same context, answers, choices) of an earlier one; ids stay unique; without it all N are distinct."""
    samples = load_task(RECORDS, size=6 * n_templates, seed=2,
                        options={"n_templates": n_templates, "distinct_values": k})
    assert len({s.id for s in samples}) == len(samples)
    groups = _groups(samples)
    assert len(groups) == n_templates
    for g in groups.values():
        assert len(g) == 6 and len({s.question for s in g}) == 1
        assert len({s.context for s in g}) == k
        for r, s in enumerate(g):
            assert (s.context, s.answers, s.choices) == (g[r % k].context, g[r % k].answers, g[r % k].choices)
            assert ("copy_of" in s.meta) == (r >= k)
    plain = load_task(RECORDS, size=6 * n_templates, seed=2, options={"n_templates": n_templates})
    assert all(len({s.context for s in g}) == 6 for g in _groups(plain).values())
    # the first k contexts of each group are the ones drawn without the option (same random stream)
    assert [s.context for s in samples[: k * n_templates]] == [s.context for s in plain[: k * n_templates]]
    with pytest.raises(UserError, match="distinct_values"):
        load_task(RECORDS, size=2, options={"distinct_values": -1})


def test_records_target_position_random() -> None:
    samples = load_task(RECORDS, size=30, seed=0, options={"target_position": "random", "n_distractors": 3})
    positions = {s.meta["target_index"] for s in samples}
    assert len(positions) > 1
    for s in samples:
        assert s.documents[s.meta["target_index"]].is_gold
    with pytest.raises(UserError, match="target_position"):
        load_task(RECORDS, size=1, options={"target_position": "middle"})


def test_records_question_never_names_patient() -> None:
    for s in load_task(RECORDS, size=24, seed=2, options={"n_templates": 8}):
        assert s.meta["facts"]["name"] not in s.question
        assert not re.search(r"\d", s.question)


# --------------------------------------------------------------------------------------------- synthetic-filings


def _parse_table(text: str) -> dict[str, dict[str, float]]:
    """{row label: {"FY2023": value}} from a markdown statement table."""
    rows = [ln for ln in text.splitlines() if ln.startswith("|") and not ln.startswith("|---")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    out = {}
    for ln in rows[1:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        out[cells[0]] = {y: float(v.replace(",", "")) for y, v in zip(header[1:], cells[1:], strict=True)}
    return out


def _recompute(op: str, rows: list[str], t: dict[str, dict[str, float]], fy: int) -> float:
    a = t[rows[0]][f"FY{fy}"]
    if op == "extract":
        return a
    if op == "change":
        return a - t[rows[0]][f"FY{fy - 1}"]
    if op == "difference":
        return a - t[rows[1]][f"FY{fy}"]
    if op == "growth":
        p = t[rows[0]][f"FY{fy - 1}"]
        return (a - p) / p * 100
    if op == "margin":
        return a / t[rows[1]][f"FY{fy}"] * 100
    assert op == "ratio"
    return a / t[rows[1]][f"FY{fy}"]


def test_filings_answers_recomputed_from_gold_table() -> None:
    samples = load_task(FILINGS, size=48, seed=3, options={"n_templates": 8})
    assert len(_groups(samples)) == 8
    for s in samples:
        assert s.answer_type == "number"
        (gold,) = _gold_docs(s)
        m = s.meta
        assert m["company"] in gold.title and f"FY{m['fiscal_year']}" in gold.title
        table = _parse_table(gold.text)
        want = _recompute(m["operation"], m["rows"], table, m["fiscal_year"])
        got = float(s.answers[0])
        assert abs(got - want) <= 0.5 * m["abs_tolerance"] + 1e-9, (s.question, got, want)
        assert re.fullmatch(r"-?\d+\.\d+", s.answers[0])
        assert len(s.answers[0].split(".")[1]) == m["decimals"]
        assert len(set(s.answers)) == len(s.answers) > 1
        # spans: the header row plus exactly the input rows, which hold the input values
        spans = _span_texts(s)
        assert spans[0].startswith("| USD millions |")
        assert sorted(sp.split("|")[1].strip() for sp in spans[1:]) == sorted(m["rows"])
        for label, value in m["inputs"].items():
            assert float(value) == table[label.rsplit(" ", 1)[0]][label.rsplit(" ", 1)[1]]
        assert m["company"] in s.question


def test_filings_distractor_pages() -> None:
    for s in load_task(FILINGS, size=16, seed=4, options={"n_distractors": 6}):
        assert len(s.documents) == 7
        assert sum(d.is_gold for d in s.documents) == 1
        peers = s.meta["peer_companies"]
        assert len(peers) == 3 and s.meta["company"] not in peers
        titles = [d.title for d in s.documents]
        assert sum(s.meta["company"] in t for t in titles) == 4  # gold + 3 of its own pages
        # the first peer page is the same statement type as the gold page: a same-shaped table, other company
        gold = _gold_docs(s)[0]
        heading = gold.text.split(" of ")[0]
        assert any(heading in d.text and not d.is_gold and s.meta["company"] not in d.title for d in s.documents)


def test_filings_aliases() -> None:
    from harness.tasks.synthetic import number_aliases

    assert number_aliases("1234.5", "musd") == ("1234.5", "1,234.5", "$1,234.5 million", "1,234.5 million",
                                                 "USD 1,234.5 million")
    assert "-$12.3 million" in number_aliases("-12.3", "musd")
    assert number_aliases("8.2", "percent") == ("8.2", "8.2%", "8.2 percent")


# --------------------------------------------------------------------------------------------- synthetic-multidoc


def test_multidoc_sentences_labels_and_answers() -> None:
    samples = load_task(MULTIDOC, size=64, seed=6, options={"n_templates": 8})
    assert len(_groups(samples)) == 8
    kinds = set()
    for s in samples:
        m = s.meta
        kinds.add(m["kind"])
        assert s.answer_type == "text" and s.answers
        assert set(m["doc_sentences"]) == {d.id for d in s.documents}
        for d in s.documents:
            sents = m["doc_sentences"][d.id]
            assert " ".join(sents) == d.text
            assert len(m["sentence_labels"][d.id]) == len(sents)
            assert d.is_gold == any(m["sentence_labels"][d.id])
        support = m["supporting_sentences"]
        assert len(support) == (1 if m["kind"] == "single" else 2)
        assert sum(map(sum, m["sentence_labels"].values())) == len(support)
        supp_text = [m["doc_sentences"][did][i] for did, i in support]
        assert sorted(supp_text) == sorted(_span_texts(s))
        joined = " ".join(supp_text)
        if m["kind"] == "comparison":
            assert all(n in joined for n in m["named_entities"])
        else:
            assert s.answers[0] in joined
            assert m["named_entities"][0] in joined
        assert len({d.title for d in s.documents}) == len(s.documents)  # one passage per entity
        assert len(s.documents) == 8 + len(_gold_docs(s)) == 8 + (1 if m["kind"] == "single" else 2)
    assert kinds == {"single", "bridge", "comparison"}


def test_multidoc_bridge_needs_both_passages() -> None:
    for s in load_task(MULTIDOC, size=40, seed=8, options={"n_templates": 8}):
        if s.meta["kind"] != "bridge":
            continue
        gold = _gold_docs(s)
        assert len(gold) == 2
        a, b = (s.meta["doc_sentences"][d.id] for d in gold)
        # the bridge entity is the title of one gold passage and is named in the other's supporting sentence
        spans = _span_texts(s)
        assert any(g.title in sp for g in gold for sp in spans if not sp.startswith(g.title))
        assert a and b


def test_multidoc_distractors_share_surface_words() -> None:
    samples = load_task(MULTIDOC, size=40, seed=2)
    shared = 0
    for s in samples:
        gold_text = " ".join(d.text for d in _gold_docs(s))
        gold_words = {w for w in re.findall(r"[A-Z][a-z]+|\d{4}", gold_text)}
        for d in s.documents:
            if not d.is_gold:
                shared += bool(gold_words & set(re.findall(r"[A-Z][a-z]+|\d{4}", d.text)) - {d.title})
        assert s.answers[0] not in {d.title for d in s.documents if not d.is_gold} or s.meta["kind"] != "single"
    assert shared > 0.5 * 8 * len(samples)


def test_multidoc_comparison_answer_is_earlier() -> None:
    for s in load_task(MULTIDOC, size=16, seed=1):
        if s.meta["kind"] != "comparison":
            continue
        years = {}
        for did, i in s.meta["supporting_sentences"]:
            sent = s.meta["doc_sentences"][did][i]
            name, rest = sent.split(" was founded in ")
            years[name] = int(rest.split()[0])
        assert len(set(years.values())) == 2
        assert s.answers == (min(years, key=years.__getitem__),)
        a, b = s.meta["named_entities"]
        assert s.question == f"Which company was founded earlier, {a} or {b}?"
