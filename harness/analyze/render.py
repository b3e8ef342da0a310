"""Rendering for the analysis layer: number formatting, markdown tables and matplotlib plots.

Pure presentation: every function takes numbers already computed (by `frames`, `stats`) and returns text or
writes a PNG. `report` and `compare` format through these, so a number prints the same way in both.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
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

#: one marker per series (cycled), so a series under another still shows
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
#: the formats written beside each other for every plot
PLOT_FORMATS = (".png", ".svg", ".pdf")


@dataclass(frozen=True)
class RefLine:
    """A horizontal reference line (e.g. the full-context accuracy of one predictor) with an optional band."""

    label: str
    y: float
    lo: float | None = None
    hi: float | None = None
    style: str = "--"


def dodge_factors(k: int, spread: float = 0.08) -> np.ndarray:
    """Multiplicative x offsets (centred on 1) for `k` series on a log axis, so points at one x do not overlap:
    2^(spread·(i − (k−1)/2)) for i < k."""
    i = np.arange(max(int(k), 0), dtype=float)
    return np.power(2.0, spread * (i - (k - 1) / 2.0))


def size_ticks(ax: Any, sizes: Sequence[float]) -> None:
    """Log x axis with ticks at the parameter counts in `sizes`, labelled "135M", "0.5B" (no 2×10⁸)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    xs = sorted({float(s) for s in sizes if s and np.isfinite(s)})
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(xs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt_size(v)))
    ax.xaxis.set_minor_locator(NullLocator())
    if xs:
        ax.set_xlim(xs[0] / 1.6, xs[-1] * 1.6)


def fmt_size(p: float) -> str:
    """A parameter count for a tick, as papers name models: "135M", "0.5B" (for 494M), "1.5B" (1.54B), "7.6B"."""
    if p >= 4.5e8:
        return f"{round(p / 1e9, 1):g}B"
    return f"{p / 1e6:.3g}M"


def save_figure(fig: Any, path: Path) -> list[Path]:
    """Save `fig` as PNG, SVG and PDF (`path` with each suffix of `PLOT_FORMATS`), legend included; returns them."""
    plt = pyplot()
    out = []
    for ext in PLOT_FORMATS:
        q = Path(path).with_suffix(ext)
        fig.savefig(q, bbox_inches="tight", metadata=_PLOT_METADATA.get(ext))
        out.append(q)
    plt.close(fig)
    return out


# no creation date in SVG/PDF, so the files of one store are byte-stable
_PLOT_METADATA: dict[str, dict[str, Any]] = {".svg": {"Date": None}, ".pdf": {"CreationDate": None}}


def _legend_outside(ax: Any) -> None:
    """The legend to the right of the axes, off the data (nothing when no artist is labelled)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  frameon=False)  # fmt: skip


def line_figure(
    series: Series,
    xlabel: str,
    ylabel: str,
    title: str,
    refs: Sequence[RefLine] = (),
    ceiling: tuple[str, Sequence[tuple[float, float]]] | None = None,
    ylim: tuple[float | None, float | None] | None = None,
    sizes: bool = True,
) -> Any:
    """A figure with one line per series: its own marker, error bars where a point has an interval, dodged in x
    so series at the same x stay visible; reference lines (`refs`), a ceiling ((label, [(x, y)]): one dashed
    line when every y is equal, else a tick per point) and a size axis ("135M", "0.5B") when `sizes`."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    names = sorted(series)
    dodge = dodge_factors(len(names))
    for k, label in enumerate(names):
        pts = sorted(series[label])
        x = np.array([p[0] for p in pts]) * dodge[k]
        y = np.array([p[1] for p in pts])
        lo = np.array([np.nan if p[2] is None else p[2] for p in pts], dtype=float)
        hi = np.array([np.nan if p[3] is None else p[3] for p in pts], dtype=float)
        err = np.vstack([np.nan_to_num(np.maximum(y - lo, 0)), np.nan_to_num(np.maximum(hi - y, 0))])
        has = np.isfinite(lo) & np.isfinite(hi)
        ax.errorbar(x, y, yerr=err if has.any() else None, marker=MARKERS[k % len(MARKERS)], markersize=6,
                    capsize=3, linewidth=1.2, label=label, zorder=3)  # fmt: skip
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    same = {}  # reference lines at one y (e.g. two predictors' no-context accuracy) interleave their dashes
    for r in refs:
        same.setdefault(round(r.y, 9), []).append(r)
    for j, r in enumerate(refs):
        c = colors[(len(names) + j) % len(colors)]
        group = same[round(r.y, 9)]
        style: Any = r.style
        if len(group) > 1:
            k = next(i for i, g in enumerate(group) if g is r)
            style = (3.0 * k, (3.0, 3.0 * (len(group) - 1)))
        ax.axhline(r.y, color=c, linestyle=style, linewidth=1.4 if len(group) > 1 else 1.1, label=r.label, zorder=2)
        if r.lo is not None and r.hi is not None:
            ax.axhspan(r.lo, r.hi, color=c, alpha=0.08, zorder=1)
    if ceiling is not None:
        label, cpts = ceiling
        ys = {round(float(y), 9) for _, y in cpts}
        if len(ys) == 1:
            ax.axhline(next(iter(ys)), color="0.3", linestyle=(0, (4, 2)), linewidth=1.0, label=label, zorder=2)
        elif cpts:
            ax.scatter([x for x, _ in cpts], [y for _, y in cpts], marker="_", s=160, color="0.3", label=label,
                       zorder=2)  # fmt: skip
    if sizes:
        size_ticks(ax, [p[0] for pts in series.values() for p in pts])
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return fig


def line_plot(path: Path, series: Series, xlabel: str, ylabel: str, title: str, **kw: Any) -> list[Path]:
    """`line_figure` saved as PNG, SVG and PDF beside each other; returns the files."""
    return save_figure(line_figure(series, xlabel, ylabel, title, **kw), path)


@dataclass(frozen=True)
class RDPoint:
    """One rate–distortion point: R in bits with its interval, D = 1 − accuracy with its interval, a label."""

    label: str
    r: float
    r_lo: float | None
    r_hi: float | None
    d: float
    d_lo: float
    d_hi: float


def rd_figure(points: Sequence[RDPoint], fit: Any, title: str, ceiling: float | None = None) -> Any:
    """Rate–distortion points (R = MI bits, D = 1 − accuracy), each with its own marker and 95% intervals on both
    axes, D on [0, 1], the fitted C·exp(−bR)+D0 when `fit.ok`, the log2 N ceiling of R when given."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for k, p in enumerate(points):
        xerr = None
        if p.r_lo is not None and p.r_hi is not None:
            xerr = [[max(p.r - p.r_lo, 0.0)], [max(p.r_hi - p.r, 0.0)]]
        ax.errorbar([p.r], [p.d], xerr=xerr, yerr=[[max(p.d - p.d_lo, 0.0)], [max(p.d_hi - p.d, 0.0)]],
                    marker=MARKERS[k % len(MARKERS)], markersize=6, capsize=3, linestyle="none", label=p.label,
                    zorder=3)  # fmt: skip
    rmax = max([p.r_hi if p.r_hi is not None else p.r for p in points] + [ceiling or 0.0, 1e-3])
    if fit.ok:
        grid = np.linspace(0.0, rmax * 1.05, 200)
        ax.plot(grid, fit.predict(grid), color="0.2", linewidth=1.2, label=f"fit C·exp(−bR)+D0, D0={fit.D0:.2f}")
    else:
        ax.text(0.02, 0.03, "no fit: " + (fit.note or "failed"), transform=ax.transAxes, fontsize=7)
    if ceiling is not None:
        ax.axvline(ceiling, color="0.3", linestyle=(0, (4, 2)), linewidth=1.0, label=f"log2 N = {ceiling:.2f} bits")
    rmin = min([0.0] + [p.r_lo if p.r_lo is not None else p.r for p in points])  # an estimate can fall below 0
    ax.set_xlim(left=rmin - (0.05 * (rmax - rmin) if rmin < 0 else 0.0), right=rmax * 1.08)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("rate R (MI bits, 95% CI)")
    ax.set_ylabel("distortion D = 1 − accuracy (95% CI)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return fig


def rd_plot(path: Path, points: Sequence[RDPoint], fit: Any, title: str, ceiling: float | None = None) -> list[Path]:
    """`rd_figure` saved as PNG, SVG and PDF; returns the files."""
    return save_figure(rd_figure(points, fit, title, ceiling), path)
