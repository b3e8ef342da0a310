"""`harness report STORE`: a markdown report with plots, computed from the results store's rows only.

Sections: models and sizes, one row per cell (accuracy with Wilson 95% CI, errors, summary tokens, token_ratio, MI,
cost), MI estimates, scaling plots, rate–distortion fits, correlation of MI with accuracy, factor importance.
A section that cannot be computed says why. `cell_frame` and `prediction_frame` are shared with `compare`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.analyze import stats
from harness.errors import UserError
from harness.metrics import accuracy_with_ci

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


def fmt_params(p: float | None) -> str:
    if p is None:
        return "-"
    return f"{p / 1e9:.3g}B" if p >= 1e9 else f"{p / 1e6:.3g}M"


# ----------------------------------------------------------------------------- per-prediction and per-cell frames


def _isnull(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def prediction_frame(frames: dict[str, pd.DataFrame], cell_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per prediction (its counted score chosen), with status and usage.

    Score: the `judge` metric when present, else the first metric (by name) with a verdict, else the first with a
    value. status: "ok" (a verdict: `correct` is set), "value" (a metric without a right answer, e.g. bits per
    byte: only `value`), or "error" with error_stage "compress" (its compression errored), "predict" (the
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
    order = ["prediction_id", "_has", "_judge", "_val", "metric"]
    v = v.sort_values(order, ascending=[True, False, False, False, True])
    v = v.drop_duplicates("prediction_id", keep="first").drop(columns=["_has", "_val", "_judge"])
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
    return v.reset_index(drop=True)


def _linked_error_samples(frames: dict[str, pd.DataFrame], cell: pd.Series) -> dict[str, str]:
    """{sample_id: stage} of error rows tied to this cell that left no prediction row (e.g. an overflow)."""
    out: dict[str, str] = {}
    e = frames["errors"]
    e = e[(e["run_id"] == cell["run_id"]) & (e["sample_id"] != "") & e["stage"].isin([*ERROR_STAGES, "judge"])]
    has_comp = not _isnull(cell["compressor_model_id"])
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


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out |= _flatten(v, f"{prefix}{k}.")
        return out
    return {prefix[:-1]: json.dumps(d, sort_keys=True) if isinstance(d, (list, dict)) else d}


def knob_summaries(knobs_json: pd.Series) -> list[str]:
    """Per cell, the knobs that differ between the cells ("k=v, ..."), "-" when none differ."""
    flat = [_flatten(json.loads(k) if isinstance(k, str) and k else {}) for k in knobs_json]
    keys = sorted({k for f in flat for k in f})
    # knob_hash only identifies the compressions a cell reads; the arm and compressor columns already differ
    varying = [k for k in keys if k != "knob_hash" and len({json.dumps(f.get(k), default=str) for f in flat}) > 1]
    out = []
    for f in flat:
        s = ", ".join(f"{k}={f.get(k)}" for k in varying if k in f)
        out.append((s[:77] + "...") if len(s) > 80 else (s or "-"))
    return out


def _pair(actual: Any, uncached: Any) -> str:
    """"actual / as-if-uncached", or "-" when the cost is unknown."""
    u = _g(uncached)
    return "-" if u == "-" else f"{_g(actual)} / {u}"


def _sum_or_none(s: pd.Series) -> float | None:
    s = pd.to_numeric(s, errors="coerce").dropna()
    return float(s.sum()) if len(s) else None


def _mean_or_none(s: pd.Series) -> float | None:
    s = pd.to_numeric(s, errors="coerce").dropna()
    return float(s.mean()) if len(s) else None


@dataclass
class MIChoice:
    """Which MI scorer the cell table uses for each task, and why."""

    scorer_by_task: dict[str, int | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _mi_ok(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
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


def _pick_mi(mi: pd.DataFrame, cell: pd.Series, scorer: int | None) -> pd.Series | None:
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


def _value_summary(v: pd.DataFrame) -> dict[str, Any]:
    """n, metric name(s), mean and Student-t 95% interval of scores without a verdict (e.g. bits per byte)."""
    x = pd.to_numeric(v["value"], errors="coerce").dropna().to_numpy(float)
    out: dict[str, Any] = {"n_value": int(x.size), "value_metric": None, "value_mean": None}
    out |= {"value_lo": None, "value_hi": None}
    if x.size == 0:
        return out
    out["value_metric"] = ",".join(sorted(v["metric"].dropna().unique()))
    out["value_mean"] = float(x.mean())
    if x.size > 1:
        from scipy import stats as st

        half = float(st.t.ppf(0.975, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
        out["value_lo"], out["value_hi"] = out["value_mean"] - half, out["value_mean"] + half
    return out


def cell_frame(
    frames: dict[str, pd.DataFrame], run_id: str | None = None, infos: dict[int, ModelInfo] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, MIChoice]:
    """(one row per cell with its numbers, the prediction frame, the MI scorer choice)."""
    infos = infos if infos is not None else model_infos(frames["models"])
    cells = frames["cells"]
    if run_id is not None:
        cells = cells[cells["run_id"] == run_id]
    cells = cells.sort_values(["task", "arm", "cell_id"]).reset_index(drop=True)
    preds = prediction_frame(frames, cells["cell_id"])
    mi = _mi_ok(frames)
    choice = choose_mi_scorers(mi, cells, infos)
    knobs = knob_summaries(cells["knobs_json"]) if len(cells) else []
    rows = []
    for i, cell in cells.iterrows():
        p = preds[preds["cell_id"] == cell["cell_id"]]
        allp = sample_status(frames, cell, p)
        ok = p[p["status"] == "ok"]
        correct = [bool(x) for x in ok["correct"]]
        acc = accuracy_with_ci(correct) if correct else (None, None, None)
        err = allp[allp["status"] == "error"]
        comp_id = cell["compressor_model_id"]
        comp = None if _isnull(comp_id) else infos.get(int(comp_id))
        pred = infos.get(int(cell["predictor_model_id"]))
        withc = p[p["compression_id"].notna() & p["compression_error"].isna() & p["summary_tokens"].notna()]
        ratio = withc[withc["context_tokens"].fillna(0) > 0]
        comps = p.dropna(subset=["compression_id"]).drop_duplicates("compression_id")
        usage_rows = int(p["pred_prompt_tokens"].notna().sum() + comps["comp_prompt_tokens"].notna().sum())
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
            "n": len(ok),
            "correct": int(sum(correct)),
            "accuracy": acc[0],
            "acc_lo": acc[1],
            "acc_hi": acc[2],
            "errors": len(err),
            **{f"errors_{s}": int((err["error_stage"] == s).sum()) for s in ERROR_STAGES},
            "metric": ",".join(sorted(ok["metric"].dropna().unique())) or "-",
            **_value_summary(p[p["status"] == "value"]),
            "summary_tokens": _mean_or_none(withc["summary_tokens"]),
            "token_ratio": _mean_or_none(ratio["summary_tokens"] / ratio["context_tokens"]),
            "usage_rows": usage_rows,
            "comp_prompt_tokens": _sum_or_none(comps["comp_prompt_tokens"]),
            "comp_completion_tokens": _sum_or_none(comps["comp_completion_tokens"]),
            "pred_prompt_tokens": _sum_or_none(p["pred_prompt_tokens"]),
            "pred_completion_tokens": _sum_or_none(p["pred_completion_tokens"]),
            "seconds": None,
            "flops": None,
            "dollars": None,
            "flops_actual": None,
            "dollars_actual": None,
            "cached_calls": int(
                p["pred_cached"].fillna(False).astype(bool).sum()
                + comps["comp_cached"].fillna(False).astype(bool).sum()
            ),
        }
        if usage_rows:
            row["seconds"] = (_sum_or_none(p["pred_seconds"]) or 0.0) + (_sum_or_none(comps["comp_seconds"]) or 0.0)
            for k in ("flops", "dollars"):
                a, b = _sum_or_none(p[f"pred_{k}"]), _sum_or_none(comps[f"comp_{k}"])
                row[k] = None if a is None and b is None else (a or 0.0) + (b or 0.0)
                # actual cost: cache hits are free (usage rows keep each call's cost as if uncached)
                a = _sum_or_none(p[f"pred_{k}"].where(~p["pred_cached"].fillna(False).astype(bool)))
                b = _sum_or_none(comps[f"comp_{k}"].where(~comps["comp_cached"].fillna(False).astype(bool)))
                row[f"{k}_actual"] = None if row[k] is None else (a or 0.0) + (b or 0.0)
            toks = [
                row[k]
                for k in (
                    "comp_prompt_tokens",
                    "comp_completion_tokens",
                    "pred_prompt_tokens",
                    "pred_completion_tokens",
                )
            ]
            row["tokens"] = sum(t for t in toks if t is not None)
        else:
            row["tokens"] = None
        m = None if comp is None else _pick_mi(mi, cell, choice.scorer_by_task.get(str(cell["task"])))
        if m is not None:
            sc = int(m["scorer_model_id"])
            row |= {
                "mi_bits": float(m["bits"]),
                "mi_lo": None if _isnull(m["ci_lo"]) else float(m["ci_lo"]),
                "mi_hi": None if _isnull(m["ci_hi"]) else float(m["ci_hi"]),
                "mi_mc_se": mi_mc_se(m["detail_json"]),
                "bits_per_token": None if _isnull(m["bits_per_token"]) else float(m["bits_per_token"]),
                "saturated_fraction": None if _isnull(m["saturated_fraction"]) else float(m["saturated_fraction"]),
                "mi_scorer": "self" if sc == comp_id else (infos[sc].name if sc in infos else str(sc)),
                "mi_mode": m["mode"],
                "mi_run": m["run_id"],
                "mi_id": int(m["mi_id"]),
            }
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in CELL_COLUMNS:
        if c not in df.columns:
            df[c] = pd.Series(dtype=object) if df.empty else None
    return df, preds, choice


# every column of the cell table (those a store without MI, or without cells, would otherwise lack)
CELL_COLUMNS = (
    "cell_id", "run_id", "task", "arm", "compressor_model_id", "compressor", "compressor_family", "compressor_params",
    "predictor_model_id", "predictor", "predictor_family", "predictor_params", "knobs", "n", "correct", "accuracy",
    "acc_lo", "acc_hi", "errors", *(f"errors_{s}" for s in ERROR_STAGES), "metric", "n_value", "value_metric",
    "value_mean", "value_lo", "value_hi", "summary_tokens", "token_ratio",
    "usage_rows", "tokens", "mi_bits", "mi_lo", "mi_hi", "mi_mc_se", "bits_per_token", "saturated_fraction",
    "mi_scorer", "mi_mode", "mi_run", "mi_id",
)  # fmt: skip


# ----------------------------------------------------------------------------- formatting


def _f(x: Any, spec: str = ".3f") -> str:
    if _isnull(x):
        return "-"
    return format(x, spec)


def _g(x: Any) -> str:
    if _isnull(x):
        return "-"
    x = float(x)
    if x.is_integer() and abs(x) < 1e9:
        return f"{x:.0f}"
    return f"{x:.3g}" if abs(x) < 1e5 else f"{x:.3e}"


def _acc_str(r: pd.Series | dict[str, Any]) -> str:
    if _isnull(r["accuracy"]):
        return "-"
    return f"{r['accuracy']:.3f} [{r['acc_lo']:.2f}, {r['acc_hi']:.2f}]"


def mi_mc_se(detail_json: Any) -> float | None:
    """The Monte Carlo standard error stored in an MI row's detail_json (None for rows from before it was stored)."""
    if not isinstance(detail_json, str) or not detail_json:
        return None
    d = json.loads(detail_json)
    v = d.get("mc_se_bits") if isinstance(d, dict) else None
    return None if v is None else float(v)


def _mi_bits_str(bits: float, mc_se: Any, lo: Any, hi: Any) -> str:
    """ "2.51 ±0.02 MC [pop 2.25, 2.77]": MC standard error given the contexts, population interval over them."""
    mc = "" if _isnull(mc_se) else f" ±{mc_se:.2f} MC"
    ci = f" [pop {lo:.2f}, {hi:.2f}]" if not _isnull(lo) and not _isnull(hi) else ""
    return f"{bits:.2f}{mc}{ci}"


def _mi_str(r: pd.Series | dict[str, Any]) -> str:
    if _isnull(r["mi_bits"]):
        return "-"
    return _mi_bits_str(r["mi_bits"], r.get("mi_mc_se"), r["mi_lo"], r["mi_hi"])


def md_table(head: list[str], rows: list[list[str]]) -> str:
    """A markdown table (pipes in cells escaped)."""
    esc = [[str(c).replace("|", "\\|") for c in r] for r in rows]
    return "\n".join(
        ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in esc)]
    )


def _p(p: float) -> str:
    if _isnull(p):
        return "-"
    if p == 0:
        return "0"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


# ----------------------------------------------------------------------------- plots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


Series = dict[str, list[tuple[float, float, float | None, float | None]]]


def _line_plot(path: Path, series: Series, xlabel: str, ylabel: str, title: str, logx: bool = True) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for label, pts in sorted(series.items()):
        pts = sorted(pts)
        x = np.array([p[0] for p in pts])
        y = np.array([p[1] for p in pts])
        lo = np.array([np.nan if p[2] is None else p[2] for p in pts])
        hi = np.array([np.nan if p[3] is None else p[3] for p in pts])
        if np.isfinite(lo).all() and np.isfinite(hi).all():
            ax.errorbar(x, y, yerr=[np.maximum(y - lo, 0), np.maximum(hi - y, 0)], marker="o", capsize=3, label=label)
        else:
            ax.plot(x, y, marker="o", label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", s.lower()).strip("-")[:60] or "x"


# ----------------------------------------------------------------------------- report


def pooled_points(cells: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Cells pooled by `by`: correct/n summed (accuracy and Wilson CI recomputed), MI of the largest cell."""
    carried = ["compressor", "predictor", "compressor_family", "compressor_params", "predictor_params", "mi_bits",
               "mi_lo", "mi_hi", "bits_per_token", "mi_scorer"]  # fmt: skip
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


@dataclass
class Report:
    """What `build_report` wrote: the markdown path, the folder, the cell table and the plot files."""

    path: Path
    folder: Path
    cells: pd.DataFrame
    plots: list[Path] = field(default_factory=list)


def default_out_dir(url: str | Path) -> Path:
    """`results/report-<store stem>` (for a PostgreSQL URL, the database name)."""
    s = str(url)
    if "://" in s and not s.startswith("sqlite:"):
        stem = s.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "store"
    else:
        stem = Path(s.removeprefix("sqlite:///")).stem
    return Path("results") / f"report-{_slug(stem)}"


def build_report(
    url: str | Path, out: str | Path | None = None, run_id: str | None = None, n_boot: int = 1000, seed: int = 0
) -> Report:
    """Write `<out>/report.md`, `<out>/cells.csv` and PNG plots for the store at `url`; returns what it wrote."""
    from harness.results import load
    from harness.store.redact import redact_url

    frames = load(url)
    if run_id is not None and not (frames["runs"]["run_id"] == run_id).any():
        known = ", ".join(frames["runs"]["run_id"].astype(str).head(5))
        raise UserError(f"--run {run_id}: no such run in the store (runs: {known or 'none'})")
    folder = Path(out) if out is not None else default_out_dir(url)
    folder.mkdir(parents=True, exist_ok=True)
    infos = model_infos(frames["models"])
    cells, preds, choice = cell_frame(frames, run_id, infos)
    cells.to_csv(folder / "cells.csv", index=False)
    rep = Report(folder / "report.md", folder, cells)
    runs = frames["runs"]
    if run_id is not None:
        runs = runs[runs["run_id"] == run_id]
    L: list[str] = [f"# Report: {redact_url(str(url))}", ""]
    L.append(
        f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} from the store's rows"
        f"{f' (run {run_id} only)' if run_id else ''}: {len(runs)} run(s), {len(cells)} cell(s), "
        f"{len(preds)} prediction(s)."
    )
    L.append("")
    if len(runs):
        L.append(
            md_table(
                ["run", "name", "status", "started"],
                [[r.run_id, r.name or "-", r.status, str(r.started_at)[:19]] for r in runs.itertuples()],
            )
        )
        L.append("")
    L += _models_section(cells, infos)
    L += _cells_section(cells, choice)
    L += _mi_section(frames, cells, infos)
    if cells.empty:
        L += ["## Analysis", "", "No cells in the store: nothing to analyse.", ""]
    else:
        comp_cells = cells[cells["compressor_model_id"].notna()]
        multi_task = cells["task"].nunique() > 1
        L += _scaling_section(folder, cells, comp_cells, multi_task, rep)
        L += _rd_section(folder, comp_cells, rep, n_boot, seed)
        L += _corr_section(comp_cells)
        L += _factor_section(preds, cells)
    L += [
        "## Files",
        "",
        "- `cells.csv`: the cell table with full-precision numbers",
        *(f"- `{p.name}`" for p in rep.plots),
        "",
    ]
    rep.path.write_text("\n".join(L))
    return rep


def _models_section(cells: pd.DataFrame, infos: dict[int, ModelInfo]) -> list[str]:
    used = {int(x) for x in cells["compressor_model_id"].dropna()} | {
        int(x) for x in cells.get("predictor_model_id", [])
    }
    rows = []
    for mid in sorted(used):
        i = infos.get(mid)
        if i is None:
            continue
        roles = []
        if (cells["compressor_model_id"] == mid).any():
            roles.append("compressor")
        if (cells["predictor_model_id"] == mid).any():
            roles.append("predictor")
        src = {"meta": "models.meta_json", "name": "parsed from the name"}.get(i.size_source, "unknown")
        rows.append([str(mid), i.name, "/".join(roles), i.family, fmt_params(i.params), src])
    if not rows:
        return []
    return ["## Models", "", md_table(["id", "name", "role", "family", "params", "size from"], rows), ""]


def _cells_section(cells: pd.DataFrame, choice: MIChoice) -> list[str]:
    L = ["## Cells", ""]
    if cells.empty:
        return [*L, "No cells.", ""]
    head = [
        "cell",
        "task",
        "arm",
        "compressor",
        "predictor",
        "knobs",
        "n",
        "accuracy [95% CI]",
        "errors",
        "summary_tok",
        "token_ratio",
        "MI bits ±MC [pop 95% CI]",
        "bits/token",
        "MI scorer",
        "tokens",
        "seconds",
        "FLOPs actual / uncached",
        "$ actual / uncached",
    ]
    rows = []
    for _, r in cells.iterrows():
        scorer = "-"
        if not _isnull(r["mi_scorer"]):
            scorer = f"{r['mi_scorer']} ({r['mi_mode']})" + ("" if r["mi_run"] == r["run_id"] else f" †{r['mi_run']}")
        rows.append(
            [
                str(r["cell_id"]),
                str(r["task"]),
                str(r["arm"]),
                str(r["compressor"]),
                str(r["predictor"]),
                r["knobs"],
                str(r["n"]),
                _acc_str(r),
                str(r["errors"]),
                _f(r["summary_tokens"], ".1f"),
                _f(r["token_ratio"], ".3f"),
                _mi_str(r),
                _f(r["bits_per_token"], ".3f"),
                scorer,
                _g(r["tokens"]),
                _f(r["seconds"], ".1f"),
                _pair(r["flops_actual"], r["flops"]),
                _pair(r["dollars_actual"], r["dollars"]),
            ]
        )
    L += [md_table(head, rows), ""]
    notes = [
        "n counts scored predictions; accuracy is their share correct with a Wilson 95% interval. Errored "
        "compressions or predictions and missing scores are counted under errors, never as wrong answers.",
        "summary_tok and token_ratio (= summary tokens / context tokens) are means over the cell's compressions.",
        "MI is the pooled estimate (group_id '') for the cell's compressor and task, in bits with its 95% CI; "
        "† marks an estimate taken from another run.",
        "tokens (prompt + completion, compressor and predictor calls), seconds, FLOPs and $ are totals from usage "
        "rows of the cell's predictions and of the compressions they read; '-' where the store has none.",
    ]
    metrics = sorted({m for s in cells["metric"] for m in str(s).split(",") if m and m != "-"})
    if metrics:
        notes.append(f"metrics counted: {', '.join(metrics)} (a judge verdict, when stored, is the one counted)")
    notes += choice.notes
    L += [f"- {n}" for n in notes] + [""]
    val = cells[cells["n_value"].fillna(0) > 0]
    if len(val):
        L += ["### Metrics without a right answer", ""]
        rows = []
        for _, r in val.iterrows():
            ci = "" if _isnull(r["value_lo"]) else f" [{r['value_lo']:.3f}, {r['value_hi']:.3f}]"
            rows.append([str(r["cell_id"]), str(r["value_metric"]), str(r["n_value"]), f"{r['value_mean']:.3f}{ci}"])
        L += [md_table(["cell", "metric", "n", "mean [95% t CI]"], rows), ""]
        L += ["These scores (e.g. bits per byte of a reference continuation, lower is better) have no verdict, so "
              "they are not in n or accuracy above.", ""]  # fmt: skip
    bad = cells[cells["errors"] > 0]
    if len(bad):
        L += ["### Errors by stage", ""]
        L.append(
            md_table(
                ["cell", "errors", *ERROR_STAGES],
                [
                    [str(r["cell_id"]), str(r["errors"]), *(str(r[f"errors_{s}"]) for s in ERROR_STAGES)]
                    for _, r in bad.iterrows()
                ],
            )
        )
        L.append("")
    if cells["usage_rows"].sum() > 0:
        L += ["### Cost detail", ""]
        L.append(
            md_table(
                ["cell", "comp prompt", "comp completion", "pred prompt", "pred completion", "cached calls"],
                [
                    [
                        str(r["cell_id"]),
                        _g(r["comp_prompt_tokens"]),
                        _g(r["comp_completion_tokens"]),
                        _g(r["pred_prompt_tokens"]),
                        _g(r["pred_completion_tokens"]),
                        str(r["cached_calls"]),
                    ]
                    for _, r in cells.iterrows()
                ],
            )
        )
        L.append("")
    return L


def _mi_section(frames: dict[str, pd.DataFrame], cells: pd.DataFrame, infos: dict[int, ModelInfo]) -> list[str]:
    mi = frames["mi_estimates"]
    comps = {int(x) for x in cells["compressor_model_id"].dropna()}
    mi = mi[(mi["group_id"] == "") & mi["compressor_model_id"].isin(list(comps)) & mi["task"].isin(list(cells["task"]))]
    L = ["## MI estimates", ""]
    if mi.empty:
        return [*L, "No pooled MI estimates for these cells' compressors (run with an `mi:` section).", ""]
    rows = []
    for r in mi.sort_values(["task", "compressor_model_id", "scorer_model_id", "mode", "run_id"]).itertuples():
        c, s = int(r.compressor_model_id), int(r.scorer_model_id)
        mc = mi_mc_se(r.detail_json)
        bits = f"error: {r.error}" if not _isnull(r.error) else (
            _mi_bits_str(r.bits, mc, r.ci_lo, r.ci_hi) if not _isnull(r.bits) else "-")
        up = "-" if _isnull(r.upper_bits) else ("∞" if math.isinf(r.upper_bits) else f"{r.upper_bits:.2f}")
        rows.append(
            [
                str(r.task),
                infos[c].name if c in infos else str(c),
                "self" if s == c else (infos[s].name if s in infos else str(s)),
                str(r.mode),
                str(r.run_id),
                _f(r.n_contexts, ".0f"),
                _f(r.n_samples, ".0f"),
                bits,
                up,
                _f(r.bits_per_token, ".3f"),
                _f(r.saturated_fraction, ".2f"),
            ]
        )
    head = [
        "task",
        "compressor",
        "scorer",
        "mode",
        "run",
        "contexts",
        "M",
        "bits ±MC [pop 95% CI]",
        "upper",
        "bits/token",
        "saturated",
    ]
    return [*L, md_table(head, rows), ""]


def _scaling_section(
    folder: Path, cells: pd.DataFrame, comp_cells: pd.DataFrame, multi_task: bool, rep: Report
) -> list[str]:
    L = ["## Scaling", ""]
    if comp_cells.empty:
        L += ["No cells with a compressor: no compressor-size plots.", ""]
    else:
        per_pair = pooled_points(comp_cells, ["task", "compressor_model_id", "predictor_model_id"])
        # MI and bits/token belong to the compressor (and scorer), not the predictor: one point per compressor
        per_comp = pooled_points(comp_cells, ["task", "compressor_model_id"])
        for col, lo, hi, ylabel, fname in (
            ("accuracy", "acc_lo", "acc_hi", "accuracy", "scaling-accuracy.png"),
            ("mi_bits", "mi_lo", "mi_hi", "MI bits", "scaling-mi-bits.png"),
            ("bits_per_token", None, None, "bits per token", "scaling-bits-per-token.png"),
        ):
            per_pred = col == "accuracy"
            pts = per_pair if per_pred else per_comp
            L.append(f"### {ylabel} vs compressor size")
            L.append("")
            d = pts[pts["compressor_params"].notna() & pts[col].notna()]
            nx = d["compressor_params"].nunique()
            if nx < 2:
                unknown = int(pts["compressor_params"].isna().sum())
                why = f"{nx} compressor size(s) with {ylabel}" + (
                    f"; {unknown} point(s) of unknown size" if unknown else ""
                )
                L += [f"Skipped: too little data ({why}; need ≥ 2 sizes).", ""]
                continue
            series: Series = {}
            for _, r in d.iterrows():
                label = (
                    str(r["compressor_family"])
                    + (f" → {r['predictor']}" if per_pred else "")
                    + (f" [{r['task']}]" if multi_task else "")
                )
                series.setdefault(label, []).append(
                    (
                        float(r["compressor_params"]),
                        float(r[col]),
                        None if lo is None or _isnull(r[lo]) else float(r[lo]),
                        None if hi is None or _isnull(r[hi]) else float(r[hi]),
                    )
                )
            _line_plot(
                folder / fname,
                series,
                "compressor parameters",
                ylabel,
                f"{ylabel} vs compressor size (one line per compressor family"
                + (" → predictor)" if per_pred else ")"),
            )
            rep.plots.append(folder / fname)
            L += [f"![{ylabel} vs compressor size]({fname})", ""]
    L.append("### accuracy vs predictor size")
    L.append("")
    pts = pooled_points(cells, ["task", "arm", "compressor", "predictor_model_id"])
    d = pts[pts["predictor_params"].notna()]
    if d["predictor_params"].nunique() < 2:
        L += [f"Skipped: too little data ({d['predictor_params'].nunique()} predictor size(s); need ≥ 2).", ""]
        return L
    series = {}
    for _, r in d.iterrows():
        label = (
            f"{r['arm']}"
            + (f" ({r['compressor']})" if r["compressor"] != "-" else "")
            + (f" [{r['task']}]" if multi_task else "")
        )
        series.setdefault(label, []).append(
            (float(r["predictor_params"]), float(r["accuracy"]), float(r["acc_lo"]), float(r["acc_hi"]))
        )
    fname = "scaling-accuracy-predictor.png"
    _line_plot(folder / fname, series, "predictor parameters", "accuracy", "accuracy vs predictor size")
    rep.plots.append(folder / fname)
    return [*L, f"![accuracy vs predictor size]({fname})", ""]


def _rd_section(folder: Path, comp_cells: pd.DataFrame, rep: Report, n_boot: int, seed: int) -> list[str]:
    L = [
        "## Rate–distortion",
        "",
        "Per predictor: R = MI bits of the compressor (the cell table's scorer), D = 1 − accuracy, fitted as "
        f"D(R) = C·exp(−b·R) + D0 (least squares, bootstrap 95% intervals over points) when there are ≥ "
        f"{stats.MIN_RD_POINTS} distinct (R, D) points.",
        "",
    ]
    if comp_cells.empty:
        return [*L, "No cells with a compressor: no rate–distortion points.", ""]
    pts = pooled_points(comp_cells, ["task", "predictor_model_id", "compressor_model_id"])
    for (task, _pid), g in pts.groupby(["task", "predictor_model_id"], sort=True):
        name = str(g["predictor"].iloc[0])
        L.append(f"### {name} ({task})")
        L.append("")
        g = g[g["mi_bits"].notna()]
        if g.empty:
            L += ["not identifiable (0 points): no MI estimates for these compressors.", ""]
            continue
        r = g["mi_bits"].to_numpy(float)
        dist = 1.0 - g["accuracy"].to_numpy(float)
        fit = stats.fit_rate_distortion(r, dist, n_boot=n_boot, seed=seed)
        if not fit.identifiable:
            L.append(f"not identifiable ({fit.n_distinct} points; need ≥ {stats.MIN_RD_POINTS} distinct (R, D) points)")
        elif not fit.ok:
            L.append(f"fit failed: {fit.note}")
        else:
            ci = {k: f" [{v[0]:.3g}, {v[1]:.3g}]" for k, v in fit.ci.items()}
            L.append(
                f"C = {fit.C:.3g}{ci.get('C', '')}, b = {fit.b:.3g}{ci.get('b', '')} per bit, "
                f"D0 = {fit.D0:.3g}{ci.get('D0', '')} (n = {fit.n_points}, RMSE {fit.rmse:.3g}, "
                f"{fit.n_boot_ok}/{fit.n_boot} bootstrap fits converged){'; ' + fit.note if fit.note else ''}"
            )
        L.append("")
        L.append(
            md_table(
                ["compressor", "R (bits)", "D = 1 − acc", "n"],
                [
                    [str(x.compressor), f"{x.mi_bits:.3f}", f"{1 - x.accuracy:.3f}", str(x.n)]
                    for x in g.sort_values("mi_bits").itertuples()
                ],
            )
        )
        L.append("")
        plt = _plt()
        fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=110)
        ax.scatter(r, dist, zorder=3)
        for x, y, lab in zip(r, dist, g["compressor"], strict=True):
            ax.annotate(str(lab)[:24], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        if fit.ok:
            grid = np.linspace(0.0, max(float(r.max()) * 1.1, 1e-3), 200)
            ax.plot(grid, fit.predict(grid), label=f"C·exp(−bR)+D0, D0={fit.D0:.2f}")
            ax.legend(fontsize=7)
        else:
            ax.text(0.02, 0.03, "no fit: " + (fit.note or "failed"), transform=ax.transAxes, fontsize=7)
        ax.set_xlabel("rate R (MI bits)")
        ax.set_ylabel("distortion D = 1 − accuracy")
        ax.set_title(f"rate–distortion: {name} ({task})", fontsize=10)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fname = f"rd-{_slug(str(task))}-{_slug(name)}.png"
        fig.savefig(folder / fname)
        plt.close(fig)
        rep.plots.append(folder / fname)
        L += [f"![rate–distortion {name}]({fname})", ""]
    return L


def _corr_section(comp_cells: pd.DataFrame) -> list[str]:
    L = ["## MI and accuracy across compressors", ""]
    if comp_cells.empty:
        return [*L, "No cells with a compressor.", ""]
    pts = pooled_points(comp_cells, ["task", "predictor_model_id", "compressor_model_id"])
    groups: list[tuple[str, pd.DataFrame]] = []
    for task, g in pts.groupby("task", sort=True):
        if g["predictor_model_id"].nunique() > 1:
            groups.append((f"{task}, all predictors", g))
        for _pid, h in g.groupby("predictor_model_id", sort=True):
            groups.append((f"{task}, {h['predictor'].iloc[0]}", h))
    rows = []
    for label, g in groups:
        for col, xname in (("mi_bits", "MI bits"), ("bits_per_token", "bits/token")):
            c = stats.correlation(g[col].astype(float), g["accuracy"].astype(float))
            k = int((g[col].notna()).sum())
            if c is None:
                rows.append([label, xname, str(k), f"too few points ({k} < 3)", "-"])
            elif math.isnan(c.pearson_r):
                rows.append([label, xname, str(c.n), "undefined (x or accuracy is constant)", "-"])
            else:
                rows.append(
                    [
                        label,
                        xname,
                        str(c.n),
                        f"{_f(c.pearson_r, '.2f')} (p {_p(c.pearson_p)})",
                        f"{_f(c.spearman_rho, '.2f')} (p {_p(c.spearman_p)})",
                    ]
                )
    L += [md_table(["points", "x", "n", "Pearson r (p)", "Spearman ρ (p)"], rows), ""]
    L += [
        "One point per (compressor, predictor); accuracy pooled over that pair's cells. With several predictors "
        "the 'all predictors' row mixes them and repeats each compressor's MI, so its points are not independent. "
        f"With n ≤ {stats.EXACT_CORRELATION_MAX_N} points the p-values are exact two-sided permutation p-values "
        "(all n! pairings; with 3 points the smallest possible is 1/3); above that, scipy's asymptotic ones.",
        "",
    ]
    return L


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


def _factor_section(preds: pd.DataFrame, cells: pd.DataFrame) -> list[str]:
    L = ["## Factor importance", ""]
    d = factor_data(preds, cells)
    if d.empty:
        return [*L, "No scored predictions from cells with a compressor: no model.", ""]
    factors = ["compressor_family", "log2_compressor_params", "log2_predictor_params"]
    if d["task"].nunique() > 1:
        factors.append("task")
    notes: list[str] = []
    for f in ("log2_compressor_params", "log2_predictor_params"):
        k = int(d[f].isna().sum())
        if k == len(d):
            notes.append(f"{f}: no model size known, left out")
            factors.remove(f)
        elif k:
            notes.append(f"{f}: {k} predictions with an unknown size are left out of the model")
    if "log2_compressor_params" in factors:
        nc = stats.not_crossed(d, "compressor_family", "log2_compressor_params")
        if nc:
            seen = "; ".join(f"{fam}: {', '.join(fmt_params(2.0**v) for v in vs)}" for fam, vs in nc.items())
            notes.append(
                f"compressor family and size are confounded: no compressor size occurs in two families ({seen}). "
                "The family coefficient compares families only through the model's straight line in log2 size, "
                "and the size coefficient partly reflects family; read the two together."
            )
    res = stats.logistic_factors(d, "correct", factors, "sample")
    L.append(
        "Logistic regression of per-prediction correctness (compressor cells) on the factors below; 95% "
        "intervals from the cluster-robust covariance (clusters: samples); LR test: drop the factor and refit."
    )
    L.append("")
    notes += res.notes
    if res.ok:
        L.append(
            f"n = {res.n} predictions, {res.n_clusters} samples; factors: {', '.join(res.factors)}"
            f"{'' if res.robust else ' (intervals not cluster-robust)'}."
        )
        L.append("")
        L.append(
            md_table(
                ["term", "log-odds", "95% CI", "p"],
                [[c.term, f"{c.coef:.3f}", f"[{c.lo:.3f}, {c.hi:.3f}]", _p(c.p)] for c in res.coefs],
            )
        )
        L.append("")
        if res.lr_tests:
            L.append(
                md_table(
                    ["factor", "LR chi2", "df", "p"],
                    [[t.factor, f"{t.stat:.2f}", str(t.df), _p(t.p)] for t in res.lr_tests],
                )
            )
            L.append("")
    else:
        L += [f"No model fitted (n = {res.n}).", ""]
    if notes:
        L += ["Notes:", "", *(f"- {n}" for n in notes), ""]
    return L
