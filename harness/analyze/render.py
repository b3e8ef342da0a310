"""Rendering for the analysis layer: number formatting, markdown tables and matplotlib plots.

Pure presentation: every function takes numbers already computed (by `frames`, `stats`) and returns text or
writes a PNG. `report` and `compare` format through these, so a number prints the same way in both.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.analyze.frames import is_null

# ----------------------------------------------------------------------------- formatting


def fmt(x: Any, spec: str = ".3f") -> str:
    """`x` formatted with `spec`, "-" when missing."""
    if is_null(x):
        return "-"
    return format(x, spec)


def fmt_num(x: Any) -> str:
    """A count or total: integers plainly, else 3 significant digits (scientific from 1e5), "-" when missing."""
    if is_null(x):
        return "-"
    x = float(x)
    if x.is_integer() and abs(x) < 1e9:
        return f"{x:.0f}"
    return f"{x:.3g}" if abs(x) < 1e5 else f"{x:.3e}"


def fmt_params(p: float | None) -> str:
    """A parameter count as "135M" / "1.5B", "-" when unknown."""
    if p is None:
        return "-"
    return f"{p / 1e9:.3g}B" if p >= 1e9 else f"{p / 1e6:.3g}M"


def fmt_cost_pair(actual: Any, uncached: Any) -> str:
    """ "actual / as-if-uncached", or "-" when the cost is unknown."""
    u = fmt_num(uncached)
    return "-" if u == "-" else f"{fmt_num(actual)} / {u}"


def fmt_accuracy(r: pd.Series | dict[str, Any]) -> str:
    """ "0.625 [0.31, 0.86]" from a cell row's accuracy, acc_lo, acc_hi; "-" without a verdict."""
    if is_null(r["accuracy"]):
        return "-"
    return f"{r['accuracy']:.3f} [{r['acc_lo']:.2f}, {r['acc_hi']:.2f}]"


def fmt_mi_bits(bits: float, mc_se: Any, lo: Any, hi: Any) -> str:
    """ "2.51 ±0.02 MC [pop 2.25, 2.77]": MC standard error given the contexts, population interval over them."""
    mc = "" if is_null(mc_se) else f" ±{mc_se:.2f} MC"
    ci = f" [pop {lo:.2f}, {hi:.2f}]" if not is_null(lo) and not is_null(hi) else ""
    return f"{bits:.2f}{mc}{ci}"


def fmt_mi(r: pd.Series | dict[str, Any]) -> str:
    """A cell row's MI (mi_bits, mi_mc_se, mi_lo, mi_hi) as `fmt_mi_bits`, "-" without one."""
    if is_null(r["mi_bits"]):
        return "-"
    return fmt_mi_bits(r["mi_bits"], r.get("mi_mc_se"), r["mi_lo"], r["mi_hi"])


def fmt_p(p: float) -> str:
    """A p-value: 2 significant digits, scientific below 1e-4, "-" when missing."""
    if is_null(p):
        return "-"
    if p == 0:
        return "0"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def md_table(head: list[str], rows: list[list[str]]) -> str:
    """A markdown table (pipes in cells escaped)."""
    esc = [[str(c).replace("|", "\\|") for c in r] for r in rows]
    return "\n".join(
        ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in esc)]
    )


def slug(s: str) -> str:
    """A file-name-safe lower-case slug (at most 60 characters)."""
    return re.sub(r"[^a-z0-9.]+", "-", s.lower()).strip("-")[:60] or "x"


# ----------------------------------------------------------------------------- plots


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# label -> points (x, y, y_lo or None, y_hi or None)
Series = dict[str, list[tuple[float, float, float | None, float | None]]]


def line_plot(path: Path, series: Series, xlabel: str, ylabel: str, title: str, logx: bool = True) -> None:
    """One line per series label, with error bars where every point has an interval; saved to `path`."""
    plt = pyplot()
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


def rd_plot(path: Path, r: np.ndarray, dist: np.ndarray, labels: Sequence[Any], fit: Any, title: str) -> None:
    """Rate–distortion scatter (R in MI bits, D = 1 − accuracy) with the fitted curve when `fit.ok`."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=110)
    ax.scatter(r, dist, zorder=3)
    for x, y, lab in zip(r, dist, labels, strict=True):
        ax.annotate(str(lab)[:24], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    if fit.ok:
        grid = np.linspace(0.0, max(float(r.max()) * 1.1, 1e-3), 200)
        ax.plot(grid, fit.predict(grid), label=f"C·exp(−bR)+D0, D0={fit.D0:.2f}")
        ax.legend(fontsize=7)
    else:
        ax.text(0.02, 0.03, "no fit: " + (fit.note or "failed"), transform=ax.transAxes, fontsize=7)
    ax.set_xlabel("rate R (MI bits)")
    ax.set_ylabel("distortion D = 1 − accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
