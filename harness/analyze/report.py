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
from typing import Any

import pandas as pd

from harness.analyze import stats
from harness.analyze.examples import examples_section
from harness.analyze.frames import (
    ERROR_STAGES,
    MIChoice,
    ModelInfo,
    cell_frame,
    cell_labels,
    factor_data,
    is_null,
    mi_mc_se,
    model_infos,
    pooled_points,
    short_name,
)
from harness.analyze.render import (
    RDPoint,
    RefLine,
    Series,
    fmt,
    fmt_accuracy,
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
from harness.analyze.report_html import write_html
from harness.analyze.tune import filter_section
from harness.errors import UserError


@dataclass
class Report:
    """What `build_report` wrote: the markdown and HTML paths, the folder, the cell table (with its `label`
    column), the PNG plots and every plot file (PNG, SVG, PDF)."""

    path: Path
    folder: Path
    cells: pd.DataFrame
    plots: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    html: Path | None = None


def default_out_dir(url: str | Path) -> Path:
    """`results/report-<store stem>` (for a PostgreSQL URL, the database name)."""
    s = str(url)
    if "://" in s and not s.startswith("sqlite:"):
        stem = s.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "store"
    else:
        stem = Path(s.removeprefix("sqlite:///")).stem
    return Path("results") / f"report-{slug(stem)}"


def build_report(
    url: str | Path, out: str | Path | None = None, run_id: str | None = None, n_boot: int = 1000, seed: int = 0,
    metric: str | None = None,
) -> Report:
    """Write `<out>/report.md`, the same as one self-contained `<out>/report.html`, `<out>/cells.csv` and the plots
    (PNG, SVG and PDF of each) for the store at `url`; returns what it wrote. `seed` also picks the examples;
    `metric`: count this metric's scores where stored (e.g. one `harness rescore` or `tune-filter --metric` added;
    default the judge's, else the first metric by name)."""
    from harness.results import load
    from harness.store.redact import redact_url

    frames = load(url)
    if run_id is not None and not (frames["runs"]["run_id"] == run_id).any():
        known = ", ".join(frames["runs"]["run_id"].astype(str).head(5))
        raise UserError(f"--run {run_id}: no such run in the store (runs: {known or 'none'})")
    folder = Path(out) if out is not None else default_out_dir(url)
    folder.mkdir(parents=True, exist_ok=True)
    infos = model_infos(frames["models"])
    cells, preds, choice = cell_frame(frames, run_id, infos, metric=metric)
    cells.insert(1, "label", cell_labels(cells))
    labels = dict(zip(cells["cell_id"].astype(str), cells["label"], strict=True))
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
    L += _cells_section(cells, choice, labels)
    L += _mi_section(frames, cells, infos)
    L += filter_section(frames, cells, folder, rep.plots, run_id)  # RAG filters: IB terms, Pareto plot (issue #13)
    if cells.empty:
        L += ["## Analysis", "", "No cells in the store: nothing to analyse.", ""]
    else:
        comp_cells = cells[cells["compressor_model_id"].notna()]
        multi_task = cells["task"].nunique() > 1
        L += _scaling_section(folder, frames, cells, comp_cells, multi_task, rep)
        L += _rd_section(folder, frames, comp_cells, rep, n_boot, seed)
        L += _corr_section(comp_cells)
        L += _factor_section(preds, cells)
        L += examples_section(frames, cells, preds, labels, seed=seed)
        from harness.analyze.research import research_section  # Deep-Research cells (harness.research)

        research_lines, research_plots, research_files = research_section(frames, folder, run_id, cells, preds)
        L += research_lines
        rep.plots += research_plots
        rep.files += research_files
    L += [
        "## Files",
        "",
        "- `report.html`: this report as one self-contained file (plots inlined), to share",
        "- `cells.csv`: the cell table with full-precision numbers (`label` is the cell column here)",
        *(f"- `{p.name}`" + _siblings(p, rep.files) for p in rep.plots),
        "",
    ]
    rep.path.write_text("\n".join(L))
    rep.html = write_html(rep.path, f"harness report: {redact_url(str(url))}")
    return rep


def _siblings(png: Path, files: list[Path]) -> str:
    """ ", `x.svg`, `x.pdf`" for the SVG and PDF written beside a PNG."""
    return "".join(f", `{q.name}`" for q in (png.with_suffix(".svg"), png.with_suffix(".pdf")) if q in files)


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


def _cells_section(cells: pd.DataFrame, choice: MIChoice, labels: dict[str, str]) -> list[str]:
    L = ["## Cells", ""]
    if cells.empty:
        return [*L, "No cells.", ""]
    lab = [labels[str(c)] for c in cells["cell_id"]]
    head = ["cell", "n", "accuracy [95% CI]", "errors", "summary_tok", "token_ratio", "MI bits ±MC [pop 95% CI]",
            "bits/token"]  # fmt: skip
    rows = [
        [
            lab[i],
            str(r["n"]),
            fmt_accuracy(r),
            str(r["errors"]),
            fmt(r["summary_tokens"], ".1f"),
            fmt(r["token_ratio"], ".3f"),
            fmt_mi(r),
            fmt(r["bits_per_token"], ".3f"),
        ]
        for i, (_, r) in enumerate(cells.iterrows())
    ]
    L += [md_table(head, rows), ""]
    notes = [
        "cell: compressor → predictor, or the reference arm (full-context, no-context) → predictor; the cell key "
        "below gives each cell's id (as in cells.csv), run, task, knobs and MI scorer.",
        "n counts scored predictions; accuracy is their share correct with a Wilson 95% interval. Errored "
        "compressions or predictions and missing scores are counted under errors, never as wrong answers.",
        "summary_tok and token_ratio (= summary tokens / context tokens) are means over the cell's compressions.",
        "MI is the pooled estimate (group_id '') for the cell's compressor and task, in bits: ±MC is its Monte Carlo "
        "standard error given the contexts, [pop …] its 95% interval over contexts; it can never exceed log2 N "
        "(N = contexts, see MI estimates). † in the key marks an estimate taken from another run.",
    ]
    metrics = sorted({m for s in cells["metric"] for m in str(s).split(",") if m and m != "-"})
    if metrics:
        notes.append(f"metrics counted: {', '.join(metrics)} (a judge verdict, when stored, is the one counted)")
    notes += choice.notes
    L += [f"- {n}" for n in notes] + [""]
    L += ["### Cell key", ""]
    key = []
    for i, (_, r) in enumerate(cells.iterrows()):
        scorer = "-"
        if not is_null(r["mi_scorer"]):
            scorer = f"{r['mi_scorer']} ({r['mi_mode']})" + ("" if r["mi_run"] == r["run_id"] else f" †{r['mi_run']}")
        key.append([lab[i], str(r["cell_id"]), str(r["run_id"]), str(r["task"]), str(r["arm"]), str(r["compressor"]),
                    str(r["predictor"]), r["knobs"], scorer])  # fmt: skip
    L += [md_table(["cell", "cell id", "run", "task", "arm", "compressor", "predictor", "knobs", "MI scorer"], key), ""]
    L += _cost_table(cells, lab)
    val = cells[cells["n_value"].fillna(0) > 0]
    if len(val):
        L += ["### Metrics without a right answer", ""]
        rows = []
        for _, r in val.iterrows():
            ci = "" if is_null(r["value_lo"]) else f" [{r['value_lo']:.3f}, {r['value_hi']:.3f}]"
            rows.append([labels[str(r["cell_id"])], str(r["value_metric"]), str(r["n_value"]),
                         f"{r['value_mean']:.3f}{ci}"])  # fmt: skip
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
                    [labels[str(r["cell_id"])], str(r["errors"]), *(str(r[f"errors_{s}"]) for s in ERROR_STAGES)]
                    for _, r in bad.iterrows()
                ],
            )
        )
        L.append("")
    return L


def _cost_table(cells: pd.DataFrame, lab: list[str]) -> list[str]:
    """The cost of each cell, what this run spent (actual) and what the same calls cost from scratch."""
    L = ["### Cost", ""]
    if cells["usage_rows"].fillna(0).sum() == 0:
        return [*L, "No usage rows in the store: cost unknown.", ""]
    rows = []
    for i, (_, r) in enumerate(cells.iterrows()):
        calls = int(r["usage_rows"] or 0)
        rows.append([lab[i], f"{calls} ({int(r['cached_calls'] or 0)} cached)" if calls else "-", fmt_num(r["tokens"]),
                     fmt(r["seconds_actual"], ".1f"), fmt(r["seconds"], ".1f"), fmt_num(r["flops_actual"]),
                     fmt_num(r["flops"]), fmt_num(r["dollars_actual"]), fmt_num(r["dollars"])])  # fmt: skip
    head = ["cell", "calls", "tokens", "seconds actual", "seconds as if uncached", "FLOPs actual",
            "FLOPs as if uncached", "$ actual", "$ as if uncached"]  # fmt: skip
    L += [md_table(head, rows), ""]
    L += [
        "- actual: what this run spent. A response-cache hit, and a compression read from the store that another "
        "run made, cost nothing now, so a fully cached rerun shows 0. As if uncached: the same calls run from "
        "scratch (each call's own usage row). tokens count prompt + completion of compressor and predictor calls; "
        "'-' where the store has no usage.",
        "",
        "#### Tokens by role",
        "",
        md_table(
            ["cell", "comp prompt", "comp completion", "pred prompt", "pred completion"],
            [
                [lab[i], fmt_num(r["comp_prompt_tokens"]), fmt_num(r["comp_completion_tokens"]),
                 fmt_num(r["pred_prompt_tokens"]), fmt_num(r["pred_completion_tokens"])]
                for i, (_, r) in enumerate(cells.iterrows())
            ],
        ),
        "",
    ]
    return L


def _mi_section(frames: dict[str, pd.DataFrame], cells: pd.DataFrame, infos: dict[int, ModelInfo]) -> list[str]:
    mi = frames["mi_estimates"]
    comps = {int(x) for x in cells["compressor_model_id"].dropna()}
    mi = mi[(mi["group_id"] == "") & mi["compressor_model_id"].isin(list(comps)) & mi["task"].isin(list(cells["task"]))]
    L = ["## MI estimates", ""]
    if mi.empty:
        return [*L, "No pooled MI estimates for these cells' compressors (run with an `mi:` section).", ""]
    rows = []
    any_bound = False
    for r in mi.sort_values(["task", "compressor_model_id", "scorer_model_id", "mode", "run_id"]).itertuples():
        c, s = int(r.compressor_model_id), int(r.scorer_model_id)
        mc = mi_mc_se(r.detail_json)
        bits = f"error: {r.error}" if not is_null(r.error) else (
            fmt_mi_bits(r.bits, mc, r.ci_lo, r.ci_hi) if not is_null(r.bits) else "-")
        ceiling = "-" if is_null(r.n_contexts) or r.n_contexts < 1 else f"{math.log2(r.n_contexts):.2f}"
        up = "-"  # the leave-one-out value is shown only where it is a bound (scored by the sampler)
        if not is_null(r.upper_bits) and not is_null(r.upper_is_bound) and bool(r.upper_is_bound):
            up = "∞" if math.isinf(r.upper_bits) else f"{r.upper_bits:.2f}"
            any_bound = True
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
                ceiling,
                up,
                fmt(r.bits_per_token, ".3f"),
                fmt(r.saturated_fraction, ".2f"),
            ]
        )
    head = ["task", "compressor", "scorer", "mode", "run", "N contexts", "M", "bits ±MC [pop 95% CI]",
            "ceiling log2 N", "LOO upper bound", "bits/token", "saturated"]  # fmt: skip
    notes = [
        "N contexts and M draws per context; the estimate cannot exceed the ceiling log2 N (the contexts are "
        "equally likely, so H(X) = log2 N); saturated is the share of pointwise terms at that ceiling, where the "
        "estimate is a lower bound.",
        "LOO upper bound: the leave-one-out estimate (the marginal over the other N − 1 contexts). It is an upper "
        "bound on the population MI (all contexts, not only these N), so it is not capped by log2 N and can read "
        "e.g. 31.79 next to a 2-bit ceiling; it is shown only where it is a bound (the scorer is the model that "
        "sampled, with plain sampling), '-' elsewhere" + ("." if any_bound else " (here: nowhere)."),
    ]
    return [*L, md_table(head, rows), "", *(f"- {n}" for n in notes), ""]


def _mi_ceilings(frames: dict[str, pd.DataFrame], pts: pd.DataFrame) -> dict[int, tuple[float, float | None]]:
    """{mi_id: (log2 N, mean summary tokens)} of the MI rows behind the points."""
    mi = frames["mi_estimates"]
    ids = {int(x) for x in pts["mi_id"].dropna()} if "mi_id" in pts.columns else set()
    out: dict[int, tuple[float, float | None]] = {}
    for r in mi[mi["mi_id"].isin(list(ids))].itertuples():
        if not is_null(r.n_contexts) and r.n_contexts >= 1:
            out[int(r.mi_id)] = (math.log2(r.n_contexts), None if is_null(r.mean_tokens) else float(r.mean_tokens))
    return out


def _reference_lines(cells: pd.DataFrame, multi_task: bool) -> list[RefLine]:
    """Accuracy of the cells without a compressor (full-context, no-context), pooled per task, arm and predictor."""
    ref = cells[cells["compressor_model_id"].isna()]
    if ref.empty:
        return []
    out = []
    for _, r in pooled_points(ref, ["task", "arm", "predictor_model_id"]).iterrows():
        label = f"{r['arm']} → {short_name(r['predictor'])}" + (f" [{r['task']}]" if multi_task else "")
        style = {"full-context": "--", "no-context": ":"}.get(str(r["arm"]), "-.")
        out.append(RefLine(label, float(r["accuracy"]), float(r["acc_lo"]), float(r["acc_hi"]), style))
    return out


def _scaling_section(
    folder: Path, frames: dict[str, pd.DataFrame], cells: pd.DataFrame, comp_cells: pd.DataFrame, multi_task: bool,
    rep: Report,
) -> list[str]:  # fmt: skip
    L = ["## Scaling", ""]
    if comp_cells.empty:
        L += ["No cells with a compressor: no compressor-size plots.", ""]
    else:
        per_pair = pooled_points(comp_cells, ["task", "compressor_model_id", "predictor_model_id"])
        # MI and bits/token belong to the compressor (and scorer), not the predictor: one point per compressor
        per_comp = pooled_points(comp_cells, ["task", "compressor_model_id"])
        ceil = _mi_ceilings(frames, per_comp)
        for col, lo, hi, ylabel, fname in (
            ("accuracy", "acc_lo", "acc_hi", "accuracy", "scaling-accuracy.png"),
            ("mi_bits", "mi_lo", "mi_hi", "MI bits", "scaling-mi-bits.png"),
            ("bits_per_token", "mi_lo", "mi_hi", "bits per token", "scaling-bits-per-token.png"),
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
            cpts: list[tuple[float, float]] = []
            for _, r in d.iterrows():
                label = (
                    str(r["compressor_family"])
                    + (f" → {short_name(r['predictor'])}" if per_pred else "")
                    + (f" [{r['task']}]" if multi_task else "")
                )
                y, ylo, yhi = float(r[col]), _num(r[lo]), _num(r[hi])
                c = None if is_null(r.get("mi_id")) else ceil.get(int(r["mi_id"]))
                if col == "bits_per_token":  # bits / mean tokens: the MI interval and ceiling scale the same way
                    scale = None if c is None or not c[1] else 1.0 / c[1]
                    ylo = None if scale is None or ylo is None else ylo * scale
                    yhi = None if scale is None or yhi is None else yhi * scale
                    if scale is not None and c is not None:
                        cpts.append((float(r["compressor_params"]), c[0] * scale))
                elif col == "mi_bits" and c is not None:
                    cpts.append((float(r["compressor_params"]), c[0]))
                series.setdefault(label, []).append((float(r["compressor_params"]), y, ylo, yhi))
            kw: dict[str, Any] = {}
            if per_pred:
                kw = {"refs": _reference_lines(cells, multi_task), "ylim": (-0.02, 1.02)}
            elif cpts:
                cl = "ceiling log2 N" if col == "mi_bits" else "ceiling log2 N / summary tokens"
                top = max(max(y for _, y in cpts), max((p[3] or p[1]) for s in series.values() for p in s))
                low = min(0.0, min(min(p[1], p[2] if p[2] is not None else p[1]) for s in series.values() for p in s))
                pad = 0.06 * (top - low)
                kw = {"ceiling": (cl, cpts), "ylim": (low - (pad if low < 0 else 0.0), top + pad)}  # from 0, or below
            what = " → predictor" if per_pred else ""
            files = line_plot(folder / fname, series, "compressor parameters", ylabel,
                              f"{ylabel} vs compressor size (one line per compressor family{what})", **kw)  # fmt: skip
            rep.plots.append(folder / fname)
            rep.files += files
            L += [f"![{ylabel} vs compressor size]({fname})", ""]
            if per_pred and kw["refs"]:
                L += ["Horizontal lines: the reference arms' accuracy per predictor (band: 95% CI).", ""]
            if col == "bits_per_token":
                L += ["Error bars: the MI interval divided by the mean summary tokens (the same scaling as the "
                      "point).", ""]  # fmt: skip
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
            + (f" ({short_name(r['compressor'])})" if r["compressor"] != "-" else "")
            + (f" [{r['task']}]" if multi_task else "")
        )
        series.setdefault(label, []).append(
            (float(r["predictor_params"]), float(r["accuracy"]), float(r["acc_lo"]), float(r["acc_hi"]))
        )
    fname = "scaling-accuracy-predictor.png"
    rep.files += line_plot(folder / fname, series, "predictor parameters", "accuracy", "accuracy vs predictor size",
                           ylim=(-0.02, 1.02))  # fmt: skip
    rep.plots.append(folder / fname)
    return [*L, f"![accuracy vs predictor size]({fname})", ""]


def _num(v: Any) -> float | None:
    return None if is_null(v) else float(v)


def _rd_section(
    folder: Path, frames: dict[str, pd.DataFrame], comp_cells: pd.DataFrame, rep: Report, n_boot: int, seed: int
) -> list[str]:
    L = [
        "## Rate–distortion",
        "",
        "Per predictor: R = MI bits of the compressor (the cell table's scorer), D = 1 − accuracy, fitted as "
        f"D(R) = C·exp(−b·R) + D0 (least squares, bootstrap 95% intervals over points) when there are ≥ "
        f"{stats.MIN_RD_POINTS} distinct (R, D) points. The plots show each point's 95% intervals on both axes "
        "(R: over contexts; D: Wilson) and the log2 N ceiling of R.",
        "",
    ]
    if comp_cells.empty:
        return [*L, "No cells with a compressor: no rate–distortion points.", ""]
    pts = pooled_points(comp_cells, ["task", "predictor_model_id", "compressor_model_id"])
    ceil = _mi_ceilings(frames, pts)
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
        g = g.sort_values("mi_bits")
        L.append(
            md_table(
                ["compressor", "R (bits) [95% CI]", "D = 1 − acc [95% CI]", "n"],
                [
                    [short_name(x.compressor), f"{x.mi_bits:.3f}" + ("" if is_null(x.mi_lo) or is_null(x.mi_hi) else
                     f" [{x.mi_lo:.2f}, {x.mi_hi:.2f}]"),
                     f"{1 - x.accuracy:.3f} [{1 - x.acc_hi:.2f}, {1 - x.acc_lo:.2f}]", str(x.n)]
                    for x in g.itertuples()
                ],
            )
        )  # fmt: skip
        L.append("")
        points = [
            RDPoint(short_name(x.compressor), float(x.mi_bits), _num(x.mi_lo), _num(x.mi_hi), 1.0 - float(x.accuracy),
                    1.0 - float(x.acc_hi), 1.0 - float(x.acc_lo))
            for x in g.itertuples()
        ]  # fmt: skip
        ns = {ceil[int(i)][0] for i in g["mi_id"].dropna() if int(i) in ceil}
        fname = f"rd-{slug(str(task))}-{slug(name)}.png"
        rep.files += rd_plot(folder / fname, points, fit, f"rate–distortion: {short_name(name)} ({task})",
                             ceiling=max(ns) if len(ns) == 1 else None)  # fmt: skip
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
        "intervals and Wald tests from the cluster-robust covariance (clusters: samples); LR test: drop the factor "
        "and refit."
    )
    L.append("")
    if res.small_sample:
        L += [f"**Few clusters:** {stats.few_clusters_note(res.n_clusters)}", ""]
    notes += [n for n in res.notes if n != stats.few_clusters_note(res.n_clusters)]
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
            wald = {w.factor: w for w in res.wald_tests}
            wname = f"Wald F(df, {res.n_clusters - 1}) p" if res.small_sample else "Wald chi2 p"
            rows = []
            for t in res.lr_tests:
                w = wald.get(t.factor)
                rows.append([t.factor, f"{t.stat:.2f}", str(t.df), fmt_p(t.p), "-" if w is None else fmt_p(w.p)])
            L.append(md_table(["factor", "LR chi2", "df", "LR p", wname], rows))
            L.append("")
            L += [f"Read first: the {res.preferred} test"
                  + (" (few clusters: the Wald test over-rejects)." if res.preferred == "LR" and res.robust else
                     "; the two agree when clusters are many and the model fits." if res.preferred == "Wald" else "."),
                  ""]  # fmt: skip
    else:
        L += [f"No model fitted (n = {res.n}).", ""]
    if notes:
        L += ["Notes:", "", *(f"- {n}" for n in notes), ""]
    return L
