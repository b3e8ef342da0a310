"""The Deep-Research report section: the arms × compressors table with cost per role, the headline line
("compressor C recovers A% [CI] of predictor-only accuracy at B% of its predictor cost"), the cost–accuracy frontier
plot across compressor sizes, early stops, and whether the MI estimator applies to the summaries.

Research cells are the cells whose id starts with `research-` (`harness.research.run.plan_cells`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.analyze import tune
from harness.analyze.frames import is_null, sum_or_none
from harness.analyze.render import fmt

PREFIX = "research-"


def ratio_ci(a: Sequence[bool], b: Sequence[bool], n_boot: int = 2000, seed: int = 0, alpha: float = 0.05
             ) -> tuple[float | None, float | None, float | None]:
    """mean(a) / mean(b) over paired samples with a paired percentile-bootstrap CI (pure). None where mean(b) is 0;
    resamples where mean(b) is 0 are dropped from the interval."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size == 0 or x.size != y.size or y.mean() == 0:
        return None, None, None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    num, den = x[idx].mean(axis=1), y[idx].mean(axis=1)
    ok = den > 0
    r = num[ok] / den[ok]
    lo, hi = (np.quantile(r, [alpha / 2, 1 - alpha / 2]) if r.size else (np.nan, np.nan))
    return float(x.mean() / y.mean()), float(lo), float(hi)


def pareto_front(cost: Sequence[float], acc: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats (cost ≤ and accuracy ≥, one strictly), by cost (pure)."""
    c, a = np.asarray(cost, dtype=float), np.asarray(acc, dtype=float)
    idx = np.flatnonzero(tune.pareto_front(c, a) & np.isfinite(c) & np.isfinite(a))
    return sorted((int(i) for i in idx), key=lambda i: (c[i], -a[i]))


def research_frames(frames: dict[str, pd.DataFrame], cell_ids: Sequence[str] | None = None,
                    cells: pd.DataFrame | None = None, preds: pd.DataFrame | None = None
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per research cell with accuracy, errors, rounds, early stops and cost per role: predictor, compressor
    and, where answers were judged, judge (the evaluation's cost, kept out of the system's total); its predictions).
    `cells`, `preds`: a `cell_frame` already built (the report's), else one is built over the research cells only."""
    if cells is None or preds is None:
        from harness.analyze.frames import cell_frame

        raw = frames["cells"]
        cells, preds, _ = cell_frame({**frames, "cells": raw[raw["cell_id"].astype(str).str.startswith(PREFIX)]})
    cells = cells[cells["cell_id"].astype(str).str.startswith(PREFIX)]
    if cell_ids is not None:
        cells = cells[cells["cell_id"].isin(list(cell_ids))]
    preds = preds[preds["cell_id"].isin(cells["cell_id"])]
    steps = frames.get("trace_steps", pd.DataFrame())
    usage = frames.get("usage", pd.DataFrame())
    judged = usage[usage["call_kind"] == "judge"] if len(usage) else usage
    rows = []
    for c in cells.itertuples(index=False):
        p = preds[preds["cell_id"] == c.cell_id]
        st = steps[steps["cell_id"] == c.cell_id] if len(steps) else steps
        row = c._asdict()
        for pre, role in (("pred_", "predictor"), ("comp_", "compressor")):
            d = p.drop_duplicates("compression_id") if pre == "comp_" else p
            d = d[d[f"{pre}prompt_tokens"].notna()]
            for k in ("prompt_tokens", "completion_tokens", "seconds", "flops", "dollars"):
                row[f"{role}_{k}"] = sum_or_none(d[f"{pre}{k}"]) if len(d) else None
        j = judged[judged["ref_id"].isin(p["prediction_id"])] if len(judged) else judged
        for k in ("prompt_tokens", "completion_tokens", "seconds", "flops", "dollars"):
            row[f"judge_{k}"] = sum_or_none(j[k]) if len(j) else None  # evaluation cost: not in the system's total
        rounds, early, plan_fail = [], 0, 0
        if len(st):
            for _sid, g in st.groupby("sample_id"):
                pl = g[g["kind"].isin(["plan", "follow-up"])]
                comp = g[g["kind"].isin(["search"])]
                rounds.append(int(comp["round"].max()) + 1 if len(comp) else 0)
                for pj, err in zip(pl["payload_json"], pl["error"], strict=True):
                    pay = json.loads(pj) if isinstance(pj, str) else (pj or {})
                    early += bool(pay.get("early_stop")) and not err
                    plan_fail += isinstance(err, str) and err.startswith("planning failure")
        if row.get("mi_mode") != "research":  # a research cell's MI is its summaries' (harness.research.mi) only
            for k in ("mi_bits", "mi_lo", "mi_hi", "mi_mc_se", "bits_per_token"):
                if k in row:
                    row[k] = None
        row["rounds_mean"] = float(np.mean(rounds)) if rounds else None
        row["early_stops"] = int(early)
        row["planning_failures"] = int(plan_fail)
        row["steps"] = len(st)
        rows.append(row)
    return pd.DataFrame(rows), preds


def _num(x: Any) -> float | None:
    """A number, or None for None / NaN / NA."""
    return None if is_null(x) else float(x)


def _label(r: Any) -> str:
    return r["compressor"] if r["arm"] == "compressor-predictor" else "-"


def headlines(cells: pd.DataFrame, preds: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """Per compressor-predictor cell: A = its accuracy / predictor-only's (paired bootstrap CI over the samples
    both answered), B = its predictor cost / predictor-only's (dollars where priced, else FLOPs), and the line."""
    out = []
    for _, r in cells[cells["arm"] == "compressor-predictor"].iterrows():
        base = str(r["cell_id"]).split("/")[0]  # the predictor-only cell of the same config (research-<hash>)
        po = cells[(cells["arm"] == "predictor-only") & (cells["cell_id"] == f"{base}/predictor-only")]
        if po.empty:
            continue
        po = po.iloc[0]
        pp = preds[(preds["cell_id"] == po["cell_id"]) & (preds["status"] == "ok")].set_index("sample_id")["correct"]
        cp = preds[(preds["cell_id"] == r["cell_id"]) & (preds["status"] == "ok")].set_index("sample_id")["correct"]
        both = cp.index.intersection(pp.index)
        a, lo, hi = ratio_ci([bool(cp[s]) for s in both], [bool(pp[s]) for s in both], n_boot, seed)
        unit = "dollars" if not is_null(r["predictor_dollars"]) and _num(po["predictor_dollars"]) else "FLOPs"
        key = "predictor_dollars" if unit == "dollars" else "predictor_flops"
        num, den = _num(r[key]), _num(po[key])
        b = num / den if num is not None and den else None
        if a is None:
            line = (f"compressor {r['compressor']}: recovery undefined (predictor-only answered none of the "
                    f"{len(both)} shared samples right)")
        else:
            line = (f"compressor {r['compressor']} recovers {a:.0%} [{lo:.0%}, {hi:.0%}] of predictor-only accuracy "
                    f"at {fmt(None if b is None else 100 * b, '.0f')}% of its predictor cost ({unit}; "
                    f"{len(both)} paired samples)")
        out.append({"cell_id": r["cell_id"], "compressor": r["compressor"], "recovery": a, "recovery_lo": lo,
                    "recovery_hi": hi, "cost_share": b, "cost_unit": unit, "paired": len(both), "line": line})
    return out


def research_table(cells: pd.DataFrame) -> str:
    """The arms × compressors table in markdown; judge columns (tokens, dollars: the evaluation's cost, not in the
    totals) where answers were judged."""
    from harness.analyze.render import md_table

    head = ["arm", "compressor", "n", "accuracy [95% CI]", "errors", "rounds", "early stops", "plan failures",
            "pred tok in/out", "pred $", "pred GFLOPs", "comp tok in/out", "comp GFLOPs", "total GFLOPs", "seconds"]
    judged = "judge_prompt_tokens" in cells and cells["judge_prompt_tokens"].notna().any()
    if judged:
        head += ["judge tok in/out", "judge $"]
    has_mi = "mi_bits" in cells and cells["mi_bits"].notna().any()
    if has_mi:
        head += ["summary MI bits [95% CI]", "bits/token"]
    rows = []
    order = {"no-retrieval": 0, "predictor-only": 1, "compressor-predictor": 2, "oracle-evidence": 3}
    cells = cells.assign(_o=cells["arm"].map(order).fillna(9), _p=cells["compressor_params"].fillna(0))
    for _, r in cells.sort_values(["_o", "_p"]).iterrows():
        acc = fmt(r["accuracy"], ".3f") + ("" if is_null(r["acc_lo"])
                                            else f" [{r['acc_lo']:.2f}, {r['acc_hi']:.2f}]")
        pf, cf = _num(r["predictor_flops"]), _num(r["compressor_flops"])
        tot = [x for x in (pf, cf) if x is not None]

        def tok(role: str, r: Any = r) -> str:
            a, b = _num(r[f"{role}_prompt_tokens"]), _num(r[f"{role}_completion_tokens"])
            return "-" if a is None else f"{int(a)}/{int(b or 0)}"

        secs = [x for x in (_num(r["predictor_seconds"]), _num(r["compressor_seconds"])) if x is not None]
        rows.append([r["arm"], _label(r), str(int(r["samples"])), acc, str(int(r["errors"])),
                     fmt(r["rounds_mean"], ".2f"), str(r["early_stops"]), str(r["planning_failures"]),
                     tok("predictor"), fmt(r["predictor_dollars"], ".5f"),
                     fmt(None if pf is None else pf / 1e9, ".1f"), tok("compressor"),
                     fmt(None if cf is None else cf / 1e9, ".1f"),
                     fmt(sum(tot) / 1e9 if tot else None, ".1f"), fmt(sum(secs) if secs else None, ".1f")]
                    + ([tok("judge"), fmt(r["judge_dollars"], ".5f")] if judged else [])
                    + ([fmt(r["mi_bits"], ".3f") + ("" if is_null(r["mi_lo"]) else
                                                     f" [{r['mi_lo']:.2f}, {r['mi_hi']:.2f}]"),
                        fmt(r["bits_per_token"], ".4f")] if has_mi else []))
    return md_table(head, rows)


def mi_note(frames: dict[str, pd.DataFrame], cells: pd.DataFrame) -> str:
    """The summaries' MI where estimated (`harness.research.mi`, a research config with `mi:`), else why not."""
    mi = frames.get("mi_estimates", pd.DataFrame())
    comp = cells[cells["arm"] == "compressor-predictor"]
    if len(mi) and len(comp) and "mode" in mi:
        raw_knobs = dict(zip(frames["cells"]["cell_id"], frames["cells"]["knobs_json"], strict=True))
        lines = []
        for _, r in comp.iterrows():
            kj = raw_knobs.get(r["cell_id"])
            kh = json.loads(kj).get("knob_hash") if isinstance(kj, str) and kj else None
            m = mi[(mi["mode"] == "research") & (mi["knob_hash"] == kh) & (mi["group_id"] == "")]
            if kh is None or m.empty:
                continue
            m = m.sort_values("mi_id").iloc[-1]
            det = json.loads(m["detail_json"]) if isinstance(m["detail_json"], str) else {}
            if isinstance(m["error"], str):
                lines.append(f"- {r['compressor']}: {m['error']}")
            else:
                lines.append(f"- {r['compressor']}: {m['bits']:.3f} bits [{m['ci_lo']:.2f}, {m['ci_hi']:.2f}] over "
                             f"{int(m['n_contexts'])} contexts of {det.get('shared_subqueries')} shared subqueries "
                             f"(M = {int(m['n_samples'])}, scored by {det.get('scorer')}), "
                             f"{m['bits_per_token']:.4f} bits per token of {m['mean_tokens']:.1f}-token summaries")
        if lines:
            return ("MI (the summaries' I(X;Z|Q): Q a subquery several samples of one question group share, X the "
                    "passages each sample's search returned, log2 N the ceiling):\n" + "\n".join(lines))
    s = frames["samples"]
    tasks = set(cells["task"])
    s = s[s["task"].isin(tasks)]
    preds = frames["predictions"]
    ids = set(preds[preds["cell_id"].isin(cells["cell_id"])]["sample_id"])
    s = s[s["sample_id"].isin(ids)]
    sizes = s.groupby("group_id")["sample_id"].nunique() if len(s) else pd.Series(dtype=int)
    multi = int((sizes >= 2).sum())
    if multi == 0:
        return ("MI (bits per token of the summaries): does not apply here. The estimator needs several contexts "
                "behind one question text (a group), so that a summary can be scored under each; every question "
                f"group in these cells has one sample ({len(sizes)} groups)."
                + (" With a pooled corpus that is the only sound setting for synthetic-multidoc: a group's samples "
                   "name the same entities with different facts, so pooling two of them would put contradicting "
                   "passages in one corpus (research.corpus: sample and an `mi:` section estimate it: "
                   "configs/deep-research-mi.yaml)." if any(str(t).startswith("synthetic") for t in tasks) else ""))
    return (f"MI (bits per token of the summaries): {multi} question group(s) have several samples, but it was not "
            "estimated: add an `mi:` section to the research config (with research.corpus: sample, each sample "
            "searches its own passages, so a subquery the group shares is asked of different contexts).")


def label_boxes(anchors: Any, sizes: Any, offset: tuple[float, float] = (4.0, 4.0), gap: float = 2.0,
                bounds: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Lower-left corners of label boxes (display units) placed next to their points so that no two boxes overlap
    (pure, deterministic). `anchors`: (n, 2) points; `sizes`: (n, 2) box widths and heights. Labels are placed in
    order of their points (x, then y, then index), each at `offset` right of and above its point or, where that box
    meets one already placed, stacked one box height (+ `gap`) above or below, alternating (0, +1, -1, +2, …); then
    the same left of the point. Boxes within `bounds` (x0, y0, x1, y1) come first. A label with no free slot goes
    above every placed box."""
    a = np.asarray(anchors, dtype=float).reshape(-1, 2)
    s = np.asarray(sizes, dtype=float).reshape(-1, 2)
    out = np.zeros_like(a)
    placed: list[np.ndarray] = []  # [x0, y0, x1, y1]

    def free(b: np.ndarray) -> bool:
        return all(b[0] >= p[2] or b[2] <= p[0] or b[1] >= p[3] or b[3] <= p[1] for p in placed)

    steps = [0] + [k * sign for k in range(1, 2 * len(a) + 2) for sign in (1, -1)]
    for i in sorted(range(len(a)), key=lambda i: (a[i, 0], a[i, 1], i)):
        w, h = s[i]
        y0 = a[i, 1] + offset[1]
        boxes = [np.array([x0, y0 + k * (h + gap), x0 + w, y0 + k * (h + gap) + h])
                 for x0 in (a[i, 0] + offset[0], a[i, 0] - offset[0] - w) for k in steps]
        inside = [b for b in boxes if bounds is None or (b[0] >= bounds[0] and b[1] >= bounds[1]
                                                         and b[2] <= bounds[2] and b[3] <= bounds[3])]
        box = next((b for b in inside + boxes if free(b)), None)
        if box is None:
            top = max(p[3] for p in placed)
            box = np.array([boxes[0][0], top + gap, boxes[0][2], top + gap + h])
        placed.append(box)
        out[i] = box[:2]
    return out


def _place_labels(fig: Any, ax: Any, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str]) -> None:
    """Label each point without overlaps (`label_boxes` in display space, measured with the figure's renderer); a
    label moved off its point gets a thin leader line to it."""
    r = fig.canvas.get_renderer()
    pts = ax.transData.transform(np.column_stack([xs, ys]))
    texts = [ax.annotate(lab, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, ha="left",
                         va="bottom") for x, y, lab in zip(xs, ys, labels, strict=True)]
    sizes = [(b.width, b.height) for b in (t.get_window_extent(r) for t in texts)]
    k = 72.0 / fig.dpi  # display pixels → points
    box = ax.get_window_extent(r)
    ll = label_boxes(pts, sizes, offset=(4 / k, 4 / k), bounds=(box.x0, box.y0, box.x1, box.y1))
    for t, p, q, sz in zip(texts, pts, ll, sizes, strict=True):
        dx, dy = (q - p) * k
        h = sz[1]
        t.xyann = (dx, dy)
        if abs(dy - 4) > h * k / 2:
            ax.annotate("", (t.xy[0], t.xy[1]), xytext=(dx if dx > 0 else dx + sz[0] * k, dy + h * k / 2),
                        textcoords="offset points",
                        arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"})


def frontier_plot(cells: pd.DataFrame, path: Path) -> list[Path]:
    """Accuracy (95% CI) against predictor cost per sample (left: dollars, or GFLOPs without prices) and total
    GFLOPs per sample (right), one point per cell, compressor-predictor points labelled by compressor size, the
    Pareto frontier drawn; saved as PNG, SVG and PDF (`render.save_figure`), which it returns (PNG first); none
    when there is nothing to plot."""
    from harness.analyze.render import pyplot, save_figure

    d = cells[cells["accuracy"].notna()].copy()
    if d.empty:
        return []
    plt = pyplot()
    n = d["samples"].clip(lower=1).astype(float)
    priced = d["predictor_dollars"].notna().all()
    d["x_pred"] = (d["predictor_dollars"] if priced else d["predictor_flops"] / 1e9).astype(float) / n
    d["x_tot"] = (d["predictor_flops"].fillna(0).astype(float) + d["compressor_flops"].fillna(0).astype(float)) \
        / 1e9 / n
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, col, xl in ((axes[0], "x_pred", "predictor $ per sample" if priced else "predictor GFLOPs per sample"),
                        (axes[1], "x_tot", "total GFLOPs per sample (compressor + predictor)")):
        for _, r in d.iterrows():
            y = float(r["accuracy"])
            err = [[y - float(r["acc_lo"])], [float(r["acc_hi"]) - y]]
            cp = r["arm"] == "compressor-predictor"
            ax.errorbar(r[col], y, yerr=err, fmt="o" if cp else "s", capsize=3,
                        color="C0" if cp else {"predictor-only": "C3", "no-retrieval": "C7",
                                               "oracle-evidence": "C2"}.get(r["arm"], "C1"))
        f = pareto_front(d[col].tolist(), d["accuracy"].astype(float).tolist())
        ax.plot(d[col].iloc[f], d["accuracy"].iloc[f].astype(float), "--", color="k", lw=0.8, label="frontier")
        ax.set_xlabel(xl)
        ax.set_ylabel("accuracy (95% CI)")
        ax.set_ylim(-0.05, 1.05)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Deep-Research: cost–accuracy frontier across compressor sizes", fontsize=10)
    fig.tight_layout()
    labels = [r["compressor"].split("/")[-1] if r["arm"] == "compressor-predictor" else r["arm"]
              for _, r in d.iterrows()]
    for ax, col in ((axes[0], "x_pred"), (axes[1], "x_tot")):
        _place_labels(fig, ax, d[col].astype(float).tolist(), d["accuracy"].astype(float).tolist(), labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path)


def research_summary(url: str | Path, cell_ids: Sequence[str] | None = None, plot: Path | None = None
                     ) -> dict[str, Any]:
    """The research cells of a store: rows, headline lines, the markdown table (and the frontier plot at `plot`)."""
    from harness.results import load

    frames = load(url)
    cells, preds = research_frames(frames, cell_ids)
    heads = headlines(cells, preds) if len(cells) else []
    table = research_table(cells) if len(cells) else "(no research cells)\n"
    text = table + "\n\n" + "\n".join(h["line"] for h in heads) + ("\n" if heads else "")
    if len(cells):
        text += "\n" + mi_note(frames, cells) + "\n"
    out: dict[str, Any] = {"rows": json.loads(cells.to_json(orient="records")) if len(cells) else [],
                           "headlines": heads, "table": text}
    if plot is not None and len(cells):
        files = frontier_plot(cells, plot)
        out["plot"] = str(files[0]) if files else None
    return out


def research_section(frames: dict[str, pd.DataFrame], folder: Path, run_id: str | None = None,
                     cells: pd.DataFrame | None = None, preds: pd.DataFrame | None = None
                     ) -> tuple[list[str], list[Path], list[Path]]:
    """The report's Deep-Research section (markdown lines), its plot (PNG) and the plot's files (PNG, SVG, PDF);
    empty without research cells. `cells`, `preds`: the report's `cell_frame`, so cells are not summarised twice."""
    cells, preds = research_frames(frames, cells=cells, preds=preds)
    if run_id is not None and len(cells):
        cells = cells[cells["run_id"] == run_id]
    if cells.empty:
        return [], [], []
    groups = config_groups(frames, cells)
    L, pngs, files = ["## Deep-Research", ""], [], []
    if len(groups) > 1:
        L += [f"{len(groups)} research configs in this store (a cell id's `research-<hash>` prefix), newest first; "
              "configs whose cells answered nothing are left out.", ""]
    for k, (base, label, cg) in enumerate(groups):
        if len(groups) > 1:
            L += [f"### {label}", ""]
        L += [research_table(cg), ""]
        for h in headlines(cg, preds):
            L.append(f"- **{h['line']}**")
        L += ["", mi_note(frames, cg), ""]
        f = frontier_plot(cg, folder / ("research_frontier.png" if k == 0 else f"research_frontier-{base}.png"))
        if f:
            L += [f"![cost–accuracy frontier]({f[0].name})", ""]
            pngs.append(f[0])
            files += f
    return L, pngs, files


def config_groups(frames: dict[str, pd.DataFrame], cells: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """The research cells by config (`research-<hash>`, the cell id's prefix), newest run first, without configs
    none of whose cells has a sample: (hash, label, cells). The label names the config's run and the settings that
    differ between the configs (pure over the frames)."""
    from harness.analyze.frames import flatten_knobs, varying_knobs

    base = cells["cell_id"].astype(str).str.split("/").str[0]
    runs = frames["runs"].set_index("run_id")
    knobs = dict(zip(frames["cells"]["cell_id"], frames["cells"]["knobs_json"], strict=True))
    out, flat = [], {}
    for b, cg in cells.groupby(base, sort=False):
        if not (pd.to_numeric(cg["samples"], errors="coerce").fillna(0) > 0).any():
            continue
        kj = knobs.get(cg["cell_id"].iloc[0])
        d = flatten_knobs({k: v for k, v in (json.loads(kj) if isinstance(kj, str) and kj else {}).items()
                      if k not in ("research_arm", "compressor", "knob_hash")})
        flat[str(b)] = d
        rid = cg["run_id"].max()
        out.append((str(b), rid, cg))
    differ = varying_knobs(list(flat.values()))
    res = []
    for b, rid, cg in sorted(out, key=lambda t: str(t[1]), reverse=True):
        name = runs["name"].get(rid, "") if rid in runs.index else ""
        diff = ", ".join(f"{k}: {json.dumps(flat[b].get(k), default=str)}" for k in differ)
        res.append((b, f"{name} ({b}, run {rid})" + (f": {diff}" if diff else ""), cg))
    return res


def format_trace(steps: Sequence[dict[str, Any]], width: int = 400) -> str:
    """One sample's episode as text, a line per step (`Store.trace` rows): kind, round, role, tokens, seconds, cost,
    then what the step read or wrote (subqueries, retrieved ids, summary, answer) or its error."""
    lines = []
    for st in steps:
        p = st.get("payload") or {}
        cost = " ".join(x for x in (f"{st['flops'] / 1e9:.1f} GFLOPs" if st.get("flops") else "",
                                    f"${st['dollars']:.6f}" if st.get("dollars") else "") if x)
        head = (f"[{st['step']}] {st['kind']} (round {st['round']}, {st['role'] or '-'}) "
                f"tok {st['prompt_tokens']}/{st['completion_tokens']}, {float(st['seconds']):.1f} s"
                + (f", {cost}" if cost else ""))
        if st["kind"] == "search":
            body = f"query {p.get('query')!r} -> {list(zip(p.get('ids', []), p.get('titles', []), strict=False))}"
        elif st["kind"] in ("plan", "follow-up"):
            body = (f"subqueries {[s['query'] for s in p.get('subqueries', [])]}" + (" (done)" if p.get("done") else "")
                    if not st.get("error") else f"reply {p.get('text', '')!r}")
        elif st["kind"] == "compress":
            body = f"subtask {p.get('subtask')!r} over {p.get('ids')} -> summary {p.get('text', '')!r}"
        else:
            body = f"reads {p.get('reads')} -> answer {p.get('text', '')!r}"
        lines.append(head + "\n    " + body[:width] + (f"\n    ERROR: {st['error']}" if st.get("error") else ""))
    return "\n".join(lines)
