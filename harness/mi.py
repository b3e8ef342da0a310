"""Pure mutual-information estimators for compressor–predictor systems.

Follows He et al. 2025, "An Information Theoretic Perspective on Agentic System Design": the information a
compression Z carries about its context X (given a question Q) is estimated from a cross-scoring tensor

    logp[i, j, l] = ln p(z_ij | x_l, q),

the log-probability of the j-th of M compressions sampled from context i, scored under context l. With X uniform
over the N drawn contexts the marginal p(z | q) = (1/N) Σ_l p(z | x_l, q) is known exactly for every sampled z, so

    Î = (1/NM) Σ_ij [ln p(z_ij | x_i) − ln (1/N) Σ_l p(z_ij | x_l)]

is an *unbiased* Monte Carlo estimate of the MI with X uniform over the drawn set ("drawn-set MI"), and, as an
estimate of the population MI (contexts i.i.d. from the task distribution), it is the InfoNCE-style lower bound:
biased downward and never above log2 N. A saturated estimate (terms at log2 N) therefore means "at least this much".

Two intervals answer two questions. The *Monte Carlo* interval (`mc_se_bits`, `mc_ci`) holds the contexts fixed:
given them, every term ln p(z_ij|x_i)/p̄(z_ij) is a function of one independent draw z_ij, so the estimate's only
randomness is the M draws per context, and its variance is (1/N²) Σ_i σ_i²/M with σ_i² estimated by the variance
of the terms across j (M >= 2 needed). That interval is the one that tells two compressors apart on the same
contexts (see `paired_mi_difference`). The *population* interval (`ci`, also `population_ci`) resamples contexts
(two-stage for groups): it also covers how the MI would differ on other contexts from the task, and is usually far
wider.

Also contains the information-bottleneck terms of Zhu et al. (ACL 2024) and an exact discrete-channel MI used for
validation. Only numpy/scipy/stdlib; nothing here knows about models. Inputs are in nats, outputs in bits.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats
from scipy.special import logsumexp

__all__ = [
    "GroupedMIEstimate",
    "MIEstimate",
    "PairedMIDifference",
    "bits_per_token",
    "conciseness_bits",
    "correctness_bits",
    "deterministic_mi_bits",
    "estimate_mi",
    "estimate_mi_groups",
    "exact_mi_bits",
    "ib_score",
    "mc_standard_error",
    "paired_mi_difference",
]

LN2 = math.log(2.0)
_CI_LEVEL = 0.95
# Float slack allowed above log2 N before clipping (anything larger is a bug, not rounding).
_LOG2N_SLACK_BITS = 1e-9


def _json_float(x: float) -> float | None:
    """A plain float, or None for a non-finite value (strict JSON has no inf/NaN)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _opt_float(x: float | None) -> float | None:
    return None if x is None else _json_float(x)


def _opt_pair(x: tuple[float, float] | None) -> list[float | None] | None:
    return None if x is None else [_json_float(x[0]), _json_float(x[1])]


@dataclass(frozen=True)
class MIEstimate:
    """I(X; Z | q) for one question, in bits.

    bits: point estimate (mean pointwise term); never above log2_n.
    ci: the population interval: 95% percentile bootstrap over contexts (rows), see `estimate_mi`; also
        `population_ci`.
    mc_se_bits, mc_ci: Monte Carlo standard error and 95% interval of the drawn-set MI given these contexts (only
        the M draws per context vary; see `mc_standard_error`); None when M = 1 (not estimable).
    pointwise_bits: (N, M) terms ln[p(z_ij|x_i) / p̂(z_ij)] / ln 2.
    upper_bits: leave-one-out estimate (marginal over l != i); +inf when some z has zero probability under every
        other context. It is an upper bound on the population MI only when `upper_is_bound`.
    upper_is_bound: True only if the scorer is the model that sampled the compressions, with plain sampling.
    saturated_fraction: share of pointwise terms within the tolerance of log2 N ("at least this much").
    """

    bits: float
    ci: tuple[float, float]
    pointwise_bits: np.ndarray = field(repr=False)
    upper_bits: float
    upper_is_bound: bool
    saturated_fraction: float
    n_contexts: int
    n_samples: int
    log2_n: float
    mc_se_bits: float | None = None
    mc_ci: tuple[float, float] | None = None

    @property
    def population_ci(self) -> tuple[float, float]:
        """The bootstrap interval over contexts (`ci`)."""
        return self.ci

    @property
    def context_bits(self) -> np.ndarray:
        """(N,) per-context terms: mean over the M draws of each context's pointwise terms."""
        return np.asarray(self.pointwise_bits, dtype=float).mean(axis=1)

    @property
    def context_var_bits(self) -> np.ndarray:
        """(N,) variance (ddof 1) of each context's pointwise terms across its M draws; NaN when M = 1."""
        pw = np.asarray(self.pointwise_bits, dtype=float)
        return pw.var(axis=1, ddof=1) if pw.shape[1] > 1 else np.full(pw.shape[0], np.nan)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (plain floats/lists; a non-finite `upper_bits` becomes None, meaning +inf).

        "ci" and "population_ci" are the same interval (resampling contexts); "mc_ci" is the Monte Carlo one.
        """
        return {
            "bits": float(self.bits),
            "ci": [float(self.ci[0]), float(self.ci[1])],
            "population_ci": [float(self.ci[0]), float(self.ci[1])],
            "mc_se_bits": _opt_float(self.mc_se_bits),
            "mc_ci": _opt_pair(self.mc_ci),
            "pointwise_bits": np.asarray(self.pointwise_bits, dtype=float).tolist(),
            "upper_bits": _json_float(self.upper_bits),
            "upper_is_bound": bool(self.upper_is_bound),
            "saturated_fraction": float(self.saturated_fraction),
            "n_contexts": int(self.n_contexts),
            "n_samples": int(self.n_samples),
            "log2_n": float(self.log2_n),
        }


@dataclass(frozen=True)
class GroupedMIEstimate:
    """I(X; Z | Q) over several questions: term-weighted mean of per-question estimates, in bits.

    weights: per-group weights N_g·M_g (the number of pointwise terms), normalised to sum to 1, so `bits` equals
        the mean of all pointwise terms pooled across groups.
    ci: the population interval: 95% two-stage bootstrap (groups, then contexts within each resampled group);
        also `population_ci`.
    mc_se_bits, mc_ci: Monte Carlo standard error sqrt(Σ_g w_g² se_g²) and 95% interval given these contexts;
        None when some group has M = 1.
    upper_bits, saturated_fraction: the same weighting applied to the per-group values.
    """

    bits: float
    ci: tuple[float, float]
    per_group: list[MIEstimate] = field(repr=False)
    weights: tuple[float, ...]
    upper_bits: float
    upper_is_bound: bool
    saturated_fraction: float
    n_groups: int
    n_terms: int
    mc_se_bits: float | None = None
    mc_ci: tuple[float, float] | None = None

    @property
    def population_ci(self) -> tuple[float, float]:
        """The two-stage bootstrap interval (`ci`)."""
        return self.ci

    def to_dict(self, *, include_pointwise: bool = False) -> dict[str, Any]:
        """JSON-friendly dict; per-group pointwise arrays are dropped unless `include_pointwise`."""
        groups = []
        for g in self.per_group:
            d = g.to_dict()
            if not include_pointwise:
                d.pop("pointwise_bits")
            groups.append(d)
        return {
            "bits": float(self.bits),
            "ci": [float(self.ci[0]), float(self.ci[1])],
            "population_ci": [float(self.ci[0]), float(self.ci[1])],
            "mc_se_bits": _opt_float(self.mc_se_bits),
            "mc_ci": _opt_pair(self.mc_ci),
            "per_group": groups,
            "weights": [float(w) for w in self.weights],
            "upper_bits": _json_float(self.upper_bits),
            "upper_is_bound": bool(self.upper_is_bound),
            "saturated_fraction": float(self.saturated_fraction),
            "n_groups": int(self.n_groups),
            "n_terms": int(self.n_terms),
        }


def _validate_logp(logp: np.ndarray) -> np.ndarray:
    """Check shape (N, M, N), N >= 2, M >= 1, no NaN/+inf, finite diagonal; return a float64 array."""
    a = np.asarray(logp, dtype=np.float64)
    if a.ndim != 3:
        raise ValueError(f"logp must be 3-D with shape (N, M, N); got ndim={a.ndim}, shape={a.shape}")
    n, m, n2 = a.shape
    if n != n2:
        raise ValueError(f"logp must have shape (N, M, N) (axis 0 and 2 both index contexts); got {a.shape}")
    if n < 2:
        raise ValueError(f"need at least N=2 contexts to estimate MI; got N={n}")
    if m < 1:
        raise ValueError(f"need at least M=1 compression per context; got M={m}")
    if np.isnan(a).any():
        raise ValueError(f"logp contains NaN at {np.argwhere(np.isnan(a))[:5].tolist()} (first ≤5 indices)")
    if np.isposinf(a).any():
        raise ValueError(f"logp contains +inf at {np.argwhere(np.isposinf(a))[:5].tolist()} (first ≤5 indices)")
    diag = _diagonal(a)
    if np.isneginf(diag).any():
        bad = np.argwhere(np.isneginf(diag))[:5].tolist()
        raise ValueError(
            "logp[i, j, i] is -inf (a sampled compression has zero probability under the context it was sampled "
            f"from; the scores are inconsistent) at (i, j) = {bad} (first ≤5)"
        )
    return a


def _diagonal(a: np.ndarray) -> np.ndarray:
    """(N, M) array of own-context scores a[i, j, i]."""
    idx = np.arange(a.shape[0])
    return a[idx, :, idx]


def _expanded_tail(n: int | None) -> float:
    """Tail probability for Hesterberg's expanded percentile interval with n resampled units (None: plain).

    The plain percentile interval is too narrow for small n (it uses the plug-in variance, shrunk by (n-1)/n, and a
    normal instead of a t quantile). Expanding uses the quantile Φ(−sqrt(n/(n−1)) · t_{n−1, 1−α/2}) instead of α/2;
    for n=16 and 95% that is 1.4% / 98.6%. It tends to the plain percentile interval as n grows.
    """
    alpha = (1.0 - _CI_LEVEL) / 2.0
    if n is None:
        return alpha
    return float(stats.norm.cdf(-math.sqrt(n / (n - 1)) * stats.t.ppf(1.0 - alpha, n - 1)))


def _percentile_ci(reps: np.ndarray, n_units: int | None = None) -> tuple[float, float]:
    """(Expanded) percentile interval at `_CI_LEVEL` from bootstrap replicates; see `_expanded_tail`."""
    tail = _expanded_tail(n_units)
    lo, hi = np.quantile(reps, [tail, 1.0 - tail])
    return float(lo), float(hi)


def _pointwise_bits(a: np.ndarray) -> np.ndarray:
    """(N, M) pointwise terms in bits, clipped to log2 N (after asserting any excess is float rounding)."""
    n = a.shape[0]
    diag = _diagonal(a)
    log_marg = logsumexp(a, axis=2) - math.log(n)  # ln (1/N) Σ_l p(z_ij | x_l)
    pw = (diag - log_marg) / LN2
    log2_n = math.log2(n)
    excess = float(np.max(pw)) - log2_n
    assert excess <= _LOG2N_SLACK_BITS, f"pointwise MI exceeds log2 N by {excess} bits; this is a bug"
    return np.minimum(pw, log2_n)


def _upper_pointwise_bits(a: np.ndarray) -> np.ndarray:
    """(N, M) leave-one-out terms in bits: marginal over l != i; +inf where every other context gives -inf."""
    n = a.shape[0]
    diag = _diagonal(a)
    off = a.copy()
    idx = np.arange(n)
    off[idx, :, idx] = -np.inf
    log_marg = logsumexp(off, axis=2) - math.log(n - 1)
    return (diag - log_marg) / LN2


def _row_bootstrap(row_means: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates of mean(row_means), resampling rows with replacement."""
    n = row_means.shape[0]
    idx = rng.integers(0, n, size=(n_boot, n))
    return row_means[idx].mean(axis=1)


def mc_standard_error(pointwise_bits: np.ndarray) -> float | None:
    """Monte Carlo standard error of mean(pointwise_bits) with the contexts held fixed; None when M < 2.

    Given the N contexts, term (i, j) is a function of the single draw z_ij ~ p(z | x_i) (the marginal is the exact
    mixture over the fixed contexts), so the terms are independent and Var(Î) = (1/N²) Σ_i σ_i² / M, with σ_i²
    estimated by the variance (ddof 1) of row i's terms. With M = 1 there is no within-context variance (the
    variance across contexts would mix in the spread of the per-context MI, which does not shrink as draws are
    added), so the MC error is reported as not estimable. A context whose M draws all gave the same term (e.g.
    saturated) contributes 0, so with very peaked channels and small M the MC error is an underestimate.
    """
    pw = np.asarray(pointwise_bits, dtype=np.float64)
    if pw.ndim != 2 or pw.shape[0] < 1:
        raise ValueError(f"pointwise_bits must be (N, M); got shape {pw.shape}")
    n, m = pw.shape
    if m < 2:
        return None
    return float(math.sqrt(pw.var(axis=1, ddof=1).sum() / m) / n)


def _mc_interval(bits: float, se: float | None, df: float, log2_n: float | None) -> tuple[float, float] | None:
    """bits ± t_{df, 97.5%} · se (normal when df is inf), the upper end clipped to log2_n when given."""
    if se is None or not math.isfinite(se):
        return None
    level = 0.5 + _CI_LEVEL / 2.0
    q = float(stats.norm.ppf(level)) if math.isinf(df) else float(stats.t.ppf(level, df))
    hi = bits + q * se
    return float(bits - q * se), float(hi if log2_n is None else min(hi, log2_n))


def estimate_mi(
    logp: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int | np.random.SeedSequence = 0,
    scorer_is_sampler: bool = False,
    plain_sampling: bool = False,
    saturation_tol_bits: float = 0.01,
) -> MIEstimate:
    """Estimate I(X; Z | q) in bits from a cross-scoring tensor `logp` of shape (N, M, N) in nats.

    logp[i, j, l] = ln p(z_ij | x_l, q). NaN or +inf anywhere, or -inf on the diagonal logp[i, j, i], raise
    ValueError; -inf off the diagonal (z impossible under another context) is fine.

    Bootstrap: rows (contexts) are resampled with replacement and each replicate is the mean of the resampled
    per-context means of the pointwise terms; the marginal is *not* recomputed over the resampled set. Why: every
    term uses the exact drawn-set marginal, so the point estimate is unbiased for the drawn-set MI, and given the
    contexts its only randomness is the sampling of z, independent across rows; resampling row means estimates that
    variance (plus the between-context spread of the per-context KL terms). Recomputing the marginal on each
    resample lets duplicated contexts inflate their own marginal, which biases the replicates downward: in the
    validation channel it covered the drawn-set MI in only 55-94% of 200 seeds (fixed marginal: 92-95%).
    This bootstrap interval (`ci`, `population_ci`) is the *population* interval: it counts the spread of the
    per-context terms, so it cannot tell two compressors apart on the same contexts; `mc_se_bits` / `mc_ci` (see
    `mc_standard_error`; t interval with N(M−1) degrees of freedom) are the Monte Carlo error of the drawn-set MI
    given these contexts, which can (`paired_mi_difference`).
    The interval is Hesterberg's *expanded* percentile interval (see `_expanded_tail`), because the plain
    percentile interval is too narrow with few contexts (89% at N=8, 92-95% at N=16). Measured coverage of the
    drawn-set MI (tests/test_mi.py channel, >= 1000 seeds each): 94-97% for N in {8, 16, 32}, M in {1, 4, 8}; it
    is poor for N < 8 (86% at N=4, 45% at N=2). The interval is about the drawn-set MI: it does not include the
    downward bias relative to the population MI (the log2 N ceiling), which is small only when N >> 2^MI.

    upper_bits (leave-one-out marginal over l != i) is an upper bound on the population MI only when the scorer is
    the model that sampled the compressions and sampling was plain (no temperature/top-p/constraints);
    `upper_is_bound` records that.
    """
    a = _validate_logp(logp)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1; got {n_boot}")
    n, m, _ = a.shape
    log2_n = math.log2(n)

    pw = _pointwise_bits(a)
    bits = float(pw.mean())
    assert bits <= log2_n + _LOG2N_SLACK_BITS
    bits = min(bits, log2_n)

    rng = np.random.default_rng(seed)
    reps = _row_bootstrap(pw.mean(axis=1), n_boot, rng)
    lo, hi = _percentile_ci(reps, n_units=n)

    up = _upper_pointwise_bits(a)
    upper_bits = math.inf if np.isposinf(up).any() else float(up.mean())

    saturated = float(np.mean(pw >= log2_n - saturation_tol_bits))
    mc_se = mc_standard_error(pw)
    return MIEstimate(
        bits=bits,
        ci=(lo, hi),
        pointwise_bits=pw,
        upper_bits=upper_bits,
        upper_is_bound=bool(scorer_is_sampler and plain_sampling),
        saturated_fraction=saturated,
        n_contexts=n,
        n_samples=m,
        log2_n=log2_n,
        mc_se_bits=mc_se,
        mc_ci=_mc_interval(bits, mc_se, n * (m - 1), log2_n),
    )


def estimate_mi_groups(
    groups: Sequence[np.ndarray],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    scorer_is_sampler: bool = False,
    plain_sampling: bool = False,
    saturation_tol_bits: float = 0.01,
) -> GroupedMIEstimate:
    """Estimate I(X; Z | Q) over several questions; each group is one question's (N_g, M_g, N_g) logp tensor.

    The point estimate is the mean of per-group estimates weighted by N_g·M_g (number of pointwise terms), i.e.
    the pooled mean of all terms. The interval is a two-stage bootstrap: draw G groups with replacement, then,
    independently for every drawn group, resample its contexts with replacement (as in `estimate_mi`); the
    replicate is the term-weighted mean of the drawn groups, and the interval is the plain percentile one (with a
    single group it is that group's interval). Resampling groups treats the questions as a sample from a
    population of questions, so for the fixed set of questions the interval is conservative (97.5-100% coverage
    of the weighted drawn-set MI over 200 seeds in the tests' channel). Groups may differ in N and M.
    The Monte Carlo error given the contexts is sqrt(Σ_g w_g² se_g²) (groups' draws are independent), None when
    some group has M = 1; `mc_ci` is its t interval with Σ_g N_g(M_g − 1) degrees of freedom.
    """
    if len(groups) == 0:
        raise ValueError("estimate_mi_groups needs at least one group")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1; got {n_boot}")
    ss = np.random.SeedSequence(seed)
    group_ss = ss.spawn(len(groups) + 1)
    per_group: list[MIEstimate] = []
    for g, lp in enumerate(groups):
        try:
            est = estimate_mi(
                lp,
                n_boot=n_boot,
                seed=group_ss[g],
                scorer_is_sampler=scorer_is_sampler,
                plain_sampling=plain_sampling,
                saturation_tol_bits=saturation_tol_bits,
            )
        except ValueError as e:
            raise ValueError(f"group {g}: {e}") from e
        per_group.append(est)

    n_terms_g = np.array([e.n_contexts * e.n_samples for e in per_group], dtype=np.float64)
    w = n_terms_g / n_terms_g.sum()
    bits = float(np.dot(w, [e.bits for e in per_group]))
    upper_bits = float(np.dot(w, [e.upper_bits for e in per_group]))  # inf propagates (weights > 0)
    saturated = float(np.dot(w, [e.saturated_fraction for e in per_group]))

    if len(per_group) == 1:
        lo, hi = per_group[0].ci  # the two-stage scheme reduces to the single-group row bootstrap
    else:
        rng = np.random.default_rng(group_ss[-1])
        reps = _two_stage_bootstrap([e.pointwise_bits.mean(axis=1) for e in per_group], n_terms_g, n_boot, rng)
        lo, hi = _percentile_ci(reps)
    ses = [e.mc_se_bits for e in per_group]
    mc_se = None if any(x is None for x in ses) else float(math.sqrt(np.dot(w**2, np.square(ses))))
    df = sum(e.n_contexts * (e.n_samples - 1) for e in per_group)
    return GroupedMIEstimate(
        bits=bits,
        ci=(lo, hi),
        per_group=per_group,
        weights=tuple(float(x) for x in w),
        upper_bits=upper_bits,
        upper_is_bound=bool(scorer_is_sampler and plain_sampling),
        saturated_fraction=saturated,
        n_groups=len(per_group),
        n_terms=int(n_terms_g.sum()),
        mc_se_bits=mc_se,
        mc_ci=_mc_interval(bits, mc_se, df, max(e.log2_n for e in per_group)),
    )


def _two_stage_bootstrap(
    row_means: list[np.ndarray], weights: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Replicates of the weighted mean: resample groups, then rows independently within every drawn group."""
    n_groups = len(row_means)
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))  # draws[b, k]: k-th group drawn in replicate b
    num = np.zeros(n_boot)
    den = np.zeros(n_boot)
    for g, rm in enumerate(row_means):
        rep_idx = np.nonzero(draws == g)[0]  # one entry per time group g is drawn (with multiplicity)
        if rep_idx.size == 0:
            continue
        rows = rng.integers(0, rm.shape[0], size=(rep_idx.size, rm.shape[0]))
        np.add.at(num, rep_idx, weights[g] * rm[rows].mean(axis=1))
        np.add.at(den, rep_idx, weights[g])
    return num / den


@dataclass(frozen=True)
class PairedMIDifference:
    """MI of compressor A minus MI of compressor B over the contexts both were scored on (same scorer), in bits.

    bits_a, bits_b: means of the per-context terms over the shared contexts; diff_bits = bits_a − bits_b.
    mc_se_bits, mc_ci, mc_p: the Monte Carlo error of the difference given these contexts (A's and B's draws
        independent), its 95% normal interval and two-sided p for "A and B carry the same information about these
        contexts"; None when a side has no within-context variances (M = 1).
    population_ci, t_p, wilcoxon_p: paired over contexts (bootstrap of the mean difference, expanded percentile;
        paired t; Wilcoxon signed-rank), for "the same on the task's contexts"; None with fewer than 2 contexts.
    """

    n_contexts: int
    bits_a: float
    bits_b: float
    diff_bits: float
    mc_se_bits: float | None
    mc_ci: tuple[float, float] | None
    mc_p: float | None
    population_ci: tuple[float, float] | None
    t_p: float | None
    wilcoxon_p: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "n_contexts": int(self.n_contexts), "bits_a": float(self.bits_a), "bits_b": float(self.bits_b),
            "diff_bits": float(self.diff_bits), "mc_se_bits": _opt_float(self.mc_se_bits),
            "mc_ci": _opt_pair(self.mc_ci), "mc_p": _opt_float(self.mc_p),
            "population_ci": _opt_pair(self.population_ci), "t_p": _opt_float(self.t_p),
            "wilcoxon_p": _opt_float(self.wilcoxon_p),
        }


def _per_context(x: Any, n: int, name: str) -> np.ndarray:
    """`x` (a number or n values) as an (n,) float array."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim > 1 or (a.ndim == 1 and a.size != n):
        raise ValueError(f"{name} must be a number or {n} values; got shape {a.shape}")
    return np.array(np.broadcast_to(a, (n,)))


def paired_mi_difference(
    a_bits: Sequence[float] | np.ndarray,
    b_bits: Sequence[float] | np.ndarray,
    *,
    a_var: Sequence[float] | np.ndarray | None = None,
    b_var: Sequence[float] | np.ndarray | None = None,
    m_a: int | Sequence[int] | np.ndarray | None = None,
    m_b: int | Sequence[int] | np.ndarray | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> PairedMIDifference:
    """Compare two compressors' MI on the same contexts from their per-context terms (aligned arrays, bits).

    a_bits[i], b_bits[i]: context i's term (`MIEstimate.context_bits`) under A and B, scored by one scorer.
    a_var, b_var: each context's variance of pointwise terms across its draws (`context_var_bits`, ddof 1) and
    m_a, m_b the draws per context (a number or one per context): with them the Monte Carlo variance of the
    difference is Σ_i (a_var_i / m_a_i + b_var_i / m_b_i) / n², which assumes A's and B's compressions were drawn
    independently (two compressors, or one with different knobs). A NaN variance (M = 1) makes the MC part None.
    """
    a = np.asarray(a_bits, dtype=np.float64).ravel()
    b = np.asarray(b_bits, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"a_bits and b_bits must be non-empty and aligned; got {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("per-context terms must be finite")
    n = a.size
    d = a - b
    diff = float(d.mean())
    mc_se = mc_ci = mc_p = None
    if a_var is not None and b_var is not None and m_a is not None and m_b is not None:
        va = _per_context(a_var, n, "a_var") / _per_context(m_a, n, "m_a")
        vb = _per_context(b_var, n, "b_var") / _per_context(m_b, n, "m_b")
        v = float(np.sum(va + vb)) / n**2
        if math.isfinite(v):
            mc_se = math.sqrt(max(v, 0.0))
            mc_ci = _mc_interval(diff, mc_se, math.inf, None)
            mc_p = float(2.0 * stats.norm.sf(abs(diff) / mc_se)) if mc_se > 0 else float(diff == 0.0)
    pop_ci = t_p = w_p = None
    if n >= 2:
        rng = np.random.default_rng(seed)
        pop_ci = _percentile_ci(_row_bootstrap(d, n_boot, rng), n_units=n)
        if float(d.std()) > 0:
            t_p = float(stats.ttest_1samp(d, 0.0).pvalue)
        if np.any(d != 0):
            w_p = float(stats.wilcoxon(d).pvalue)
        else:
            w_p = 1.0
    return PairedMIDifference(
        n_contexts=n, bits_a=float(a.mean()), bits_b=float(b.mean()), diff_bits=diff, mc_se_bits=mc_se,
        mc_ci=mc_ci, mc_p=mc_p, population_ci=pop_ci, t_p=t_p, wilcoxon_p=w_p,
    )


def exact_mi_bits(p_z_given_x: np.ndarray, p_x: np.ndarray | None = None) -> float:
    """Exact I(X; Z) in bits of a discrete channel: rows of the (N, K) row-stochastic matrix are contexts.

    X is uniform over the N rows unless `p_x` is given (rows may repeat; each row counts as its own context).
    """
    p = np.asarray(p_z_given_x, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"p_z_given_x must be 2-D (N, K); got shape {p.shape}")
    if np.any(p < 0) or not np.all(np.isfinite(p)):
        raise ValueError("p_z_given_x must be finite and non-negative")
    if not np.allclose(p.sum(axis=1), 1.0, atol=1e-9):
        raise ValueError("rows of p_z_given_x must sum to 1")
    n = p.shape[0]
    px = np.full(n, 1.0 / n) if p_x is None else np.asarray(p_x, dtype=np.float64)
    if px.shape != (n,) or np.any(px < 0) or not np.isclose(px.sum(), 1.0, atol=1e-9):
        raise ValueError("p_x must be a probability vector of length N")
    pz = px @ p
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(p > 0, p / pz[None, :], 1.0)
        terms = np.where(p > 0, p * np.log2(ratio), 0.0)
    return float(max(0.0, px @ terms.sum(axis=1)))


def deterministic_mi_bits(outputs: Sequence[Any]) -> float:
    """I(X; Z | q) in bits of a deterministic compressor Z = f(X, q), X uniform over the N drawn contexts.

    `outputs[i]` is f(x_i) (any hashable, e.g. the compression text). Then I = H(Z | q) - H(Z | X, q) = H(Z | q),
    the entropy of the empirical distribution of the outputs: log2 N when all N differ (the estimator's ceiling,
    "at least this much" of the population MI), 0 when all agree. This is `exact_mi_bits` of the one-hot channel.
    Any scorer's `estimate_mi` of the same compressions (M = 1) is a lower bound on it (Barber-Agakov).
    """
    if len(outputs) == 0:
        raise ValueError("deterministic_mi_bits needs at least one output")
    counts = np.array(list(Counter(outputs).values()), dtype=np.float64)
    return float(stats.entropy(counts, base=2))


def bits_per_token(rate_bits: float, mean_tokens: float) -> float:
    """Information rate per compression token: rate_bits / mean_tokens (a ratio of means, not a mean of ratios).

    `mean_tokens` is the mean compression length with EOS counted (done upstream); it must be > 0.
    """
    if not mean_tokens > 0:
        raise ValueError(f"mean_tokens must be > 0; got {mean_tokens}")
    return float(rate_bits) / float(mean_tokens)


def _combine_aliases(logp: float | np.ndarray, name: str) -> float:
    """ln of the total probability of all answer aliases: logsumexp over a scalar or 1-D array (nats)."""
    a = np.atleast_1d(np.asarray(logp, dtype=np.float64))
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a scalar or non-empty 1-D array of alias log-probs")
    if np.isnan(a).any() or np.isposinf(a).any():
        raise ValueError(f"{name} contains NaN or +inf")
    return float(logsumexp(a))


def correctness_bits(logp_y_given_xt_q: float | np.ndarray, logp_y_given_q: float | np.ndarray) -> float:
    """Pointwise information about the answer (IB correctness term): log2 p(y|x̃,q) − log2 p(y|q).

    Each argument is ln p of one answer or a 1-D array of ln p for its aliases (combined by logsumexp). Positive
    when the compression x̃ makes the answer more likely. Using p(y|q) (no context) instead of the average of
    p(y|x̃', q) over compressions as the reference is an approximation.
    """
    a = _combine_aliases(logp_y_given_xt_q, "logp_y_given_xt_q")
    b = _combine_aliases(logp_y_given_q, "logp_y_given_q")
    return (a - b) / LN2


def conciseness_bits(logp_xt_given_q: float) -> float:
    """IB conciseness term: −log2 p(x̃|q), the code length of the compression given the question (>= 0)."""
    x = float(logp_xt_given_q)
    if math.isnan(x) or x == math.inf:
        raise ValueError(f"logp_xt_given_q must not be NaN or +inf; got {x}")
    return -x / LN2


def ib_score(conciseness: float, correctness: float, beta: float = 10.0) -> float:
    """Information-bottleneck objective (lower is better): conciseness − beta · correctness, in bits."""
    return float(conciseness) - float(beta) * float(correctness)
