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

ALL_TASKS = [RECORDS]


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


@pytest.mark.parametrize("name", ALL_TASKS)
@pytest.mark.parametrize("tokens", [350, 1200, 3000])
def test_context_length_tracks_option(name: str, tokens: int) -> None:
    for s in load_task(name, size=8, seed=2, options={"context_tokens": tokens, "n_distractors": 1}):
        assert 0.7 * tokens <= approx_tokens(s.context) <= 1.3 * tokens


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
