"""What the viewer shows, read from one results store: the cell grid, a cell's samples, one sample end to end, a
paired comparison and the report's plots.

Every number comes from the analysis layer (`frames.cell_frame`, the one cell summariser, and
`compare.compare_frames`) and is formatted by `render`, so the viewer and `harness report` / `harness compare` say the
same thing. The store is opened with `create=False` and its connection made read-only; nothing here writes to it.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.analyze.cells import resolve_cell, short_ids
from harness.analyze.frames import cell_frame, is_null, model_infos, py_value, sample_status
from harness.analyze.render import fmt, fmt_accuracy, fmt_cost_pair, fmt_mi, fmt_num
from harness.errors import UserError
from harness.store import Store
from harness.store.redact import redact_url

PLOT_SUFFIXES = (".png", ".svg")
# the tables whose growth means the numbers may have changed (the cache key of the loaded frames)
_FINGERPRINT_SQL = (
    "SELECT (SELECT COUNT(*) FROM cells), (SELECT MAX(updated_at) FROM cells), (SELECT MAX(prediction_id) FROM "
    "predictions), (SELECT COUNT(*) FROM scores), (SELECT COUNT(*) FROM mi_estimates), (SELECT COUNT(*) FROM "
    "errors), (SELECT COUNT(*) FROM compressions), (SELECT COUNT(*) FROM usage)"
)


def open_read_only(url: str | Path) -> Store:
    """Open an existing store (a missing one is a UserError) with its connection refusing writes."""
    store = Store.open(url, create=False)
    try:
        if store.dialect == "sqlite":
            store.query("PRAGMA query_only = ON")
        else:
            store.query("SELECT set_config('default_transaction_read_only', 'on', false)")
    except BaseException:
        store.close()
        raise
    return store


def _json(text: Any, default: Any) -> Any:
    if not isinstance(text, str) or not text:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return default


def sample_label(row: dict[str, Any]) -> str:
    """One word for a sample row of a cell: error, correct, incorrect, unparseable or value."""
    if row.get("status") == "error":
        return "error"
    if "unparseable" in _flags(row.get("flags_json")):
        return "unparseable"
    if row.get("status") == "value":
        return "value"
    return "correct" if row.get("correct") else "incorrect"


def _flags(f: Any) -> list[str]:
    if isinstance(f, (list, tuple)):
        return [str(x) for x in f]
    got = _json(f, [])
    return [str(x) for x in got] if isinstance(got, list) else []


# ----------------------------------------------------------------------------- prompts and context


@dataclass
class Message:
    """One chat message (role, text) of a rendered prompt."""

    role: str
    content: str


def prompt_messages(prompt_json: Any) -> list[Message] | None:
    """A stored prompt (`prompt_json`: chat messages, plain text, or {"messages": [...]}/{"prompt": ...}) as
    messages; None when it was not stored (stores written before schema v4, or by a stage that keeps none)."""
    if is_null(prompt_json) or prompt_json == "":
        return None
    p = _json(prompt_json, prompt_json)
    if isinstance(p, dict):
        if isinstance(p.get("messages"), list):
            p = p["messages"]
        elif "context" in p:  # a compressor without a request (python/, filter/): its question and context
            return [Message(k, str(p[k])) for k in ("question", "context") if p.get(k) is not None]
        elif isinstance(p.get("prompt"), str) or isinstance(p.get("text"), str):
            return [Message("prompt", str(p.get("prompt", p.get("text"))))]
        else:
            return [Message("json", json.dumps(p, indent=2, ensure_ascii=False))]
    if isinstance(p, str):
        return [Message("prompt", p)]
    if isinstance(p, list):
        out = []
        for m in p:
            if isinstance(m, dict) and "content" in m:
                c = m["content"]
                if isinstance(c, list):  # content parts: keep the text ones
                    c = "\n".join(str(x.get("text", "")) if isinstance(x, dict) else str(x) for x in c)
                out.append(Message(str(m.get("role", "")), str(c)))
            else:
                out.append(Message("", m if isinstance(m, str) else json.dumps(m, ensure_ascii=False)))
        return out
    return [Message("json", json.dumps(p, ensure_ascii=False))]


@dataclass
class Span:
    """A piece of context text; `gold` marks gold evidence (or, without evidence, a gold answer's occurrence)."""

    text: str
    gold: bool = False


@dataclass
class ContextDoc:
    """One document of a sample's context, split into spans."""

    title: str
    spans: list[Span]


@dataclass
class Context:
    """The sample's context as the viewer can rebuild it, and where it came from."""

    docs: list[ContextDoc]
    source: str  # "sample meta (doc_sentences)", "compressor prompt", or "" (not stored)
    gold_kind: str  # "supporting sentences", "gold answers", or ""


def mark_answers(text: str, answers: list[str]) -> list[Span]:
    """`text` split into spans, the case-insensitive occurrences of any answer (of ≥ 2 characters) marked gold."""
    words = sorted({a.strip() for a in answers if len(a.strip()) >= 2}, key=len, reverse=True)
    if not words:
        return [Span(text)]
    pat = re.compile("|".join(re.escape(w) for w in words), re.IGNORECASE)
    out: list[Span] = []
    pos = 0
    for m in pat.finditer(text):
        if m.start() > pos:
            out.append(Span(text[pos : m.start()]))
        out.append(Span(m.group(0), True))
        pos = m.end()
    if pos < len(text):
        out.append(Span(text[pos:]))
    return out


def build_context(meta: dict[str, Any], answers: list[str], compressor_prompt: list[Message] | None) -> Context:
    """The sample's context with its gold evidence marked.

    The store keeps no documents; a task that records its sentences in the sample's meta (`doc_sentences`, with
    `supporting_sentences` or `sentence_labels` as gold) is rebuilt from there; otherwise the context is the
    compressor prompt's user text with the gold answers marked; otherwise it is not stored.
    """
    ds = meta.get("doc_sentences")
    if isinstance(ds, dict) and ds:
        gold = {(str(d), int(i)) for d, i in meta.get("supporting_sentences") or [] if str(i).lstrip("-").isdigit()}
        labels = meta.get("sentence_labels") or {}
        docs = []
        for did, sents in ds.items():
            lab = labels.get(did) or []
            spans = []
            for i, s in enumerate(sents):
                g = (str(did), i) in gold or (i < len(lab) and bool(lab[i]))
                spans.append(Span(str(s) + " ", g))
            docs.append(ContextDoc(str(did), spans))
        return Context(docs, "sample meta (doc_sentences)", "supporting sentences")
    if compressor_prompt:
        user = [m for m in compressor_prompt if m.role in ("context", "user", "prompt", "")] or compressor_prompt
        return Context([ContextDoc("compressor prompt", mark_answers(user[-1].content, answers))],
                       "compressor prompt", "gold answers")
    return Context([], "", "")


# ----------------------------------------------------------------------------- the store's view


@dataclass
class Loaded:
    """The frames of one store read and the cell table computed from them (cached until the store changes)."""

    fingerprint: tuple[Any, ...]
    frames: dict[str, pd.DataFrame]
    cells: pd.DataFrame
    preds: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    short: dict[str, str] = field(default_factory=dict)  # cell id → short id (`harness.analyze.cells.short_ids`)


class StoreView:
    """Read-only access to one results store for the web viewer (safe to share across request threads)."""

    def __init__(self, url: str | Path, report_dir: str | Path | None = None):
        self.url = str(url)
        self.display_url = redact_url(self.url)
        self.report_dir = Path(report_dir) if report_dir is not None else None
        self._lock = threading.Lock()
        self._loaded: Loaded | None = None
        self.rendered: Path | None = None  # the folder `render_plots` wrote, once it has run
        with self.store() as st:  # fail now (one line) on a bad path or URL, not on the first page
            st.schema_version()

    @contextmanager
    def store(self) -> Iterator[Store]:
        """A fresh read-only connection (one per request: a connection is not shared across threads)."""
        st = open_read_only(self.url)
        try:
            yield st
        finally:
            st.close()

    def load(self) -> Loaded:
        """The frames and the cell table, re-read when the store has new rows."""
        from harness.results import load_store

        with self._lock, self.store() as st:
            fp = tuple(st.query(_FINGERPRINT_SQL)[1][0])
            if self._loaded is None or self._loaded.fingerprint != fp:
                frames = load_store(st)
                cells, preds, choice = cell_frame(frames, None, model_infos(frames["models"]))
                self._loaded = Loaded(fp, frames, cells, preds, list(choice.notes), short_ids(cells["cell_id"]))
            return self._loaded

    # ------------------------------------------------------------------ ids

    def resolve_cell(self, ref: str) -> str:
        """The cell `ref` names (`harness.analyze.cells.resolve_cell`: its id, a unique prefix of it or of its short
        id); UserError (unknown or ambiguous) otherwise."""
        return resolve_cell(ref, list(self.load().cells["cell_id"]), self.display_url)

    def short_ids(self) -> dict[str, str]:
        """cell id → short id (`harness.analyze.cells.short_ids`, computed once per load)."""
        return self.load().short

    # ------------------------------------------------------------------ the grid

    def cell_row(self, cell_id: str) -> dict[str, Any]:
        """One cell's numbers (the report's cell table row) plus formatted strings for display."""
        cells = self.load().cells
        r = {k: py_value(v) for k, v in cells[cells["cell_id"] == cell_id].iloc[0].items()}
        return r | display(r)

    def grid(self, task: str = "", arm: str = "", knob: str = "", errors: str = "") -> dict[str, Any]:
        """The sweep grid: per task, rows (arm, compressor, knobs) × columns (predictor), filtered.

        errors: "" (all cells), "with" (cells with an error row) or "without".
        """
        ld = self.load()
        cells = ld.cells
        options = {
            "task": sorted(cells["task"].astype(str).unique()),
            "arm": sorted(cells["arm"].astype(str).unique()),
            "knob": sorted(cells["knobs"].astype(str).unique()),
        }
        sel = cells
        if task:
            sel = sel[sel["task"] == task]
        if arm:
            sel = sel[sel["arm"] == arm]
        if knob:
            sel = sel[sel["knobs"] == knob]
        if errors == "with":
            sel = sel[sel["errors"] > 0]
        elif errors == "without":
            sel = sel[sel["errors"] == 0]
        short = self.short_ids()
        sections = []
        for t, g in sel.groupby("task", sort=True):
            preds = sorted(g["predictor"].astype(str).unique())
            # one cell per (row, predictor): cells repeated by several runs get a row per run
            by_run = bool(g.duplicated(["arm", "compressor", "knobs", "predictor"]).any())
            rows: dict[tuple[str, str, str, str], dict[str, dict[str, Any]]] = {}
            for _, c in g.sort_values(["arm", "compressor", "knobs", "run_id"]).iterrows():
                r = {k: py_value(v) for k, v in c.items()}
                r |= display(r) | {"short_id": short[r["cell_id"]]}
                key = (r["arm"], r["compressor"], r["knobs"], r["run_id"] if by_run else "")
                rows.setdefault(key, {})[r["predictor"]] = r
            sections.append({
                "task": t,
                "predictors": preds,
                "by_run": by_run,
                "rows": [{"arm": a, "compressor": cp, "knobs": k, "run": run, "cells": v}
                         for (a, cp, k, run), v in rows.items()],
            })
        return {
            "sections": sections,
            "options": options,
            "n_cells": len(cells),
            "n_shown": len(sel),
            "notes": ld.notes,
            "all_cells": [
                {"cell_id": c, "short_id": short[c], "label": label(r)}
                for c, r in zip(cells["cell_id"], cells.to_dict("records"), strict=True)
            ],
        }

    # ------------------------------------------------------------------ a cell

    def _cell_samples(self, ld: Loaded, cell_id: str) -> pd.DataFrame:
        raw = ld.frames["cells"].set_index("cell_id").loc[cell_id].copy()
        raw["cell_id"] = cell_id
        return sample_status(ld.frames, raw, ld.preds[ld.preds["cell_id"] == cell_id])

    def cell(self, cell_id: str, q: str = "", status: str = "") -> dict[str, Any]:
        """A cell's numbers and its samples (status label, question, gold, answer, parsed), filtered by a search
        text `q` (in id, question, gold or answer) and a status label."""
        cell_id = self.resolve_cell(cell_id)
        ld = self.load()
        row = self.cell_row(cell_id)
        s = self._cell_samples(ld, cell_id)
        samples = ld.frames["samples"]
        samples = samples[samples["task"] == row["task"]].set_index("sample_id")
        out = []
        for r in s.to_dict("records"):
            r = {k: py_value(v) for k, v in r.items()}
            sid = str(r["sample_id"])
            sm = samples.loc[sid] if sid in samples.index else None
            item = {
                "sample_id": sid,
                "label": sample_label(r),
                "error_stage": r.get("error_stage"),
                "question": "" if sm is None else str(sm["question"]),
                "gold": [] if sm is None else [str(a) for a in _json(sm["answers_json"], [])],
                "answer": r.get("prediction") or "",
                "parsed": r.get("parsed"),
                "flags": _flags(r.get("flags_json")),
                "summary_tokens": r.get("summary_tokens"),
                "prediction_id": r.get("prediction_id"),
            }
            out.append(item)
        out.sort(key=lambda x: _natural(x["sample_id"]))
        counts = {k: sum(x["label"] == k for x in out) for k in ("correct", "incorrect", "unparseable", "error",
                                                                   "value")}
        needle = q.strip().lower()
        shown = [
            x for x in out
            if (not status or x["label"] == status)
            and (not needle or needle in " ".join([x["sample_id"], x["question"], *x["gold"], x["answer"]]).lower())
        ]
        with self.store() as st:
            stages = st.cell_status(cell_id) or {}
        return {"cell": row, "samples": shown, "n_samples": len(out), "counts": counts, "q": q, "status": status,
                "short_id": self.short_ids()[cell_id], "stages": stages}

    # ------------------------------------------------------------------ a sample

    def sample(self, cell_id: str, sample_id: str) -> dict[str, Any]:
        """One sample of a cell end to end: context → compressor prompt → compression (+ terms) → predictor prompt
        → answer → scores, with usage, errors and any agent trace."""
        cell_id = self.resolve_cell(cell_id)
        ld = self.load()
        cell = self.cell_row(cell_id)
        f = ld.frames
        sm = f["samples"][(f["samples"]["task"] == cell["task"]) & (f["samples"]["sample_id"] == sample_id)]
        if sm.empty and not (ld.preds["sample_id"] == sample_id).any():
            raise UserError(f"no sample {sample_id!r} in cell {cell_id}")
        srow = {k: py_value(v) for k, v in sm.iloc[0].items()} if len(sm) else {}
        answers = [str(a) for a in _json(srow.get("answers_json"), [])]
        meta = _json(srow.get("meta_json"), {})
        p = f["predictions"]
        preds = p[(p["cell_id"] == cell_id) & (p["sample_id"] == sample_id)]
        pred = {k: py_value(v) for k, v in preds.iloc[0].items()} if len(preds) else None
        comp = None
        terms: list[dict[str, Any]] = []
        with self.store() as st:
            if pred is not None and pred.get("compression_id") is not None:
                comp = st.rows("compressions", compression_id=int(pred["compression_id"]))[0]
            elif cell.get("compressor_model_id") is not None:
                raw = f["cells"].set_index("cell_id").loc[cell_id]
                kh = _json(raw["knobs_json"], {}).get("knob_hash")
                where = {"compressor_model_id": int(cell["compressor_model_id"]), "task": cell["task"],
                         "sample_id": sample_id, "sample_index": 0}
                if kh:
                    where["knob_hash"] = kh
                got = st.rows("compressions", **where)
                comp = got[0] if got else None
            if comp is not None:
                terms = st.rows("compression_terms", compression_id=int(comp["compression_id"]))
            trace = st.trace(cell_id, sample_id)
        infos = model_infos(f["models"])
        for t in terms:
            sc = t.get("scorer_model_id")
            t["scorer"] = "-" if sc is None else (infos[int(sc)].name if int(sc) in infos else str(sc))
            t["detail"] = _json(t.get("detail_json"), None)
        for t in trace:
            mid = t.get("model_id")
            t["model"] = "" if mid is None else (infos[int(mid)].name if int(mid) in infos else str(mid))
        scores = []
        usage = []
        if pred is not None:
            sc = f["scores"][f["scores"]["prediction_id"] == pred["prediction_id"]]
            for r in sc.to_dict("records"):
                r = {k: py_value(v) for k, v in r.items()}
                r["flags"] = _flags(r.get("flags_json"))
                r["detail"] = _json(r.get("detail_json"), None)
                scores.append(r)
            u = f["usage"]
            usage += [{k: py_value(v) for k, v in r.items()} for r in
                      u[(u["call_kind"] == "predict") & (u["ref_id"] == pred["prediction_id"])].to_dict("records")]
        if comp is not None:
            u = f["usage"]
            usage += [{k: py_value(v) for k, v in r.items()} for r in
                      u[(u["call_kind"] == "compress") & (u["ref_id"] == comp["compression_id"])].to_dict("records")]
        e = f["errors"]
        errors = e[(e["run_id"] == cell["run_id"]) & (e["sample_id"] == sample_id)]
        errors = [{k: py_value(v) for k, v in r.items()} for r in errors.to_dict("records")]
        comp_prompt = prompt_messages(comp.get("prompt_json")) if comp else None
        srows = self._cell_samples(ld, cell_id)
        srows = srows[srows["sample_id"] == sample_id]
        status = {k: py_value(v) for k, v in srows.iloc[0].items()} if len(srows) else {"status": "error"}
        return {
            "cell": cell,
            "short_id": self.short_ids()[cell_id],
            "sample_id": sample_id,
            "sample": srow,
            "question": srow.get("question", ""),
            "answers": answers,
            "choices": [str(c) for c in _json(srow.get("choices_json"), [])],
            "n_documents": srow.get("n_documents"),
            "context": build_context(meta if isinstance(meta, dict) else {}, answers, comp_prompt),
            "compression": comp,
            "compressor_prompt": comp_prompt,
            "terms": terms,
            "prediction": pred,
            "predictor_prompt": prompt_messages(pred.get("prompt_json")) if pred else None,
            "scores": scores,
            "label": sample_label(status),
            "error_stage": status.get("error_stage"),
            "usage": usage,
            "errors": errors,
            "trace": trace,
        }

    # ------------------------------------------------------------------ two cells

    def compare(self, a: str, b: str) -> dict[str, Any]:
        """The paired comparison of `harness compare` and the discordant samples (one side right, the other
        wrong), each with both answers."""
        from harness.analyze.compare import compare_frames, format_paired_mi

        a, b = self.resolve_cell(a), self.resolve_cell(b)
        c = compare_frames(self.load().frames, a, b, where=self.display_url)  # the cached frames, no second read
        disc = [{k: py_value(v) for k, v in r.items()} for r in c.discordant.to_dict("records")]
        disc.sort(key=lambda x: (not x["correct_a"], _natural(str(x["sample_id"]))))
        short = self.short_ids()
        return {
            "c": c,
            "paired_mi": format_paired_mi(c.mi_paired) if c.mi_paired is not None else None,
            "a": self.cell_row(a),
            "b": self.cell_row(b),
            "short_a": short[a],
            "short_b": short[b],
            "discordant": disc,
            "n_a_only": sum(bool(d["correct_a"]) for d in disc),
            "n_b_only": sum(bool(d["correct_b"]) for d in disc),
        }

    # ------------------------------------------------------------------ plots

    def plot_dir(self) -> Path | None:
        """Where the report's plots are: --report DIR, else `harness report`'s default folder, else a folder
        rendered on request (`render_plots`); None when there is none yet."""
        from harness.analyze.report import default_out_dir

        for d in (self.report_dir, default_out_dir(self.url), self.rendered):
            if d is not None and d.is_dir() and any(p.suffix in PLOT_SUFFIXES for p in d.iterdir()):
                return d
        return None

    def plots(self) -> list[str]:
        """File names of the plots (PNG, and SVG where there is no PNG of the same name)."""
        d = self.plot_dir()
        if d is None:
            return []
        files = sorted(p for p in d.iterdir() if p.suffix in PLOT_SUFFIXES)
        stems = {p.stem for p in files if p.suffix == ".png"}
        return [p.name for p in files if p.suffix == ".png" or p.stem not in stems]

    def render_plots(self, folder: Path) -> Path:
        """Write the report (markdown and plots) of this store into `folder` (never into the store)."""
        from harness.analyze.report import build_report

        with self._lock:
            build_report(self.url, folder)
            self.rendered = folder
        return folder


def _natural(s: str) -> tuple[Any, ...]:
    """A sort key that orders "s2" before "s10"."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s))


def label(r: dict[str, Any]) -> str:
    """A short readable label of a cell: task · arm · compressor → predictor [knobs]."""
    comp = "" if r.get("compressor") in (None, "-") else f"{r['compressor']} → "
    knobs = "" if r.get("knobs") in (None, "-") else f" [{r['knobs']}]"
    return f"{r['task']} · {r['arm']} · {comp}{r['predictor']}{knobs}"


def display(r: dict[str, Any]) -> dict[str, str]:
    """The cell's numbers as the report writes them (render's formatters)."""
    cost = fmt_cost_pair(r.get("flops_actual"), r.get("flops"))
    return {
        "acc_text": fmt_accuracy(r),
        "mi_text": fmt_mi(r),
        "bpt_text": fmt(r.get("bits_per_token"), ".3f"),
        "flops_text": cost,
        "dollars_text": fmt_cost_pair(r.get("dollars_actual"), r.get("dollars")),
        "seconds_text": fmt(r.get("seconds"), ".1f"),
        "tokens_text": fmt_num(r.get("tokens")),
        "summary_tokens_text": fmt(r.get("summary_tokens"), ".1f"),
        "label": label(r),
    }
