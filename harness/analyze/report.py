"""`harness report STORE`: a markdown report with plots, computed from the results store's rows only.

Sections: models and sizes, one row per cell (accuracy with Wilson 95% CI, errors, summary tokens, token_ratio, MI,
cost), MI estimates, scaling plots, rate–distortion fits, correlation of MI with accuracy, factor importance.
A section that cannot be computed says why. The numbers come from `frames` (the cell summariser), `stats` (fits and
tests); `render` formats them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from harness.analyze import stats
from harness.analyze.frames import (
    ERROR_STAGES,
    MIChoice,
    ModelInfo,
    cell_frame,
    factor_data,
    is_null,
    mi_mc_se,
    model_infos,
    pooled_points,
)
from harness.analyze.render import (
    Series,
    fmt,
    fmt_accuracy,
    fmt_cost_pair,
    fmt_mi,
    fmt_mi_bits,
    fmt_num,
    fmt_p,
    fmt_params,
    line_plot,
    md_table,
    rd_plot,
    slug,
)
from harness.analyze.tune import filter_section
from harness.errors import UserError


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
    return Path("results") / f"report-{slug(stem)}"


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
    L += filter_section(frames, cells, folder, rep.plots, run_id)  # RAG filters: IB terms, Pareto plot (issue #13)
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
        if not is_null(r["mi_scorer"]):
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
                fmt_accuracy(r),
                str(r["errors"]),
                fmt(r["summary_tokens"], ".1f"),
                fmt(r["token_ratio"], ".3f"),
                fmt_mi(r),
                fmt(r["bits_per_token"], ".3f"),
                scorer,
                fmt_num(r["tokens"]),
                fmt(r["seconds"], ".1f"),
                fmt_cost_pair(r["flops_actual"], r["flops"]),
                fmt_cost_pair(r["dollars_actual"], r["dollars"]),
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
            ci = "" if is_null(r["value_lo"]) else f" [{r['value_lo']:.3f}, {r['value_hi']:.3f}]"
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
                        fmt_num(r["comp_prompt_tokens"]),
                        fmt_num(r["comp_completion_tokens"]),
                        fmt_num(r["pred_prompt_tokens"]),
                        fmt_num(r["pred_completion_tokens"]),
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
        bits = f"error: {r.error}" if not is_null(r.error) else (
            fmt_mi_bits(r.bits, mc, r.ci_lo, r.ci_hi) if not is_null(r.bits) else "-")
        up = "-" if is_null(r.upper_bits) else ("∞" if math.isinf(r.upper_bits) else f"{r.upper_bits:.2f}")
        rows.append(
            [
                str(r.task),
                infos[c].name if c in infos else str(c),
                "self" if s == c else (infos[s].name if s in infos else str(s)),
                str(r.mode),
                str(r.run_id),
                fmt(r.n_contexts, ".0f"),
                fmt(r.n_samples, ".0f"),
                bits,
                up,
                fmt(r.bits_per_token, ".3f"),
                fmt(r.saturated_fraction, ".2f"),
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
                        None if lo is None or is_null(r[lo]) else float(r[lo]),
                        None if hi is None or is_null(r[hi]) else float(r[hi]),
                    )
                )
            line_plot(
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
    line_plot(folder / fname, series, "predictor parameters", "accuracy", "accuracy vs predictor size")
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
        fname = f"rd-{slug(str(task))}-{slug(name)}.png"
        rd_plot(folder / fname, r, dist, list(g["compressor"]), fit, f"rate–distortion: {name} ({task})")
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
                        f"{fmt(c.pearson_r, '.2f')} (p {fmt_p(c.pearson_p)})",
                        f"{fmt(c.spearman_rho, '.2f')} (p {fmt_p(c.spearman_p)})",
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
                [[c.term, f"{c.coef:.3f}", f"[{c.lo:.3f}, {c.hi:.3f}]", fmt_p(c.p)] for c in res.coefs],
            )
        )
        L.append("")
        if res.lr_tests:
            L.append(
                md_table(
                    ["factor", "LR chi2", "df", "p"],
                    [[t.factor, f"{t.stat:.2f}", str(t.df), fmt_p(t.p)] for t in res.lr_tests],
                )
            )
            L.append("")
    else:
        L += [f"No model fitted (n = {res.n}).", ""]
    if notes:
        L += ["Notes:", "", *(f"- {n}" for n in notes), ""]
    return L
