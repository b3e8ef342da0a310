"""Frames for the analysis layer: model names and sizes, the per-prediction frame, MI-row selection, and THE cell
summariser that `harness run`, `harness sweep`, `harness report` and `harness compare` all use.

`summarize_cell` turns one cell's sample rows (one row per sample: status, verdict, flags, compression size,
usage; see `SAMPLE_COLUMNS`) into its numbers: accuracy with its Wilson 95% CI over the answered samples, the
answered/errors/unparseable/truncated counts, summary tokens and token_ratio, tokens, seconds, FLOPs and dollars.
`cell_frame` builds those rows from the results store's frames and adds the cell's MI. Pure pandas and numpy:
nothing here loads a model, imports a backend or formats text.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.metrics import accuracy_with_ci, mean_with_ci, token_ratio

ERROR_STAGES = ("compress", "predict", "score")
PREFERRED_METRIC = "judge"  # when a prediction has several scores, the judge's verdict is the one counted

# ----------------------------------------------------------------------------- models: size and family

_SIZE_RE = re.compile(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)([mb])(?![a-z0-9])", re.IGNORECASE)
_SUFFIXES = ("-instruct", "-chat", "-it", "-base")


def _base(name: str) -> str:
    b = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].lower()
    return b[:-5] if b.endswith(".gguf") else b


def parse_size(name: str) -> float | None:
    """Parameter count from a model name ("smollm2-135m" → 1.35e8, "Qwen2.5-1.5B-Instruct" → 1.5e9), or None."""
    m = _SIZE_RE.search(_base(name))
    if not m:
        return None
    return float(m.group(1)) * (1e6 if m.group(2).lower() == "m" else 1e9)


def _size_value(v: Any) -> float | None:
    """A size from meta: a number (a count, or billions when < 1000) or text like "135M" / "0.5B"."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        if not math.isfinite(v) or v <= 0:
            return None
        return float(v) * 1e9 if v < 1000 else float(v)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmbt]?)\s*", str(v), re.IGNORECASE)
    if not m:
        return None
    mult = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m.group(2).lower()]
    val = float(m.group(1)) * mult
    return val * 1e9 if not m.group(2) and val < 1000 else val


def params_from_meta(meta: dict[str, Any]) -> float | None:
    """Parameter count from a model's meta: `n_params_total`, `billions` or `size_b` (in 1e9), then `n_params`,
    `params`, `param_count`, `num_parameters`, `size` (a count, or text like "135M")."""
    for k in ("n_params_total", "billions", "size_b"):  # billions: always in units of 1e9
        if k in meta and k != "n_params_total":
            try:
                v = float(meta[k])
            except (TypeError, ValueError):
                continue
            if math.isfinite(v) and v > 0:
                return v * 1e9
        elif k in meta and (v := _size_value(meta[k])) is not None:
            return v
    for k in ("n_params", "params", "param_count", "num_parameters", "size"):
        if k in meta and (v := _size_value(meta[k])) is not None:
            return v
    return None


def parse_family(name: str) -> str:
    """Model family from a name: the part before the size ("qwen2.5-coder-0.5b" → "qwen2.5-coder")."""
    b = _base(name)
    m = _SIZE_RE.search(b)
    fam = b[: m.start()] if m else b
    fam = fam.strip("-_. ")
    if not m:
        for s in _SUFFIXES:
            fam = fam.removesuffix(s)
    return fam or b


@dataclass(frozen=True)
class ModelInfo:
    """A model row with its family and parameter count, and where the size came from ("meta", "name", "")."""

    model_id: int
    name: str
    family: str
    params: float | None
    size_source: str


def model_infos(models: pd.DataFrame) -> dict[int, ModelInfo]:
    """{model_id: ModelInfo}, sizes from meta_json when present, else parsed from the name."""
    out: dict[int, ModelInfo] = {}
    for r in models.itertuples(index=False):
        meta: dict[str, Any] = {}
        if isinstance(r.meta_json, str) and r.meta_json:
            try:
                meta = json.loads(r.meta_json) or {}
            except json.JSONDecodeError:
                meta = {}
        p = params_from_meta(meta)
        src = "meta" if p is not None else ""
        if p is None:
            p = parse_size(r.name)
            src = "name" if p is not None else ""
        fam = str(meta.get("family") or parse_family(r.name))
        out[int(r.model_id)] = ModelInfo(int(r.model_id), str(r.name), fam, p, src)
    return out


# ----------------------------------------------------------------------------- per-prediction and per-cell frames


def is_null(v: Any) -> bool:
    """None, pd.NA or a float NaN."""
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def py_value(v: Any) -> Any:
    """A pandas/numpy scalar as a plain Python value: None for a missing value, numpy scalars as Python numbers."""
    if is_null(v):
        return None
    return v.item() if hasattr(v, "item") else v


def prediction_frame(frames: dict[str, pd.DataFrame], cell_ids: Iterable[str] | None = None,
                     metric: str | None = None) -> pd.DataFrame:
    """One row per prediction (its counted score chosen), with status and usage.

    Score: `metric` when given and stored for the prediction (e.g. one `harness rescore` added), else the `judge`
    metric when present, else the first metric (by name) with a verdict, else the first with a value. status: "ok"
    (a verdict: `correct` is set), "value" (a metric without a right answer, e.g. bits per byte: only `value`), or
    "error" with error_stage "compress" (its compression errored), "predict" (the
    prediction errored) or "score" (no score stored). Usage columns: pred_* from the prediction's "predict" row,
    comp_* from its compression's "compress" row (NaN when absent).
    """
    v = frames["predictions_scored"]
    if cell_ids is not None:
        v = v[v["cell_id"].isin(list(cell_ids))]
    v = v.copy()
    v["_has"] = v["correct"].notna()
    v["_val"] = v["value"].notna()
    v["_judge"] = v["metric"] == PREFERRED_METRIC
    v["_chosen"] = v["metric"] == metric if metric is not None else False
    order = ["prediction_id", "_chosen", "_has", "_judge", "_val", "metric"]
    v = v.sort_values(order, ascending=[True, False, False, False, False, True])
    v = v.drop_duplicates("prediction_id", keep="first").drop(columns=["_has", "_val", "_judge", "_chosen"])
    stage = pd.Series(pd.NA, index=v.index, dtype=object)
    stage[v["correct"].isna() & v["value"].isna()] = "score"
    stage[v["prediction_error"].notna()] = "predict"
    stage[v["compression_error"].notna()] = "compress"
    v["error_stage"] = stage
    v["status"] = np.where(stage.notna(), "error", np.where(v["correct"].notna(), "ok", "value"))
    u = frames["usage"]
    cols = ["prompt_tokens", "completion_tokens", "seconds", "flops", "dollars", "cached"]
    for kind, key, pre in (("predict", "prediction_id", "pred_"), ("compress", "compression_id", "comp_")):
        uk = u[u["call_kind"] == kind][["ref_id", *cols]].rename(columns={c: pre + c for c in cols})
        uk = uk.rename(columns={"ref_id": key}).drop_duplicates(key)
        v = v.merge(uk, on=key, how="left")
    made = frames["compressions"][["compression_id", "run_id"]].rename(columns={"run_id": "comp_run_id"})
    v = v.merge(made.drop_duplicates("compression_id"), on="compression_id", how="left")
    return v.reset_index(drop=True)


def _linked_error_samples(frames: dict[str, pd.DataFrame], cell: pd.Series) -> dict[str, str]:
    """{sample_id: stage} of error rows tied to this cell that left no prediction row (e.g. an overflow)."""
    out: dict[str, str] = {}
    e = frames["errors"]
    e = e[(e["run_id"] == cell["run_id"]) & (e["sample_id"] != "") & e["stage"].isin([*ERROR_STAGES, "judge"])]
    has_comp = not is_null(cell["compressor_model_id"])
    for r in e.itertuples(index=False):
        tied = r.ref_kind == cell["arm"] or r.ref_id == cell["cell_id"]
        tied = tied or (r.stage == "compress" and has_comp and r.ref_kind in ("", "compression"))
        if tied:
            out.setdefault(str(r.sample_id), "score" if r.stage == "judge" else str(r.stage))
    if has_comp:
        c = frames["compressions"]
        c = c[
            c["error"].notna()
            & (c["run_id"] == cell["run_id"])
            & (c["compressor_model_id"] == cell["compressor_model_id"])
            & (c["task"] == cell["task"])
            & (c["sample_index"] <= 0)
        ]
        for sid in c["sample_id"]:
            out.setdefault(str(sid), "compress")
    return out


def sample_status(frames: dict[str, pd.DataFrame], cell: pd.Series, preds: pd.DataFrame) -> pd.DataFrame:
    """The cell's prediction rows plus one "error" row per linked error sample that has no prediction row."""
    have = set(preds["sample_id"])
    extra = {s: st for s, st in _linked_error_samples(frames, cell).items() if s not in have}
    if not extra:
        return preds
    add = pd.DataFrame(
        {"cell_id": cell["cell_id"], "sample_id": list(extra), "status": "error", "error_stage": list(extra.values())}
    )
    return pd.concat([preds, add], ignore_index=True)


def flatten_knobs(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested knobs dict as dotted keys (lists and dicts below the leaves as JSON text)."""
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out |= flatten_knobs(v, f"{prefix}{k}.")
        return out
    return {prefix[:-1]: json.dumps(d, sort_keys=True) if isinstance(d, (list, dict)) else d}


def varying_knobs(flat: Sequence[dict[str, Any]]) -> list[str]:
    """The flattened knobs (`flatten_knobs`) whose values differ between the dicts, sorted (pure); knob_hash only
    identifies the compressions a cell reads, so it never counts."""
    keys = sorted({k for f in flat for k in f})
    return [k for k in keys if k != "knob_hash" and len({json.dumps(f.get(k), default=str) for f in flat}) > 1]


def knob_summaries(knobs_json: pd.Series) -> list[str]:
    """Per cell, the knobs that differ between the cells ("k=v, ..."), "-" when none differ."""
    flat = [flatten_knobs(json.loads(k) if isinstance(k, str) and k else {}) for k in knobs_json]
    varying = varying_knobs(flat)  # the arm and compressor columns already differ
    out = []
    for f in flat:
        s = ", ".join(f"{k}={f.get(k)}" for k in varying if k in f)
        out.append((s[:77] + "...") if len(s) > 80 else (s or "-"))
    return out


def sum_or_none(s: pd.Series) -> float | None:
    """The sum of the numeric values, None when there are none."""
    s = pd.to_numeric(s, errors="coerce").dropna()
    return float(s.sum()) if len(s) else None


def mean_or_none(s: pd.Series) -> float | None:
    """The mean of the numeric values, None when there are none."""
    s = pd.to_numeric(s, errors="coerce").dropna()
    return float(s.mean()) if len(s) else None


@dataclass
class MIChoice:
    """Which MI scorer the cell table uses for each task, and why."""

    scorer_by_task: dict[str, int | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def pooled_mi_rows(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The error-free pooled MI estimates (group_id '') of the store."""
    mi = frames["mi_estimates"]
    return mi[(mi["group_id"] == "") & mi["error"].isna() & mi["bits"].notna()]


def choose_mi_scorers(mi: pd.DataFrame, cells: pd.DataFrame, infos: dict[int, ModelInfo]) -> MIChoice:
    """Per task, one common scorer for every compressor when one exists (a proxy preferred), else None (each
    compressor's own estimate, self-scored first)."""
    ch = MIChoice()
    comp_cells = cells[cells["compressor_model_id"].notna()]
    for task, g in comp_cells.groupby("task"):
        comps = {int(c) for c in g["compressor_model_id"]}
        m = mi[(mi["task"] == task) & mi["compressor_model_id"].isin(list(comps))]
        if m.empty:
            ch.scorer_by_task[str(task)] = None
            continue
        sets = [set(m.loc[m["compressor_model_id"] == c, "scorer_model_id"].astype(int)) for c in comps]
        common = set.intersection(*sets)
        proxies = sorted(s for s in common if s not in comps)
        pick = proxies[0] if proxies else (min(common) if common else None)
        ch.scorer_by_task[str(task)] = pick
        if pick is not None and (len(comps) > 1 or pick not in comps):
            nm = infos[pick].name if pick in infos else str(pick)
            kind = "a common proxy" if pick not in comps else "a scorer common to all compressors"
            ch.notes.append(f"{task}: MI in the cell table is scored by {nm}, {kind}")
        elif len(comps) > 1:
            ch.notes.append(
                f"{task}: no scorer is common to all compressors; each row uses its compressor's own (self) estimate "
                "where there is one, so the MI values are scored by different models (see MI scorer)"
            )
    return ch


def pick_mi(mi: pd.DataFrame, cell: pd.Series, scorer: int | None) -> pd.Series | None:
    """The pooled MI row for a cell's compressor and task (by `scorer` when given): the cell's own run first, then
    self-scored, the cell's knob hash, conditional mode, the newest; None when there is none."""
    m = mi[(mi["task"] == cell["task"]) & (mi["compressor_model_id"] == cell["compressor_model_id"])]
    if m.empty:
        return None
    if scorer is not None:
        m = m[m["scorer_model_id"] == scorer]
        if m.empty:
            return None
    knobs = json.loads(cell["knobs_json"]) if isinstance(cell["knobs_json"], str) and cell["knobs_json"] else {}
    kh = knobs.get("knob_hash") if isinstance(knobs, dict) else None
    m = m.assign(
        _run=(m["run_id"] == cell["run_id"]).astype(int),
        _self=(m["scorer_model_id"] == cell["compressor_model_id"]).astype(int),
        _kh=(m["knob_hash"] == (kh or "")).astype(int),
        _cond=(m["mode"] == "conditional").astype(int),
    )
    m = m.sort_values(["_run", "_self", "_kh", "_cond", "mi_id"], ascending=False)
    return m.iloc[0]


# ----------------------------------------------------------------------------- THE cell summariser

USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "seconds", "flops", "dollars", "cached")

# What `summarize_cell` reads: one row per sample of one cell (a column that is missing counts as absent).
#   status: "ok" (a verdict in `correct`), "value" (a score without a right answer, e.g. bits per byte, in
#   `value`) or "error" (with error_stage "compress", "predict" or "score"); metric and flags_json (JSON list)
#   of the counted score; compression_id / compression_error / summary_tokens / context_tokens of the
#   compression the predictor read; compression_truncated / prediction_truncated (overflow: truncate);
#   pred_* and comp_* usage (USAGE_FIELDS) of the prediction call and of the compression call; run_id (the cell's
#   run) and comp_run_id (the run that made the compression: one made by another run is reused, so free now).
SAMPLE_COLUMNS = (
    "sample_id", "run_id", "comp_run_id", "status", "error_stage", "metric", "correct", "value", "flags_json",
    "compression_id", "compression_error", "summary_tokens", "context_tokens", "compression_truncated",
    "prediction_truncated",
    *(f"{pre}{k}" for pre in ("pred_", "comp_") for k in USAGE_FIELDS),
)  # fmt: skip


def _value_summary(v: pd.DataFrame) -> dict[str, Any]:
    """n, metric name(s), mean and Student-t 95% interval of scores without a verdict (e.g. bits per byte)."""
    x = pd.to_numeric(v["value"], errors="coerce").dropna().to_numpy(float)
    out: dict[str, Any] = {"n_value": int(x.size), "value_metric": None, "value_mean": None}
    out |= {"value_lo": None, "value_hi": None}
    if x.size == 0:
        return out
    out["value_metric"] = ",".join(sorted(v["metric"].dropna().unique()))
    out["value_mean"], out["value_lo"], out["value_hi"] = mean_with_ci(list(x))
    return out


def _flag_count(flags_json: pd.Series, flag: str) -> int:
    """How many rows' flags (a JSON list, or a list) hold `flag`."""
    n = 0
    for f in flags_json:
        if isinstance(f, str) and f:
            f = json.loads(f)
        n += isinstance(f, (list, tuple)) and flag in f
    return n


def _true(s: pd.Series) -> pd.Series:
    return s.astype("boolean").fillna(False).astype(bool)


def summarize_cell(rows: pd.DataFrame) -> dict[str, Any]:
    """One cell's numbers from its sample rows (`SAMPLE_COLUMNS`).

    samples: rows; errors: rows with status "error" (per stage in errors_<stage>), never counted as wrong;
    answered = samples − errors; n: answered rows with a verdict, correct of them, accuracy with its Wilson 95%
    CI (acc_lo, acc_hi); scored = n + n_value (scores without a verdict: value_mean with its t CI);
    unparseable: scored answers flagged unparseable (scored wrong); truncated: rows whose compression or
    prediction prompt was cut; summary_tokens and token_ratio (`metrics.token_ratio` per row): means over rows
    that read an error-free compression; usage: per role sums (prompt/completion tokens, calls, cached calls,
    seconds_actual without cache hits), each compression counted once, and totals: tokens, seconds, FLOPs and
    dollars as if uncached and actual (seconds_actual, flops_actual, dollars_actual: cache hits and compressions
    made by another run than the cell's are free); None where no usage is known.
    """
    p = rows.reindex(columns=list(dict.fromkeys([*rows.columns, *SAMPLE_COLUMNS])))
    ok = p[p["status"] == "ok"]
    correct = [bool(x) for x in ok["correct"]]
    acc = accuracy_with_ci(correct) if correct else (None, None, None)
    err = p[p["status"] == "error"]
    scored = p[p["status"].isin(["ok", "value"])]
    withc = p[p["compression_id"].notna() & p["compression_error"].isna() & p["summary_tokens"].notna()]
    ratio = withc[pd.to_numeric(withc["context_tokens"], errors="coerce").fillna(0) > 0]
    ratios = [token_ratio(int(s), int(c)) for s, c in zip(ratio["summary_tokens"], ratio["context_tokens"],
                                                          strict=True)]
    comps = p.dropna(subset=["compression_id"]).drop_duplicates("compression_id")
    # a compression made by another run was read from the store: this run spent nothing on it
    reused = comps["comp_run_id"].notna() & comps["run_id"].notna() & (comps["comp_run_id"] != comps["run_id"])
    reused &= comps["comp_prompt_tokens"].notna()  # only a compression with a usage row has a cost to waive
    comps = comps.assign(comp_cached=_true(comps["comp_cached"]) | reused)
    out: dict[str, Any] = {
        "samples": len(p),
        "n": len(ok),
        "scored": len(scored),
        "answered": len(p) - len(err),
        "correct": int(sum(correct)),
        "accuracy": acc[0],
        "acc_lo": acc[1],
        "acc_hi": acc[2],
        "errors": len(err),
        **{f"errors_{s}": int((err["error_stage"] == s).sum()) for s in ERROR_STAGES},
        "unparseable": _flag_count(scored["flags_json"], "unparseable"),
        "truncated": int((_true(p["compression_truncated"]) | _true(p["prediction_truncated"])).sum()),
        "metric": ",".join(sorted(ok["metric"].dropna().unique())) or "-",
        **_value_summary(p[p["status"] == "value"]),
        "summary_tokens": mean_or_none(withc["summary_tokens"]),
        "token_ratio": float(np.mean(ratios)) if ratios else None,
    }
    for pre, d in (("pred_", p), ("comp_", comps)):
        cached = _true(d[f"{pre}cached"])
        out[f"{pre}calls"] = int(d[f"{pre}prompt_tokens"].notna().sum())
        out[f"{pre}cached"] = int(cached.sum())
        out[f"{pre}prompt_tokens"] = sum_or_none(d[f"{pre}prompt_tokens"])
        out[f"{pre}completion_tokens"] = sum_or_none(d[f"{pre}completion_tokens"])
        out[f"{pre}seconds_actual"] = sum_or_none(d[f"{pre}seconds"].where(~cached))
    out["usage_rows"] = out["pred_calls"] + out["comp_calls"]
    out["cached_calls"] = out["pred_cached"] + out["comp_cached"]
    out |= {k: None for k in ("tokens", "seconds", "flops", "dollars", "flops_actual", "dollars_actual")}
    out["seconds_actual"] = None
    if out["usage_rows"]:
        out["seconds"] = (sum_or_none(p["pred_seconds"]) or 0.0) + (sum_or_none(comps["comp_seconds"]) or 0.0)
        out["seconds_actual"] = (out["pred_seconds_actual"] or 0.0) + (out["comp_seconds_actual"] or 0.0)
        for k in ("flops", "dollars"):
            a, b = sum_or_none(p[f"pred_{k}"]), sum_or_none(comps[f"comp_{k}"])
            out[k] = None if a is None and b is None else (a or 0.0) + (b or 0.0)
            # actual cost: cache hits are free (usage rows keep each call's cost as if uncached)
            a = sum_or_none(p[f"pred_{k}"].where(~_true(p["pred_cached"])))
            b = sum_or_none(comps[f"comp_{k}"].where(~_true(comps["comp_cached"])))
            out[f"{k}_actual"] = None if out[k] is None else (a or 0.0) + (b or 0.0)
        toks = [out[f"{r}_{k}_tokens"] for r in ("comp", "pred") for k in ("prompt", "completion")]
        out["tokens"] = sum(t for t in toks if t is not None)
    return out


def mi_fields(m: pd.Series | None, compressor_model_id: Any, infos: dict[int, ModelInfo]) -> dict[str, Any]:
    """A cell's MI columns from its chosen pooled MI row (`pick_mi`); {} when it has none."""
    if m is None:
        return {}
    sc = int(m["scorer_model_id"])

    def num(k: str) -> float | None:
        return None if is_null(m[k]) else float(m[k])

    return {
        "mi_bits": float(m["bits"]),
        "mi_lo": num("ci_lo"),
        "mi_hi": num("ci_hi"),
        "mi_mc_se": mi_mc_se(m["detail_json"]),
        "bits_per_token": num("bits_per_token"),
        "saturated_fraction": num("saturated_fraction"),
        "mi_scorer": "self" if sc == compressor_model_id else (infos[sc].name if sc in infos else str(sc)),
        "mi_mode": m["mode"],
        "mi_run": m["run_id"],
        "mi_id": int(m["mi_id"]),
    }


def cell_frame(
    frames: dict[str, pd.DataFrame], run_id: str | None = None, infos: dict[int, ModelInfo] | None = None,
    metric: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, MIChoice]:
    """(one row per cell with its numbers, the prediction frame, the MI scorer choice), from the store's frames
    (`harness.results.load`); the numbers are `summarize_cell` of each cell's `sample_status` rows (scores by
    `metric` where stored, see `prediction_frame`)."""
    infos = infos if infos is not None else model_infos(frames["models"])
    cells = frames["cells"]
    if run_id is not None:
        cells = cells[cells["run_id"] == run_id]
    cells = cells.sort_values(["task", "arm", "cell_id"]).reset_index(drop=True)
    preds = prediction_frame(frames, cells["cell_id"], metric)
    mi = pooled_mi_rows(frames)
    choice = choose_mi_scorers(mi, cells, infos)
    knobs = knob_summaries(cells["knobs_json"]) if len(cells) else []
    rows = []
    for i, cell in cells.iterrows():
        comp_id = cell["compressor_model_id"]
        comp = None if is_null(comp_id) else infos.get(int(comp_id))
        pred = infos.get(int(cell["predictor_model_id"]))
        row: dict[str, Any] = {
            "cell_id": cell["cell_id"],
            "run_id": cell["run_id"],
            "task": cell["task"],
            "arm": cell["arm"],
            "compressor_model_id": None if comp is None else comp.model_id,
            "compressor": "-" if comp is None else comp.name,
            "compressor_family": None if comp is None else comp.family,
            "compressor_params": None if comp is None else comp.params,
            "predictor_model_id": int(cell["predictor_model_id"]),
            "predictor": pred.name if pred else str(cell["predictor_model_id"]),
            "predictor_family": pred.family if pred else None,
            "predictor_params": pred.params if pred else None,
            "knobs": knobs[i],
        }
        row |= summarize_cell(sample_status(frames, cell, preds[preds["cell_id"] == cell["cell_id"]]))
        if comp is not None:
            row |= mi_fields(pick_mi(mi, cell, choice.scorer_by_task.get(str(cell["task"]))), comp_id, infos)
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in CELL_COLUMNS:
        if c not in df.columns:
            df[c] = pd.Series(dtype=object) if df.empty else None
    return df[list(CELL_COLUMNS)], preds, choice


def load_cells(url: str | Path, run_id: str | None = None, metric: str | None = None) -> pd.DataFrame:
    """The cell table of the store at `url` (one row per cell, the columns of `CELL_COLUMNS`), `run_id`'s only;
    accuracy by `metric` where stored (see `prediction_frame`)."""
    from harness.results import load

    return cell_frame(load(url), run_id, metric=metric)[0]


# every column of the cell table, in order (those a store without MI, or without cells, would otherwise lack); the
# counts added with the one summariser (samples, scored, answered, unparseable, truncated, per-role calls) come last
CELL_COLUMNS = (
    "cell_id", "run_id", "task", "arm", "compressor_model_id", "compressor", "compressor_family", "compressor_params",
    "predictor_model_id", "predictor", "predictor_family", "predictor_params", "knobs", "n", "correct", "accuracy",
    "acc_lo", "acc_hi", "errors", *(f"errors_{s}" for s in ERROR_STAGES), "metric", "n_value", "value_metric",
    "value_mean", "value_lo", "value_hi", "summary_tokens", "token_ratio", "usage_rows", "comp_prompt_tokens",
    "comp_completion_tokens", "pred_prompt_tokens", "pred_completion_tokens", "seconds", "flops", "dollars",
    "flops_actual", "dollars_actual", "cached_calls", "tokens", "mi_bits", "mi_lo", "mi_hi", "mi_mc_se",
    "bits_per_token", "saturated_fraction", "mi_scorer", "mi_mode", "mi_run", "mi_id",
    "samples", "scored", "answered", "unparseable", "truncated", "pred_calls", "pred_cached", "pred_seconds_actual",
    "comp_calls", "comp_cached", "comp_seconds_actual", "seconds_actual",
)  # fmt: skip


def mi_mc_se(detail_json: Any) -> float | None:
    """The Monte Carlo standard error stored in an MI row's detail_json (None for rows from before it was stored)."""
    if not isinstance(detail_json, str) or not detail_json:
        return None
    d = json.loads(detail_json)
    v = d.get("mc_se_bits") if isinstance(d, dict) else None
    return None if v is None else float(v)



def pooled_points(cells: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Cells pooled by `by`: correct/n summed (accuracy and Wilson CI recomputed), MI of the largest cell."""
    carried = ["compressor", "predictor", "compressor_family", "compressor_params", "predictor_params", "mi_bits",
               "mi_lo", "mi_hi", "bits_per_token", "mi_scorer", "mi_id", "summary_tokens"]  # fmt: skip
    rows = []
    for key, g in cells.groupby(by, dropna=False, sort=True):
        n, k = int(g["n"].sum()), int(g["correct"].sum())
        if n == 0:
            continue
        acc = accuracy_with_ci([True] * k + [False] * (n - k))
        big = g.sort_values("n", ascending=False)
        mi = big[big["mi_bits"].notna()]
        first = mi.iloc[0] if len(mi) else big.iloc[0]
        row = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        row |= {"n": n, "correct": k, "accuracy": acc[0], "acc_lo": acc[1], "acc_hi": acc[2], "cells": len(g)}
        row |= {c: first[c] for c in carried}
        rows.append(row)
    cols = [*by, "n", "correct", "accuracy", "acc_lo", "acc_hi", "cells", *(c for c in carried if c not in by)]
    return pd.DataFrame(rows, columns=cols)


def factor_data(preds: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Per scored prediction of a compressor cell: correct (0/1), compressor family, log2 sizes, cluster id."""
    c = cells[cells["compressor_model_id"].notna()][
        ["cell_id", "task", "compressor_family", "compressor_params", "predictor_params", "predictor"]
    ]
    p = preds[preds["status"] == "ok"][["cell_id", "sample_id", "correct"]].merge(c, on="cell_id")
    return pd.DataFrame(
        {
            "correct": p["correct"].astype(bool).astype(int),
            "compressor_family": p["compressor_family"].astype(str),
            "log2_compressor_params": np.log2(pd.to_numeric(p["compressor_params"], errors="coerce").astype(float)),
            "log2_predictor_params": np.log2(pd.to_numeric(p["predictor_params"], errors="coerce").astype(float)),
            "task": p["task"].astype(str),
            "sample": p["task"].astype(str) + "/" + p["sample_id"].astype(str),
        }
    )



def short_name(name: Any) -> str:
    """A model's short name for labels: the last path part, without ".gguf" ("gguf/smollm2-135m" → "smollm2-135m")."""
    return "-" if is_null(name) or name == "-" else _base(str(name))


def cell_labels(cells: pd.DataFrame) -> list[str]:
    """Short readable labels for the cells, unique within the table: "smollm2-135m → qwen2.5-coder-0.5b" or
    "full-context → qwen2.5-coder-0.5b"; the task in front when there are several, then only where needed to tell
    cells apart: the knobs that differ, the run, a counter."""
    if cells.empty:
        return []
    multi_task = cells["task"].nunique() > 1
    base = []
    for r in cells.itertuples(index=False):
        pred = short_name(r.predictor)
        comp = short_name(r.compressor)
        if comp == "-":
            s = f"{r.arm} → {pred}"
        elif r.arm == "compressed":
            s = f"{comp} → {pred}"
        else:
            s = f"{r.arm} {comp} → {pred}"
        base.append(f"{r.task}: {s}" if multi_task else s)
    knobs = list(cells["knobs"]) if "knobs" in cells.columns else ["-"] * len(cells)
    runs = [str(x) for x in cells["run_id"]]
    out = list(base)
    for extra in (lambda i: "" if knobs[i] in ("-", None) else f" ({knobs[i]})", lambda i: f" @{runs[i][-6:]}"):
        seen = pd.Series(out).value_counts()
        out = [s + extra(i) if seen[s] > 1 else s for i, s in enumerate(out)]
    seen = pd.Series(out).value_counts()
    count: dict[str, int] = {}
    for i, s in enumerate(out):
        if seen[s] > 1:
            count[s] = count.get(s, 0) + 1
            out[i] = f"{s} #{count[s]}"
    return out
