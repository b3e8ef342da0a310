"""`harness rescore STORE`: score the stored answers again with a new or fixed metric, without any model call.

Each error-free prediction of a text, choice or number sample is scored by the chosen metric (`METRICS`) against
its sample's stored gold answers. A result is stored as a new `scores` row keyed by (prediction, metric name);
a stored row is never overwritten: when one with that name exists and its verdict or value differs, the new result
is left out and counted as `differ` (store it beside the old one under another name with `store_as`). What the
rescore changes is counted against the verdict each prediction is counted by today (`frames.prediction_frame`):
wrong → right and right → wrong flips, and accuracy before and after, per cell.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import UserError
from harness.metrics import MetricResult, normalize_answer, score_prediction
from harness.records import Sample


def _as_type(kind: str) -> Callable[[Sample, str], MetricResult]:
    def score(sample: Sample, prediction: str) -> MetricResult:
        if kind == "choice" and not sample.choices:
            raise UserError(f"metric mc_accuracy: sample {sample.id!r} has no choices")
        return score_prediction(dataclasses.replace(sample, answer_type=kind), prediction)  # type: ignore[arg-type]

    return score


def contains(sample: Sample, prediction: str) -> MetricResult:
    """Lenient: right when a gold alias of ≥ 2 characters occurs, word-aligned, in the normalised prediction."""
    pred = f" {normalize_answer(prediction)} "
    golds = [g for g in (normalize_answer(a) for a in sample.answers) if len(g) >= 2]
    hit = next((g for g in golds if f" {g} " in pred), None)
    flags = ("empty",) if not (prediction or "").strip() else ()
    return MetricResult("contains", float(hit is not None), hit is not None, hit, flags)


def lenient(sample: Sample, prediction: str) -> MetricResult:
    """`contains` for short text answers, the task's own metric (numeric match, option letter…) for the rest: one
    metric for a config whose tasks answer in text and in numbers."""
    return contains(sample, prediction) if sample.answer_type == "text" else score_prediction(sample, prediction)


METRICS: dict[str, tuple[Callable[[Sample, str], MetricResult], str]] = {
    "auto": (score_prediction, "the task's own metric (by answer type), as the run scored it"),
    "exact_match": (_as_type("text"), "exact match against any gold alias (token F1 in the detail)"),
    "token_f1": (_as_type("continuation"), "token F1 (value); correct = exact match"),
    "numeric_match": (_as_type("number"), "the first number within 1% of a gold number"),
    "mc_accuracy": (_as_type("choice"), "the parsed option letter or text against the gold option"),
    "contains": (contains, "a gold alias (≥ 2 characters) occurs in the answer"),
    "lenient": (lenient, "contains for text answers, the task's own metric for numbers and options"),
}


@dataclass
class CellRescore:
    """What a rescore did in one cell."""

    cell_id: str
    arm: str
    metric: str = ""
    rescored: int = 0
    new: int = 0
    unchanged: int = 0
    differ: int = 0
    skipped: int = 0
    wrong_to_right: int = 0
    right_to_wrong: int = 0
    no_verdict_before: int = 0
    acc_before: float | None = None
    acc_after: float | None = None


@dataclass
class Rescore:
    """The rescore of a store: per-cell counts, and whether rows were written."""

    metric: str
    stored_as: str | None
    written: bool
    cells: list[CellRescore] = field(default_factory=list)
    # cells whose counted metric (what report, cells and compare count by default) the new rows changed: {cell: (
    # metric before, metric after)}
    counted_change: dict[str, tuple[str, str]] = field(default_factory=dict)

    def total(self, name: str) -> int:
        """The sum of one count over the cells."""
        return sum(getattr(c, name) for c in self.cells)


def sample_from_row(r: dict[str, Any]) -> Sample:
    """A `Sample` (no documents) from a `samples` row: question, gold answers, choices, answer type, meta."""

    def js(v: Any, default: Any) -> Any:
        return json.loads(v) if isinstance(v, str) and v else default

    return Sample(id=str(r["sample_id"]), question=str(r["question"] or ""), documents=(),
                  answers=tuple(str(a) for a in js(r["answers_json"], [])), group_id=str(r["group_id"] or ""),
                  choices=tuple(str(c) for c in js(r["choices_json"], [])),
                  answer_type=str(r["answer_type"] or "text"), meta=js(r["meta_json"], {}))  # type: ignore[arg-type]


def _same(stored: dict[str, Any], res: MetricResult) -> bool:
    """Whether a stored score row says what `res` says (verdict, value, parsed answer, flags)."""
    sc = stored["correct"]
    if (None if sc is None or sc is pd.NA else bool(sc)) != res.correct:
        return False
    sv = stored["value"]
    sv = None if sv is None or (isinstance(sv, float) and math.isnan(sv)) else float(sv)
    if (sv is None) != (res.value is None) or (sv is not None and not math.isclose(sv, res.value, abs_tol=1e-9)):
        return False
    flags = json.loads(stored["flags_json"]) if isinstance(stored["flags_json"], str) else []
    return stored["parsed"] == res.parsed and list(flags) == list(res.flags)


def rescore(url: str | Path, metric: str = "auto", *, store_as: str | None = None,
            cells: Sequence[str] = (), dry_run: bool = False) -> Rescore:
    """Rescore the store's error-free predictions with `metric` (a `METRICS` name); write the new rows unless
    `dry_run`. `store_as`: the metric name to store under (default the result's own name); `cells`: cell
    references (ids, id prefixes or short ids) to limit it to."""
    from harness.analyze.cells import resolve_cell
    from harness.analyze.frames import prediction_frame
    from harness.results import load_store
    from harness.store import Store
    from harness.store.redact import redact_url

    if metric not in METRICS:
        raise UserError(f"--metric {metric}: unknown; metrics: {', '.join(METRICS)}")
    if store_as is not None and not store_as.strip():
        raise UserError("--as: give a metric name to store the rescore under")
    fn = METRICS[metric][0]
    out = Rescore(metric, store_as, not dry_run)
    with Store.open(url, create=False) as st:
        frames = load_store(st)
        known = list(frames["cells"]["cell_id"])
        chosen = [resolve_cell(c, known, redact_url(str(url))) for c in cells] if cells else known
        counted = prediction_frame(frames, chosen).set_index("prediction_id")
        samples = {(r["task"], r["sample_id"]): r for r in frames["samples"].to_dict("records")}
        preds = frames["predictions"]
        preds = preds[preds["cell_id"].isin(chosen)]
        comp_err = frames["compressions"].set_index("compression_id")["error"]
        scores = frames["scores"]
        stored = {(int(r["prediction_id"]), r["metric"]): r for r in scores.to_dict("records")}
        cell_rows = frames["cells"].set_index("cell_id")
        new_rows: list[dict[str, Any]] = []  # written together at the end: one commit, all or none
        for cid in chosen:
            cell = cell_rows.loc[cid]
            cr = CellRescore(cid, str(cell["arm"]))
            before: list[bool] = []
            after: list[bool] = []
            for p in preds[preds["cell_id"] == cid].itertuples(index=False):
                pid = int(p.prediction_id)
                cerr = None if pd.isna(p.compression_id) else comp_err.get(int(p.compression_id))
                srow = samples.get((cell["task"], p.sample_id))
                if p.error is not None or (cerr is not None and not pd.isna(cerr)) or srow is None:
                    cr.skipped += 1
                    continue
                sample = sample_from_row(srow)
                if sample.answer_type == "continuation" and metric == "auto":  # scored by log-probs, not text
                    cr.skipped += 1
                    continue
                res = fn(sample, p.text or "")
                name = store_as or res.name
                cr.metric = name
                cr.rescored += 1
                old = stored.get((pid, name))
                if old is None:
                    cr.new += 1
                    if not dry_run:
                        new_rows.append(dict(prediction_id=pid, metric=name, value=res.value, correct=res.correct,
                                             parsed=res.parsed, flags=tuple(res.flags),
                                             detail={**res.extra, "rescored_with": metric}))
                elif _same(old, res):
                    cr.unchanged += 1
                else:
                    cr.differ += 1
                prev = counted["correct"].get(pid) if pid in counted.index else None
                if prev is None or prev is pd.NA or res.correct is None:
                    cr.no_verdict_before += int(prev is None or prev is pd.NA)
                    continue
                before.append(bool(prev))
                after.append(bool(res.correct))
                cr.wrong_to_right += int(not prev and res.correct)
                cr.right_to_wrong += int(bool(prev) and not res.correct)
            if before:
                cr.acc_before = sum(before) / len(before)
                cr.acc_after = sum(after) / len(after)
            out.cells.append(cr)
        if new_rows:
            with st.transaction():
                for row in new_rows:
                    st.add_score(**row)
        if not dry_run and out.total("new"):
            now = prediction_frame(load_store(st), chosen)
            was, is_ = _counted_metrics(counted), _counted_metrics(now)
            out.counted_change = {c: (was.get(c, "-"), is_.get(c, "-")) for c in chosen if was.get(c) != is_.get(c)}
    return out


def _counted_metrics(pf: pd.DataFrame) -> dict[str, str]:
    """{cell_id: the metric names its predictions are counted by, joined}."""
    pf = pf.reset_index()
    return {str(c): ",".join(sorted(g["metric"].dropna().astype(str).unique())) or "-"
            for c, g in pf.groupby("cell_id")}


def rescore_table(r: Rescore, short: dict[str, str]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of a rescore for the terminal: per cell the counts and accuracy before → after."""
    headers = ["id", "arm", "stored as", "rescored", "new", "unchanged", "differ", "skipped", "wrong→right",
               "right→wrong", "accuracy before → after"]
    rows = []
    for c in r.cells:
        acc = "-" if c.acc_before is None else f"{c.acc_before:.3f} → {c.acc_after:.3f}"
        rows.append([short.get(c.cell_id, c.cell_id), c.arm, c.metric or "-", str(c.rescored), str(c.new),
                     str(c.unchanged), str(c.differ), str(c.skipped), str(c.wrong_to_right), str(c.right_to_wrong),
                     acc])
    return headers, rows
