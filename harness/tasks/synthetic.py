"""Seeded synthetic tasks: offline stand-ins for LongHealth, FinanceBench and HotpotQA.

Every generator draws from its own `random.Random` seeded with the string "<task>|<seed>|<split>" (string seeds are
hashed deterministically by Python), so loading a task twice with the same seed and split gives identical samples
and different seeds give different ones. Context length is estimated as ``len(context) / 4`` tokens
(`approx_tokens`); generators pad with neutral filler sentences until the estimate reaches `context_tokens`
(they never truncate, so many distractors can overshoot it). `n_distractors` is honoured exactly.

Every question template forms one group (`group_id` = template id) whose question text is identical across the
group's samples while the contexts (and answers) vary, which is what the I(X;Z|Q) estimator swaps over.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from harness.errors import UserError
from harness.records import Document, Sample
from harness.tasks.base import register_task

CHARS_PER_TOKEN = 4.0
LETTERS = "ABCDEFGHIJ"


def approx_tokens(text: str) -> float:
    """Rough token count used for `context_tokens` (≈ 4 characters per token)."""
    return len(text) / CHARS_PER_TOKEN


def _rng(task: str, seed: int, split: str | None) -> random.Random:
    return random.Random(f"{task}|{int(seed)}|{split or 'test'}")


def _int_opt(task: str, key: str, value: Any, lo: int, hi: int | None = None) -> int:
    """Validate an integer option, raising `UserError` naming the field."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if isinstance(value, bool) or float(value) != int(value):
                raise ValueError
            value = int(value)
        except (TypeError, ValueError):
            raise UserError(f"task.options.{key}: task '{task}' needs an integer, got {value!r}") from None
    if value < lo or (hi is not None and value > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise UserError(f"task.options.{key}: task '{task}' needs {rng}, got {value}")
    return value


def _size(task: str, size: Any) -> int:
    if size is None:
        raise UserError(f"task.size: task '{task}' needs a size (set task.size or tasks/{task}.yaml defaults)")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise UserError(f"task.size: task '{task}' needs a non-negative integer, got {size!r}")
    return size


MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")


def _fmt_date(d: date) -> str:
    return f"{d.day} {MONTHS[d.month - 1]} {d.year}"


@dataclass
class _Doc:
    """A document being built: ordered lines (each a sentence or table row) plus keys marking fact lines."""

    id: str
    title: str
    lines: list[str]
    keys: dict[str, list[int]]  # fact key -> indices into `lines`
    sep: str = "\n"
    is_gold: bool = False
    pad_header: str = ""  # line inserted before the first filler line
    filler: Callable[[random.Random], str] | None = None  # this document's own filler source, if any

    def render(self) -> tuple[str, list[tuple[int, int]]]:
        """Text and the (start, end) offsets of every line."""
        offsets, pos = [], 0
        for ln in self.lines:
            offsets.append((pos, pos + len(ln)))
            pos += len(ln) + len(self.sep)
        return self.sep.join(self.lines), offsets

    def to_document(self, gold_keys: Sequence[str] = ()) -> Document:
        text, offsets = self.render()
        idx = sorted({i for k in gold_keys for i in self.keys.get(k, [])})
        return Document(id=self.id, text=text, title=self.title, gold_spans=tuple(offsets[i] for i in idx),
                        is_gold=self.is_gold)


def _context_chars(docs: Sequence[_Doc]) -> int:
    """Length of `Sample.context` for these documents (title line + text, joined by blank lines)."""
    n = 0
    for d in docs:
        n += (len(d.title) + 3 if d.title else 0) + sum(len(x) for x in d.lines) + len(d.sep) * max(0, len(d.lines) - 1)
    return n + 2 * max(0, len(docs) - 1)


def _pad(rng: random.Random, docs: Sequence[_Doc], context_tokens: int, filler: Callable[[random.Random], str],
         targets: Sequence[_Doc] | None = None) -> None:
    """Append filler lines round-robin to `targets` (default all docs) until the context reaches the target."""
    targets = list(targets if targets is not None else docs)
    if not targets or context_tokens <= 0:
        return
    need = context_tokens * CHARS_PER_TOKEN
    cur = _context_chars(docs)
    k = 0
    while cur < need:
        d = targets[k % len(targets)]
        if d.pad_header:
            cur += len(d.pad_header) + (len(d.sep) if d.lines else 0)
            d.lines.append(d.pad_header)
            d.pad_header = ""
        s = d.filler(rng) if d.filler else filler(rng)
        cur += len(s) + (len(d.sep) if d.lines else 0)
        d.lines.append(s)
        k += 1


def _deck(rng: random.Random, items: Sequence[str]) -> Callable[[random.Random], str]:
    """A filler source that deals `items` in shuffled rounds, so repeats only start after all were used.

    Items may contain "{date}", filled with a random date in 2000-2023.
    """
    pile: list[str] = []

    def draw(r: random.Random) -> str:
        if not pile:
            pile.extend(items)
            r.shuffle(pile)
        s = pile.pop()
        if "{date}" in s:
            s = s.format(date=_fmt_date(date(r.randint(2000, 2023), r.randint(1, 12), r.randint(1, 28))))
        return s

    return draw


def _a(word: str) -> str:
    """`word` with its indefinite article."""
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def _possessive(name: str) -> str:
    return name + ("'" if name.endswith("s") else "'s")


def _options(rng: random.Random, answer: str, hard: Sequence[str], draw: Callable[[random.Random], str],
             n: int = 5, max_hard: int = 3) -> tuple[list[str], int]:
    """`n` distinct options: the answer at a uniform position, up to `max_hard` hard distractors, rest drawn."""
    pool = [h for h in dict.fromkeys(hard) if h != answer]
    rng.shuffle(pool)
    opts = pool[:max_hard]
    tries = 0
    while len(opts) < n - 1:
        c = draw(rng)
        tries += 1
        if c != answer and c not in opts:
            opts.append(c)
        if tries > 10_000:
            raise RuntimeError("could not draw distinct options")
    rng.shuffle(opts)
    pos = rng.randrange(n)
    opts.insert(pos, answer)
    return opts, pos


# ---------------------------------------------------------------------------------------------------------------
# synthetic-records (LongHealth-like)
# ---------------------------------------------------------------------------------------------------------------

FIRST_NAMES = (
    "Maria", "James", "Aisha", "Lukas", "Sofia", "Daniel", "Hannah", "Omar", "Elena", "Victor", "Grace", "Tomas",
    "Priya", "Henry", "Nadia", "Samuel", "Clara", "Mateo", "Ingrid", "Felix", "Leila", "Arthur", "Yuki", "Oscar",
    "Amara", "Simon", "Rosa", "Edwin", "Freya", "Jonas", "Lucia", "Martin", "Zara", "Peter", "Alma", "Hugo", "Irene",
    "Rafael", "Vera", "George",
)
LAST_NAMES = (
    "Keller", "Novak", "Brennan", "Okafor", "Lindqvist", "Moreau", "Castillo", "Petrov", "Haddad", "Fischer",
    "Yamada", "Oliveira", "Kowalski", "Ashworth", "Rahman", "Dubois", "Marsh", "Varga", "Holm", "Costa", "Brandt",
    "Nakamura", "Quinn", "Ferreira", "Sandberg", "Mensah", "Rossi", "Whitlock", "Ibarra", "Lang", "Duncan", "Sato",
    "Mercer", "Horvath", "Eriksen", "Bauer", "Caldwell", "Aziz", "Pereira", "Thorne",
)
DIAGNOSES = (
    "type 2 diabetes", "hypertension", "atrial fibrillation", "asthma", "chronic kidney disease", "hypothyroidism",
    "rheumatoid arthritis", "major depressive disorder", "chronic obstructive pulmonary disease", "heart failure",
    "osteoporosis", "gout", "epilepsy", "migraine", "psoriasis", "Crohn's disease", "hyperlipidemia",
    "iron-deficiency anemia", "multiple sclerosis", "Parkinson's disease",
)
MEDICATIONS = (
    "metformin", "lisinopril", "apixaban", "salbutamol", "levothyroxine", "methotrexate", "sertraline", "tiotropium",
    "furosemide", "alendronate", "allopurinol", "levetiracetam", "sumatriptan", "adalimumab", "atorvastatin",
    "ferrous sulfate", "amlodipine", "bisoprolol", "prednisolone", "omeprazole", "ramipril", "warfarin",
    "insulin glargine", "losartan",
)
STRENGTHS_MG = (5, 10, 20, 25, 40, 50, 100, 200, 250, 500)
FREQUENCIES = ("once daily", "twice daily", "three times daily")
BIRTH_YEARS = range(1935, 1995)
DIAGNOSIS_YEARS = range(2000, 2024)
MAX_DAY = 28  # days 1..28 are valid in every month
START_DELAYS = range(1, 29)  # days from diagnosis to medication start


@dataclass(frozen=True)
class _Lab:
    name: str
    unit: str
    lo: int  # grid in units of 10**-decimals
    hi: int
    decimals: int

    @property
    def n_values(self) -> int:
        return self.hi - self.lo + 1

    def fmt(self, k: int) -> str:
        v = (self.lo + k) / 10**self.decimals
        return f"{v:.{self.decimals}f} {self.unit}"


LABS = (
    _Lab("Hemoglobin", "g/dL", 80, 170, 1),
    _Lab("Creatinine", "mg/dL", 5, 30, 1),
    _Lab("Potassium", "mmol/L", 30, 60, 1),
    _Lab("Fasting glucose", "mg/dL", 70, 250, 0),
)

RECORD_NOTES = (
    "The patient attended a routine follow-up visit and reported feeling generally well.",
    "Vital signs were within normal limits at the last visit.",
    "The patient was advised to keep up regular physical activity.",
    "A dietary consultation was offered and the patient agreed to attend.",
    "The patient lives with family and is independent in daily activities.",
    "Vaccinations were reviewed and found to be up to date.",
    "The patient was reminded to bring all medication boxes to the next appointment.",
    "Sleep quality was described as fair, with occasional night-time waking.",
    "No new complaints were reported during the telephone consultation.",
    "The patient asked about travel advice and received written information.",
    "Body weight was stable compared with the previous visit.",
    "The patient works part-time and reports moderate stress at work.",
    "A referral letter was sent to the community nursing team.",
    "The patient was encouraged to reduce salt intake.",
    "Inhaler technique and general medication handling were reviewed.",
    "The patient reported mild fatigue in the afternoons.",
    "An appointment for a routine eye examination was arranged.",
    "The patient does not smoke and drinks alcohol only occasionally.",
    "Family history was reviewed without new findings.",
    "The next routine review is planned in six months.",
)
RECORD_NOTES_DATED = (
    "At a follow-up visit on {date} the patient reported no new symptoms.",
    "A telephone consultation took place on {date}.",
    "On {date} the patient missed a scheduled appointment and rebooked it.",
    "Blood pressure was checked on {date} and documented in the chart.",
    "On {date} the patient completed a health questionnaire.",
)


@dataclass
class _Episode:
    diagnosis: str
    diagnosed: date
    medication: str
    dose: str
    started: date


@dataclass
class _Patient:
    name: str
    born: date
    episodes: list[_Episode]  # chronological
    labs: dict[str, str]  # lab name -> formatted value

    def facts(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "birth_date": _fmt_date(self.born),
            "episodes": [
                {"diagnosis": e.diagnosis, "diagnosed": _fmt_date(e.diagnosed), "medication": e.medication,
                 "dose": e.dose, "started": _fmt_date(e.started)}
                for e in self.episodes
            ],
            "labs": dict(self.labs),
        }


def _draw_dose(rng: random.Random) -> str:
    return f"{rng.choice(STRENGTHS_MG)} mg {rng.choice(FREQUENCIES)}"


def _draw_patient(rng: random.Random, n_facts: int) -> _Patient:
    name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    born = date(rng.choice(BIRTH_YEARS), rng.randint(1, 12), rng.randint(1, MAX_DAY))
    years = sorted(rng.sample(DIAGNOSIS_YEARS, n_facts))
    diags = rng.sample(DIAGNOSES, n_facts)
    meds = rng.sample(MEDICATIONS, n_facts)
    eps = []
    for y, dg, md in zip(years, diags, meds, strict=True):
        d = date(y, rng.randint(1, 12), rng.randint(1, MAX_DAY))
        eps.append(_Episode(dg, d, md, _draw_dose(rng), d + timedelta(days=rng.choice(START_DELAYS))))
    labs = {lab.name: lab.fmt(rng.randrange(lab.n_values)) for lab in LABS}
    return _Patient(name, born, eps, labs)


def record_fact_bits(n_facts: int) -> float:
    """Entropy (bits) of one generated record's fields; every field is drawn uniformly and independently.

    name (first × last) + birth date (year × month × day) + an ordered set of `n_facts` distinct diagnosis years
    (log2 C(24, n)) + per episode month and day, diagnosis and medication without replacement, dose
    (strength × frequency) and start delay + one grid value per lab. Filler notes are not counted.
    """
    bits = math.log2(len(FIRST_NAMES) * len(LAST_NAMES))
    bits += math.log2(len(BIRTH_YEARS) * 12 * MAX_DAY)
    bits += math.log2(math.comb(len(DIAGNOSIS_YEARS), n_facts))
    for k in range(n_facts):
        bits += math.log2(12 * MAX_DAY)
        bits += math.log2(len(DIAGNOSES) - k) + math.log2(len(MEDICATIONS) - k)
        bits += math.log2(len(STRENGTHS_MG) * len(FREQUENCIES)) + math.log2(len(START_DELAYS))
    bits += sum(math.log2(lab.n_values) for lab in LABS)
    return bits


def _record_doc(doc_id: str, title: str, p: _Patient) -> _Doc:
    lines = [f"Patient name: {p.name}.", f"Date of birth: {_fmt_date(p.born)}.", "Medical history:"]
    keys: dict[str, list[int]] = {"name": [0], "birth": [1]}
    for k, e in enumerate(p.episodes):
        keys[f"diagnosis{k}"] = [len(lines)]
        lines.append(f"On {_fmt_date(e.diagnosed)} the patient was diagnosed with {e.diagnosis}.")
        keys[f"medication{k}"] = [len(lines)]
        lines.append(f"Following this diagnosis, {e.medication} {e.dose} was started on {_fmt_date(e.started)}.")
    lines.append("Latest laboratory results:")
    for lab in LABS:
        keys[f"lab:{lab.name}"] = [len(lines)]
        lines.append(f"{lab.name}: {p.labs[lab.name]}.")
    return _Doc(doc_id, title, lines, keys, pad_header="Notes:")


@dataclass(frozen=True)
class _RecordTemplate:
    id: str
    question: str
    answer: Callable[[_Patient], str]
    gold_keys: tuple[str, ...]
    hard: Callable[[_Patient, list[_Patient]], list[str]]  # plausible wrong options (target's other fields, others)
    draw: Callable[[random.Random], str]  # a random option from the field's vocabulary


def _lab_draw(lab: _Lab) -> Callable[[random.Random], str]:
    return lambda r: lab.fmt(r.randrange(lab.n_values))


def _year_month(d: date) -> str:
    return f"{MONTHS[d.month - 1]} {d.year}"


RECORD_TEMPLATES: tuple[_RecordTemplate, ...] = (
    _RecordTemplate(
        "records/q-medication",
        "Which medication was the patient in the Record of interest started on after their earliest diagnosis?",
        lambda p: p.episodes[0].medication, ("diagnosis0", "medication0"),
        lambda t, ds: [e.medication for e in t.episodes[1:]] + [e.medication for d in ds for e in d.episodes],
        lambda r: r.choice(MEDICATIONS)),
    _RecordTemplate(
        "records/q-diagnosis",
        "What was the earliest diagnosis of the patient in the Record of interest?",
        lambda p: p.episodes[0].diagnosis, ("diagnosis0",),
        lambda t, ds: [e.diagnosis for e in t.episodes[1:]] + [e.diagnosis for d in ds for e in d.episodes],
        lambda r: r.choice(DIAGNOSES)),
    _RecordTemplate(
        "records/q-hemoglobin",
        "What was the latest hemoglobin value of the patient in the Record of interest?",
        lambda p: p.labs["Hemoglobin"], ("lab:Hemoglobin",),
        lambda t, ds: [d.labs["Hemoglobin"] for d in ds],
        _lab_draw(LABS[0])),
    _RecordTemplate(
        "records/q-dose",
        "What dose was prescribed for the medication started after the earliest diagnosis of the patient in the "
        "Record of interest?",
        lambda p: p.episodes[0].dose, ("diagnosis0", "medication0"),
        lambda t, ds: [e.dose for e in t.episodes[1:]] + [e.dose for d in ds for e in d.episodes],
        _draw_dose),
    _RecordTemplate(
        "records/q-birth-year",
        "In which year was the patient in the Record of interest born?",
        lambda p: str(p.born.year), ("birth",),
        lambda t, ds: [str(d.born.year) for d in ds],
        lambda r: str(r.choice(BIRTH_YEARS))),
    _RecordTemplate(
        "records/q-diagnosis-date",
        "In which month and year was the earliest diagnosis of the patient in the Record of interest made?",
        lambda p: _year_month(p.episodes[0].diagnosed), ("diagnosis0",),
        lambda t, ds: [_year_month(e.diagnosed) for e in t.episodes[1:]]
        + [_year_month(e.diagnosed) for d in ds for e in d.episodes],
        lambda r: f"{r.choice(MONTHS)} {r.choice(DIAGNOSIS_YEARS)}"),
    _RecordTemplate(
        "records/q-creatinine",
        "What was the latest creatinine value of the patient in the Record of interest?",
        lambda p: p.labs["Creatinine"], ("lab:Creatinine",),
        lambda t, ds: [d.labs["Creatinine"] for d in ds],
        _lab_draw(LABS[1])),
    _RecordTemplate(
        "records/q-name",
        "What is the name of the patient in the Record of interest?",
        lambda p: p.name, ("name",),
        lambda t, ds: [d.name for d in ds],
        lambda r: f"{r.choice(FIRST_NAMES)} {r.choice(LAST_NAMES)}"),
)

RECORD_OPTIONS = ("context_tokens", "distinct_values", "n_distractors", "n_facts", "n_templates", "target_position")
N_CHOICES = 5


@register_task("synthetic-records", options=RECORD_OPTIONS)
def synthetic_records(size: int | None = 8, seed: int = 0, split: str | None = None, *, context_tokens: int = 350,
                      n_distractors: int = 1, n_facts: int = 2, n_templates: int = 4,
                      target_position: str = "first", distinct_values: int = 0) -> list[Sample]:
    """Fictional patient records with five-option questions about the "Record of interest" (LongHealth-like).

    A context is the target record (titled "Record of interest", `is_gold=True`) plus `n_distractors` records
    titled "Other record k"; each record holds a name, a birth date, `n_facts` chronological diagnosis episodes
    (diagnosis + date, then a medication with dose and start date) and four lab values, padded with neutral notes
    to about `context_tokens` tokens. `target_position` is "first" or "random" (position among the records).

    Question templates never name the patient, so each template (the first `n_templates` of
    `RECORD_TEMPLATES`) is one group (`group_id` = template id) with an identical question over many contexts;
    samples cycle through the templates. Choices are 5 distinct option texts (up to 3 hard distractors taken from
    the target's other episodes and the distractor records, the rest drawn from the same vocabulary);
    `answers` = (option text, letter).

    Information content (in `meta`): the answer position is uniform and exactly one option is correct, so a
    perfect summary must carry `answer_entropy_bits` = log2 5 ≈ 2.32 bits about the answer given the question and
    choices; the whole target record carries `record_fact_bits` bits (exact entropy of its independently, uniformly
    drawn fields; see `record_fact_bits`), an upper bound for what the context can tell about the target record.

    `distinct_values` = k > 0 makes every group hold only k distinct contexts: the group's r-th sample is a copy
    (new id, same documents, answer and choices) of its (r mod k)-th, so I(X;Z|Q) over a group of N contexts is at
    most log2 k (exactly H of the k values' shares, = log2 k when k divides N), whatever the compressor. The copies
    say `meta["copy_of"]`; 0 (default) draws every context afresh.
    """
    task = "synthetic-records"
    size = _size(task, size)
    context_tokens = _int_opt(task, "context_tokens", context_tokens, 0)
    n_distractors = _int_opt(task, "n_distractors", n_distractors, 0, 50)
    n_facts = _int_opt(task, "n_facts", n_facts, 1, min(len(DIAGNOSES), len(MEDICATIONS), len(DIAGNOSIS_YEARS)))
    n_templates = _int_opt(task, "n_templates", n_templates, 1, len(RECORD_TEMPLATES))
    distinct_values = _int_opt(task, "distinct_values", distinct_values, 0)
    if target_position not in ("first", "random"):
        raise UserError(f"task.options.target_position: task '{task}' needs 'first' or 'random', "
                        f"got {target_position!r}")
    rng = _rng(task, seed, split)
    fact_bits = record_fact_bits(n_facts)
    samples = []
    for i in range(size):
        tpl = RECORD_TEMPLATES[i % n_templates]
        sid = f"{task}/{split or 'test'}/{seed}/{i:05d}"
        r = i // n_templates  # position within the group
        if distinct_values and r >= distinct_values:
            src = samples[i - (r - r % distinct_values) * n_templates]
            samples.append(replace(src, id=sid, meta={**src.meta, "copy_of": src.id}))
            continue
        target = _draw_patient(rng, n_facts)
        others: list[_Patient] = []
        while len(others) < n_distractors:
            p = _draw_patient(rng, n_facts)
            if p.name != target.name and all(p.name != o.name for o in others):
                others.append(p)
        pos = 0 if target_position == "first" else rng.randrange(n_distractors + 1)
        docs = [_record_doc(f"{sid}/other{k + 1}", f"Other record {k + 1}", p) for k, p in enumerate(others)]
        tdoc = _record_doc(f"{sid}/target", "Record of interest", target)
        tdoc.is_gold = True
        docs.insert(pos, tdoc)
        _pad(rng, docs, context_tokens, _deck(rng, RECORD_NOTES + RECORD_NOTES_DATED))
        answer = tpl.answer(target)
        opts, k = _options(rng, answer, tpl.hard(target, others), tpl.draw, N_CHOICES)
        documents = tuple(d.to_document(tpl.gold_keys if d is tdoc else ()) for d in docs)
        samples.append(Sample(
            id=sid, question=tpl.question, documents=documents, answers=(answer, LETTERS[k]), group_id=tpl.id,
            choices=tuple(opts), answer_type="choice",
            meta={"template": tpl.id, "facts": target.facts(), "n_options": N_CHOICES,
                  "answer_entropy_bits": math.log2(N_CHOICES), "record_fact_bits": fact_bits,
                  "target_index": pos, "answer_letter": LETTERS[k]},
        ))
    return samples


# ---------------------------------------------------------------------------------------------------------------
# synthetic-filings (FinanceBench-like)
# ---------------------------------------------------------------------------------------------------------------

COMPANY_PREFIXES = (
    "Acme", "Northwind", "Brightwater", "Halcyon", "Ironbridge", "Lumen", "Meridian", "Oakridge", "Pinecrest",
    "Quillon", "Redfern", "Silverline", "Tidewater", "Vantor", "Westgate", "Zephyr", "Cobalt", "Harrow", "Kestrel",
    "Larkspur",
)
COMPANY_KINDS = (
    ("Foods", "packaged food"), ("Logistics", "freight and logistics"), ("Energy", "renewable energy"),
    ("Health", "medical device"), ("Systems", "industrial software"), ("Materials", "specialty chemicals"),
    ("Motors", "vehicle components"), ("Retail", "home goods retail"),
)
CITIES = ("Boston", "Denver", "Toronto", "Rotterdam", "Lyon", "Osaka", "Melbourne", "Austin", "Leeds", "Porto",
          "Gothenburg", "Calgary")

INCOME_ROWS = (
    "Total revenue", "Cost of revenue", "Gross profit", "Research and development",
    "Selling, general and administrative", "Total operating expenses", "Operating income", "Interest expense",
    "Income before income taxes", "Income tax expense", "Net income",
)
BALANCE_ROWS = (
    "Cash and cash equivalents", "Accounts receivable", "Inventories", "Total current assets",
    "Property and equipment, net", "Other long-term assets", "Total assets", "Accounts payable",
    "Accrued liabilities", "Short-term debt", "Total current liabilities", "Long-term debt", "Total liabilities",
    "Shareholders' equity",
)
CASHFLOW_ROWS = (
    "Net income", "Depreciation and amortization", "Changes in working capital",
    "Net cash from operating activities", "Capital expenditures", "Net cash used in investing activities",
    "Dividends paid",
)
STATEMENTS = {
    "income": ("Consolidated statements of income", INCOME_ROWS),
    "balance": ("Consolidated balance sheets", BALANCE_ROWS),
    "cashflow": ("Consolidated statements of cash flows", CASHFLOW_ROWS),
}

FILING_FILLER = (
    "The company continued to invest in employee training and development programs.",
    "Management regularly reviews the performance of each business unit.",
    "The board of directors met several times during the year to review strategy.",
    "The company maintains long-standing relationships with its key suppliers.",
    "Customer satisfaction remained a central focus for the sales organisation.",
    "The company complies with the reporting requirements of the jurisdictions in which it operates.",
    "Information technology systems were upgraded to improve reliability and security.",
    "The company's sustainability program focuses on energy efficiency and waste reduction.",
    "The audit committee oversees the integrity of the financial reporting process.",
    "Competition in the company's markets remained intense throughout the year.",
    "The company expects to continue investing in new products and services.",
    "Certain prior-year amounts have been reclassified to conform to the current presentation.",
    "The company operates in a regulated environment and monitors changes in applicable laws.",
    "Employee engagement surveys are conducted annually across all locations.",
    "The company manages foreign currency exposure through its treasury function.",
)
RISK_SENTENCES = (
    "Changes in economic conditions could reduce demand for the company's products.",
    "The company depends on a limited number of suppliers for certain components.",
    "Disruptions to information systems could adversely affect operations.",
    "Fluctuations in exchange rates may affect reported results.",
    "The company may be unable to attract and retain qualified employees.",
    "New regulations could increase compliance costs.",
    "Increases in interest rates could raise the cost of borrowing.",
)


def _company(rng: random.Random) -> tuple[str, str]:
    """A fictional company name and its industry."""
    kind, industry = rng.choice(COMPANY_KINDS)
    return f"{rng.choice(COMPANY_PREFIXES)} {kind}", industry


def _draw_financials(rng: random.Random, years: Sequence[int]) -> dict[str, dict[int, int]]:
    """Consistent statements for `years` (oldest first); values are integers in tenths of a million USD."""
    v: dict[str, dict[int, int]] = {r: {} for r in (*INCOME_ROWS, *BALANCE_ROWS, *CASHFLOW_ROWS)}
    rev = rng.randint(2000, 200000)
    for i, y in enumerate(years):
        if i:
            rev = round(rev * (1 + rng.uniform(-0.08, 0.25)))
        cogs = round(rev * rng.uniform(0.35, 0.6))
        rd, sga = round(rev * rng.uniform(0.03, 0.12)), round(rev * rng.uniform(0.08, 0.18))
        gross, opex = rev - cogs, rd + sga
        opinc = gross - opex
        interest = round(rev * rng.uniform(0.004, 0.02))
        pretax = opinc - interest
        tax = round(pretax * rng.uniform(0.15, 0.28))
        net = pretax - tax
        for r, x in zip(INCOME_ROWS, (rev, cogs, gross, rd, sga, opex, opinc, interest, pretax, tax, net),
                        strict=True):
            v[r][y] = x
        cash, ar, inv = (round(rev * rng.uniform(a, b)) for a, b in ((0.05, 0.3), (0.08, 0.2), (0.05, 0.15)))
        ca = cash + ar + inv
        ppe, other = round(rev * rng.uniform(0.2, 0.8)), round(rev * rng.uniform(0.05, 0.3))
        ta = ca + ppe + other
        ap, acc, std = (round(rev * rng.uniform(a, b)) for a, b in ((0.04, 0.1), (0.02, 0.06), (0.01, 0.05)))
        cl = ap + acc + std
        ltd = round(ta * rng.uniform(0.05, 0.3))
        tl = cl + ltd
        for r, x in zip(BALANCE_ROWS, (cash, ar, inv, ca, ppe, other, ta, ap, acc, std, cl, ltd, tl, ta - tl),
                        strict=True):
            v[r][y] = x
        da, wc = round(rev * rng.uniform(0.02, 0.06)), round(rev * rng.uniform(-0.03, 0.03))
        ocf = net + da + wc
        capex = round(rev * rng.uniform(0.03, 0.1))
        inv_cf = capex + round(rev * rng.uniform(0.0, 0.03))
        div = round(max(net, 0) * rng.uniform(0.0, 0.4))
        for r, x in zip(CASHFLOW_ROWS, (net, da, wc, ocf, capex, inv_cf, div), strict=True):
            v[r][y] = x
    return v


def _fmt_musd(tenths: int) -> str:
    """Table format: thousands separators, one decimal."""
    return f"{tenths / 10:,.1f}"


def _statement_doc(doc_id: str, title: str, company: str, kind: str, fin: dict[str, dict[int, int]],
                   years: Sequence[int]) -> _Doc:
    """A page holding one statement as a markdown table (newest year first)."""
    heading, rows = STATEMENTS[kind]
    lines = [f"{heading} of {company} for the fiscal years ended December 31 (in millions of USD)."]
    keys: dict[str, list[int]] = {"header": [1]}
    lines.append("| USD millions | " + " | ".join(f"FY{y}" for y in years) + " |")
    lines.append("|---|" + "---:|" * len(years))
    for r in rows:
        keys[r] = [len(lines)]
        lines.append(f"| {r} | " + " | ".join(_fmt_musd(fin[r][y]) for y in years) + " |")
    return _Doc(doc_id, title, lines, keys, pad_header="Notes to the table:")


def _narrative_doc(rng: random.Random, doc_id: str, title: str, kind: str, company: str, industry: str,
                   fy: int) -> _Doc:
    if kind == "overview":
        lines = [
            f"{company} is {_a(industry)} company headquartered in {rng.choice(CITIES)}.",
            f"The company was founded in {rng.randint(1950, 2005)} and employs approximately "
            f"{rng.randint(8, 400) * 100:,} people.",
            f"This annual report covers fiscal year FY{fy}, which ended on December 31, {fy}.",
        ]
    elif kind == "mdna":
        adj = rng.choice(("strong", "stable", "softer than expected", "resilient", "uneven"))
        lines = [
            f"Management's discussion and analysis of {_possessive(company)} results for FY{fy}.",
            f"In FY{fy}, demand for the company's {industry} products was {adj}.",
            f"Management expects {rng.choice(('moderate growth', 'stable demand', 'continued cost pressure'))} "
            f"in FY{fy + 1}.",
        ]
    else:
        lines = [f"Risk factors for {company}.", *rng.sample(RISK_SENTENCES, 3)]
    return _Doc(doc_id, title, lines, {}, sep=" ")


@dataclass(frozen=True)
class _FilingTemplate:
    id: str
    question: str  # may use {company}, {company_s} (possessive), {fy}, {prev}
    op: str  # extract | change | difference | growth | margin | ratio
    statement: str
    rows: tuple[str, ...]
    decimals: int
    unit: str  # musd | percent | ratio


FILING_TEMPLATES: tuple[_FilingTemplate, ...] = (
    _FilingTemplate("filings/q-revenue", "What was {company_s} total revenue in FY{fy}, in millions of USD?",
                    "extract", "income", ("Total revenue",), 1, "musd"),
    _FilingTemplate("filings/q-revenue-growth",
                    "By what percentage did {company_s} total revenue grow from FY{prev} to FY{fy}? "
                    "Give the percentage rounded to one decimal place.",
                    "growth", "income", ("Total revenue",), 1, "percent"),
    _FilingTemplate("filings/q-gross-margin",
                    "What was {company_s} gross margin (gross profit as a percentage of total revenue) in FY{fy}? "
                    "Round to one decimal place.",
                    "margin", "income", ("Gross profit", "Total revenue"), 1, "percent"),
    _FilingTemplate("filings/q-current-ratio",
                    "What was {company_s} current ratio (total current assets divided by total current "
                    "liabilities) at the end of FY{fy}? Round to two decimal places.",
                    "ratio", "balance", ("Total current assets", "Total current liabilities"), 2, "ratio"),
    _FilingTemplate("filings/q-net-income", "What was {company_s} net income in FY{fy}, in millions of USD?",
                    "extract", "income", ("Net income",), 1, "musd"),
    _FilingTemplate("filings/q-opex-change",
                    "By how many millions of USD did {company_s} total operating expenses change from FY{prev} to "
                    "FY{fy} (FY{fy} minus FY{prev})?",
                    "change", "income", ("Total operating expenses",), 1, "musd"),
    _FilingTemplate("filings/q-free-cash-flow",
                    "What was {company_s} free cash flow in FY{fy}, defined as net cash from operating activities "
                    "minus capital expenditures, in millions of USD?",
                    "difference", "cashflow", ("Net cash from operating activities", "Capital expenditures"), 1,
                    "musd"),
    _FilingTemplate("filings/q-cash",
                    "How much cash and cash equivalents did {company} hold at the end of FY{fy}, in millions of USD?",
                    "extract", "balance", ("Cash and cash equivalents",), 1, "musd"),
)


def filing_answer(op: str, rows: Sequence[str], fin: dict[str, dict[int, float | int]], fy: int,
                  decimals: int) -> str:
    """The exact answer string (round half up) for template operation `op` on values in tenths of a million."""
    def val(r: str, y: int) -> Decimal:
        return Decimal(str(fin[r][y])) / 10

    a = val(rows[0], fy)
    if op == "extract":
        x = a
    elif op == "change":
        x = a - val(rows[0], fy - 1)
    elif op == "difference":
        x = a - val(rows[1], fy)
    elif op == "growth":
        p = val(rows[0], fy - 1)
        x = (a - p) / p * 100
    elif op == "margin":
        x = a / val(rows[1], fy) * 100
    elif op == "ratio":
        x = a / val(rows[1], fy)
    else:
        raise ValueError(op)
    return str(x.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP))


def number_aliases(ans: str, unit: str) -> tuple[str, ...]:
    neg = ans.startswith("-")
    mag = ans.lstrip("-")
    ip, _, fp = mag.partition(".")
    commas = f"{int(ip):,}" + (f".{fp}" if fp else "")
    sign = "-" if neg else ""
    if unit == "musd":
        out = [ans, sign + commas, f"{sign}${commas} million", f"{sign}{commas} million", f"{sign}USD {commas} million"]
    elif unit == "percent":
        out = [ans, f"{ans}%", f"{ans} percent"]
    else:
        out = [ans, f"{ans}x"]
    return tuple(dict.fromkeys(out))


FILING_OPTIONS = ("context_tokens", "n_distractors", "n_facts", "n_templates")
FY_RANGE = range(2019, 2025)


@register_task("synthetic-filings", options=FILING_OPTIONS)
def synthetic_filings(size: int | None = 40, seed: int = 0, split: str | None = None, *, context_tokens: int = 1500,
                      n_distractors: int = 4, n_facts: int = 3, n_templates: int = 4) -> list[Sample]:
    """Fictional annual-report pages with numeric extraction / one-step arithmetic questions (FinanceBench-like).

    Each template (the first `n_templates` of `FILING_TEMPLATES`) is one group: its company name and fiscal year
    are drawn once per seed, so the question text is identical across the group while every sample draws fresh
    statements for that company. A context is the gold statement page (markdown table, `n_facts` fiscal years,
    newest first) plus `n_distractors` non-gold pages: alternately the company's own other pages (overview,
    MD&A, other statements, risk factors) and same-year statement pages of other fictional companies (the first
    of the same statement type). Narrative pages are padded with neutral filler to about `context_tokens`.

    Answers: ("1234.5", aliases...) with `answer_type="number"`; values are exact in tenths of a million USD and
    derived answers are rounded half up (`filing_answer`). `gold_spans` mark the table header and the input rows.
    `meta` holds the operation, inputs, unit, decimals and `abs_tolerance` (one unit in the last place).
    """
    task = "synthetic-filings"
    size = _size(task, size)
    context_tokens = _int_opt(task, "context_tokens", context_tokens, 0)
    n_distractors = _int_opt(task, "n_distractors", n_distractors, 0, 50)
    n_facts = _int_opt(task, "n_facts", n_facts, 2, 6)
    n_templates = _int_opt(task, "n_templates", n_templates, 1, len(FILING_TEMPLATES))
    rng = _rng(task, seed, split)
    groups = []  # per template: (company, industry, fiscal year); drawn for all templates so n_templates is stable
    used: set[str] = set()
    for _ in FILING_TEMPLATES:
        while True:
            name, industry = _company(rng)
            if name not in used:
                used.add(name)
                break
        groups.append((name, industry, rng.choice(FY_RANGE)))
    own_kinds = ("overview", "mdna", "income", "balance", "cashflow", "risks")
    samples = []
    for i in range(size):
        j = i % n_templates
        tpl, (company, industry, fy) = FILING_TEMPLATES[j], groups[j]
        sid = f"{task}/{split or 'test'}/{seed}/{i:05d}"
        years = list(range(fy - n_facts + 1, fy + 1))
        shown = years[::-1]
        fin = _draw_financials(rng, years)
        # the report's pages, numbered in a fixed order; the gold page is the template's statement
        page_no = {k: n + 1 for n, k in enumerate(own_kinds)}
        own_rest = [k for k in own_kinds if k != tpl.statement]
        rng.shuffle(own_rest)
        own_take, n_peer = [], 0
        for k in range(n_distractors):
            if k % 2 == 0 and own_rest:
                own_take.append(own_rest.pop())
            else:
                n_peer += 1
        own_pages = sorted([tpl.statement, *own_take], key=page_no.__getitem__)
        docs: list[_Doc] = []
        gold_doc = None
        for kind in own_pages:
            did, title = f"{sid}/page{page_no[kind]}", f"{company} annual report FY{fy}, page {page_no[kind]}"
            if kind in STATEMENTS:
                d = _statement_doc(did, title, company, kind, fin, shown)
            else:
                d = _narrative_doc(rng, did, title, kind, company, industry, fy)
            if kind == tpl.statement:
                d.is_gold, gold_doc = True, d
            docs.append(d)
        peer_names: set[str] = {company}
        for k in range(n_peer):
            while True:
                peer, _ind = _company(rng)
                if peer not in peer_names:
                    peer_names.add(peer)
                    break
            kind = tpl.statement if k == 0 else rng.choice(tuple(STATEMENTS))
            pn = page_no[kind]
            pd = _statement_doc(f"{sid}/peer{k + 1}", f"{peer} annual report FY{fy}, page {pn}", peer, kind,
                                _draw_financials(rng, years), shown)
            docs.insert(rng.randrange(len(docs) + 1), pd)
        _pad(rng, docs, context_tokens, _deck(rng, FILING_FILLER), [d for d in docs if not d.is_gold] or docs)
        assert gold_doc is not None
        answer = filing_answer(tpl.op, tpl.rows, fin, fy, tpl.decimals)
        gold_keys = ("header", *tpl.rows)
        documents = tuple(d.to_document(gold_keys if d is gold_doc else ()) for d in docs)
        inputs = {f"{r} FY{y}": _fmt_musd(fin[r][y]).replace(",", "")
                  for r in tpl.rows for y in ((fy, fy - 1) if tpl.op in ("change", "growth") else (fy,))}
        question = tpl.question.format(company=company, company_s=_possessive(company), fy=fy, prev=fy - 1)
        samples.append(Sample(
            id=sid, question=question, documents=documents, answers=number_aliases(answer, tpl.unit),
            group_id=tpl.id, answer_type="number",
            meta={"template": tpl.id, "operation": tpl.op, "statement": tpl.statement, "rows": list(tpl.rows),
                  "inputs": inputs, "company": company, "fiscal_year": fy, "unit": tpl.unit,
                  "decimals": tpl.decimals, "abs_tolerance": 10.0 ** -tpl.decimals,
                  "gold_doc_id": gold_doc.id, "peer_companies": sorted(peer_names - {company})},
        ))
    return samples


# ---------------------------------------------------------------------------------------------------------------
# synthetic-multidoc (HotpotQA-like)
# ---------------------------------------------------------------------------------------------------------------

TOWNS = (
    "Ashford", "Brinmoor", "Caldrith", "Dunmere", "Elmsworth", "Fallowby", "Glenhaven", "Hollin Cross", "Ivybridge",
    "Kettlewick", "Larchmont", "Marrowdale", "Netherby", "Oakhollow", "Pellingham", "Quarrington", "Rookwood",
    "Saltmarsh", "Thistlebury", "Underhill", "Valemont", "Wexcombe", "Yarrowfield", "Amberley", "Bellhaven",
    "Cinderford", "Dovecote", "Eastwick", "Foxhollow", "Greystone", "Hartwell", "Kingsmere", "Lowbridge", "Millbrook",
    "Northcliff", "Orchardton", "Ravensby", "Stonehaven", "Westerleigh", "Wolverton",
)
REGIONS = ("Calder Province", "Aldmere County", "Veyland Province", "Northmark County", "Oster Province",
           "Brennock County", "Selwyn Province", "Tarrow County", "Lindmoor Province", "Hask County")
RIVERS = ("Corran", "Ashwell", "Tamsin", "Velder", "Orrin", "Brede", "Lissan", "Mardle", "Quenby", "Sorrel",
          "Tevin", "Wendle")
PROFESSIONS = ("engineer", "architect", "chemist", "journalist", "accountant", "botanist", "historian", "pilot",
               "surgeon", "economist", "translator", "geologist")
SUBJECTS = ("physics", "law", "history", "economics", "biology", "music", "architecture", "chemistry")
TOWN_FEATURES = ("its stone bridge", "its annual cheese fair", "its lighthouse", "its clock tower",
                 "its botanical garden", "its glassworks", "its medieval walls", "its horse races")
PRODUCTS = ("reliable delivery service", "low-cost products", "award-winning designs", "customer support",
            "research laboratories", "regional partnerships")
PERSON_FILLER = (
    "{n} enjoys hiking in the hills on weekends.", "{n} speaks three languages.",
    "{n} volunteers at a local library.", "{n} plays the cello in an amateur orchestra.",
    "{n} often gives talks at schools.", "{n} collects old maps.", "{n} writes a column for a regional newspaper.",
    "{n} is a keen amateur photographer.", "{n} mentors young professionals.", "{n} grows vegetables in a garden.",
)
COMPANY_FILLER = (
    "{n} publishes an annual sustainability report.", "{n} sponsors a youth football team.",
    "{n} runs an apprenticeship programme.", "{n} has received several design awards.", "{n} is privately held.",
    "{n} operates its own training centre.", "{n} recently redesigned its logo.",
    "{n} holds an open day for visitors every spring.", "{n} donates to local charities.",
)
TOWN_FILLER = (
    "{n} has a small public library.", "Several hiking trails start near the centre of {n}.",
    "{n} has a weekly farmers' market.", "The main square of {n} is lined with old houses.",
    "{n} has two primary schools.", "Tourists visit {n} mainly in summer.", "{n} has a small football stadium.",
    "The old mill in {n} has been turned into a museum.", "{n} is surrounded by farmland and woods.",
)
BIRTH_YEAR_RANGE = range(1940, 1996)
FIRM_YEAR_RANGE = range(1900, 2016)
TOWN_YEAR_RANGE = range(1100, 1851)


def _entity_filler(rng: random.Random, name: str, items: Sequence[str]) -> Callable[[random.Random], str]:
    return _deck(rng, [x.replace("{n}", name) for x in items])


class _World:
    """Draws entity passages for one multidoc sample; every passage is about a distinct named entity."""

    def __init__(self, rng: random.Random, sid: str, n_facts: int, reserved: set[str]):
        self.rng, self.sid, self.n_facts = rng, sid, n_facts
        self.names: set[str] = set(reserved)  # names that already have (or will have) a passage
        self.towns: list[str] = []  # surface pools shared with distractors
        self.years: list[int] = []
        self.people: list[str] = []
        self.firms: list[str] = []
        self.k = 0

    def _fresh(self, draw: Callable[[], str]) -> str:
        while True:
            n = draw()
            if n not in self.names:
                self.names.add(n)
                return n

    def person_name(self, surname: str | None = None) -> str:
        r = self.rng
        return self._fresh(lambda: f"{r.choice(FIRST_NAMES)} {surname or r.choice(LAST_NAMES)}")

    def firm_name(self) -> str:
        return self._fresh(lambda: _company(self.rng)[0])

    def town_name(self) -> str:
        return self._fresh(lambda: self.rng.choice(TOWNS))

    def _pick(self, pool: Sequence[Any], fallback: Callable[[], Any], p: float = 0.5) -> Any:
        """A surface value shared with the gold passages (probability `p`), else a fresh draw."""
        return self.rng.choice(pool) if pool and self.rng.random() < p else fallback()

    def _doc(self, title: str, core: list[tuple[str, str]], extras: list[str], filler: Sequence[str]) -> _Doc:
        r = self.rng
        n_extra = max(0, self.n_facts - len(core))
        lines = [s for _, s in core] + r.sample(extras, min(n_extra, len(extras)))
        keys = {k: [i] for i, (k, _) in enumerate(core)}
        self.k += 1
        return _Doc(f"{self.sid}/p{self.k}", title, lines, keys, sep=" ", filler=_entity_filler(r, title, filler))

    def person(self, name: str, *, employer: str | None = None, birthplace: str | None = None,
               birth_year: int | None = None) -> _Doc:
        r = self.rng
        employer = employer or self._pick(self.firms, lambda: _company(r)[0])
        birthplace = birthplace or self._pick(self.towns, lambda: r.choice(TOWNS))
        birth_year = birth_year or self._pick([y for y in self.years if y in BIRTH_YEAR_RANGE],
                                              lambda: r.choice(BIRTH_YEAR_RANGE))
        core = [("employer", f"{name} is {_a(r.choice(PROFESSIONS))} who works at {employer}."),
                ("birth", f"{name} was born in {birthplace} in {birth_year}.")]
        other_town = self._pick(self.towns, lambda: r.choice(TOWNS))
        extras = [
            f"{name} studied {r.choice(SUBJECTS)} at the University of {other_town}.",
            f"In {birth_year + r.randint(20, 30)}, {name} moved to {self._pick(self.towns, lambda: r.choice(TOWNS))}.",
            f"{name} has written two books about {r.choice(SUBJECTS)}.",
            f"{name} once served on the town council of {r.choice(TOWNS)}.",
        ]
        return self._doc(name, core, extras, PERSON_FILLER)

    def firm(self, name: str, *, founder: str | None = None, founded: int | None = None,
             hq: str | None = None) -> _Doc:
        r = self.rng
        industry = dict(COMPANY_KINDS).get(name.split()[-1], "manufacturing")
        founder = founder or self._pick(self.people, lambda: f"{r.choice(FIRST_NAMES)} {r.choice(LAST_NAMES)}", 0.3)
        founded = founded or self._pick([y for y in self.years if y in FIRM_YEAR_RANGE],
                                        lambda: r.choice(FIRM_YEAR_RANGE))
        hq = hq or self._pick(self.towns, lambda: r.choice(TOWNS))
        core = [("hq", f"{name} is {_a(industry)} company headquartered in {hq}."),
                ("founded", f"{name} was founded in {founded} by {founder}.")]
        extras = [
            f"{name} employs about {r.randint(2, 400) * 50:,} people.",
            f"In {min(founded + r.randint(5, 40), 2023)}, {name} opened a second office in "
            f"{self._pick(self.towns, lambda: r.choice(TOWNS))}.",
            f"Most of {_possessive(name)} customers are in {r.choice(REGIONS)}.",
            f"{name} is best known for its {r.choice(PRODUCTS)}.",
        ]
        return self._doc(name, core, extras, COMPANY_FILLER)

    def town(self, name: str, *, region: str | None = None, river: str | None = None,
             founded: int | None = None) -> _Doc:
        r = self.rng
        region = region or r.choice(REGIONS)
        river = river or r.choice(RIVERS)
        founded = founded or r.choice(TOWN_YEAR_RANGE)
        core = [("region", f"{name} is a town in {region}."),
                ("river", f"{name} lies on the River {river} and has about {r.randint(20, 900) * 100:,} inhabitants."),
                ("town_founded", f"{name} was founded in {founded}.")]
        extras = [
            f"{name} is known for {r.choice(TOWN_FEATURES)}.",
            f"A railway line connecting {name} with {self._pick(self.towns, lambda: r.choice(TOWNS))} opened in "
            f"{r.randint(1850, 1990)}.",
            f"{name} hosts an annual music festival in {r.choice(MONTHS)}.",
        ]
        return self._doc(name, core, extras, TOWN_FILLER)

    def distractor(self) -> _Doc:
        """A passage about a new entity that reuses names, towns and years of the gold passages."""
        r = self.rng
        kind = r.choice(("person", "person", "firm", "town"))
        if kind == "person":
            same = [p.split()[-1] for p in self.people]
            return self.person(self.person_name(r.choice(same) if same and r.random() < 0.5 else None))
        if kind == "firm":
            return self.firm(self.firm_name())
        return self.town(self.town_name())


@dataclass(frozen=True)
class _MultidocTemplate:
    id: str
    question: str  # uses {a} (and {b}) = the group's named entities
    kind: str  # bridge | single | comparison
    named: tuple[str, ...]  # entity types of {a}, {b}: "firm" | "person"


MULTIDOC_TEMPLATES: tuple[_MultidocTemplate, ...] = (
    _MultidocTemplate("multidoc/q-founder-birthplace", "In which town was the founder of {a} born?", "bridge",
                      ("firm",)),
    _MultidocTemplate("multidoc/q-company-founded", "In which year was {a} founded?", "single", ("firm",)),
    _MultidocTemplate("multidoc/q-hq-region", "In which region is the town where {a} has its headquarters?",
                      "bridge", ("firm",)),
    _MultidocTemplate("multidoc/q-compare-founded", "Which company was founded earlier, {a} or {b}?", "comparison",
                      ("firm", "firm")),
    _MultidocTemplate("multidoc/q-birthplace-river", "On which river lies the town where {a} was born?", "bridge",
                      ("person",)),
    _MultidocTemplate("multidoc/q-employer-founder", "Who founded the company that {a} works for?", "bridge",
                      ("person",)),
    _MultidocTemplate("multidoc/q-person-birth-year", "In which year was {a} born?", "single", ("person",)),
    _MultidocTemplate("multidoc/q-hq-town-founded",
                      "In which year was the town where {a} has its headquarters founded?", "bridge", ("firm",)),
)


def _river_aliases(river: str) -> tuple[str, ...]:
    return (river, f"River {river}", f"the River {river}", f"{river} River")


def _region_aliases(region: str) -> tuple[str, ...]:
    return (region, region.rsplit(" ", 1)[0])


def _multidoc_gold(w: _World, tpl: _MultidocTemplate, names: tuple[str, ...]
                   ) -> tuple[list[tuple[_Doc, tuple[str, ...]]], tuple[str, ...]]:
    """Gold passages with their supporting keys, and the answers (first = canonical) for one template."""
    r = w.rng
    a = names[0]
    tid = tpl.id.split("/q-")[1]
    if tid == "founder-birthplace":
        founder, town = w.person_name(), r.choice(TOWNS)
        w.people.append(founder)
        w.firms.append(a)
        fd = w.firm(a, founder=founder)
        pd = w.person(founder, employer=a, birthplace=town)
        w.towns.append(town)
        return [(fd, ("founded",)), (pd, ("birth",))], (town,)
    if tid == "company-founded":
        year = r.choice(FIRM_YEAR_RANGE)
        w.firms.append(a)
        w.years.append(year)
        return [(w.firm(a, founded=year), ("founded",))], (str(year),)
    if tid == "hq-region" or tid == "hq-town-founded":
        town = w.town_name()
        w.towns.append(town)
        w.firms.append(a)
        fd = w.firm(a, hq=town)
        region, year = r.choice(REGIONS), r.choice(TOWN_YEAR_RANGE)
        td = w.town(town, region=region, founded=year)
        if tid == "hq-region":
            return [(fd, ("hq",)), (td, ("region",))], _region_aliases(region)
        w.years.append(year)
        return [(fd, ("hq",)), (td, ("town_founded",))], (str(year),)
    if tid == "compare-founded":
        b = names[1]
        ya, yb = r.sample(FIRM_YEAR_RANGE, 2)
        w.firms += [a, b]
        w.years += [ya, yb]
        docs = [(w.firm(a, founded=ya), ("founded",)), (w.firm(b, founded=yb), ("founded",))]
        return docs, ((a,) if ya < yb else (b,))
    if tid == "birthplace-river":
        town, river = w.town_name(), r.choice(RIVERS)
        w.towns.append(town)
        w.people.append(a)
        pd = w.person(a, birthplace=town)
        return [(pd, ("birth",)), (w.town(town, river=river), ("river",))], _river_aliases(river)
    if tid == "employer-founder":
        firm, founder = w.firm_name(), f"{r.choice(FIRST_NAMES)} {r.choice(LAST_NAMES)}"
        while founder == a:
            founder = f"{r.choice(FIRST_NAMES)} {r.choice(LAST_NAMES)}"
        w.firms.append(firm)
        w.people += [a, founder]
        pd = w.person(a, employer=firm)
        return [(pd, ("employer",)), (w.firm(firm, founder=founder), ("founded",))], (founder,)
    if tid == "person-birth-year":
        year = r.choice(BIRTH_YEAR_RANGE)
        w.people.append(a)
        w.years.append(year)
        return [(w.person(a, birth_year=year), ("birth",))], (str(year),)
    raise ValueError(tpl.id)


MULTIDOC_OPTIONS = ("context_tokens", "n_distractors", "n_facts", "n_templates")


@register_task("synthetic-multidoc", options=MULTIDOC_OPTIONS)
def synthetic_multidoc(size: int | None = 40, seed: int = 0, split: str | None = None, *, context_tokens: int = 1000,
                       n_distractors: int = 8, n_facts: int = 4, n_templates: int = 4) -> list[Sample]:
    """Passages about fictional people, towns and companies with short-answer questions (HotpotQA-like).

    Templates (the first `n_templates` of `MULTIDOC_TEMPLATES`) cover 2-hop bridge, single-hop and comparison
    questions. Each template is one group: the entities it names are drawn once per seed, so the question text is
    identical across the group while each sample redraws the facts (bridge entity, town, year...) and so the
    answer. A context is the 1-2 gold passages plus `n_distractors` passages about other entities that reuse the
    gold passages' towns, years, company names and surnames in other relations; passages are shuffled. Each
    passage has `n_facts` sentences (core relations first) and is padded with neutral sentences to reach about
    `context_tokens` tokens.

    Sentences are joined by single spaces; `meta["doc_sentences"]` = {doc_id: [sentence, ...]},
    `meta["sentence_labels"]` = {doc_id: [0/1, ...]} and `meta["supporting_sentences"]` = [[doc_id, index], ...];
    gold documents carry one gold span per supporting sentence. Answers: canonical text first, then aliases.
    """
    task = "synthetic-multidoc"
    size = _size(task, size)
    context_tokens = _int_opt(task, "context_tokens", context_tokens, 0)
    n_distractors = _int_opt(task, "n_distractors", n_distractors, 0, 30)
    n_facts = _int_opt(task, "n_facts", n_facts, 3, 6)
    n_templates = _int_opt(task, "n_templates", n_templates, 1, len(MULTIDOC_TEMPLATES))
    rng = _rng(task, seed, split)
    used: set[str] = set()
    group_names: list[tuple[str, ...]] = []
    for tpl in MULTIDOC_TEMPLATES:
        names = []
        for kind in tpl.named:
            while True:
                n = _company(rng)[0] if kind == "firm" else f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
                if n not in used:
                    used.add(n)
                    names.append(n)
                    break
        group_names.append(tuple(names))
    samples = []
    for i in range(size):
        j = i % n_templates
        tpl, names = MULTIDOC_TEMPLATES[j], group_names[j]
        sid = f"{task}/{split or 'test'}/{seed}/{i:05d}"
        w = _World(rng, sid, n_facts, set(names))
        gold, answers = _multidoc_gold(w, tpl, names)
        for d, _ in gold:
            d.is_gold = True
        docs = [d for d, _ in gold] + [w.distractor() for _ in range(n_distractors)]
        rng.shuffle(docs)
        _pad(rng, docs, context_tokens, lambda r: "", docs)
        keys = {d.id: k for d, k in gold}
        documents = tuple(d.to_document(keys.get(d.id, ())) for d in docs)
        support = [[d.id, i] for d in docs for k in keys.get(d.id, ()) for i in d.keys[k]]
        labels = {d.id: [0] * len(d.lines) for d in docs}
        for did, idx in support:
            labels[did][idx] = 1
        question = tpl.question.format(a=names[0], b=names[1] if len(names) > 1 else "")
        samples.append(Sample(
            id=sid, question=question, documents=documents, answers=answers, group_id=tpl.id, answer_type="text",
            meta={"template": tpl.id, "kind": tpl.kind, "hops": 2 if tpl.kind != "single" else 1,
                  "named_entities": list(names), "supporting_sentences": support,
                  "doc_sentences": {d.id: list(d.lines) for d in docs}, "sentence_labels": labels},
        ))
    return samples
