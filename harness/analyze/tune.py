"""Filter tuning and the report's filter sections, computed from arrays and store frames only (no model).

- `pareto_front`: which (compression rate, accuracy) points no other point beats on both (pure numpy);
- `split_dev_test`: a seeded, disjoint dev/test split of sample ids, whole question groups on one side;
- `choose`: the setting that maximises the objective on dev (`accuracy` under a rate limit, or the lowest mean
  `ib` score), reading dev numbers only;
- `ib_terms_frame` / `filter_section`: the report's per-filter mean IB terms (the `compression_terms` rows a filter
  compression stores) and the accuracy-vs-compression-rate plot of filter cells with their Pareto front.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.analyze.render import md_table, pyplot, save_figure, slug

OBJECTIVES = ("accuracy", "ib")


def pareto_front(rate: Sequence[float], accuracy: Sequence[float]) -> np.ndarray:
    """Mask of the points on the Pareto front (pure): no other point has a rate <= and an accuracy >= with one
    of the two strictly better. Equal points are all on the front; NaN points never are."""
    r = np.asarray(rate, dtype=np.float64)
    a = np.asarray(accuracy, dtype=np.float64)
    ok = ~(np.isnan(r) | np.isnan(a))
    le_r = r[None, :] <= r[:, None]  # [i, j]: j's rate <= i's
    ge_a = a[None, :] >= a[:, None]
    strict = (r[None, :] < r[:, None]) | (a[None, :] > a[:, None])
    dominated = (le_r & ge_a & strict & ok[None, :]).any(axis=1)
    return ok & ~dominated


def split_dev_test(ids: Sequence[str], groups: Sequence[str], dev_fraction: float, seed: int
                   ) -> tuple[list[str], list[str]]:
    """(dev ids, test ids): disjoint, seeded, each question group wholly on one side (pure); both sides get at
    least one group when there are two or more. Ids keep their input order."""
    if not 0 < dev_fraction < 1:
        raise ValueError(f"dev_fraction must be in (0, 1); got {dev_fraction}")
    uniq = sorted(set(groups))
    perm = np.random.default_rng(seed).permutation(len(uniq))
    n_dev = min(max(round(dev_fraction * len(uniq)), 1), max(len(uniq) - 1, 1))
    dev_groups = {uniq[i] for i in perm[:n_dev]}
    dev = [i for i, g in zip(ids, groups, strict=True) if g in dev_groups]
    test = [i for i, g in zip(ids, groups, strict=True) if g not in dev_groups]
    return dev, test


def choose(rows: Sequence[dict[str, Any]], objective: str = "accuracy", max_rate: float | None = None) -> int | None:
    """Index of the row (one setting's dev numbers: `accuracy`, `rate`, `ib_score`) that maximises the objective
    (pure): `accuracy`: the best accuracy among rows with rate <= max_rate (ties: lower rate, then earlier);
    `ib`: the lowest mean ib_score (ties: higher accuracy, then earlier). None when no row qualifies."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}; got {objective!r}")

    def num(x: Any) -> float | None:
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)

    best, best_key = None, None
    for i, r in enumerate(rows):
        acc, rate, ib = num(r.get("accuracy")), num(r.get("rate")), num(r.get("ib_score"))
        if max_rate is not None and (rate is None or rate > max_rate):
            continue
        if objective == "accuracy":
            if acc is None:
                continue
            key = (-acc, rate if rate is not None else math.inf, i)
        else:
            if ib is None:
                continue
            key = (ib, -(acc or 0.0), i)
        if best_key is None or key < best_key:
            best, best_key = i, key
    return best


# ---------------------------------------------------------------------------- report sections

TERM_COLUMNS = ("conciseness_bits", "correctness_bits", "ib_score", "compression_rate", "abstain",
                "support_precision", "support_recall")


def ib_terms_frame(frames: dict[str, pd.DataFrame], run_id: str | None = None) -> pd.DataFrame:
    """Per (task, filter): the number of compressions with IB terms and the mean of each term (NaN-free means)."""
    terms = frames.get("compression_terms")
    if terms is None or terms.empty:
        return pd.DataFrame(columns=["task", "filter", "n", *TERM_COLUMNS])
    comps = frames["compressions"][["compression_id", "task", "compressor_model_id", "run_id"]]
    if run_id is not None:
        comps = comps[comps["run_id"] == run_id]
    models = frames["models"].set_index("model_id")
    wide = terms.pivot_table(index="compression_id", columns="name", values="value", aggfunc="first")
    df = comps.merge(wide, left_on="compression_id", right_index=True)
    if df.empty:
        return pd.DataFrame(columns=["task", "filter", "n", *TERM_COLUMNS])

    def label(mid: Any) -> str:
        m = models.loc[int(mid)]
        return f"{m['backend']}/{m['name']} [{str(m['revision'])[:6]}]"

    df["filter"] = df["compressor_model_id"].map(label)
    out = []
    for (task, filt), g in df.groupby(["task", "filter"], sort=True):
        row: dict[str, Any] = {"task": task, "filter": filt, "n": len(g)}
        for c in TERM_COLUMNS:
            row[c] = float(g[c].mean()) if c in g and g[c].notna().any() else float("nan")
        out.append(row)
    return pd.DataFrame(out)


def _f(x: Any, nd: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def pareto_plot(path: Path, rates: Sequence[float], accs: Sequence[float], labels: Sequence[str], title: str,
                reference: Sequence[tuple[float, float]] = ()) -> list[Path]:
    """Accuracy against compression rate, one marker per point, the Pareto front as a step line and an optional
    reference curve (the ib-oracle's points); PNG, SVG and PDF."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.4, 4.2), dpi=110)
    r, a = np.asarray(rates, dtype=float), np.asarray(accs, dtype=float)
    for x, y, lab in zip(r, a, labels, strict=True):
        ax.scatter([x], [y], s=28, zorder=3, label=lab)
    front = pareto_front(r, a)
    if front.any():  # ringed points joined by a step line (one point alone is still ringed)
        idx = np.argsort(r[front])
        ax.step(r[front][idx], a[front][idx], where="post", color="0.2", linewidth=1.2)
        ax.scatter(r[front][idx], a[front][idx], s=90, facecolors="none", edgecolors="0.2", linewidths=1.2,
                   zorder=4, label="Pareto front")
    if len(reference):
        ref = sorted(reference)
        ax.plot([p[0] for p in ref], [p[1] for p in ref], linestyle=(0, (4, 2)), color="tab:red", marker="x",
                label="ib-oracle")
    ax.set_xlabel("compression rate (compressed / retrieved tokens; log scale above 0.01)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    # rates span 0 (abstain) to 1 (every passage): log above 0.01 keeps the sentence-level filters apart
    ax.set_xscale("symlog", linthresh=0.01, linscale=0.5)
    ax.set_xlim(-0.001, 1.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return save_figure(fig, path)


def filter_section(frames: dict[str, pd.DataFrame], cells: pd.DataFrame, folder: Path, plots: list[Path],
                   run_id: str | None = None) -> list[str]:
    """The report's filter sections: mean IB terms per filter, and per task the accuracy-vs-compression-rate plot
    of the compressed cells whose compressor is a filter (Pareto front marked). Empty without filter rows."""
    L: list[str] = []
    ib = ib_terms_frame(frames, run_id)
    if not ib.empty:
        L += ["## IB terms per filter", "",
              "Means over each filter's compressions of the IB terms its scorer gave (bits; ib_score = conciseness − "
              "β·correctness; rate = compressed / retrieved tokens; abstain = share of empty compressions; support "
              "= gold supporting sentences kept, where the task labels them).", ""]
        L.append(md_table(["task", "filter", "n", "conciseness", "correctness", "ib_score", "rate", "abstain",
                           "support P", "support R"],
                          [[r.task, r.filter, str(r.n), _f(r.conciseness_bits, 2), _f(r.correctness_bits, 2),
                            _f(r.ib_score, 2), _f(r.compression_rate), _f(r.abstain, 2), _f(r.support_precision),
                            _f(r.support_recall)] for r in ib.itertuples()]))
        L.append("")
    if cells.empty:
        return L
    backend = frames["models"].set_index("model_id")["backend"]
    fc = cells[cells["compressor_model_id"].notna()]
    # a filter/ compressor, or any compressor tune-filter labelled as a setting (the abstractive LM filter)
    # astype(bool): on no rows, map gives an object Series, which pandas would read as column labels
    labelled = fc["knobs"].map(lambda k: isinstance(k, str) and k.startswith("filter=")).astype(bool)
    fc = fc[fc["compressor_model_id"].map(lambda m: backend.get(int(m)) == "filter").astype(bool) | labelled]
    fc = fc[fc["token_ratio"].notna() & fc["accuracy"].notna()]
    if fc.empty:
        return L
    L += ["## Filters: accuracy vs compression rate", "", "One plot per task and run (a tune-filter's dev and test "
          "splits are runs of their own).", ""]
    for (task, rid), g in fc.groupby(["task", "run_id"], sort=True):
        labels = [k.removeprefix("filter=") if isinstance(k, str) and k.startswith("filter=") else str(c)
                  for c, k in zip(g["compressor"], g["knobs"], strict=True)]
        fname = f"pareto-{slug(str(task))}" + ("" if fc[fc["task"] == task]["run_id"].nunique() == 1
                                                else f"-{slug(str(rid))}")
        plots += pareto_plot(folder / fname, g["token_ratio"].tolist(), g["accuracy"].tolist(), labels,
                             f"{task}: filter cells of run {rid} ({int(g['n'].max())} samples)")
        front = pareto_front(g["token_ratio"], g["accuracy"])
        L.append(f"### {task}, run {rid}")
        L.append("")
        L.append(md_table(["cell", "rate", "accuracy", "on front"],
                          [[str(c), _f(r), _f(a), "yes" if f else ""] for c, r, a, f in
                           zip(g["cell_id"], g["token_ratio"], g["accuracy"], front, strict=True)]))
        L.append("")
        L.append(f"![{task}]({fname}.png)")
        L.append("")
    return L
