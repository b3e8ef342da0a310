"""Answer-quality metrics: multiple choice, exact match / token F1, numeric match, LLM-as-judge, distortion.

Everything here is pure Python. The only model call is the judge, and it goes through an injected callable.

Scoring never drops a sample: a prediction that cannot be parsed is scored as wrong and flagged "unparseable"
(and "empty" when it is blank).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from harness.records import Sample

__all__ = [
    "JUDGE_PROMPT",
    "JUDGE_PROMPT_SHA256",
    "JUDGE_RUBRIC_VERSION",
    "JUDGE_SYSTEM",
    "MetricResult",
    "ParsedNumber",
    "accuracy_with_ci",
    "bits_per_byte",
    "build_judge_messages",
    "exact_match",
    "extract_number",
    "judge_score",
    "normalize_answer",
    "numeric_match",
    "parse_choice",
    "parse_judge_verdict",
    "parse_number",
    "score_prediction",
    "token_f1",
    "token_ratio",
]

LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class MetricResult:
    """One scored prediction. `correct` is what accuracy counts (None for metrics without a right answer,
    e.g. bits per byte); `value` is the metric's own number."""

    name: str
    value: float
    correct: bool | None
    parsed: str | None
    flags: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- text normalisation, EM, F1

_ASCII_PUNCT = frozenset(string.punctuation)
_ARTICLES_RE = re.compile(r"\b(?:a|an|the)\b")


def _is_punct(ch: str) -> bool:
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def normalize_answer(s: str) -> str:
    """SQuAD normalisation, Unicode-safe: NFKC, lowercase, drop punctuation, drop articles, squeeze whitespace.

    Punctuation is every Unicode category P* character plus ASCII `string.punctuation` (so "$" and "+" go too,
    exactly as in the SQuAD script). Accents are kept ("café" != "cafe"); NFKC makes composed and decomposed
    forms, full-width letters and ligatures compare equal.
    """
    s = unicodedata.normalize("NFKC", s or "").lower()
    s = "".join(ch for ch in s if not _is_punct(ch))
    s = _ARTICLES_RE.sub(" ", s)
    return " ".join(s.split())


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return (
        0x3040 <= o <= 0x30FF  # hiragana, katakana
        or 0x3400 <= o <= 0x4DBF  # CJK ext A
        or 0x4E00 <= o <= 0x9FFF  # CJK unified
        or 0xAC00 <= o <= 0xD7AF  # hangul syllables
        or 0xF900 <= o <= 0xFAFF  # CJK compatibility
        or 0x20000 <= o <= 0x2FA1F  # CJK ext B+
    )


def _tokens(s: str) -> list[str]:
    """Whitespace tokens of the normalised text; each CJK character is its own token (they have no spaces)."""
    out: list[str] = []
    for tok in normalize_answer(s).split():
        if any(_is_cjk(ch) for ch in tok):
            buf = ""
            for ch in tok:
                if _is_cjk(ch):
                    if buf:
                        out.append(buf)
                        buf = ""
                    out.append(ch)
                else:
                    buf += ch
            if buf:
                out.append(buf)
        else:
            out.append(tok)
    return out


def _as_golds(golds: Sequence[str] | str) -> list[str]:
    return [golds] if isinstance(golds, str) else list(golds)


def exact_match(pred: str, golds: Sequence[str] | str) -> float:
    """1.0 when the normalised prediction equals any normalised gold alias, else 0.0 (0.0 with no golds)."""
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(g) for g in _as_golds(golds)))


def _f1(pred_toks: list[str], gold_toks: list[str]) -> float:
    if not pred_toks or not gold_toks:
        return float(pred_toks == gold_toks)
    common: dict[str, int] = {}
    counts: dict[str, int] = {}
    for t in gold_toks:
        counts[t] = counts.get(t, 0) + 1
    for t in pred_toks:
        if counts.get(t, 0) > 0:
            counts[t] -= 1
            common[t] = common.get(t, 0) + 1
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def token_f1(pred: str, golds: Sequence[str] | str) -> float:
    """SQuAD token F1, max over gold aliases. Both empty → 1.0; one empty → 0.0; no golds → 0.0."""
    p = _tokens(pred)
    return max((_f1(p, _tokens(g)) for g in _as_golds(golds)), default=0.0)


_ANSWER_LABEL_RE = re.compile(
    r"^\s*(?:(?:the\s+)?(?:final\s+|correct\s+|short\s+)?answer\s*(?:is\b|:|：|-)|final\s*:)\s*", re.IGNORECASE
)
_ANSWER_MARK_RE = re.compile(r"(?:final\s+)?answer\s*(?:is\b|:|：)", re.IGNORECASE)


def _text_candidates(prediction: str) -> list[str]:
    """The full prediction, its first non-empty line without an "Answer:" label, and the text after the last
    "Answer:" / "answer is" marker (first line of it). EM/F1 take the best of these."""
    text = unicodedata.normalize("NFKC", prediction or "")
    cands = [text]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if lines:
        cands.append(_ANSWER_LABEL_RE.sub("", lines[0], count=1))
    marks = list(_ANSWER_MARK_RE.finditer(text))
    if marks:
        tail = text[marks[-1].end():].strip()
        tail_lines = [ln for ln in tail.splitlines() if ln.strip()]
        if tail_lines:
            cands.append(tail_lines[0])
    return cands


def _score_text(sample: Sample, prediction: str, name: str) -> MetricResult:
    cands = _text_candidates(prediction)
    ems = [exact_match(c, sample.answers) for c in cands]
    f1s = [token_f1(c, sample.answers) for c in cands]
    best = max(range(len(cands)), key=lambda k: (ems[k], f1s[k], -k))
    em, f1 = ems[best], max(f1s)
    flags = ("empty",) if not (prediction or "").strip() else ()
    value = f1 if name == "token_f1" else em
    return MetricResult(name=name, value=value, correct=em == 1.0, parsed=normalize_answer(cands[best]),
                        flags=flags, extra={"f1": f1, "em": em})


# ----------------------------------------------------------------------------- multiple choice

# a letter directly after these words is an answer letter when it stands alone (never an article)
_CONNECTORS = frozenset({
    "because", "since", "as", "is", "was", "and", "or", "but", "which", "would", "should", "seems", "appears",
    "fits", "matches", "being", "here", "therefore", "so",
})
_WHOLE_LETTER_RE = re.compile(
    r"^(?:(?:the\s+)?(?:final\s+|correct\s+|best\s+|right\s+)?(?:answer|option|choice|letter)(?:\s+is)?"
    r"\s*[:：=\-]?\s*)?(?:(?:option|choice|letter)\s+)?[\(\[]?\s*([A-Za-z])\s*[\)\]]?\s*[.:)]?$",
    re.IGNORECASE,
)
_LETTER_IS_CORRECT_RE = re.compile(
    r"^[\(\[]?([A-Za-z])[\)\]]?\s+is\s+(?:the\s+)?(?:correct|right|best|answer)\b", re.IGNORECASE
)
_MARKER_RE = re.compile(
    r"(?:(?:final|correct|right|best)\s+)?(?:answer|option|choice)\s*(?:is|would\s+be|should\s+be|will\s+be)\s*"
    r"[:：=\-]?\s*|(?:final\s+)?answer\s*[:：=\-]\s*|\b(?:i\s+)?(?:choose|pick|select)\s+",
    re.IGNORECASE,
)
_MARKER_LETTER_RE = re.compile(
    r"(?:(?:option|choice|letter)\s+)?(?P<open>[\(\[])?\s*(?P<L>[A-Za-z])(?![A-Za-z0-9'’])\s*(?P<close>[\)\]])?",
    re.IGNORECASE,
)
_LEADING_RE = re.compile(
    r"^(?:(?P<wrapped>[\(\[](?P<L1>[A-Za-z])[\)\]])|(?P<L2>[A-Z])(?:[).:]|\s*[-–—]\s)|(?P<L3>[a-z])\)"
    r"|(?P<L4>[A-Z])(?=[\s,;!?]|$))"
)
_HEDGE_RE = re.compile(
    r"^[\)\]]?\s*(?:,|/|&|\b(?i:and|or)\b)\s*(?:(?i:option|choice)\s+)?[\(\[]?(?![AI]\s+[a-z])[A-Z]\b(?!['’]\w)"
)
_LINE_LABEL_RE = re.compile(r"^[\(\[]?([A-Z])(?:[\)\]]|[.:](?=\s|$))")
_STRONG_RES = (
    re.compile(r"\(([A-Z])\)"),
    re.compile(r"\[([A-Z])\]"),
    re.compile(r"\b(?:option|choice|letter)\s+\(?([A-Za-z])\b(?!['’]\w)", re.IGNORECASE),
)
_JSON_KEYS = ("answer", "final_answer", "choice", "option", "letter", "prediction")
_JSON_OBJ_RE = re.compile(r"\{[^{}]*\}")
_JSON_LOOSE_RE = re.compile(r"[\"']?(?:final_answer|answer|choice|option)[\"']?\s*:\s*[\"']([^\"']+)[\"']",
                            re.IGNORECASE)


def _norm_opt(s: str) -> str:
    """Normalisation for matching option texts: like `normalize_answer` but "1.5" stays "1.5" (not "15")."""
    s = unicodedata.normalize("NFKC", s or "").lower()
    out = []
    for k, ch in enumerate(s):
        if ch in ".," and 0 < k < len(s) - 1 and s[k - 1].isdigit() and s[k + 1].isdigit():
            out.append(ch)
        elif _is_punct(ch):
            out.append(" ")
        else:
            out.append(ch)
    return " ".join(_ARTICLES_RE.sub(" ", "".join(out)).split())


def _clean_md(s: str) -> str:
    """Bold/code letters become "(B)"; other markdown emphasis, quotes and heading marks go."""
    s = re.sub(r"(\*\*|__|`)\s*([A-Za-z])\s*\1", r"(\2)", s)
    s = re.sub(r"[*`#]+", "", s)
    return s.strip().strip("\"'“”‘’").strip()


def _idx(letter: str, n: int) -> int | None:
    k = LETTERS.find(letter.upper())
    return k if 0 <= k < n else None


def _options_in(text: str, choices: Sequence[str]) -> list[int]:
    """Indices of options whose text occurs in `text` (token-aligned), minus those inside a longer matched one."""
    t = f" {_norm_opt(text)} "
    norms = [_norm_opt(c) for c in choices]
    hits = [k for k, o in enumerate(norms) if o and f" {o} " in t]
    return [k for k in hits if not any(j != k and norms[k] != norms[j] and f" {norms[k]} " in f" {norms[j]} "
                                       for j in hits)]


def _option_prefix(text: str, choices: Sequence[str]) -> int | None:
    """The option whose text the normalised `text` starts with (longest wins)."""
    t = f"{_norm_opt(text)} "
    best, best_len = None, 0
    for k, c in enumerate(choices):
        o = _norm_opt(c)
        if o and t.startswith(o + " ") and len(o) > best_len:
            best, best_len = k, len(o)
    return best


def _letter_after(letter: str, wrapped: bool, rest: str, choices: Sequence[str]) -> tuple[int | None, str]:
    """Decide whether a letter followed by `rest` is an answer letter. Returns (index or None, how)."""
    n = len(choices)
    k = _idx(letter, n)
    if _HEDGE_RE.match(rest):
        return None, "hedged"  # "B or C", "(B)/(C)", "B, C"
    if wrapped:
        return k, "letter"
    # "A fever" / "C difficile infection": the letter may be the start of an option's text
    txt = _option_prefix(letter + rest, choices)
    if txt is not None and rest[:1] in (" ", "\t"):
        return txt, "option-text"
    r = rest.lstrip(" \t")
    if not r or r[0] in "\n.,;:!?)]-–—":
        return k, "letter"
    word = re.match(r"[^\W\d_]+", r)
    if letter in "AaIi" and word and word.group(0).lower() not in _CONNECTORS:
        return None, "article"  # "A patient…", "I think…", "a fever"
    return k, "letter"


def _json_value(text: str) -> str | None:
    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    objs: list[Any] = []
    try:
        objs.append(json.loads(body))
    except ValueError:
        for m in _JSON_OBJ_RE.finditer(text):
            try:
                objs.append(json.loads(m.group(0)))
            except ValueError:
                continue
    for obj in objs:
        if isinstance(obj, dict):
            low = {str(k).lower(): v for k, v in obj.items()}
            for key in _JSON_KEYS:
                v = low.get(key)
                if isinstance(v, str) and v.strip():
                    return v
    m = _JSON_LOOSE_RE.search(text)
    return m.group(1) if m and re.search(r"[{\"']", text[: m.start() + 1]) else None


def _resolve_value(v: str, choices: Sequence[str]) -> int | None:
    """A short answer string: a letter form ("B", "(B)", "Option B") or an option's text."""
    m = _WHOLE_LETTER_RE.match(_clean_md(v).rstrip("."))
    if m:
        return _idx(m.group(1), len(choices))
    nv = _norm_opt(v)
    exact = [k for k, c in enumerate(choices) if _norm_opt(c) == nv and nv]
    if len(exact) == 1:
        return exact[0]
    hits = _options_in(v, choices)
    return hits[0] if len(hits) == 1 else None


def parse_choice(text: str, choices: Sequence[str]) -> tuple[int | None, str]:
    """Which of N options (labelled A, B, C, …) `text` chooses. Returns (index, how) or (None, why not).

    Tiers, first hit wins:
      1. JSON with an "answer"/"choice"/"option" key whose value is a letter form or an option's text;
      2. the whole response (or its first line) is a letter form: "B", "(B)", "B)", "B.", "**B**",
         "Answer: B", "The answer is B", "Option B", "B is correct";
      3. an answer marker ("answer is", "Answer:", "I choose") followed by a letter, last marker wins;
      4. a leading label: "B) …", "(B) …", "B. …", "B: …", "B - …", or a bare leading letter;
      5. exactly one option's text occurs in the response (an option inside a longer matching option is ignored);
      6. exactly one distinct strong letter anywhere: "(B)", "[B]", "**B**", "option B".
    False positives: a bare "A"/"I" followed by an ordinary word ("A patient was…", "Answer: A fever") is read
    as an article/pronoun, never as a letter, unless the following text is that option's text or a connector
    ("A because…", "A is correct"). A bare mid-sentence capital ("hepatitis B", "vitamin C") is never a letter.
    Letters outside the N options do not count. `how` is "json", "letter", "marker", "leading", "option-text"
    or "strong-letter"; the reason for None is "empty", "no choices", "ambiguous: …" or "no answer found".
    """
    n = len(choices)
    if n == 0:
        return None, "no choices"
    if n > len(LETTERS):
        raise ValueError(f"at most {len(LETTERS)} choices are supported, got {n}")
    raw = unicodedata.normalize("NFKC", text or "").strip()
    if not raw:
        return None, "empty"

    # 1. JSON
    v = _json_value(raw)
    if v is not None:
        k = _resolve_value(v, choices)
        if k is not None:
            return k, "json"

    t = _clean_md(raw)
    lines = [ln.strip() for ln in t.splitlines() if ln.strip()]
    # 2. whole response / first line is a letter form
    for cand in dict.fromkeys([t, lines[0] if lines else t]):
        c = cand.rstrip(".!。 ")
        m = _WHOLE_LETTER_RE.match(c) or _LETTER_IS_CORRECT_RE.match(c)
        if m and _idx(m.group(1), n) is not None:
            return _idx(m.group(1), n), "letter"

    # 3. answer markers; the last usable one wins
    hedged = False
    for mk in reversed(list(_MARKER_RE.finditer(t))):
        lm = _MARKER_LETTER_RE.match(t, mk.end())
        if not lm:
            continue
        wrapped = bool(lm.group("open") and lm.group("close"))
        k, how = _letter_after(lm.group("L"), wrapped, t[lm.end():], choices)
        hedged |= how == "hedged"
        if k is not None:
            return k, "marker" if how == "letter" else how
        if how == "hedged":
            break

    # 4. leading label, unless the response is an echoed option list ("A. cough\nB. fever", "(A) … (B) …")
    labels = {mm.group(1) for ln in lines if (mm := _LINE_LABEL_RE.match(ln))}
    labels |= {mm.group(1) for mm in _STRONG_RES[0].finditer(t)}
    m = _LEADING_RE.match(t) if len(labels) < 2 else None
    if m:
        if m.group("L1") or m.group("L2") or m.group("L3"):
            lead = m.group("L1") or m.group("L2") or m.group("L3")
            k, how = _letter_after(lead, True, t[m.end():], choices)
            hedged |= how == "hedged"
            if k is not None:
                return k, "leading"
        elif m.group("L4"):
            k, how = _letter_after(m.group("L4"), False, t[m.end():], choices)
            hedged |= how == "hedged"
            if k is not None:
                return k, "leading" if how == "letter" else how
    if hedged:
        return None, "ambiguous: hedged between letters"

    # 5. option text
    hits = _options_in(t, choices)
    if len(hits) == 1:
        return hits[0], "option-text"

    # 6. strong letters anywhere
    strong = sorted({k for rx in _STRONG_RES for mm in rx.finditer(t) if (k := _idx(mm.group(1), n)) is not None})
    if len(strong) == 1:
        return strong[0], "strong-letter"
    if len(strong) > 1:
        return None, "ambiguous: letters " + ",".join(LETTERS[k] for k in strong)
    if len(hits) > 1:
        return None, "ambiguous: options " + ",".join(LETTERS[k] for k in hits)
    if _WHOLE_LETTER_RE.match(t.rstrip(".!。 ")):
        return None, "letter out of range"
    return None, "no answer found"


def _gold_choice_index(sample: Sample) -> int:
    """The gold option: a letter among `answers`, an answer equal to an option's text, or meta's letter."""
    n = len(sample.choices)
    found: set[int] = set()
    for a in sample.answers:
        a2 = unicodedata.normalize("NFKC", a or "").strip()
        if len(a2) == 1 and _idx(a2, n) is not None:
            found.add(_idx(a2, n))  # type: ignore[arg-type]
            continue
        exact = [k for k, c in enumerate(sample.choices) if _norm_opt(c) == _norm_opt(a2) and a2]
        if len(exact) == 1:
            found.add(exact[0])
    for key in ("correct_letter", "answer_letter"):
        letter = sample.meta.get(key)
        if isinstance(letter, str) and len(letter) == 1 and _idx(letter, n) is not None:
            found.add(_idx(letter, n))  # type: ignore[arg-type]
    if len(found) != 1:
        why = "no" if not found else "conflicting"
        raise ValueError(f"sample {sample.id!r}: {why} gold option from answers={sample.answers!r}")
    return found.pop()


def _score_choice(sample: Sample, prediction: str) -> MetricResult:
    if not sample.choices:
        raise ValueError(f"sample {sample.id!r} has answer_type 'choice' but no choices")
    gold = _gold_choice_index(sample)
    k, how = parse_choice(prediction, sample.choices)
    flags: tuple[str, ...] = ()
    if k is None:
        flags = ("unparseable", "empty") if how == "empty" else ("unparseable",)
    correct = k == gold
    return MetricResult(name="mc_accuracy", value=float(correct), correct=correct,
                        parsed=LETTERS[k] if k is not None else None, flags=flags,
                        extra={"how": how, "gold": LETTERS[gold]})


# ----------------------------------------------------------------------------- numbers


@dataclass(frozen=True)
class ParsedNumber:
    """A number found in text. `value` includes sign and scale; a percent keeps its face value (12.5 for 12.5%)."""

    value: float
    percent: bool = False
    scale: float = 1.0
    currency: str | None = None
    raw: str = ""


_CUR_CODES = r"US\$|USD|EUR|GBP|JPY|CNY|RMB|INR|CAD|AUD|CHF"
_SCALE_WORDS = {"hundred": 1e2, "thousand": 1e3, "million": 1e6, "billion": 1e9, "trillion": 1e12,
                "mln": 1e6, "bln": 1e9, "mn": 1e6, "bn": 1e9, "tn": 1e12}
_SCALE_LETTERS = {"k": 1e3, "K": 1e3, "M": 1e6, "MM": 1e6, "B": 1e9, "T": 1e12, "m": 1e6, "b": 1e9}
_NUM_RE = re.compile(
    r"(?P<open>\()?[ \t]*"
    r"(?:(?<![\w.,])(?P<sign1>[+\-−]))?[ \t]*"
    rf"(?P<cur1>[$€£¥₹]|(?:{_CUR_CODES})[ \t]*)?[ \t]*"
    r"(?:(?<![\w.,])(?P<sign2>[+\-−]))?"
    r"(?<![\w.,])(?P<num>(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+)?)"
    r"(?:(?P<pct>[ \t]*(?:%|percent\b|per[ \t]+cent\b|pct\b))"
    r"|[ \t]*(?P<sword>(?i:hundred|thousand|million|billion|trillion|mln|bln|mn|bn|tn))\b"
    r"|(?P<sletter>MM|[kKMBTmb])(?![A-Za-z]))?"
    rf"(?:[ \t]*(?P<cur2>{_CUR_CODES})\b)?"
    r"(?P<close>[ \t]*\))?"
)

_UNIT_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_TENS_WORDS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_NUMWORD = "|".join(sorted([*_UNIT_WORDS, *_TENS_WORDS, "hundred", "thousand", "million", "billion", "trillion"],
                           key=len, reverse=True))
_WORDS_RE = re.compile(
    rf"\b(?P<neg>(?:minus|negative)\s+)?(?P<run>(?:{_NUMWORD})(?:(?:\s+and\s+|\s+|-)(?:{_NUMWORD}))*"
    rf"(?:\s+point(?:\s+(?:{'|'.join(_UNIT_WORDS)}))+)?)\b(?P<pct>\s*(?:%|percent\b|per\s+cent\b))?",
    re.IGNORECASE,
)
_NUM_MARKER_RE = re.compile(r"answer\s*(?:is\b|:|：|=)|\\boxed\{", re.IGNORECASE)


def _words_value(run: str) -> float:
    toks = [t for t in re.split(r"[\s\-]+", run.lower()) if t and t != "and"]
    total, current, frac, in_frac = 0.0, 0.0, "", False
    for t in toks:
        if t == "point":
            in_frac = True
        elif in_frac:
            frac += str(_UNIT_WORDS.get(t, 0))
        elif t in _UNIT_WORDS:
            current += _UNIT_WORDS[t]
        elif t in _TENS_WORDS:
            current += _TENS_WORDS[t]
        elif t == "hundred":
            current = (current or 1) * 100
        else:
            total += (current or 1) * _SCALE_WORDS[t]
            current = 0.0
    value = total + current
    return value + float("0." + frac) if frac else value


def _digit_numbers(seg: str) -> list[ParsedNumber]:
    out = []
    stripped = seg.strip().rstrip(".")
    for m in _NUM_RE.finditer(seg):
        g = m.groupdict()
        try:
            value = float(g["num"].replace(",", ""))
        except ValueError:
            continue
        currency = (g["cur1"] or g["cur2"] or "").strip() or None
        scale = 1.0
        if g["sword"]:
            scale = _SCALE_WORDS[g["sword"].lower()]
        elif g["sletter"] and (g["sletter"] not in ("m", "b") or currency):
            scale = _SCALE_LETTERS[g["sletter"]]
        neg = bool({g["sign1"], g["sign2"]} & {"-", "−"})
        if g["open"] and g["close"] and not neg:
            # accounting negative "(1,234)": only with a separator, decimals or currency, or as the whole answer
            if "," in g["num"] or "." in g["num"] or currency or m.group(0).strip() == stripped:
                neg = True
        value *= scale
        out.append(ParsedNumber(value=-value if neg else value, percent=bool(g["pct"]), scale=scale,
                                currency=currency, raw=m.group(0).strip()))
    return out


def _word_numbers(seg: str) -> list[ParsedNumber]:
    out = []
    for m in _WORDS_RE.finditer(seg):
        value = _words_value(m.group("run"))
        out.append(ParsedNumber(value=-value if m.group("neg") else value, percent=bool(m.group("pct")),
                                raw=m.group(0).strip()))
    return out


def _first_number(seg: str) -> ParsedNumber | None:
    nums = _digit_numbers(seg) or _word_numbers(seg)
    return nums[0] if nums else None


def extract_number(text: str) -> ParsedNumber | None:
    """The number that looks like the final answer, with percent/scale/currency details (see `parse_number`)."""
    t = unicodedata.normalize("NFKC", text or "").replace("\u2212", "-")
    if not t.strip():
        return None
    marks = list(_NUM_MARKER_RE.finditer(t))
    if marks:
        seg = t[marks[-1].end():]
        first_line = next((ln for ln in seg.splitlines() if ln.strip()), "")
        if "=" in first_line:
            got = _first_number(first_line.rsplit("=", 1)[1])
            if got is not None:
                return got
        got = _first_number(seg)
        if got is not None:
            return got
    return _first_number(t)


def parse_number(text: str) -> float | None:
    """The answer number in `text`, or None.

    Which number: after the last answer marker ("Answer:", "answer is", "answer =", "\\boxed{") the first
    number (after the last "=" on that line when there is one); with no marker (or no number after it), the
    first number in the text. Numbers written with digits win over numbers written as words (so "one of the
    5 patients" gives 5); words are used only when no digit number is present.
    Accepted: signs "+", "-", "−"; thousands separators "1,234,567"; decimals; exponents "1.2e6"; accounting
    negatives "(1,234)" / "($0.02)" (a bare "(5)" only when it is the whole answer, so "(2019)" stays 2019);
    percent "12.5%"/"12.5 percent" (returned as 12.5 — `extract_number` tells it was a percent); currency
    "$ € £ ¥ ₹" and codes "USD", "EUR", …; scale words "hundred/thousand/million/billion/trillion", "mn/bn/tn",
    attached letters "450k", "3.4B", "2M", "1T", "5MM" (lowercase "m"/"b" only with a currency: "$5m");
    number words "twenty-three", "one hundred and five", "three million", "minus five", "three point five".
    A digit run glued to letters ("FY2019", "Q3") is not a number; "1,5" is read as 1 (no decimal comma).
    """
    got = extract_number(text)
    return got.value if got is not None else None


def _close(p: float, g: float, rel_tol: float) -> bool:
    return abs(p - g) <= rel_tol * abs(g) + 1e-12


def numeric_match(pred: str | float, gold: str | float, rel_tol: float = 0.01) -> bool:
    """Whether the prediction's number is within `rel_tol` (relative to gold) of the gold number.

    Scale words apply on both sides ("1.2 billion" == "1,200 million"). When exactly one side is a percent,
    both scalings are accepted: "12.5%" matches gold "12.5" and gold "0.125".
    """
    p = ParsedNumber(float(pred)) if isinstance(pred, (int, float)) else extract_number(pred)
    g = ParsedNumber(float(gold)) if isinstance(gold, (int, float)) else extract_number(gold)
    if p is None or g is None or not (math.isfinite(p.value) and math.isfinite(g.value)):
        return False
    if _close(p.value, g.value, rel_tol):
        return True
    if p.percent != g.percent:
        if p.percent:
            return _close(p.value / 100, g.value, rel_tol)
        return _close(p.value, g.value / 100, rel_tol)
    return False


def _fmt_number(n: ParsedNumber) -> str:
    s = f"{n.value:.10g}"
    return s + "%" if n.percent else s


def _score_number(sample: Sample, prediction: str, rel_tol: float) -> MetricResult:
    golds = [(a, extract_number(a)) for a in sample.answers]
    usable = [(a, g) for a, g in golds if g is not None]
    empty = not (prediction or "").strip()
    if not usable:  # the task promised a number but gave none: fall back to exact match, visibly
        em = exact_match(prediction, sample.answers)
        flags = ("gold_unparseable", "empty") if empty else ("gold_unparseable",)
        return MetricResult("numeric_match", em, em == 1.0, normalize_answer(prediction), flags, {"em": em})
    p = extract_number(prediction)
    if p is None:
        flags = ("unparseable", "empty") if empty else ("unparseable",)
        return MetricResult("numeric_match", 0.0, False, None, flags, {"gold_values": [g.value for _, g in usable]})
    correct = any(numeric_match(prediction, a, rel_tol) for a, _ in usable)
    return MetricResult("numeric_match", float(correct), correct, _fmt_number(p), (),
                        {"pred_value": p.value, "percent": p.percent, "gold_values": [g.value for _, g in usable],
                         "rel_tol": rel_tol})


# ----------------------------------------------------------------------------- dispatch


def score_prediction(sample: Sample, prediction: str, *, rel_tol: float = 0.01) -> MetricResult:
    """Score one prediction by `sample.answer_type`.

    "choice" → mc_accuracy (parse_choice vs the gold option); "number" → numeric_match (any gold alias within
    rel_tol); "text" → exact_match (correct = EM against any alias, token F1 in extra["f1"]); "continuation" →
    token_f1 (value = F1, correct = EM; continuations are really scored by bits_per_byte elsewhere).
    """
    kind = sample.answer_type
    if kind == "choice":
        return _score_choice(sample, prediction)
    if kind == "number":
        return _score_number(sample, prediction, rel_tol)
    if kind == "text":
        return _score_text(sample, prediction, "exact_match")
    if kind == "continuation":
        return _score_text(sample, prediction, "token_f1")
    raise ValueError(f"sample {sample.id!r}: unknown answer_type {kind!r}")


# ----------------------------------------------------------------------------- LLM-as-judge

JUDGE_RUBRIC_VERSION = "v1"
JUDGE_SYSTEM = "You are a strict, impartial grader of short answers."
JUDGE_PROMPT = (
    "Grade whether the predicted answer to the question is correct.\n\n"
    "Question: {question}\n"
    "Gold answer(s): {gold}\n"
    "Predicted answer: {prediction}\n\n"
    "Rules:\n"
    "- The prediction is CORRECT if it states the same answer as any gold answer, even if worded differently, "
    "with extra explanation, or with numbers rounded or written in another unit or scale that gives the same "
    "value.\n"
    "- It is INCORRECT if it contradicts the gold answer, misses an essential part of it, hedges between "
    "several answers, says it cannot answer, or is empty.\n"
    "- Judge only the answer, not style or reasoning.\n\n"
    "Reply with exactly one word: CORRECT or INCORRECT."
)
JUDGE_PROMPT_SHA256 = hashlib.sha256((JUDGE_SYSTEM + "\n" + JUDGE_PROMPT).encode()).hexdigest()


def build_judge_messages(question: str, golds: Sequence[str] | str, prediction: str) -> list[dict[str, str]]:
    """Chat messages for the judge: the fixed system line and the rubric filled in (gold aliases joined by " | ")."""
    gold = " | ".join(g.strip() for g in _as_golds(golds)) or "(none)"
    pred = prediction.strip() or "(empty)"
    user = JUDGE_PROMPT.format(question=question.strip(), gold=gold, prediction=pred)
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


_VERDICT_RE = re.compile(r"\b(?:(not)\s+)?(incorrect|correct)\b", re.IGNORECASE)
_VERDICT_LABEL_RE = re.compile(
    r"\b(?:verdict|grade|answer|judgement|judgment)\s*[:：]\s*(?:(not)\s+)?(incorrect|correct)\b", re.IGNORECASE
)


def parse_judge_verdict(raw: str) -> bool | None:
    """True for CORRECT, False for INCORRECT (also "not correct"), None when absent or contradictory.

    A "Verdict:"/"Grade:" label decides when present, else a verdict as the first word, else every verdict word
    in the text must agree.
    """
    t = unicodedata.normalize("NFKC", raw or "")
    labelled = list(_VERDICT_LABEL_RE.finditer(t))
    head = re.sub(r"^[\W_]+", "", t)
    first = _VERDICT_RE.match(head)
    if first and re.match(r"\s*(?:or\b|/)", head[first.end():], re.IGNORECASE):
        first = None  # "CORRECT or INCORRECT" echoes the instruction
    found = labelled[-1:] or ([first] if first else list(_VERDICT_RE.finditer(t)))
    verdicts = {m.group(2).lower() == "correct" and not m.group(1) for m in found}
    return verdicts.pop() if len(verdicts) == 1 else None


def judge_score(sample: Sample, prediction: str, judge: Callable[[list[dict[str, str]]], str]) -> MetricResult:
    """Ask `judge` (messages → text) whether the prediction is correct. An empty prediction is INCORRECT
    without a call; an unparseable verdict counts as wrong and is flagged "unparseable"."""
    extra: dict[str, Any] = {"rubric_version": JUDGE_RUBRIC_VERSION, "rubric_sha256": JUDGE_PROMPT_SHA256}
    if not (prediction or "").strip():
        return MetricResult("judge", 0.0, False, None, ("empty",), extra | {"judge_raw": None})
    raw = judge(build_judge_messages(sample.question, sample.answers, prediction))
    verdict = parse_judge_verdict(raw)
    extra["judge_raw"] = raw
    if verdict is None:
        return MetricResult("judge", 0.0, False, None, ("unparseable",), extra)
    return MetricResult("judge", float(verdict), verdict, "CORRECT" if verdict else "INCORRECT", (), extra)


# ----------------------------------------------------------------------------- distortion, rate, accuracy CI


def bits_per_byte(total_logprob_nats: float, text: str) -> float:
    """−total_logprob / ln 2 / (UTF-8 bytes of `text`). Empty text → ValueError."""
    n = len(text.encode("utf-8"))
    if n == 0:
        raise ValueError("bits_per_byte of empty text is undefined")
    if math.isnan(total_logprob_nats):
        raise ValueError("total_logprob_nats is NaN")
    return -float(total_logprob_nats) / math.log(2) / n


def token_ratio(summary_tokens: int, context_tokens: int) -> float:
    """Compression ratio in tokens: summary_tokens / context_tokens (not an information rate)."""
    if context_tokens <= 0:
        raise ValueError(f"context_tokens must be positive, got {context_tokens}")
    if summary_tokens < 0:
        raise ValueError(f"summary_tokens must be >= 0, got {summary_tokens}")
    return summary_tokens / context_tokens


def accuracy_with_ci(correct: Sequence[bool], alpha: float = 0.05) -> tuple[float, float, float]:
    """(accuracy, lo, hi) with the Wilson score interval at level 1 − alpha. Empty input → ValueError."""
    n = len(correct)
    if n == 0:
        raise ValueError("accuracy of zero samples is undefined")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    k = sum(bool(c) for c in correct)
    p = k / n
    z = NormalDist().inv_cdf(1 - alpha / 2)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exact bounds at the edges (no rounding residue)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return p, lo, hi


def mean_with_ci(values: Sequence[float], alpha: float = 0.05) -> tuple[float, float | None, float | None]:
    """(mean, lo, hi) with Student's t interval at level 1 − alpha; lo = hi = None for one value.

    Empty input → ValueError.
    """
    n = len(values)
    if n == 0:
        raise ValueError("mean of zero values is undefined")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    m = math.fsum(values) / n
    if n == 1:
        return m, None, None
    from scipy.stats import t

    sd = math.sqrt(math.fsum((v - m) ** 2 for v in values) / (n - 1))
    half = float(t.ppf(1 - alpha / 2, n - 1)) * sd / math.sqrt(n)
    return m, m - half, m + half
