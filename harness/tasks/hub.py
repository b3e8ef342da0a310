"""Loaders for the papers' datasets, read with `datasets` from a hub id or a local path.

Every loader takes the options `path` (a local JSON/JSONL/parquet file or a folder of them; when
set it wins over the hub), `hub_id` and `hub_config`, plus its own knobs. Local files are read with
`datasets.load_dataset("json" | "parquet", data_files=...)`; a JSON file holding one object keyed by
id (LongHealth, upstream QASPER) is expanded to one row per key, with the key as `id`. A relative
`path` is tried against the working folder first, then the repository root.

Order and size: all samples are built (and every row validated), shuffled with `random.Random(seed)`
and the first `size` kept (`size: null` keeps all), so a smaller size is a prefix of a larger one.
A row missing a required field raises `UserError` naming the row index, its id and the field.
Token budgets are approximate: 4 characters per token.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.records import Document, Sample
from harness.resources import financebench_file
from harness.tasks.base import register_task

REPO_ROOT = Path(__file__).resolve().parents[2]
# the FinanceBench open-source sample shipped as package data (harness/resources/data/financebench)
FINANCEBENCH_FILE = financebench_file()
FINANCEBENCH_DIR = FINANCEBENCH_FILE.parent
FINANCEBENCH_HUB_ID = "PatronusAI/financebench"  # the same 150 questions as the shipped sample
CHARS_PER_TOKEN = 4
_COMMON = ("path", "hub_id", "hub_config")
_JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
_LETTERS = "ABCDE"


# ----------------------------------------------------------------------------- reading rows


def _resolve_path(path: str | Path) -> Path:
    """An existing local path: as given, else relative to the repository root."""
    p = Path(path).expanduser()
    if not p.exists() and not p.is_absolute() and (REPO_ROOT / p).exists():
        p = REPO_ROOT / p
    if not p.exists():
        raise UserError(f"task.options.path: '{path}' does not exist; give an existing data file or folder")
    return p


def _data_files(p: Path, split: str | None) -> tuple[str, list[str]]:
    """(builder, files) for a local file or folder; in a folder, files naming `split` win."""
    if p.is_file():
        files = [p]
    else:
        files = sorted(
            f for f in p.rglob("*")
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
            and (f.name.endswith(".parquet") or f.name.endswith(_JSON_SUFFIXES))
        )
        parquet = [f for f in files if f.name.endswith(".parquet")]
        files = parquet or files
        if split:
            files = [f for f in files if split in f.name] or files
    if not files:
        raise UserError(f"task.options.path: no .json/.jsonl/.parquet files in '{p}'; point it at the data files")
    if all(f.name.endswith(".parquet") for f in files):
        return "parquet", [str(f) for f in files]
    if all(f.name.endswith(_JSON_SUFFIXES) for f in files):
        return "json", [str(f) for f in files]
    raise UserError(f"task.options.path: '{p}' must be JSON/JSONL or parquet; convert it to one of those")


def _one_line(e: Exception) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:300]


def _iter_rows(task: str, path: str | None, hub_id: str | None, hub_config: str | None, split: str | None,
               *, streaming: bool = False, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Rows from a local path (if given) or the hub; a single keyed-object row expands to one row per key."""
    import datasets

    datasets.disable_progress_bars()  # "Generating train split" bars are noise in a run's output
    if path:
        builder, files = _data_files(_resolve_path(path), split)
        try:
            ds = datasets.load_dataset(builder, data_files=files, split="train")
        except Exception as e:  # any reader failure means a bad input file
            raise UserError(f"task.options.path: cannot read '{path}' as {builder} ({_one_line(e)}); "
                            f"fix the file or give another path") from e
    elif hub_id:
        try:
            ds = datasets.load_dataset(hub_id, hub_config, split=split or "train", streaming=streaming)
        except Exception as e:  # offline, gated, unknown id or split
            raise UserError(f"task.options.hub_id: cannot load '{hub_id}' (config {hub_config}, split {split}) "
                            f"({_one_line(e)}); set task.options.path to a local copy") from e
    else:
        raise UserError(f"task.options.path: task '{task}' has no hub copy configured; "
                        f"set task.options.path to a local data file (or task.options.hub_id)")
    if isinstance(ds, datasets.Dataset) and ds.num_rows == 1:
        row = ds[0]
        if row and all(isinstance(v, dict) for v in row.values()):
            for k, v in row.items():
                if v is not None:
                    yield {"id": k, **v}
            return
    for i, row in enumerate(ds):
        if limit is not None and i >= limit:
            return
        yield row


# ----------------------------------------------------------------------------- helpers


def _bad(task: str, i: int, rid: Any, field: str, why: str = "is missing") -> UserError:
    return UserError(f"{task}: row {i} (id {rid}): field '{field}' {why}; fix or drop that row in the data file")


def _need(row: dict[str, Any], field: str, task: str, i: int, rid: Any) -> Any:
    """row[field], or a UserError naming the row and field when it is missing or empty."""
    v = row.get(field)
    if v is None or (isinstance(v, str | list | dict) and len(v) == 0):
        raise _bad(task, i, rid, field)
    return v


def _records(x: Any) -> list[dict[str, Any]]:
    """A list of dicts from either a list of dicts or a dict of equal-length lists (arrow `Sequence` form)."""
    if x is None:
        return []
    if isinstance(x, dict):
        keys = list(x)
        n = max((len(v) for v in x.values() if isinstance(v, list)), default=0)
        return [{k: (x[k][j] if isinstance(x[k], list) and j < len(x[k]) else None) for k in keys} for j in range(n)]
    return [r for r in x if r is not None]


def _check_size(size: int | None) -> None:
    if size is not None and (not isinstance(size, int) or size < 1):
        raise UserError(f"task.size: {size!r} is not a positive integer; give a positive integer or null")


def _take(samples: list[Sample], size: int | None, seed: int) -> list[Sample]:
    """Seeded shuffle, then the first `size` (all when None)."""
    _check_size(size)
    out = list(samples)
    random.Random(seed).shuffle(out)
    return out if size is None else out[:size]


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise UserError(f"task.options.{name}: {value!r} is not one of {', '.join(allowed)}; set one of them")
    return str(value)


def _positive(name: str, value: Any, *, allow_none: bool = False, allow_zero: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        kind = "a non-negative" if allow_zero else "a positive"
        raise UserError(f"task.options.{name}: {value!r} is not {kind} integer; give {kind} integer"
                        + (" or null" if allow_none else ""))
    return value


def _doc_cost(d: Document, title_len: int | None = None) -> int:
    """Characters a document adds to `Sample.context` (title line and separator included)."""
    t = len(d.title) if title_len is None else title_len
    return len(d.text) + (t + 3 if t else 0) + 2


def _fit(required: list[Document], optional: list[Document], budget_chars: int | None,
         title_len: int | None = None) -> list[Document]:
    """All `required` documents, then each `optional` one (in order) that still fits the budget."""
    if budget_chars is None:
        return required + optional
    used = sum(_doc_cost(d, title_len) for d in required)
    out = list(required)
    for d in optional:
        c = _doc_cost(d, title_len)
        if used + c <= budget_chars:
            out.append(d)
            used += c
    return out


def _find_spans(text: str, needles: list[str], *, casefold: bool = False) -> tuple[tuple[int, int], ...]:
    """(start, end) of the first occurrence of each needle found in text, sorted and de-duplicated."""
    hay = text.lower() if casefold else text
    spans = set()
    for n in needles:
        n = n.strip()
        if not n:
            continue
        k = hay.find(n.lower() if casefold else n)
        if k >= 0:
            spans.add((k, k + len(n)))
    return tuple(sorted(spans))


def _sub_seed(seed: int, key: str) -> random.Random:
    """A per-sample RNG, independent of which other samples are loaded."""
    return random.Random(f"{seed}:{key}")


# ----------------------------------------------------------------------------- LongHealth


def _natural_key(s: str) -> tuple[Any, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s))


def _location_spans(text: str, loc: Any) -> tuple[tuple[int, int], ...]:
    """LongHealth `answer_location[text_id]` ({"start": [...], "end": [...]}) as character spans.

    Floats in [0, 1] are read as fractions of the text length (upstream form); integers above 1 as
    character offsets.
    """
    if not isinstance(loc, dict):
        return ()
    starts, ends = loc.get("start") or [], loc.get("end") or []
    starts = starts if isinstance(starts, list) else [starts]
    ends = ends if isinstance(ends, list) else [ends]
    n = len(text)
    vals = [v for v in starts + ends if isinstance(v, int | float)]
    frac = bool(vals) and all(0.0 <= float(v) <= 1.0 for v in vals) and any(isinstance(v, float) for v in vals)
    out = []
    for a, b in zip(starts, ends, strict=False):
        if not isinstance(a, int | float) or not isinstance(b, int | float):
            continue
        a2, b2 = (round(a * n), round(b * n)) if frac else (int(a), int(b))
        a2, b2 = max(0, min(n, a2)), max(0, min(n, b2))
        if b2 > a2:
            out.append((a2, b2))
    return tuple(sorted(set(out)))


def _patient_texts(task: str, i: int, pid: str, patient: dict[str, Any]) -> list[tuple[str, str]]:
    texts = _need(patient, "texts", task, i, pid)
    if not isinstance(texts, dict):
        raise _bad(task, i, pid, "texts", "is not an object of {text_id: text}")
    return [(k, v) for k, v in sorted(texts.items(), key=lambda kv: _natural_key(kv[0])) if isinstance(v, str) and v]


@register_task("longhealth", options=(*_COMMON, "n_distractor_patients", "context_tokens", "shuffle_documents"))
def longhealth(size: int | None, seed: int, split: str | None, *, path: str | None = None,
               hub_id: str | None = None, hub_config: str | None = None, n_distractor_patients: int = 0,
               context_tokens: int | None = 16000, shuffle_documents: bool = True) -> list[Sample]:
    """LongHealth: five-option clinical MC questions over one patient's discharge letters.

    Schema (upstream `benchmark_v5.json`): an object of patients, `"patient_01": {"name", "birthday",
    "diagnosis", "texts": {"text_0": str, ...}, "questions": [{"No", "question", "answer_a".."answer_e",
    "correct" (the correct option's text), "answer_location": {text_id: {"start": [...], "end": [...]}}}]}`;
    rows with `id`/`patient_id` plus those fields are read too. Context: the patient's texts (gold = texts
    named in `answer_location`, spans from its start/end), plus all texts of `n_distractor_patients` other
    patients chosen per question, within `context_tokens` (gold texts always kept, then the patient's
    other texts, then distractors, each only if it fits). Documents are titled "Document k" after a
    seeded shuffle (`shuffle_documents`). answers = (correct text, letter); choices = the 5 options.
    """
    task = "longhealth"
    n_distractor_patients = _positive("n_distractor_patients", n_distractor_patients, allow_zero=True) or 0
    budget = _positive("context_tokens", context_tokens, allow_none=True)
    budget_chars = budget * CHARS_PER_TOKEN if budget else None
    patients: list[tuple[int, str, dict[str, Any]]] = []
    for i, row in enumerate(_iter_rows(task, path, hub_id, hub_config, split)):
        pid = row.get("patient_id") or row.get("id")
        if not pid:
            raise _bad(task, i, None, "id")
        patients.append((i, str(pid), row))
    texts_of = {pid: _patient_texts(task, i, pid, p) for i, pid, p in patients}
    if n_distractor_patients > len(patients) - 1:
        raise UserError(f"task.options.n_distractor_patients: {n_distractor_patients} but only "
                        f"{len(patients) - 1} other patients in the data; lower it")
    samples = []
    for i, pid, patient in patients:
        if patient.get("questions") is None:
            raise _bad(task, i, pid, "questions")
        for qi, q in enumerate(_records(patient["questions"])):
            qno = q.get("No", qi + 1)
            qid = f"{pid}-q{qno}"
            question = _need(q, "question", task, i, qid)
            choices = tuple(str(_need(q, f"answer_{c.lower()}", task, i, qid)) for c in _LETTERS)
            correct = str(_need(q, "correct", task, i, qid))
            if correct not in choices:
                letter = correct.strip().upper().rstrip(".):")
                if len(letter) != 1 or letter not in _LETTERS:
                    raise _bad(task, i, qid, "correct", "matches none of answer_a..answer_e")
                correct = choices[_LETTERS.index(letter)]
            letter = _LETTERS[choices.index(correct)]
            location = q.get("answer_location") or {}
            location = location if isinstance(location, dict) else {}
            gold_ids = {k for k, v in location.items() if v is not None}
            gold, other = [], []
            for tid, text in texts_of[pid]:
                is_gold = tid in gold_ids
                d = Document(id=f"{pid}/{tid}", text=text, is_gold=is_gold,
                             gold_spans=_location_spans(text, location.get(tid)) if is_gold else ())
                (gold if is_gold else other).append(d)
            rng = _sub_seed(seed, qid)
            distract = []
            if n_distractor_patients:
                others = [p for _, p, _ in patients if p != pid]
                for op in rng.sample(others, n_distractor_patients):
                    distract += [Document(id=f"{op}/{tid}", text=t) for tid, t in texts_of[op]]
            docs = _fit(gold, other + distract, budget_chars, title_len=len("Document 99"))
            if shuffle_documents:
                rng.shuffle(docs)
            docs = [Document(id=d.id, text=d.text, title=f"Document {k + 1}", gold_spans=d.gold_spans,
                             is_gold=d.is_gold) for k, d in enumerate(docs)]
            samples.append(Sample(
                id=qid, question=str(question), documents=tuple(docs), answers=(correct, letter),
                choices=choices, answer_type="choice",
                meta={"patient_id": pid, "question_no": qno, "correct_letter": letter,
                      "gold_text_ids": sorted(gold_ids, key=_natural_key),
                      "distractor_patients": sorted({d.id.split("/")[0] for d in docs} - {pid})},
            ))
    return _take(samples, size, seed)


# ----------------------------------------------------------------------------- FinanceBench

_NUMBER_RE = re.compile(r"([-+]?)\s*\$?\s*([-+]?)(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)\s*(%?)")


def parse_plain_number(s: str) -> tuple[float, str] | None:
    """(value, unit) when the whole string is one plain number like "$1,577.00", "-0.02" or "1.9%"; else None.

    unit is "%", "$" or "". A trailing period is allowed; any other word makes it not plain.
    """
    t = s.strip().rstrip(".").strip()
    m = _NUMBER_RE.fullmatch(t)
    if not m:
        return None
    sign = -1.0 if "-" in (m.group(1) + m.group(2)) else 1.0
    unit = "%" if m.group(4) else ("$" if "$" in t else "")
    return sign * float(m.group(3).replace(",", "")), unit


def _number_text(v: float) -> str:
    s = f"{v:.10f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _fb_pages(task: str, i: int, rid: str, row: dict[str, Any]) -> list[tuple[str, int, str, list[str]]]:
    """[(doc_name, page, full_page_text, [evidence_text, ...])], one per distinct evidence page."""
    evidence = _need(row, "evidence", task, i, rid)
    pages: dict[tuple[str, int], tuple[str, list[str]]] = {}
    for e in _records(evidence):
        doc = e.get("doc_name") or e.get("evidence_doc_name") or row.get("doc_name")
        page = e.get("evidence_page_num")
        full = e.get("evidence_text_full_page")
        if not doc:
            raise _bad(task, i, rid, "evidence.doc_name")
        if page is None:
            raise _bad(task, i, rid, "evidence.evidence_page_num")
        if not full:
            raise _bad(task, i, rid, "evidence.evidence_text_full_page")
        key = (str(doc), int(page))
        pages.setdefault(key, (str(full), []))[1].append(str(e.get("evidence_text") or ""))
    return [(d, p, full, ev) for (d, p), (full, ev) in pages.items()]


@register_task("financebench", options=(*_COMMON, "subset", "context", "context_tokens", "single_evidence_only",
                                        "other_company_pages"))
def financebench(size: int | None, seed: int, split: str | None, *, path: str | None = None,
                 hub_id: str | None = FINANCEBENCH_HUB_ID, hub_config: str | None = None,
                 subset: str = "all", context: str = "gold", context_tokens: int = 3000,
                 single_evidence_only: bool = False, other_company_pages: int = 0) -> list[Sample]:
    """FinanceBench open-source sample (150 questions on 10-K/10-Q filings).

    Schema (`financebench_open_source.jsonl`, same columns on the hub `PatronusAI/financebench`):
    `financebench_id`, `company`, `doc_name`, `question_type`, `question_reasoning`, `question`, `answer`,
    `justification`, `evidence: [{evidence_text, doc_name, evidence_page_num, evidence_text_full_page}]`.
    With `path` null and the default `hub_id` the sample shipped with harness is read (package data, licence
    CC BY-NC 4.0 in its README), which is what that hub dataset holds. For the full dataset set `path` to a local
    copy, or `hub_id` to another hub dataset with these columns (then it is read from the hub).
    Gold documents are the evidence pages (spans = where `evidence_text` occurs on the page). `context: full`
    adds evidence pages of other questions about the same company (seeded order, each only if it fits
    `context_tokens`; gold pages always kept) and shuffles document order. `subset`: numeric (answers that
    are one plain number, `answer_type="number"`), text (the rest, `answer_type="text"`,
    `meta["needs_judge"]`), or all (each typed as above). `single_evidence_only` keeps one-evidence questions.
    `other_company_pages: N` adds N evidence pages of other companies' questions as distractors (seeded per
    question, each only if it fits `context_tokens`, after the same-company ones; document order shuffled).
    """
    task = "financebench"
    subset = _choice("subset", subset, ("numeric", "all", "text"))
    context = _choice("context", context, ("gold", "full"))
    budget_chars = (_positive("context_tokens", context_tokens) or 0) * CHARS_PER_TOKEN
    n_other = _positive("other_company_pages", other_company_pages, allow_zero=True) or 0
    if not path and hub_id == FINANCEBENCH_HUB_ID and FINANCEBENCH_FILE.is_file():
        path = str(FINANCEBENCH_FILE)
    rows = []
    for i, row in enumerate(_iter_rows(task, path, hub_id, hub_config, split or "train")):
        rid = str(row.get("financebench_id") or f"row{i}")
        for f in ("financebench_id", "question", "answer", "company"):
            _need(row, f, task, i, rid)
        rows.append((i, rid, row, _fb_pages(task, i, rid, row)))
    by_company: dict[str, list[tuple[str, int, str]]] = {}
    for _, _, row, pages in rows:
        lst = by_company.setdefault(str(row["company"]), [])
        for d, p, full, _ in pages:
            if (d, p, full) not in lst:
                lst.append((d, p, full))
    samples = []
    for _, rid, row, pages in rows:
        n_evidence = len(_records(row["evidence"]))
        if single_evidence_only and n_evidence != 1:
            continue
        answer = str(row["answer"]).strip()
        num = parse_plain_number(answer)
        if (subset == "numeric" and num is None) or (subset == "text" and num is not None):
            continue
        gold = [Document(id=f"{d}#{p}", title=f"{d} page {p}", text=full, is_gold=True,
                         gold_spans=_find_spans(full, ev)) for d, p, full, ev in pages]
        docs = gold
        rng = _sub_seed(seed, rid)
        pool: list[Document] = []
        if context == "full":
            gold_keys = {(d, p) for d, p, _, _ in pages}
            pool = [Document(id=f"{d}#{p}", title=f"{d} page {p}", text=full)
                    for d, p, full in by_company[str(row["company"])] if (d, p) not in gold_keys]
            rng.shuffle(pool)
        if n_other:
            others = [(d, p, full) for c, lst in sorted(by_company.items()) if c != str(row["company"])
                      for d, p, full in lst]
            pool += [Document(id=f"{d}#{p}", title=f"{d} page {p}", text=full)
                     for d, p, full in rng.sample(others, min(n_other, len(others)))]
        if pool:
            docs = _fit(gold, pool, budget_chars)
            rng.shuffle(docs)
        meta: dict[str, Any] = {
            "company": row.get("company"), "doc_name": row.get("doc_name"),
            "question_type": row.get("question_type"), "question_reasoning": row.get("question_reasoning"),
            "justification": row.get("justification"), "n_evidence": n_evidence,
            "evidence_pages": [f"{d}#{p}" for d, p, _, _ in pages],
        }
        if num is not None:
            value, unit = num
            canon = _number_text(value)
            answers = (answer,) if canon == answer else (answer, canon)
            meta |= {"number": value, "number_unit": unit, "needs_judge": False}
            atype = "number"
        else:
            answers = (answer,)
            meta["needs_judge"] = True
            atype = "text"
        samples.append(Sample(id=rid, question=str(row["question"]), documents=tuple(docs), answers=answers,
                              answer_type=atype, meta=meta))
    return _take(samples, size, seed)


# ----------------------------------------------------------------------------- QASPER

_FLOAT_PREFIX = "FLOAT SELECTED:"


@register_task("qasper", options=(*_COMMON, "include_abstract", "include_captions"))
def qasper(size: int | None, seed: int, split: str | None, *, path: str | None = None,
           hub_id: str | None = "allenai/qasper", hub_config: str | None = None, include_abstract: bool = True,
           include_captions: bool = True) -> list[Sample]:
    """QASPER: questions over one NLP paper; answerable extractive questions only.

    Schema (hub parquet): `id`, `title`, `abstract`, `full_text: {section_name: [...], paragraphs: [[...]]}`,
    `figures_and_tables: {caption: [...], file: [...]}`, `qas: {question: [...], question_id: [...],
    answers: [{answer: [{unanswerable, extractive_spans, yes_no, free_form_answer, evidence,
    highlighted_evidence}], ...}]}`. The upstream JSON (an object keyed by paper id whose `full_text`,
    `qas`, `answers` are lists of objects) is read too. Documents: the abstract, one per section
    (paragraphs joined by blank lines) and one with all figure/table captions. A question is kept when at
    least one annotator gave a non-empty extractive answer; answers = each such annotator's spans joined
    with ", " (the official evaluator's form), first annotator first. Gold documents are those containing
    an annotator's evidence paragraph, with that paragraph as the span.
    """
    task = "qasper"
    samples = []
    for i, row in enumerate(_iter_rows(task, path, hub_id, hub_config, split or "test")):
        pid = str(row.get("id") or f"row{i}")
        base: list[tuple[str, str, str]] = []  # (id, title, text)
        if include_abstract and row.get("abstract"):
            base.append(("abstract", "Abstract", str(row["abstract"])))
        for k, sec in enumerate(_records(_need(row, "full_text", task, i, pid))):
            paras = [str(p) for p in (sec.get("paragraphs") or []) if p and str(p).strip()]
            if paras:
                base.append((f"s{k}", str(sec.get("section_name") or f"Section {k + 1}"), "\n\n".join(paras)))
        if include_captions:
            caps = [str(f.get("caption")) for f in _records(row.get("figures_and_tables")) if f.get("caption")]
            if caps:
                base.append(("captions", "Figures and tables", "\n".join(caps)))
        for qi, q in enumerate(_records(_need(row, "qas", task, i, pid))):
            qid = str(q.get("question_id") or f"{pid}-q{qi}")
            question = _need(q, "question", task, i, qid)
            answers: list[str] = []
            evidence: list[str] = []
            annotations = _records(q.get("answers"))
            for a in annotations:
                ans = a.get("answer")
                if not isinstance(ans, dict):
                    raise _bad(task, i, qid, "answers.answer")
                spans = [str(s).strip() for s in (ans.get("extractive_spans") or []) if s and str(s).strip()]
                if ans.get("unanswerable") or not spans:
                    continue
                joined = ", ".join(spans)
                if joined not in answers:
                    answers.append(joined)
                for e in ans.get("evidence") or []:
                    e = str(e)
                    e = e[len(_FLOAT_PREFIX):].strip() if e.startswith(_FLOAT_PREFIX) else e.strip()
                    if e and e not in evidence:
                        evidence.append(e)
            if not answers:
                continue
            docs = []
            for did, title, text in base:
                spans_ = _find_spans(text, evidence)
                docs.append(Document(id=did, title=title, text=text, is_gold=bool(spans_), gold_spans=spans_))
            samples.append(Sample(
                id=qid, question=str(question), documents=tuple(docs), answers=tuple(answers), answer_type="text",
                meta={"paper_id": pid, "paper_title": row.get("title"), "evidence": evidence,
                      "n_annotations": len(annotations)},
            ))
    return _take(samples, size, seed)


# ----------------------------------------------------------------------------- HotpotQA


def _hotpot_context(task: str, i: int, rid: str, ctx: Any) -> list[tuple[str, list[str]]]:
    if isinstance(ctx, dict):
        titles, sents = ctx.get("title"), ctx.get("sentences")
        if not isinstance(titles, list) or not isinstance(sents, list) or len(titles) != len(sents):
            raise _bad(task, i, rid, "context", "needs equal-length 'title' and 'sentences' lists")
        pairs = list(zip(titles, sents, strict=True))
    elif isinstance(ctx, list):
        pairs = []
        for p in ctx:
            if not isinstance(p, list | tuple) or len(p) != 2 or not isinstance(p[1], list):
                raise _bad(task, i, rid, "context", "must hold [title, [sentences]] pairs")
            pairs.append((p[0], p[1]))
    else:
        raise _bad(task, i, rid, "context")
    return [(str(t), [str(s) for s in ss]) for t, ss in pairs]


def _hotpot_facts(task: str, i: int, rid: str, sf: Any) -> list[tuple[str, int]]:
    if sf is None:
        return []
    if isinstance(sf, dict):
        pairs = list(zip(sf.get("title") or [], sf.get("sent_id") or [], strict=False))
    else:
        pairs = [(p[0], p[1]) if isinstance(p, list | tuple) else (p.get("title"), p.get("sent_id")) for p in sf]
    try:
        return [(str(t), int(s)) for t, s in pairs]
    except (TypeError, ValueError) as e:
        raise _bad(task, i, rid, "supporting_facts", "must hold [title, sent_id] pairs") from e


@register_task("hotpotqa", options=_COMMON)
def hotpotqa(size: int | None, seed: int, split: str | None, *, path: str | None = None,
             hub_id: str | None = "hotpotqa/hotpot_qa", hub_config: str | None = "distractor") -> list[Sample]:
    """HotpotQA, distractor setting: ten Wikipedia paragraphs, two of them gold.

    Schema (hub): `id`, `question`, `answer`, `type`, `level`, `supporting_facts: {title: [...],
    sent_id: [...]}`, `context: {title: [...], sentences: [[...]]}`; the upstream JSON list (`_id`,
    `context: [[title, [sents]]]`, `supporting_facts: [[title, sent_id]]`) is read too. Each paragraph
    is a document whose id is its Wikipedia title (sentences concatenated as upstream, a space added where
    none leads), so a pooled corpus (`retrieval.corpus: task`) holds each paragraph once and a retrieved
    passage keeps its id; a title seen earlier in the file with other text gets `title#2`, `#3`, .... Gold =
    paragraphs with a supporting fact, spans = the supporting sentences. `meta["doc_sentences"]` (the dataset's
    own sentences, stripped, indices as upstream) and `meta["sentence_labels"]` (0/1) map doc id to
    per-sentence lists; `meta["supporting_sentences"]` = [[doc_id, sent_id], ...] of the supporting facts that
    name a non-empty sentence of the context (gold-support precision/recall, `harness.retrieval.gold`).
    """
    task = "hotpotqa"
    samples = []
    ids: dict[str, dict[str, str]] = {}  # title -> {paragraph text: doc id}, over the whole file
    for i, row in enumerate(_iter_rows(task, path, hub_id, hub_config, split or "validation")):
        rid = str(row.get("id") or row.get("_id") or "")
        if not rid:
            raise _bad(task, i, None, "id")
        question = _need(row, "question", task, i, rid)
        answer = _need(row, "answer", task, i, rid)
        paras = _hotpot_context(task, i, rid, _need(row, "context", task, i, rid))
        facts = _hotpot_facts(task, i, rid, row.get("supporting_facts"))
        support: dict[str, set[int]] = {}
        for t, s in facts:
            support.setdefault(t, set()).add(s)
        docs, doc_sents, labels, supporting = [], {}, {}, []
        for title, sents in paras:
            text, offs = "", []
            for s in sents:
                if text and not text[-1].isspace() and not s[:1].isspace():
                    text += " "
                start = len(text) + (len(s) - len(s.lstrip()))
                text += s
                offs.append((start, len(text.rstrip())))
            seen = ids.setdefault(title, {})
            did = seen.setdefault(text, title if not seen else f"{title}#{len(seen) + 1}")
            if did in doc_sents:  # the same paragraph twice in one row: keep the first
                continue
            lab = [int(j in support.get(title, ())) for j in range(len(sents))]
            spans = tuple(offs[j] for j, v in enumerate(lab) if v and offs[j][1] > offs[j][0])
            docs.append(Document(id=did, title=title, text=text, is_gold=title in support, gold_spans=spans))
            doc_sents[did], labels[did] = [x.strip() for x in sents], lab
            supporting += [[did, j] for j, v in enumerate(lab) if v and sents[j].strip()]
        samples.append(Sample(
            id=rid, question=str(question), documents=tuple(docs), answers=(str(answer),), answer_type="text",
            meta={"type": row.get("type"), "level": row.get("level"), "supporting_facts": [list(f) for f in facts],
                  "doc_sentences": doc_sents, "sentence_labels": labels, "supporting_sentences": supporting},
        ))
    return _take(samples, size, seed)


# ----------------------------------------------------------------------------- NQ-open / TriviaQA (DPR top-k)


def _normalize_answer(s: str) -> str:
    s = re.sub(r"\b(a|an|the)\b", " ", re.sub(r"[^\w\s]", " ", s.lower()))
    return " ".join(s.split())


def _dpr_task(task: str, size: int | None, seed: int, split: str | None, path: str | None, hub_id: str | None,
              hub_config: str | None, top_k: int) -> list[Sample]:
    """Samples from DPR retriever output rows {question, answers, ctxs: [{id, title, text, score, has_answer}]}.

    A ctx's `id` is its document id (the Wikipedia passage, so `retrieval.corpus: task` pools each passage once);
    without one it is `<row id>#c<k>`. Gold is per question (has_answer), at passage level: no sentence labels."""
    top_k = _positive("top_k", top_k) or 1
    samples = []
    for i, row in enumerate(_iter_rows(task, path, hub_id, hub_config, split or "test")):
        rid = str(row.get("id") or f"{task}-{i}")
        question = _need(row, "question", task, i, rid)
        answers = row.get("answers", row.get("answer"))
        answers = [answers] if isinstance(answers, str) else answers
        if not answers or not all(isinstance(a, str) for a in answers):
            raise _bad(task, i, rid, "answers", "is missing or not a list of strings")
        ctxs = _need(row, "ctxs", task, i, rid)
        if not isinstance(ctxs, list):
            raise _bad(task, i, rid, "ctxs", "is not a list")
        norm_answers = [_normalize_answer(a) for a in answers]
        docs, scores = [], []
        for k, c in enumerate(ctxs[:top_k]):
            if not isinstance(c, dict) or not isinstance(c.get("text"), str):
                raise _bad(task, i, rid, f"ctxs[{k}].text")
            text = c["text"]
            has = c.get("has_answer")
            if has is None:  # not recorded: fall back to normalised substring match
                nt = f" {_normalize_answer(text)} "
                has = any(a and f" {a} " in nt for a in norm_answers)
            # DPR ids name Wikipedia passages (shared across questions); a row without them gets ids of its own
            docs.append(Document(id=str(c.get("id") or f"{rid}#c{k}"), title=str(c.get("title") or ""), text=text,
                                 is_gold=bool(has),
                                 gold_spans=_find_spans(text, answers, casefold=True) if has else ()))
            try:
                scores.append(float(c["score"]) if c.get("score") is not None else None)
            except (TypeError, ValueError):
                scores.append(None)
        samples.append(Sample(
            id=rid, question=str(question), documents=tuple(docs), answers=tuple(dict.fromkeys(answers)),
            answer_type="text", meta={"scores": scores, "has_gold": any(d.is_gold for d in docs)},
        ))
    return _take(samples, size, seed)


@register_task("nq-open", options=(*_COMMON, "top_k"))
def nq_open(size: int | None, seed: int, split: str | None, *, path: str | None = None, hub_id: str | None = None,
            hub_config: str | None = None, top_k: int = 20) -> list[Sample]:
    """NQ-open with DPR top-k retrieved passages.

    Schema (DPR retriever output JSON, e.g. `nq-test.json`): a list of `{"question", "answers": [...],
    "ctxs": [{"id", "title", "text", "score", "has_answer"}]}`. The first `top_k` ctxs are the documents;
    gold = `has_answer` true (when absent: the normalised answer occurs in the passage), spans = answer
    occurrences. No hub copy by default: set `path` (or `hub_id` for a hub dataset with these columns).
    Sample ids are `nq-open-<row index>` unless rows carry `id`.
    """
    return _dpr_task("nq-open", size, seed, split, path, hub_id, hub_config, top_k)


@register_task("triviaqa", options=(*_COMMON, "top_k"))
def triviaqa(size: int | None, seed: int, split: str | None, *, path: str | None = None, hub_id: str | None = None,
             hub_config: str | None = None, top_k: int = 20) -> list[Sample]:
    """TriviaQA (open) with DPR top-k retrieved passages; answers include all aliases.

    Schema and behaviour as `nq-open` (DPR retriever output, e.g. `trivia-test.json`).
    """
    return _dpr_task("triviaqa", size, seed, split, path, hub_id, hub_config, top_k)


# ----------------------------------------------------------------------------- distortion: WildChat, FineWeb

WILDCHAT_QUESTION = "Continue the conversation: write the assistant's next reply."
FINEWEB_QUESTION = "Continue the document."


@register_task("wildchat", options=(*_COMMON, "turn", "language", "skip_toxic", "pool_size"))
def wildchat(size: int | None, seed: int, split: str | None, *, path: str | None = None,
             hub_id: str | None = "allenai/WildChat-1M", hub_config: str | None = None, turn: str = "last",
             language: str | None = "English", skip_toxic: bool = True, pool_size: int | None = 5000) -> list[Sample]:
    """WildChat continuation (distortion) task: X = chat history, Y = the next assistant turn.

    Schema (hub): rows with `conversation: [{role, content, ...}]` (optional `conversation_hash`,
    `language`, `toxic`). The assistant turn is the `last`, `first` or a seeded `random` one with at least
    one message before it; X = the messages before it (one document per message, titled by role; also in
    `meta["messages"]`), Y = its content. `language` (null = any) and `skip_toxic` filter rows that carry
    those fields. Only the first `pool_size` rows are read (the hub is streamed). All samples share the
    question `WILDCHAT_QUESTION` and group "wildchat".
    """
    task = "wildchat"
    turn = _choice("turn", turn, ("last", "first", "random"))
    pool = _positive("pool_size", pool_size, allow_none=True)
    samples = []
    rows = _iter_rows(task, path, hub_id, hub_config, split or "train", streaming=not path, limit=pool)
    for i, row in enumerate(rows):
        rid = str(row.get("conversation_hash") or row.get("id") or f"wildchat-{i}")
        conv = _need(row, "conversation", task, i, rid)
        if not isinstance(conv, list):
            raise _bad(task, i, rid, "conversation", "is not a list of {role, content}")
        msgs = []
        for k, m in enumerate(conv):
            if not isinstance(m, dict) or not m.get("role") or m.get("content") is None:
                raise _bad(task, i, rid, f"conversation[{k}].role/content")
            msgs.append({"role": str(m["role"]), "content": str(m["content"])})
        if language and row.get("language") not in (None, language):
            continue
        if skip_toxic and row.get("toxic"):
            continue
        turns = [k for k, m in enumerate(msgs) if m["role"] == "assistant" and k > 0 and m["content"].strip()]
        if not turns:
            continue
        if turn == "last":
            k = turns[-1]
        elif turn == "first":
            k = turns[0]
        else:
            k = _sub_seed(seed, rid).choice(turns)
        history = msgs[:k]
        docs = tuple(Document(id=f"m{j}", title=m["role"], text=m["content"]) for j, m in enumerate(history))
        samples.append(Sample(
            id=f"{rid}-t{k}", question=WILDCHAT_QUESTION, documents=docs, answers=(msgs[k]["content"],),
            group_id="wildchat", answer_type="continuation",
            meta={"messages": history, "turn_index": k, "language": row.get("language"), "model": row.get("model")},
        ))
    return _take(samples, size, seed)


_WORD_RE = re.compile(r"\S+")


@register_task("fineweb", options=(*_COMMON, "prefix_tokens", "continuation_tokens", "pool_size"))
def fineweb(size: int | None, seed: int, split: str | None, *, path: str | None = None,
            hub_id: str | None = "HuggingFaceFW/fineweb", hub_config: str | None = "sample-10BT",
            prefix_tokens: int = 512, continuation_tokens: int = 128, pool_size: int | None = 5000) -> list[Sample]:
    """FineWeb continuation (distortion) task: X = a document's first K words, Y = the next T words.

    Schema (hub): rows with `text` (optional `id`, `url`). "Tokens" here are whitespace-separated words
    (about 1.3 model tokens each): X = the text up to the end of word K, Y = from word K+1 to the end of
    word K+T, both verbatim slices (whitespace between them dropped). Documents shorter than K+T words
    are skipped. Only the first `pool_size` rows are read (the hub is streamed). All samples share the
    question `FINEWEB_QUESTION` and group "fineweb".
    """
    task = "fineweb"
    k_prefix = _positive("prefix_tokens", prefix_tokens) or 1
    k_cont = _positive("continuation_tokens", continuation_tokens) or 1
    pool = _positive("pool_size", pool_size, allow_none=True)
    samples = []
    rows = _iter_rows(task, path, hub_id, hub_config, split or "train", streaming=not path, limit=pool)
    for i, row in enumerate(rows):
        rid = str(row.get("id") or f"fineweb-{i}")
        text = _need(row, "text", task, i, rid)
        if not isinstance(text, str):
            raise _bad(task, i, rid, "text", "is not a string")
        words = [m.span() for m in _WORD_RE.finditer(text)]
        if len(words) < k_prefix + k_cont:
            continue
        x = text[: words[k_prefix - 1][1]]
        y = text[words[k_prefix][0]: words[k_prefix + k_cont - 1][1]]
        samples.append(Sample(
            id=rid, question=FINEWEB_QUESTION, documents=(Document(id="prefix", text=x),), answers=(y,),
            group_id="fineweb", answer_type="continuation",
            meta={"url": row.get("url"), "prefix_words": k_prefix, "continuation_words": k_cont,
                  "approx_prefix_tokens": math.ceil(len(x) / CHARS_PER_TOKEN)},
        ))
    return _take(samples, size, seed)


# ----------------------------------------------------------------------------- your own data


_ANSWER_TYPES = ("text", "choice", "number", "continuation")


def _own_documents(task: str, i: int, rid: str, row: dict[str, Any]) -> tuple[Document, ...]:
    """`documents` (strings, or {id?, title?, text, gold?}) or one `context` string, as Documents."""
    docs = row.get("documents")
    if docs is None or (isinstance(docs, list | dict) and len(docs) == 0):
        ctx = _need(row, "context", task, i, rid)
        if not isinstance(ctx, str):
            raise _bad(task, i, rid, "context", "is not a string")
        return (Document(id="d0", text=ctx),)
    if not isinstance(docs, list | dict):
        raise _bad(task, i, rid, "documents", "is not a list of strings or of {title, text, gold} objects")
    out = []
    for k, d in enumerate(_records(docs) if isinstance(docs, dict) else docs):
        if isinstance(d, str):
            out.append(Document(id=f"d{k}", text=d))
        elif isinstance(d, dict) and isinstance(d.get("text"), str):
            out.append(Document(id=str(d.get("id") or f"d{k}"), text=d["text"], title=str(d.get("title") or ""),
                                is_gold=bool(d.get("gold"))))
        else:
            raise _bad(task, i, rid, f"documents[{k}]", "is neither a string nor an object with a 'text' string")
    return tuple(out)


@register_task("local-qa", options=("path", "answer_type"))
def local_qa(size: int | None, seed: int, split: str | None, *, path: str | None = None,
             answer_type: str = "text") -> list[Sample]:
    """Your own QA data: a local JSON/JSONL/parquet file (or folder) with one question per row.

    Row fields: `question` (required); `answers` (a list of gold aliases) or `answer` (one string); `context`
    (one string) or `documents` (a list of strings, or of objects `{title, text, gold}`: gold marks evidence);
    optional `id` (default `row-<index>`), `group` (samples sharing a question text are one MI group by default),
    `choices` (for `answer_type: choice`, gold = the answer's letter or text) and `answer_type` (text, choice,
    number, continuation; default: the task option). A bad row stops the load with one line naming the row and
    field.
    """
    task = "local-qa"
    if not path:
        raise UserError("task.options.path: local-qa reads your own data file; set task.options.path to a "
                        ".jsonl/.json/.parquet file with question, answer(s) and context or documents per row")
    _choice("answer_type", answer_type, _ANSWER_TYPES)
    samples, seen = [], set()
    for i, row in enumerate(_iter_rows(task, path, None, None, split)):
        rid = str(row.get("id") or f"row-{i}")
        if rid in seen:
            raise _bad(task, i, rid, "id", "repeats an earlier row's id")
        seen.add(rid)
        question = _need(row, "question", task, i, rid)
        golds = row.get("answers")
        if golds is None or (isinstance(golds, list) and len(golds) == 0):
            golds = [_need(row, "answer", task, i, rid)]
        if not isinstance(golds, list):
            golds = [golds]
        kind = row.get("answer_type") or answer_type
        if kind not in _ANSWER_TYPES:
            raise _bad(task, i, rid, "answer_type", f"is {kind!r}, not one of {', '.join(_ANSWER_TYPES)}")
        choices = tuple(str(c) for c in (row.get("choices") or ()))
        if kind == "choice" and not choices:
            raise _bad(task, i, rid, "choices", "is missing (answer_type choice needs the options)")
        samples.append(Sample(
            id=rid, question=str(question), documents=_own_documents(task, i, rid, row),
            answers=tuple(str(g) for g in golds), group_id=str(row.get("group") or ""), choices=choices,
            answer_type=kind, meta={"row": i},
        ))
    if not samples:
        raise UserError(f"task.options.path: '{path}' holds no rows; give a file with at least one question")
    return _take(samples, size, seed)
