"""Statistics for the analysis layer: pure functions over numpy arrays and DataFrames (no models, no store).

- `fit_rate_distortion`: D(R) = C·exp(−b·R) + D0 by least squares, with bootstrap intervals over points.
- `logistic_factors`: logistic regression of correctness on factors, cluster-robust intervals, Wald and LR tests
  per factor, notes on confounded or constant factors; with fewer than `FEW_CLUSTERS` clusters a small-sample
  correction (t with G − 1 df) and the LR test preferred (`few_clusters`, `preferred_test`).
- `paired_bootstrap_diff`, `mcnemar_exact`: paired comparison of two 0/1 arrays.
- `correlation`: Pearson and Spearman with n.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

MIN_RD_POINTS = 5
#: below this many clusters the cluster-robust (sandwich) covariance is biased low and its Wald tests over-reject
FEW_CLUSTERS = 20


# ----------------------------------------------------------------------------- rate–distortion


def rd_curve(r: np.ndarray | float, c: float, b: float, d0: float) -> np.ndarray:
    """D(R) = C·exp(−b·R) + D0."""
    return c * np.exp(-b * np.asarray(r, dtype=float)) + d0


@dataclass(frozen=True)
class RDFit:
    """A rate–distortion fit. `identifiable` False means too few distinct points: no fit was tried.

    `ok` is True when the point fit converged; `ci` maps "C", "b", "D0" to 95% bootstrap intervals (percentile)
    from the `n_boot_ok` resamples whose fit converged. `note` says why something is missing.
    """

    n_points: int
    n_distinct: int
    identifiable: bool
    ok: bool = False
    C: float | None = None
    b: float | None = None
    D0: float | None = None
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    n_boot: int = 0
    n_boot_ok: int = 0
    rmse: float | None = None
    note: str = ""

    def predict(self, r: np.ndarray | float) -> np.ndarray:
        """The fitted curve at rates `r` (ValueError when there is no fit)."""
        if not self.ok or self.C is None or self.b is None or self.D0 is None:
            raise ValueError("no fitted rate–distortion curve")
        return rd_curve(r, self.C, self.b, self.D0)


_RD_LO = [0.0, 1e-9, 0.0]
_RD_HI = [np.inf, np.inf, 1.0]


def _rd_fit_once(r: np.ndarray, d: np.ndarray, p0: Sequence[float] | None = None) -> np.ndarray | None:
    """Least-squares parameters (C, b, D0), or None when the optimiser fails."""
    if p0 is None:
        d0 = float(np.clip(d.min(), 0.0, 0.999))
        c0 = max(float(d.max() - d.min()), 1e-3)
        span = float(r.max() - r.min())
        p0 = [c0, 1.0 / span if span > 0 else 1.0, d0]
    else:
        p0 = [max(float(p0[0]), 1e-6), max(float(p0[1]), 1e-6), float(np.clip(p0[2], 0.0, 0.999))]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p, _ = optimize.curve_fit(rd_curve, r, d, p0=p0, bounds=(_RD_LO, _RD_HI), maxfev=20000)
    except (RuntimeError, ValueError, optimize.OptimizeWarning, FloatingPointError):
        return None
    if not np.all(np.isfinite(p)):
        return None
    return p


def _finite_pairs(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray,
                  names: str) -> tuple[np.ndarray, np.ndarray]:
    """Two equal-length float arrays with every pair holding a NaN or inf dropped."""
    u = np.asarray(x, dtype=float).ravel()
    v = np.asarray(y, dtype=float).ravel()
    if u.shape != v.shape:
        raise ValueError(f"{names} differ in length ({u.size} vs {v.size})")
    keep = np.isfinite(u) & np.isfinite(v)
    return u[keep], v[keep]


def fit_rate_distortion(
    R: Sequence[float] | np.ndarray, D: Sequence[float] | np.ndarray, n_boot: int = 1000, seed: int = 0
) -> RDFit:
    """Fit D(R) = C·exp(−b·R) + D0 (C ≥ 0, b > 0, 0 ≤ D0 ≤ 1); bootstrap 95% intervals by resampling points.

    Needs at least `MIN_RD_POINTS` distinct (R, D) points (NaNs dropped); otherwise returns identifiable=False.
    A failed optimisation is reported (ok=False, note), never raised.
    """
    r, d = _finite_pairs(R, D, "R and D")
    n_distinct = len({(float(a), float(b)) for a, b in zip(r, d, strict=True)})
    if n_distinct < MIN_RD_POINTS:
        return RDFit(r.size, n_distinct, False, note=f"not identifiable ({n_distinct} points; need ≥ {MIN_RD_POINTS})")
    p = _rd_fit_once(r, d)
    if p is None:
        return RDFit(r.size, n_distinct, True, note="the least-squares fit did not converge")
    rmse = float(np.sqrt(np.mean((rd_curve(r, *p) - d) ** 2)))
    rng = np.random.default_rng(seed)
    boots: list[np.ndarray] = []
    for _ in range(max(int(n_boot), 0)):
        idx = rng.integers(0, r.size, r.size)
        if np.unique(r[idx]).size < 3:  # a resample with < 3 rates cannot pin three parameters
            continue
        q = _rd_fit_once(r[idx], d[idx], p)
        if q is not None:
            boots.append(q)
    ci: dict[str, tuple[float, float]] = {}
    note = ""
    if len(boots) >= 20:
        arr = np.vstack(boots)
        for k, name in enumerate(("C", "b", "D0")):
            lo, hi = np.percentile(arr[:, k], [2.5, 97.5])
            ci[name] = (float(lo), float(hi))
    else:
        note = f"too few bootstrap fits converged ({len(boots)} of {n_boot}) for intervals"
    return RDFit(
        r.size,
        n_distinct,
        True,
        True,
        float(p[0]),
        float(p[1]),
        float(p[2]),
        ci,
        int(n_boot),
        len(boots),
        rmse,
        note,
    )


# ----------------------------------------------------------------------------- paired comparisons


@dataclass(frozen=True)
class DiffCI:
    """Mean of a − b over pairs with a 95% percentile bootstrap interval."""

    diff: float
    lo: float
    hi: float
    n: int


def paired_bootstrap_diff(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, n_boot: int = 2000, seed: int = 0
) -> DiffCI:
    """Mean difference mean(a − b) of paired arrays (e.g. 0/1 correctness), 95% CI by resampling pairs."""
    x = np.asarray(a, dtype=float).ravel()
    y = np.asarray(b, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired arrays differ in length ({x.size} vs {y.size})")
    if x.size == 0:
        raise ValueError("no pairs")
    d = x - y
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(max(int(n_boot), 1), d.size))
    means = d[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return DiffCI(float(d.mean()), float(lo), float(hi), int(d.size))


def discordant(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray) -> tuple[int, int]:
    """(a right & b wrong, a wrong & b right) counts of paired 0/1 arrays."""
    x = np.asarray(a, dtype=bool).ravel()
    y = np.asarray(b, dtype=bool).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired arrays differ in length ({x.size} vs {y.size})")
    return int(np.sum(x & ~y)), int(np.sum(~x & y))


def mcnemar_exact(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray) -> float:
    """Exact two-sided McNemar p-value: binomial test of the discordant pairs against 1/2 (1.0 when none)."""
    n10, n01 = discordant(a, b)
    if n10 + n01 == 0:
        return 1.0
    return float(stats.binomtest(n10, n10 + n01, 0.5).pvalue)


# ----------------------------------------------------------------------------- correlation


@dataclass(frozen=True)
class Correlation:
    """Pearson r and Spearman ρ with their p-values over n points (NaN when an input is constant).

    `exact` marks p-values from the exact permutation distribution (all n! pairings; used for n ≤ 8, where
    the t approximation fails, e.g. it gives p = 0 for a perfect rank correlation of 3 points).
    """

    n: int
    pearson_r: float
    pearson_p: float
    spearman_rho: float
    spearman_p: float
    exact: bool = False


EXACT_CORRELATION_MAX_N = 8


def correlation(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> Correlation | None:
    """Pearson and Spearman correlation over the finite pairs; None when fewer than 3 remain."""
    u, v = _finite_pairs(x, y, "x and y")
    if u.size < 3:
        return None
    if np.ptp(u) == 0 or np.ptp(v) == 0:
        nan = float("nan")
        return Correlation(int(u.size), nan, nan, nan, nan)
    pr = stats.pearsonr(u, v)
    sr = stats.spearmanr(u, v)
    if u.size > EXACT_CORRELATION_MAX_N:
        return Correlation(int(u.size), float(pr[0]), float(pr[1]), float(sr[0]), float(sr[1]))
    p_r, p_rho = _exact_perm_p(u, v), _exact_perm_p(stats.rankdata(u), stats.rankdata(v))
    return Correlation(int(u.size), float(pr[0]), p_r, float(sr[0]), p_rho, exact=True)


def _exact_perm_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p of Pearson's r under all n! pairings of `a` with `b` (the first, identity, is the observed)."""
    a, b = a - a.mean(), b - b.mean()
    perms = np.array(list(itertools.permutations(range(a.size))))
    r = (b[perms] @ a) / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.mean(np.abs(r) >= abs(r[0]) - 1e-12))


# ----------------------------------------------------------------------------- logistic regression


@dataclass(frozen=True)
class Coef:
    """One term: log-odds coefficient, 95% interval and Wald p-value (cluster-robust when `LogitResult.robust`)."""

    term: str
    coef: float
    lo: float
    hi: float
    p: float


@dataclass(frozen=True)
class LRTest:
    """Likelihood-ratio test of dropping one factor (all its columns): chi2 statistic, df, p-value."""

    factor: str
    stat: float
    df: int
    p: float


@dataclass(frozen=True)
class WaldTest:
    """Joint Wald test that all of one factor's coefficients are 0 (cluster-robust covariance): chi2 with df
    columns, or F(df, G − 1) with the small-sample correction (`kind` "chi2" or "F")."""

    factor: str
    stat: float
    df: int
    p: float
    kind: str


def few_clusters(n_clusters: int, threshold: int = FEW_CLUSTERS) -> bool:
    """Whether `n_clusters` is too few for cluster-robust Wald inference (≥ 2 and below `threshold`)."""
    return 2 <= int(n_clusters) < int(threshold)


def preferred_test(n_clusters: int, robust: bool) -> str:
    """ "LR" with few clusters (the Wald tests over-reject there) or without clusters, else "Wald"."""
    return "LR" if not robust or few_clusters(n_clusters) else "Wald"


def few_clusters_note(n_clusters: int) -> str:
    """The report's warning for `few_clusters`."""
    return (
        f"only {n_clusters} clusters (fewer than {FEW_CLUSTERS}): cluster-robust Wald tests over-reject with few "
        f"clusters (a Wald p of 0.0003 can sit beside an LR p of 0.5). Intervals and Wald p-values here use the "
        f"small-sample correction (t and F with {n_clusters - 1} = G − 1 df); read the LR test first."
    )


@dataclass(frozen=True)
class LogitResult:
    """`logistic_factors` output. `ok` False means no model was fitted; `notes` say why and flag confounding."""

    ok: bool
    n: int
    n_clusters: int
    factors: list[str]
    dropped: dict[str, str]
    coefs: list[Coef] = field(default_factory=list)
    lr_tests: list[LRTest] = field(default_factory=list)
    robust: bool = False
    notes: list[str] = field(default_factory=list)
    wald_tests: list[WaldTest] = field(default_factory=list)
    small_sample: bool = False  # t(G − 1) intervals and F(df, G − 1) Wald tests (few clusters)
    preferred: str = "Wald"  # the test to read first: "LR" with few clusters


def _factor_columns(df: pd.DataFrame, f: str) -> pd.DataFrame:
    """Design columns of one factor: numeric as is, categorical as treatment dummies (first level dropped)."""
    s = df[f]
    if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
        cat = pd.Categorical(s.astype(str))
        dummies = pd.get_dummies(cat, prefix=f, prefix_sep="=", drop_first=True, dtype=float)
        dummies.index = df.index
        return dummies
    return pd.DataFrame({f: s.astype(float)}, index=df.index)


def _rank(x: np.ndarray) -> int:
    return int(np.linalg.matrix_rank(x)) if x.size else 0


def _design(cols: dict[str, pd.DataFrame], factors: list[str], index: pd.Index) -> pd.DataFrame:
    parts = [pd.DataFrame({"const": np.ones(len(index))}, index=index)] + [cols[f] for f in factors]
    return pd.concat(parts, axis=1)


def _fit_logit(
    y: np.ndarray, x: pd.DataFrame, groups: np.ndarray | None, use_t: bool = False
) -> tuple[Any, list[str]]:
    """Fit a statsmodels Logit (with `use_t`: t and F with G − 1 df); returns (result or None, notes)."""
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import (
        ConvergenceWarning,
        HessianInversionWarning,
        PerfectSeparationError,
        PerfectSeparationWarning,
    )

    notes: list[str] = []
    kw: dict[str, Any] = {"disp": 0, "maxiter": 200}
    if groups is not None:
        kw |= {"cov_type": "cluster", "cov_kwds": {"groups": groups}, "use_t": use_t}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = sm.Logit(y, x).fit(**kw)
        except (PerfectSeparationError, np.linalg.LinAlgError, ValueError) as e:
            return None, [f"the logistic fit failed: {type(e).__name__}: {str(e).strip()[:160]}"]
    kinds = {w.category for w in caught}
    if PerfectSeparationWarning in kinds:
        notes.append("perfect or quasi-perfect separation: some coefficients are not identified (they run off)")
    if ConvergenceWarning in kinds or not res.mle_retvals.get("converged", True):
        notes.append("the maximum-likelihood fit did not converge")
    if HessianInversionWarning in kinds:
        notes.append("the Hessian could not be inverted: intervals are unreliable")
    return res, notes


def not_crossed(df: pd.DataFrame, by: str, x: str) -> dict[str, list[Any]] | None:
    """Levels of `by` with the `x` values seen at each, when the two are not crossed, else None.

    Not crossed: `by` has ≥ 2 levels and no `x` value occurs at two of them (e.g. every compressor size
    belongs to one family), so `by`'s effect is only identified through the model's form in `x`.
    """
    d = df[[by, x]].dropna()
    if d[by].nunique() < 2:
        return None
    if (d.groupby(x)[by].nunique() > 1).any():
        return None
    return {str(k): sorted(g.unique().tolist()) for k, g in d.groupby(by, sort=True)[x]}


def logistic_factors(df: pd.DataFrame, outcome: str, factors: Sequence[str], cluster: str | None) -> LogitResult:
    """Logit of a 0/1 `outcome` on `factors` (non-numeric columns are categorical), clustered by `cluster`.

    Coefficients get 95% intervals from the cluster-robust covariance (by `cluster`, e.g. sample id); each
    factor gets a joint Wald test on that covariance and a likelihood-ratio test (drop it, refit, chi2 on its
    number of columns; the LR test assumes independent rows). With fewer than `FEW_CLUSTERS` clusters the
    intervals and Wald tests use t / F with G − 1 df (`small_sample`), a note warns, and `preferred` is "LR".
    Constant factors are dropped with a note; factors whose columns are linear combinations
    of the others (confounded, e.g. family and size perfectly collinear) are dropped last-first until the design
    has full rank, with a note naming them. Never raises on a singular design or a failed fit.
    """
    factors = list(factors)
    missing = [c for c in [outcome, *factors, *([cluster] if cluster else [])] if c not in df.columns]
    if missing:
        raise ValueError(f"columns not in the frame: {', '.join(missing)}")
    data = df[[outcome, *factors, *([cluster] if cluster else [])]].dropna()
    notes: list[str] = []
    if len(data) < len(df):
        notes.append(f"{len(df) - len(data)} rows with a missing value were left out")
    y = data[outcome].astype(float).to_numpy()
    n = int(y.size)
    groups = pd.factorize(data[cluster])[0] if cluster else None
    n_clusters = int(groups.max() + 1) if groups is not None and groups.size else 0
    dropped: dict[str, str] = {}
    if n == 0:
        return LogitResult(False, 0, 0, [], dropped, notes=[*notes, "no rows to fit"])
    if np.unique(y).size < 2:
        return LogitResult(
            False, n, n_clusters, [], dropped, notes=[*notes, f"{outcome} is constant ({y[0]:g}): no fit"]
        )
    cols: dict[str, pd.DataFrame] = {}
    used: list[str] = []
    for f in factors:
        if data[f].nunique() < 2:
            dropped[f] = "constant"
            v0 = data[f].iloc[0]
            shown = f"{v0:.4g}" if isinstance(v0, (int, float, np.number)) and not isinstance(v0, bool) else str(v0)
            notes.append(f"{f} is constant ({shown}) in these rows: left out")
            continue
        cols[f] = _factor_columns(data, f)
        used.append(f)
    # confounding: a factor whose columns add no rank given the others (and the intercept)
    while used:
        x = _design(cols, used, data.index).to_numpy()
        if _rank(x) == x.shape[1]:
            break
        redundant = [
            f for f in used if _rank(_design(cols, [g for g in used if g != f], data.index).to_numpy()) == _rank(x)
        ]
        if not redundant:  # rank lost inside one factor's own columns (cannot happen with dummies); stop
            redundant = [used[-1]]
        drop = redundant[-1]
        others = [
            g
            for g in used
            if g != drop and (x2 := _design(cols, [g, drop], data.index).to_numpy()).shape[1] > _rank(x2)
        ]
        with_what = f" with {', '.join(others)}" if others else " with the other factors"
        notes.append(
            f"{drop} is confounded{with_what} (the design is singular): left out; its effect is not "
            "separable from theirs"
        )
        dropped[drop] = "confounded"
        used.remove(drop)
    if not used:
        return LogitResult(False, n, n_clusters, [], dropped, notes=[*notes, "no factor varies: no fit"])
    robust = groups is not None and n_clusters >= 2
    if groups is not None and not robust:
        notes.append("only one cluster: intervals are not cluster-robust")
    small = robust and few_clusters(n_clusters)
    if small:
        notes.append(few_clusters_note(n_clusters))
    x = _design(cols, used, data.index)
    res, fit_notes = _fit_logit(y, x, groups if robust else None, use_t=small)
    notes += fit_notes
    if res is None:
        return LogitResult(False, n, n_clusters, used, dropped, robust=False, notes=notes)
    wald: list[WaldTest] = []
    names = list(x.columns)
    for f in used:
        idx = [names.index(str(c)) for c in cols[f].columns]
        restrict = np.eye(len(names))[idx]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                w = res.wald_test(restrict, scalar=True, use_f=small)
        except (ValueError, np.linalg.LinAlgError):
            continue
        wald.append(WaldTest(f, float(w.statistic), len(idx), float(w.pvalue), "F" if small else "chi2"))
    ci = np.asarray(res.conf_int(0.05))
    coefs = [
        Coef(str(t), float(res.params.iloc[k]), float(ci[k, 0]), float(ci[k, 1]), float(res.pvalues.iloc[k]))
        for k, t in enumerate(x.columns)
    ]
    lr: list[LRTest] = []
    for f in used:
        rest = [g for g in used if g != f]
        red, _ = _fit_logit(y, _design(cols, rest, data.index), None)
        if red is None:
            notes.append(f"the reduced model without {f} failed: no LR test for it")
            continue
        stat = max(2.0 * (float(res.llf) - float(red.llf)), 0.0)
        dof = cols[f].shape[1]
        lr.append(LRTest(f, stat, dof, float(stats.chi2.sf(stat, dof))))
    if any(not math.isfinite(c.lo) or not math.isfinite(c.hi) for c in coefs):
        notes.append("some intervals are not finite")
    return LogitResult(True, n, n_clusters, used, dropped, coefs, lr, robust, notes, wald, small,
                       preferred_test(n_clusters, robust))
