"""`harness compare STORE CELL_A CELL_B`: a paired comparison of two cells on matched samples.

Pairs match on sample id, and also on the compression when both cells read the same compressions (e.g. two
predictors of one compressor). A pair where either side has an error (compression, prediction, missing score) is
dropped and counted. Accuracy: difference A − B with a paired-bootstrap 95% CI and the exact McNemar p-value;
a metric without a verdict (e.g. bits per byte): mean difference with a paired-bootstrap CI; tokens, seconds,
FLOPs and dollars: mean per pair; MI: the cells' pooled estimates and, when both MI rows were scored by one scorer
and store per-context terms, a paired test of the MI difference over the contexts both share (`paired_mi`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.analyze import stats
from harness.analyze.cells import resolve_cell
from harness.analyze.frames import cell_frame, is_null, mean_or_none, sample_status
from harness.analyze.render import fmt, md_table
from harness.errors import UserError
from harness.mi import PairedMIDifference, paired_mi_difference

PER_PAIR = (
    ("summary_tokens", "summary tokens"),
    ("comp_prompt_tokens", "compressor prompt tokens"),
    ("comp_completion_tokens", "compressor completion tokens"),
    ("pred_prompt_tokens", "predictor prompt tokens"),
    ("pred_completion_tokens", "predictor completion tokens"),
    ("seconds", "seconds"),
    ("flops", "FLOPs"),
    ("dollars", "dollars"),
)


@dataclass
class Comparison:
    """The numbers `harness compare` prints."""

    cell_a: dict[str, Any]
    cell_b: dict[str, Any]
    matched_on: str
    n_pairs: int
    dropped_errors: int
    dropped_a: int
    dropped_b: int
    unmatched_a: int
    unmatched_b: int
    duplicates: int
    acc_a: float | None
    acc_b: float | None
    diff: stats.DiffCI | None
    a_only: int
    b_only: int
    mcnemar_p: float | None
    value: tuple[str, float, float, stats.DiffCI] | None = None  # a metric without a verdict: (name, A, B, A − B)
    means: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    mi: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    mi_paired: PairedMIDifference | None = None
    notes: list[str] = field(default_factory=list)
    # the pairs with a verdict on both sides that disagree: sample_id, question, gold, prediction_a/_b, correct_a/_b
    discordant: pd.DataFrame = field(default_factory=pd.DataFrame)


def _per_pair_values(p: pd.DataFrame) -> pd.DataFrame:
    out = p.copy()
    out["seconds"] = out["pred_seconds"].astype(float).fillna(0) + out["comp_seconds"].astype(float).fillna(0)
    none = out["pred_seconds"].isna() & out["comp_seconds"].isna()
    out.loc[none, "seconds"] = np.nan
    for k in ("flops", "dollars"):
        a, b = out[f"pred_{k}"].astype(float), out[f"comp_{k}"].astype(float)
        out[k] = a.fillna(0) + b.fillna(0)
        out.loc[a.isna() & b.isna(), k] = np.nan
    return out


def _context_terms(row: pd.Series) -> tuple[dict[str, float], dict[str, float | None]] | None:
    """(context_bits, context_var_bits) keyed by sample id from an MI row's detail_json; None if not stored."""
    d = row.get("detail_json")
    detail = json.loads(d) if isinstance(d, str) and d else {}
    bits = detail.get("context_bits") if isinstance(detail, dict) else None
    if not bits:
        return None
    return bits, detail.get("context_var_bits") or {}


def _scorer_id(frames: dict[str, pd.DataFrame], cell: pd.Series) -> Any:
    """The model id that scored a cell's MI row ("self" names differ across cells even for one model)."""
    mi_id = cell.get("mi_id")
    if is_null(mi_id):
        return cell.get("mi_scorer")
    return int(frames["mi_estimates"].set_index("mi_id").loc[int(mi_id), "scorer_model_id"])


def paired_mi(frames: dict[str, pd.DataFrame], mi_a: Any, mi_b: Any, n_boot: int = 2000,
              seed: int = 0) -> tuple[PairedMIDifference | None, str | None]:
    """Paired MI difference A − B from two pooled MI rows (ids `mi_a`, `mi_b`) over their shared contexts.

    Needs one scorer and mode for both rows and per-context terms in both (rows stored before those were kept
    have none); otherwise (None, the reason). The MC part assumes A's and B's compressions were drawn independently.
    """
    if is_null(mi_a) or is_null(mi_b):
        return None, None
    mi = frames["mi_estimates"].set_index("mi_id")
    ra, rb = mi.loc[int(mi_a)], mi.loc[int(mi_b)]
    if int(mi_a) == int(mi_b):
        return None, None  # one compressor's MI on both sides: nothing to compare
    if int(ra["scorer_model_id"]) != int(rb["scorer_model_id"]) or ra["mode"] != rb["mode"]:
        return None, "no paired MI test: the two MI rows were scored by different scorers or modes"
    ta, tb = _context_terms(ra), _context_terms(rb)
    if ta is None or tb is None:
        return None, "no paired MI test: an MI row has no per-context terms (stored from an older version)"
    shared = sorted(set(ta[0]) & set(tb[0]))
    if not shared:
        return None, "no paired MI test: the two MI rows share no contexts"
    va = [ta[1].get(k) for k in shared]
    vb = [tb[1].get(k) for k in shared]
    mc = all(v is not None for v in va + vb)
    res = paired_mi_difference(
        [ta[0][k] for k in shared], [tb[0][k] for k in shared],
        a_var=va if mc else None, b_var=vb if mc else None,
        m_a=int(ra["n_samples"]) if mc else None, m_b=int(rb["n_samples"]) if mc else None, n_boot=n_boot, seed=seed,
    )
    unshared = len(set(ta[0]) ^ set(tb[0]))
    note = f"paired MI over the {len(shared)} shared contexts ({unshared} in only one row)" if unshared else None
    return res, note


def compare_cells(url: str | Path, cell_a: str, cell_b: str, n_boot: int = 2000, seed: int = 0,
                  metric: str | None = None) -> Comparison:
    """Paired comparison of two cells of the store at `url` (loads it, then `compare_frames`)."""
    from harness.results import load
    from harness.store.redact import redact_url

    return compare_frames(load(url), cell_a, cell_b, n_boot=n_boot, seed=seed, metric=metric,
                          where=redact_url(str(url)))


def compare_frames(frames: dict[str, pd.DataFrame], cell_a: str, cell_b: str, *, n_boot: int = 2000, seed: int = 0,
                   metric: str | None = None, where: str = "the store") -> Comparison:
    """Paired comparison of two cells from a store's loaded frames (`harness.results.load`); a cell is named by its
    id, a unique prefix of it or its short id (unknown or ambiguous → UserError naming `where`). Verdicts by `metric`
    where stored (see `prediction_frame`)."""
    known = list(frames["cells"]["cell_id"])
    cell_a, cell_b = (resolve_cell(c, known, where) for c in (cell_a, cell_b))
    if cell_a == cell_b:
        raise UserError(f"compare needs two different cells; got {cell_a!r} twice")
    cells, preds, _ = cell_frame(frames, metric=metric)
    ca = cells[cells["cell_id"] == cell_a].iloc[0]
    cb = cells[cells["cell_id"] == cell_b].iloc[0]
    raw = frames["cells"].set_index("cell_id")
    sides = []
    for cid in (cell_a, cell_b):
        c = raw.loc[cid].copy()
        c["cell_id"] = cid
        sides.append(_per_pair_values(sample_status(frames, c, preds[preds["cell_id"] == cid])))
    pa, pb = sides
    shared = set(pa["compression_id"].dropna().astype(int)) & set(pb["compression_id"].dropna().astype(int))
    keys = ["sample_id", "_comp"] if shared else ["sample_id"]
    notes: list[str] = []
    dup = 0
    # a row without a compression (an error before compressing or predicting) takes the sample's compression
    by_sample = pd.concat([pa, pb]).dropna(subset=["compression_id"]).drop_duplicates("sample_id")
    fill = dict(zip(by_sample["sample_id"], by_sample["compression_id"].astype(int), strict=True))
    for p in (pa, pb):
        p["_comp"] = p["compression_id"].fillna(p["sample_id"].map(fill)).astype("Int64") if shared else 0
    pa = pa.sort_values(["sample_id", "compression_id"])
    pb = pb.sort_values(["sample_id", "compression_id"])
    for i, p in enumerate((pa, pb)):
        d = int(p.duplicated(keys).sum())
        if d:
            dup += d
            notes.append(f"cell {'AB'[i]}: {d} extra prediction(s) for an already matched key ignored (first kept)")
    pa = pa.drop_duplicates(keys)
    pb = pb.drop_duplicates(keys)
    m = pa.merge(pb, on=keys, how="outer", suffixes=("_a", "_b"), indicator=True)
    both = m[m["_merge"] == "both"]
    err_a = both["status_a"] == "error"
    err_b = both["status_b"] == "error"
    good = both[~err_a & ~err_b]
    verdict = good[(good["status_a"] == "ok") & (good["status_b"] == "ok")]
    a = verdict["correct_a"].astype(bool).to_numpy()
    b = verdict["correct_b"].astype(bool).to_numpy()
    diff = stats.paired_bootstrap_diff(a, b, n_boot, seed) if len(verdict) else None
    n10, n01 = stats.discordant(a, b) if len(verdict) else (0, 0)
    if 0 < len(verdict) < len(good):
        notes.append(f"accuracy over the {len(verdict)} pairs where both sides have a verdict")
    value = None
    vals = good[(good["status_a"] == "value") & (good["status_b"] == "value") & (good["metric_a"] == good["metric_b"])]
    if len(vals):
        metric = ",".join(sorted(vals["metric_a"].unique()))
        va, vb = vals["value_a"].astype(float).to_numpy(), vals["value_b"].astype(float).to_numpy()
        value = (metric, float(va.mean()), float(vb.mean()), stats.paired_bootstrap_diff(va, vb, n_boot, seed))
    means = {label: (mean_or_none(good[f"{k}_a"]), mean_or_none(good[f"{k}_b"])) for k, label in PER_PAIR}
    mi = {
        "MI bits": (ca["mi_bits"], cb["mi_bits"]),
        "bits/token": (ca["bits_per_token"], cb["bits_per_token"]),
    }
    mi = {k: (None if is_null(x) else float(x), None if is_null(y) else float(y)) for k, (x, y) in mi.items()}
    if _scorer_id(frames, ca) != _scorer_id(frames, cb) and not is_null(ca["mi_bits"]) and not is_null(cb["mi_bits"]):
        notes.append(f"MI scored by different models: A {ca['mi_scorer']}, B {cb['mi_scorer']}")
    mi_paired, note = paired_mi(frames, ca["mi_id"], cb["mi_id"], n_boot, seed)
    if note:
        notes.append(note)
    disc = discordant_pairs(verdict, frames["samples"], str(ca["task"]))
    return Comparison(
        cell_a=ca.to_dict(),
        cell_b=cb.to_dict(),
        matched_on="sample id and compression" if shared else "sample id",
        n_pairs=len(good),
        dropped_errors=int((err_a | err_b).sum()),
        dropped_a=int(err_a.sum()),
        dropped_b=int(err_b.sum()),
        unmatched_a=int((m["_merge"] == "left_only").sum()),
        unmatched_b=int((m["_merge"] == "right_only").sum()),
        duplicates=dup,
        acc_a=float(a.mean()) if len(verdict) else None,
        acc_b=float(b.mean()) if len(verdict) else None,
        diff=diff,
        a_only=n10,
        b_only=n01,
        mcnemar_p=stats.mcnemar_exact(a, b) if len(verdict) else None,
        value=value,
        means=means,
        mi=mi,
        mi_paired=mi_paired,
        notes=notes,
        discordant=disc,
    )


def _gold(answers_json: Any) -> str:
    """The gold answer as text: the aliases joined with " / " (a choice task's option text and letter)."""
    answers = json.loads(answers_json) if isinstance(answers_json, str) and answers_json else []
    return " / ".join(str(a) for a in answers) if answers else "-"


def discordant_pairs(verdict: pd.DataFrame, samples: pd.DataFrame, task: str) -> pd.DataFrame:
    """The matched pairs (both sides with a verdict) where exactly one side is right, with question and gold."""
    cols = ["sample_id", "question", "gold", "prediction_a", "prediction_b", "correct_a", "correct_b"]
    if verdict.empty:
        return pd.DataFrame(columns=cols)
    d = verdict[verdict["correct_a"].astype(bool) != verdict["correct_b"].astype(bool)]
    s = samples[samples["task"] == task][["sample_id", "question", "answers_json"]]
    d = d.merge(s, on="sample_id", how="left")
    d["gold"] = [_gold(a) for a in d["answers_json"]]
    d["question"] = d["question"].fillna("-")
    for c in ("prediction_a", "prediction_b"):
        d[c] = d[c].fillna("") if c in d else ""
    d["correct_a"] = d["correct_a"].astype(bool)
    d["correct_b"] = d["correct_b"].astype(bool)
    return d[cols].sort_values("sample_id", kind="stable").reset_index(drop=True)


def pick_discordant(c: Comparison, n: int, seed: int = 0) -> pd.DataFrame:
    """`n` of the comparison's discordant pairs, chosen reproducibly (a seeded draw, shown in sample-id order)."""
    d = c.discordant
    if n <= 0 or d.empty:
        return d.iloc[:0]
    if len(d) > n:
        keep = np.sort(np.random.default_rng(seed).choice(len(d), size=n, replace=False))
        d = d.iloc[keep]
    return d.reset_index(drop=True)


def format_discordant(c: Comparison, n: int, seed: int = 0, width: int = 100) -> str:
    """`n` discordant samples as text blocks: sample, question, gold, A's and B's answers and which was right."""
    d = pick_discordant(c, n, seed)
    total = len(c.discordant)
    head = (f"discordant samples: {len(d)} of {total} (A right/B wrong {c.a_only}, A wrong/B right {c.b_only}; "
            f"drawn with seed {seed})")
    if total == 0:
        return "discordant samples: none (A and B agree on every matched pair with a verdict)"

    def one(t: Any) -> str:
        t = " ".join(str(t).split())
        return t if len(t) <= width else t[: width - 3] + "..."

    lines = [head]
    for r in d.itertuples(index=False):
        right = "A" if r.correct_a else "B"
        lines += [
            "",
            f"sample {r.sample_id}  ({right} right)",
            f"  question: {one(r.question)}",
            f"  gold:     {one(r.gold)}",
            f"  A {'right' if r.correct_a else 'wrong'}:  {one(r.prediction_a)!r}",
            f"  B {'right' if r.correct_b else 'wrong'}:  {one(r.prediction_b)!r}",
        ]
    return "\n".join(lines)


def _d(x: float | None, y: float | None, spec: str) -> str:
    return "-" if x is None or y is None else format(x - y, spec)


def _p(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def format_paired_mi(d: PairedMIDifference) -> str:
    """One paragraph: the MI difference with its Monte Carlo test (these contexts) and its population test."""
    out = f"MI: A − B = {d.diff_bits:+.3f} bits over {d.n_contexts} shared contexts (one scorer); "
    if d.mc_se_bits is not None and d.mc_ci is not None:
        out += (f"Monte Carlo, given these contexts: ±{d.mc_se_bits:.3f} se, 95% CI [{d.mc_ci[0]:+.3f}, "
                f"{d.mc_ci[1]:+.3f}], p = {_p(d.mc_p)}; ")
    else:
        out += "Monte Carlo error not estimable (M = 1); "
    if d.population_ci is not None:
        out += (f"population, paired over contexts: 95% CI [{d.population_ci[0]:+.3f}, {d.population_ci[1]:+.3f}], "
                f"paired t p = {_p(d.t_p)}, Wilcoxon p = {_p(d.wilcoxon_p)}")
    else:
        out += "population test needs ≥ 2 contexts"
    return out


def format_comparison(c: Comparison, table: Callable[[list[str], list[list[str]]], str] = md_table) -> str:
    """A small table (markdown, or what `table(headers, rows)` draws) plus the pairing counts and the tests."""
    a, b = c.cell_a, c.cell_b
    lines = [
        f"A: {a['cell_id']}  ({a['arm']}, {a['compressor']} → {a['predictor']}, task {a['task']})",
        f"B: {b['cell_id']}  ({b['arm']}, {b['compressor']} → {b['predictor']}, task {b['task']})",
        f"pairs: {c.n_pairs} matched on {c.matched_on}; dropped for errors: {c.dropped_errors} "
        f"(A errored {c.dropped_a}, B errored {c.dropped_b}); unmatched: A {c.unmatched_a}, B {c.unmatched_b}",
        "",
    ]
    rows = []
    if c.diff is not None:
        d = c.diff
        rows.append(["accuracy", fmt(c.acc_a), fmt(c.acc_b), f"{d.diff:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}]"])
    else:
        rows.append(["accuracy", "-", "-", "-"])
    if c.value is not None:
        name, x, y, d = c.value
        rows.append([f"{name} (mean)", f"{x:.3f}", f"{y:.3f}", f"{d.diff:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}]"])
    for label, (x, y) in c.means.items():
        if x is None and y is None:
            continue
        spec = ".3g" if label in ("FLOPs", "dollars") else ".2f"
        rows.append([f"{label} (mean)", fmt(x, spec), fmt(y, spec), _d(x, y, "+" + spec)])
    for label, (x, y) in c.mi.items():
        rows.append([label, fmt(x, ".3f"), fmt(y, ".3f"), _d(x, y, "+.3f")])
    lines.append(table(["", "A", "B", "A − B"], rows))
    lines.append("")
    if c.diff is not None:
        lines.append(
            f"accuracy: A − B = {c.diff.diff:+.3f}, paired bootstrap 95% CI [{c.diff.lo:+.3f}, {c.diff.hi:+.3f}]; "
            f"exact McNemar p = {c.mcnemar_p:.3g} (A right/B wrong {c.a_only}, A wrong/B right {c.b_only})"
        )
    elif c.value is None:
        lines.append("accuracy: no error-free matched pairs, nothing to test")
    if c.mi_paired is not None:
        lines.append(format_paired_mi(c.mi_paired))
    lines += [f"note: {n}" for n in c.notes]
    return "\n".join(lines)
