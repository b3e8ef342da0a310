"""harness.metrics: normalisation, EM/F1, multiple choice, numbers, judge, distortion and accuracy intervals."""

from __future__ import annotations

import math

import pytest

from harness.metrics import (
    JUDGE_PROMPT,
    JUDGE_RUBRIC_VERSION,
    MetricResult,
    accuracy_with_ci,
    bits_per_byte,
    build_judge_messages,
    exact_match,
    extract_number,
    judge_score,
    normalize_answer,
    numeric_match,
    parse_choice,
    parse_judge_verdict,
    parse_number,
    score_prediction,
    token_f1,
    token_ratio,
)
from harness.records import Sample

OPTS = ("cough", "fever", "rash", "headache")


def _sample(answers, answer_type="text", choices=(), question="Q?", **meta) -> Sample:
    return Sample(id="s1", question=question, documents=(), answers=tuple(answers), choices=tuple(choices),
                  answer_type=answer_type, meta=meta)


# ----------------------------------------------------------------------------- normalisation, EM, F1


@pytest.mark.parametrize(("raw", "norm"), [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  an   apple, a pear ", "apple pear"),
    ("«Théâtre» — l’opéra", "théâtre l’opéra".replace("’", "")),
    ("Ｐａｒｉｓ", "paris"),  # full-width letters (NFKC)
    ("cafe\u0301", "café"),  # decomposed accent composes
    ("東京。", "東京"),  # CJK full stop is Unicode punctuation
    ("$5 + 3", "5 3"),  # ASCII punctuation as in SQuAD
    ("", ""),
    ("theatre anatomy", "theatre anatomy"),  # articles only as whole words
])
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_exact_match_aliases_and_edges():
    assert exact_match("the Big Apple", ["New York City", "Big Apple"]) == 1.0
    assert exact_match("New York", ["New York City", "Big Apple"]) == 0.0
    assert exact_match("Paris", "paris.") == 1.0  # a plain string is one gold
    assert exact_match("café", ["cafe"]) == 0.0  # accents are meaningful
    assert exact_match("", [""]) == 1.0
    assert exact_match("", ["x"]) == 0.0
    assert exact_match("x", []) == 0.0


def test_token_f1_squad_definition():
    assert token_f1("the cat sat", ["cat sat on mat"]) == pytest.approx(2 * (1.0 * 0.5) / 1.5)
    assert token_f1("cat", ["dog", "a cat"]) == 1.0  # max over aliases
    assert token_f1("dog dog", ["dog"]) == pytest.approx(2 * 0.5 * 1 / 1.5)  # multiset overlap
    assert token_f1("", [""]) == 1.0
    assert token_f1("", ["x"]) == 0.0
    assert token_f1("the", ["x"]) == 0.0  # only an article → empty after normalisation
    assert token_f1("x", []) == 0.0


def test_token_f1_cjk_is_per_character():
    assert token_f1("東京都", ["東京"]) == pytest.approx(0.8)
    assert token_f1("北京", ["東京"]) == pytest.approx(0.5)
    assert token_f1("東京 tower", ["東京tower"]) == 1.0


# ----------------------------------------------------------------------------- score_prediction: text


def test_score_text_em_f1_and_aliases():
    s = _sample(["Barack Obama", "Obama"])
    r = score_prediction(s, "Answer: Obama.")
    assert isinstance(r, MetricResult)
    assert r.name == "exact_match" and r.correct and r.value == 1.0 and r.parsed == "obama"
    r = score_prediction(s, "President Barack Obama")
    assert not r.correct and r.value == 0.0 and r.extra["f1"] == pytest.approx(0.8)
    r = score_prediction(s, "Obama\nHe was the 44th president.")  # first line is the answer
    assert r.correct and r.flags == ()


def test_score_text_empty_prediction_flagged():
    r = score_prediction(_sample(["Paris"]), "   ")
    assert not r.correct and r.flags == ("empty",) and r.extra["f1"] == 0.0


def test_score_continuation_uses_f1_value():
    r = score_prediction(_sample(["the cat sat on the mat"], "continuation"), "cat sat")
    assert r.name == "token_f1" and not r.correct and 0 < r.value < 1 and r.value == r.extra["f1"]


def test_score_unknown_type_raises():
    s = Sample(id="x", question="q", documents=(), answers=("a",), answer_type="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="answer_type"):
        score_prediction(s, "a")


# ----------------------------------------------------------------------------- multiple choice


@pytest.mark.parametrize("text", [
    "B", "b", "(B)", "B)", "B.", "[B]", "**B**", "`B`", "Answer: B", "answer: b", "The answer is B",
    "The answer is (B).", "The correct answer is option B.", "**Answer:** **B**", "Option B", "B is correct",
    "B) fever", "(B) fever", "B. fever", "B: fever", "B - fever", "B\nBecause the note says so.",
    "B because the note mentions a temperature", "I choose B", '{"answer": "B"}', "{'answer': 'B'}",
    '{"answer": "fever"}', '```json\n{"Answer": "(B)"}\n```', 'Here: {"reasoning": "hot", "answer": "B"}',
    "fever", "Fever.", "The patient has a fever.", "Let's check: (A) cough no; (C) rash no. Final answer: B",
    "The answer is A fever",  # "A" is an article here; the option text decides
    "Answer: A patient presenting with fever",
])
def test_parse_choice_variants_pick_b(text):
    k, how = parse_choice(text, OPTS)
    assert k == 1, (text, how)


@pytest.mark.parametrize(("text", "expect"), [
    ("A", 0), ("a", 0), ("A.", 0), ("A. cough", 0), ("(A)", 0), ("The answer is A.", 0), ("Answer: A", 0),
    ("A because the note says so", 0), ("A is the answer", 0), ("The answer is a", 0),
])
def test_parse_choice_letter_a_when_it_is_the_signal(text, expect):
    assert parse_choice(text, OPTS)[0] == expect


@pytest.mark.parametrize("text", [
    "A patient was admitted yesterday.",  # article, nothing else: unparseable, not option A
    "Answer: A patient was admitted.",
    "I think it is unclear.",
    "The patient has hepatitis B.",  # a bare mid-sentence capital is not a letter
    "Vitamin C levels were low.",
])
def test_parse_choice_no_false_positive_letters(text):
    k, why = parse_choice(text, OPTS)
    assert k is None and why == "no answer found"


def test_parse_choice_article_a_yields_to_option_text():
    assert parse_choice("A patient with a rash", OPTS) == (2, "option-text")


def test_parse_choice_ambiguity_and_reasons():
    assert parse_choice("cough and fever", OPTS) == (None, "ambiguous: options A,B")
    assert parse_choice("(A) cough (B) fever", OPTS)[0] is None  # an echoed option list
    assert parse_choice("A. cough\nB. fever\nC. rash\nD. headache", OPTS)[0] is None
    assert parse_choice("cough or fever; the answer is B", OPTS) == (1, "marker")  # several texts: the letter wins
    assert parse_choice("", OPTS) == (None, "empty")
    assert parse_choice("  \n", OPTS) == (None, "empty")
    assert parse_choice("E", OPTS) == (None, "letter out of range")
    assert parse_choice("B", ()) == (None, "no choices")
    assert parse_choice('{"answer": "sneezing"}', OPTS)[0] is None


@pytest.mark.parametrize("text", ["B or C", "B and C", "The answer is B or C", "Answer: B, C", "A, B", "B & C"])
def test_parse_choice_hedging_between_letters_is_unparseable(text):
    k, why = parse_choice(text, OPTS)
    assert k is None and why.startswith("ambiguous"), why


@pytest.mark.parametrize(("text", "expect"), [
    ("B, because the note says so", 1), ("B, a fever", 1), ("A; fever", 0), ("A, the first one", 0), ("B!", 1),
])
def test_parse_choice_letter_then_punctuation(text, expect):
    assert parse_choice(text, OPTS)[0] == expect


def test_parse_choice_longer_option_wins_over_contained_one():
    opts = ("hepatitis", "hepatitis B", "influenza")
    assert parse_choice("Most likely hepatitis B infection.", opts) == (1, "option-text")
    assert parse_choice("hepatitis", opts) == (0, "option-text")


def test_parse_choice_option_texts_with_numbers_and_unicode():
    opts = ("1.5 mg", "15 mg", "150 mg")
    assert parse_choice("The dose was 1.5 mg.", opts)[0] == 0
    assert parse_choice("15 mg", opts)[0] == 1
    assert parse_choice("Ｃ", opts)[0] == 2  # full-width letter
    assert parse_choice("東京です", ("大阪", "東京です"))[0] == 1
    assert parse_choice("Café au lait", ("thé", "café au lait"))[0] == 1


def test_parse_choice_last_marker_wins_and_lowercase_article():
    assert parse_choice("At first the answer is A. Final answer: C", OPTS)[0] == 2
    assert parse_choice("the answer is a cough", OPTS) == (0, "option-text")
    assert parse_choice("I choose D", OPTS)[0] == 3
    assert parse_choice("I think it's D", OPTS)[0] is None  # "I" is a pronoun, bare "D" not a signal


def test_parse_choice_many_options_and_limit():
    opts = tuple(f"opt{k}" for k in range(10))
    assert parse_choice("I", opts)[0] == 8  # the whole response is the letter I
    assert parse_choice("I believe opt3", opts)[0] == 3
    with pytest.raises(ValueError):
        parse_choice("A", tuple(str(k) for k in range(27)))


def test_score_choice_gold_from_text_letter_or_meta():
    s = _sample(["fever", "B"], "choice", OPTS)
    r = score_prediction(s, "(B) fever")
    assert r.name == "mc_accuracy" and r.correct and r.value == 1.0 and r.parsed == "B" and r.extra["gold"] == "B"
    r = score_prediction(s, "C")
    assert not r.correct and r.value == 0.0 and r.parsed == "C" and r.flags == ()
    assert score_prediction(_sample(["headache"], "choice", OPTS), "D").correct
    assert score_prediction(_sample([], "choice", OPTS, correct_letter="C"), "rash").correct


def test_score_choice_unparseable_is_wrong_and_flagged():
    s = _sample(["cough", "A"], "choice", OPTS)
    r = score_prediction(s, "A patient was seen.")
    assert not r.correct and r.parsed is None and r.flags == ("unparseable",)
    r = score_prediction(s, "")
    assert not r.correct and set(r.flags) == {"unparseable", "empty"}


def test_score_choice_bad_gold_raises():
    with pytest.raises(ValueError, match="no gold"):
        score_prediction(_sample(["sneezing"], "choice", OPTS), "A")
    with pytest.raises(ValueError, match="conflicting"):
        score_prediction(_sample(["fever", "C"], "choice", OPTS), "A")
    with pytest.raises(ValueError, match="no choices"):
        score_prediction(_sample(["A"], "choice", ()), "A")


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(("text", "value"), [
    ("42", 42.0), ("-5", -5.0), ("−5", -5.0), ("+7", 7.0), ("3.14", 3.14), (".5", 0.5),
    ("(1,234)", -1234.0), ("(0.02)", -0.02), ("($1,234.50)", -1234.5), ("(−4.5)", -4.5), ("(5)", -5.0),
    ("1,234,567", 1234567.0), ("$1,577.00", 1577.0), ("12.5%", 12.5), ("12.5 percent", 12.5),
    ("1.2 million", 1.2e6), ("$3.4 billion", 3.4e9), ("3.4B", 3.4e9), ("450k", 450e3), ("2.1 bn", 2.1e9),
    ("USD 12 thousand", 12e3), ("12 USD", 12.0), ("$5m", 5e6), ("5MM", 5e6), ("1.2e6", 1.2e6), ("$-3", -3.0),
    ("-$3", -3.0), ("２０", 20.0), ("twenty-three", 23.0), ("one hundred and five", 105.0),
    ("three million", 3e6), ("Minus five", -5.0), ("three point five", 3.5), ("two thousand and twenty", 2020.0),
])
def test_parse_number_forms(text, value):
    assert parse_number(text) == pytest.approx(value)


@pytest.mark.parametrize(("text", "value"), [
    ("The total was 10 and the answer is 12.", 12.0),  # after the answer marker
    ("Step 1: 3 + 4. Answer: 7\nCheck: 7 - 3 = 4", 7.0),  # after the *last* marker, its first number
    ("Answer: 5 + 7 = 12", 12.0),  # after the last "=" on the answer line
    ("Revenue rose 5% to $20 million.", 5.0),  # no marker: the first number
    ("One of the 5 patients", 5.0),  # digits win over words
    ("COVID-19 cases", 19.0),  # a hyphen after a letter is not a minus sign
    ("In FY2019 revenue was 7", 7.0),  # digits glued to letters are not numbers
    ("Revenue (2019) was 7", 2019.0),  # a bare parenthesised year is not negative
    ("2019–2020", 2019.0),
    ("The value is 5m tall", 5.0),  # lowercase m without currency is a unit, not million
    ("\\boxed{17}", 17.0),
    ("I cannot answer for 2019, but 2020 had 7", 2019.0),  # "answer" without ":"/"is" is not a marker
    ("The answer is: about 1.2 million (see 2019 report)", 1.2e6),
])
def test_parse_number_picks_the_answer(text, value):
    assert parse_number(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "   ", "no number here", "Answer: unknown"])
def test_parse_number_none(text):
    assert parse_number(text) is None


def test_extract_number_records_percent_scale_currency():
    n = extract_number("Answer: $3.4 billion")
    assert n is not None and n.value == pytest.approx(3.4e9) and n.scale == 1e9 and n.currency == "$"
    assert not n.percent
    p = extract_number("about 12.5%")
    assert p is not None and p.percent and p.value == 12.5
    w = extract_number("fifty percent")
    assert w is not None and w.percent and w.value == 50.0


@pytest.mark.parametrize(("pred", "gold"), [
    ("12.5%", "0.125"), ("12.5%", "12.5"), ("0.654", "65.4%"), ("65.4", "65.4%"), ("65.4 percent", "65.4%"),
    ("1.2 billion", "1,200 million"), ("1.2 billion", "1200000000"), ("$1,577", "$1,577.00"),
    ("-0.02", "(0.02)"), ("(0.02)", "-0.02"), ("100", "101"), ("0", "0"), ("twenty-three", "23"),
    ("The answer is 3.4B", "$3,400 million"), ("−7", "-7"), (1577, "$1,577.00"), ("1.5", 1.5),
])
def test_numeric_match_true(pred, gold):
    assert numeric_match(pred, gold)


@pytest.mark.parametrize(("pred", "gold"), [
    ("0.02", "(0.02)"), ("100", "102"), ("12.5", "0.125"), ("1.2 million", "1.2 billion"), ("", "5"),
    ("five", "six"), ("n/a", "0"), ("3", "no number"), ("0.001", "0"), ("12.5%", "0.13"),
])
def test_numeric_match_false(pred, gold):
    assert not numeric_match(pred, gold)


def test_numeric_match_rel_tol():
    assert numeric_match("105", "100", rel_tol=0.05)
    assert not numeric_match("105.1", "100", rel_tol=0.05)
    assert numeric_match("-99.5", "-100", rel_tol=0.01)


def test_score_number_aliases_and_flags():
    s = _sample(["$1,577.00", "1577"], "number")
    r = score_prediction(s, "Answer: $1.577 thousand")
    assert r.name == "numeric_match" and r.correct and r.value == 1.0 and r.parsed == "1577"
    r = score_prediction(s, "1,600")
    assert not r.correct and r.extra["pred_value"] == 1600.0
    assert score_prediction(s, "1,600", rel_tol=0.05).correct
    r = score_prediction(s, "I don't know")
    assert not r.correct and r.parsed is None and r.flags == ("unparseable",)
    r = score_prediction(s, "")
    assert set(r.flags) == {"unparseable", "empty"}
    r = score_prediction(_sample(["65.4%"], "number"), "0.654")
    assert r.correct and r.parsed == "0.654"
    assert score_prediction(_sample(["65.4%"], "number"), "65.4%").parsed == "65.4%"


def test_score_number_unparseable_gold_falls_back_to_em():
    r = score_prediction(_sample(["not disclosed"], "number"), "Not disclosed.")
    assert r.correct and "gold_unparseable" in r.flags


# ----------------------------------------------------------------------------- judge


def test_judge_prompt_and_messages():
    assert JUDGE_RUBRIC_VERSION == "v1"
    for key in ("{question}", "{gold}", "{prediction}"):
        assert key in JUDGE_PROMPT
    msgs = build_judge_messages("What city?", ["Paris", "City of Light"], "paris")
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert "What city?" in user and "Paris | City of Light" in user and "Predicted answer: paris" in user
    assert "CORRECT or INCORRECT" in user and "{" not in user
    assert "(empty)" in build_judge_messages("q", "g", "  ")[1]["content"]


@pytest.mark.parametrize(("raw", "verdict"), [
    ("CORRECT", True), ("INCORRECT", False), ("correct", True), ("Incorrect.", False), ("**CORRECT**", True),
    ("Verdict: INCORRECT", False), ("The prediction is correct.", True), ("This is not correct.", False),
    ("It mentions the correct city but the verdict: INCORRECT", False), ("  \nCORRECT\n", True),
    ("INCORRECT. It names the correct city but the wrong year.", False), ('"CORRECT"', True),
    ("", None), ("maybe", None), ("CORRECT or INCORRECT", None), ("Correctness unclear", None),
    ("The city is correct, the year incorrect.", None),
])
def test_parse_judge_verdict(raw, verdict):
    assert parse_judge_verdict(raw) is verdict


def test_judge_score_calls_injected_judge():
    seen: list[list[dict]] = []

    def judge(messages):
        seen.append(messages)
        return "CORRECT"

    s = _sample(["Paris"], question="Capital of France?")
    r = judge_score(s, "It's Paris", judge)
    assert r.name == "judge" and r.correct and r.value == 1.0 and r.parsed == "CORRECT"
    assert r.extra["judge_raw"] == "CORRECT" and r.extra["rubric_version"] == "v1" and len(seen) == 1
    assert "Capital of France?" in seen[0][1]["content"]

    r = judge_score(s, "Lyon", lambda m: "I am not sure")
    assert not r.correct and r.flags == ("unparseable",) and r.extra["judge_raw"] == "I am not sure"
    r = judge_score(s, "Lyon", lambda m: "INCORRECT")
    assert not r.correct and r.parsed == "INCORRECT" and r.flags == ()

    r = judge_score(s, "  ", lambda m: pytest.fail("judge must not be called for an empty prediction"))
    assert not r.correct and r.flags == ("empty",)


# ----------------------------------------------------------------------------- distortion, rate, CI


def test_bits_per_byte():
    assert bits_per_byte(-math.log(2) * 8, "abcd") == pytest.approx(2.0)
    assert bits_per_byte(-math.log(2) * 6, "é€") == pytest.approx(6 / 5)  # UTF-8 bytes: 2 + 3
    assert bits_per_byte(0.0, "x") == 0.0
    with pytest.raises(ValueError):
        bits_per_byte(-1.0, "")
    with pytest.raises(ValueError):
        bits_per_byte(float("nan"), "x")


def test_token_ratio():
    assert token_ratio(50, 200) == 0.25
    assert token_ratio(0, 10) == 0.0
    with pytest.raises(ValueError):
        token_ratio(5, 0)
    with pytest.raises(ValueError):
        token_ratio(-1, 10)


def test_accuracy_with_ci_wilson():
    acc, lo, hi = accuracy_with_ci([True] * 8 + [False] * 2)
    assert acc == 0.8
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)  # Wilson, z=1.96
    acc, lo, hi = accuracy_with_ci([True] * 5)
    assert acc == 1.0 and hi == 1.0 and 0.5 < lo < 1.0  # not degenerate like the Wald interval
    acc, lo, hi = accuracy_with_ci([False] * 5)
    assert acc == 0.0 and lo == 0.0 and 0 < hi < 0.5
    wide = accuracy_with_ci([True, False] * 5, alpha=0.01)
    narrow = accuracy_with_ci([True, False] * 5, alpha=0.2)
    assert wide[1] < narrow[1] < 0.5 < narrow[2] < wide[2]
    with pytest.raises(ValueError):
        accuracy_with_ci([])
    with pytest.raises(ValueError):
        accuracy_with_ci([True], alpha=1.5)
