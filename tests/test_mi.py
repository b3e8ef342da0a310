"""Validation of harness.mi: closed-form channels, invariants, grouped estimates, IB terms."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from harness.mi import (
    GroupedMIEstimate,
    MIEstimate,
    bits_per_token,
    conciseness_bits,
    correctness_bits,
    estimate_mi,
    estimate_mi_groups,
    exact_mi_bits,
    ib_score,
    mc_standard_error,
    paired_mi_difference,
)

# ---------------------------------------------------------------------------------------------------------------
# Closed-form channel: a context is k attributes, each uniform over m values. The summary keeps each attribute with
# probability 1 - delta and otherwise replaces it by a uniform draw over the m values (which may coincide), so
# p(z | x) = Π_a [(1 - delta) 1{z_a = x_a} + delta / m] exactly.
# ---------------------------------------------------------------------------------------------------------------


def _attr_logs(delta: float, m: int) -> tuple[float, float]:
    """(ln p(z_a = x_a | x_a), ln p(z_a = v | x_a)) for v != x_a."""
    with np.errstate(divide="ignore"):
        return math.log(1.0 - delta + delta / m), float(np.log(delta / m))


def _sample_channel(x: np.ndarray, m: int, delta: float, n_samples: int, u: np.ndarray, repl: np.ndarray) -> np.ndarray:
    """logp (N, M, N) for summaries drawn with uniforms `u` and replacement values `repl` (common random numbers)."""
    z = np.where(u >= delta, x[:, None, :], repl)  # (N, M, k)
    hit = z[:, :, None, :] == x[None, None, :, :]  # (N, M, N, k)
    same, diff = _attr_logs(delta, m)
    return np.where(hit, same, diff).sum(axis=-1)


def _channel(
    k: int, m: int, delta: float, n: int, n_samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw N contexts and M summaries per context; return (logp, contexts)."""
    x = rng.integers(0, m, size=(n, k))
    u = rng.random((n, n_samples, k))
    repl = rng.integers(0, m, size=(n, n_samples, k))
    return _sample_channel(x, m, delta, n_samples, u, repl), x


def _channel_matrix(x: np.ndarray, m: int, delta: float) -> np.ndarray:
    """Exact (N, m^k) channel matrix p(z | x_i) over all summaries z."""
    k = x.shape[1]
    all_z = np.array(list(itertools.product(range(m), repeat=k)))
    return np.where(all_z[None, :, :] == x[:, None, :], 1.0 - delta + delta / m, delta / m).prod(axis=-1)


def _drawn_set_mi(x: np.ndarray, m: int, delta: float) -> float:
    """Exact MI with X uniform over the drawn contexts (duplicates count separately), by enumeration."""
    return exact_mi_bits(_channel_matrix(x, m, delta))


def _population_mi(k: int, m: int, delta: float) -> float:
    """Closed-form MI with X uniform over all m^k contexts: k · I_attr, I_attr = log2 m − H(row)."""
    a, b = 1.0 - delta + delta / m, delta / m
    h_row = -(a * math.log2(a) + (m - 1) * b * math.log2(b))
    return k * (math.log2(m) - h_row)


def test_channel_helpers_are_consistent() -> None:
    """Enumerated MI over all m^k contexts equals the per-attribute closed form; sampled logp matches the matrix."""
    k, m, delta = 3, 4, 0.5
    all_x = np.array(list(itertools.product(range(m), repeat=k)))
    assert _drawn_set_mi(all_x, m, delta) == pytest.approx(_population_mi(k, m, delta), abs=1e-10)
    rng = np.random.default_rng(0)
    lp, x = _channel(k, m, delta, 5, 3, rng)
    p = _channel_matrix(x, m, delta)
    # every sampled log-prob row must be one of the exact columns of the matrix
    cols = np.log(p).T  # (m^k, N)
    for i, j in itertools.product(range(5), range(3)):
        assert np.isclose(cols, lp[i, j][None, :]).all(axis=1).any()


# --- coverage and bias -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "m", "delta", "n", "n_samples"),
    [
        (3, 4, 0.3, 16, 8),
        (3, 4, 0.5, 16, 8),
        (3, 4, 0.7, 16, 8),
        (4, 8, 0.5, 16, 8),
        (3, 4, 0.5, 16, 1),
        (3, 4, 0.5, 8, 4),
    ],
)
def test_ci_covers_drawn_set_mi(k: int, m: int, delta: float, n: int, n_samples: int) -> None:
    """95% bootstrap interval covers the exact drawn-set MI in >= 90% of 200 seeds."""
    seeds = 200
    covered = 0
    for s in range(seeds):
        rng = np.random.default_rng(1000 + s)
        lp, x = _channel(k, m, delta, n, n_samples, rng)
        truth = _drawn_set_mi(x, m, delta)
        est = estimate_mi(lp, n_boot=1000, seed=s)
        covered += est.ci[0] <= truth <= est.ci[1]
    assert covered / seeds >= 0.90, f"coverage {covered / seeds:.3f}"


@pytest.mark.parametrize(("k", "m", "delta"), [(3, 4, 0.6), (4, 8, 0.75)])
def test_mean_estimate_matches_population_mi(k: int, m: int, delta: float) -> None:
    """With N=256 >> 2^I (I ~ 0.9 bit), the mean over seeds is within max(5%, 0.02 bits) of the population MI."""
    n, n_samples, seeds = 256, 4, 40
    truth = _population_mi(k, m, delta)
    assert 0.5 < truth < 1.5
    ests = [
        estimate_mi(_channel(k, m, delta, n, n_samples, np.random.default_rng(s))[0], n_boot=1).bits
        for s in range(seeds)
    ]
    assert abs(np.mean(ests) - truth) <= max(0.05 * truth, 0.02), (np.mean(ests), truth)


# --- invariants --------------------------------------------------------------------------------------------------


def test_independent_compression_gives_zero() -> None:
    rng = np.random.default_rng(1)
    n, n_samples = 12, 5
    lp = np.repeat(rng.normal(-20.0, 5.0, size=(n, n_samples, 1)), n, axis=2)
    est = estimate_mi(lp)
    assert abs(est.bits) < 0.02
    assert est.bits == pytest.approx(0.0, abs=1e-12)
    assert est.ci == pytest.approx((0.0, 0.0), abs=1e-12)
    assert est.saturated_fraction == 0.0
    # delta = 1 in the channel: the summary ignores its context
    lp1, _ = _channel(3, 4, 1.0, 16, 4, rng)
    assert estimate_mi(lp1).bits == pytest.approx(0.0, abs=1e-12)


def test_shuffled_pairings_give_negative_estimate() -> None:
    """Taking the 'own' score from a derangement (cyclic shift) of contexts gives a negative estimate."""
    lp, _ = _channel(3, 4, 0.3, 32, 8, np.random.default_rng(2))
    perm = (np.arange(32) + 1) % 32
    assert estimate_mi(lp).bits > 1.0
    shuffled = lp[:, :, perm]  # shuffled[i, j, i] = lp[i, j, perm[i]]; the marginal is unchanged
    assert estimate_mi(shuffled).bits < 0.0


def test_perfectly_informative_channel_saturates_at_log2_n() -> None:
    n, n_samples = 8, 3
    lp = np.full((n, n_samples, n), -np.inf)
    idx = np.arange(n)
    lp[idx, :, idx] = -7.0
    est = estimate_mi(lp)
    assert est.bits == pytest.approx(math.log2(n), abs=1e-12)
    assert est.bits <= est.log2_n
    assert est.saturated_fraction == 1.0
    assert est.ci == pytest.approx((3.0, 3.0), abs=1e-12)
    assert est.upper_bits == math.inf
    d = est.to_dict()
    assert d["upper_bits"] is None
    json.dumps(d, allow_nan=False)


def test_channel_with_delta_zero_and_distinct_contexts_saturates() -> None:
    all_x = np.array(list(itertools.product(range(4), repeat=2)))  # 16 distinct contexts
    rng = np.random.default_rng(3)
    lp = _sample_channel(all_x, 4, 0.0, 2, rng.random((16, 2, 2)), rng.integers(0, 4, size=(16, 2, 2)))
    est = estimate_mi(lp)
    assert est.bits == pytest.approx(4.0, abs=1e-12)
    assert est.saturated_fraction == 1.0


@pytest.mark.parametrize("seed", range(20))
def test_never_exceeds_log2_n_on_arbitrary_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 20))
    n_samples = int(rng.integers(1, 6))
    lp = rng.normal(0.0, 10.0 ** rng.uniform(-2, 3), size=(n, n_samples, n))
    lp[rng.random(lp.shape) < 0.3] = -np.inf
    idx = np.arange(n)
    lp[idx, :, idx] = rng.normal(0.0, 50.0, size=(n, n_samples))
    est = estimate_mi(lp, n_boot=50)
    assert est.bits <= math.log2(n)
    assert np.all(est.pointwise_bits <= math.log2(n))
    assert est.ci[1] <= math.log2(n)
    assert 0.0 <= est.saturated_fraction <= 1.0


@pytest.mark.parametrize("seed", range(5))
def test_monotone_in_noise_with_common_random_numbers(seed: int) -> None:
    k, m, n, n_samples = 3, 4, 64, 8
    rng = np.random.default_rng(seed)
    x = rng.integers(0, m, size=(n, k))
    u, repl = rng.random((n, n_samples, k)), rng.integers(0, m, size=(n, n_samples, k))
    deltas = np.linspace(0.0, 1.0, 11)
    bits = [estimate_mi(_sample_channel(x, m, d, n_samples, u, repl), n_boot=1).bits for d in deltas]
    assert all(b1 > b2 for b1, b2 in itertools.pairwise(bits)), bits
    assert bits[-1] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_upper_at_least_lower_for_self_sampled_channel(seed: int) -> None:
    lp, _ = _channel(3, 4, 0.5, 16, 8, np.random.default_rng(seed))
    est = estimate_mi(lp, n_boot=10, scorer_is_sampler=True, plain_sampling=True)
    assert est.upper_bits >= est.bits
    assert est.upper_is_bound


def test_upper_is_bound_needs_both_flags() -> None:
    lp, _ = _channel(3, 4, 0.5, 8, 2, np.random.default_rng(0))
    assert not estimate_mi(lp, n_boot=1).upper_is_bound
    assert not estimate_mi(lp, n_boot=1, scorer_is_sampler=True).upper_is_bound
    assert not estimate_mi(lp, n_boot=1, plain_sampling=True).upper_is_bound
    assert estimate_mi(lp, n_boot=1, scorer_is_sampler=True, plain_sampling=True).upper_is_bound


def test_pointwise_and_upper_terms_by_hand() -> None:
    p = np.array([[[0.5, 0.25, 0.25]], [[0.1, 0.6, 0.3]], [[0.2, 0.2, 0.6]]])  # (3, 1, 3): p(z_i | x_l)
    est = estimate_mi(np.log(p), n_boot=10)
    lower = [math.log2(p[i, 0, i] / p[i, 0].mean()) for i in range(3)]
    upper = [math.log2(p[i, 0, i] / np.delete(p[i, 0], i).mean()) for i in range(3)]
    assert est.pointwise_bits[:, 0] == pytest.approx(lower)
    assert est.bits == pytest.approx(np.mean(lower))
    assert est.upper_bits == pytest.approx(np.mean(upper))
    assert (est.n_contexts, est.n_samples, est.log2_n) == (3, 1, pytest.approx(math.log2(3)))


def test_ci_contains_estimate_and_is_deterministic() -> None:
    lp, _ = _channel(3, 4, 0.5, 16, 8, np.random.default_rng(4))
    a, b = estimate_mi(lp, seed=7), estimate_mi(lp, seed=7)
    assert a.ci == b.ci
    assert a.ci[0] <= a.bits <= a.ci[1]
    assert estimate_mi(lp, seed=8).ci != a.ci


def test_saturation_tolerance() -> None:
    lp = np.log(np.array([[[0.999, 1e-6]], [[0.3, 0.5]]]))  # terms: 1 - 1.4e-6 bits, log2(0.5/0.4) = 0.32 bits
    assert estimate_mi(lp, saturation_tol_bits=0.01).saturated_fraction == 0.5
    assert estimate_mi(lp, saturation_tol_bits=0.0).saturated_fraction == 0.0
    assert estimate_mi(lp, saturation_tol_bits=1.0).saturated_fraction == 1.0


# --- input validation --------------------------------------------------------------------------------------------


def _good(n: int = 4, n_samples: int = 2) -> np.ndarray:
    return _channel(2, 3, 0.5, n, n_samples, np.random.default_rng(0))[0]


def test_nan_raises() -> None:
    lp = _good()
    lp[1, 0, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        estimate_mi(lp)


def test_pos_inf_raises() -> None:
    lp = _good()
    lp[0, 1, 3] = np.inf
    with pytest.raises(ValueError, match=r"\+inf"):
        estimate_mi(lp)


def test_neg_inf_on_diagonal_raises() -> None:
    lp = _good()
    lp[2, 1, 2] = -np.inf
    with pytest.raises(ValueError, match="zero probability"):
        estimate_mi(lp)


def test_neg_inf_off_diagonal_accepted() -> None:
    lp = _good()
    lp[2, 1, 0] = -np.inf
    est = estimate_mi(lp)
    assert math.isfinite(est.bits)


@pytest.mark.parametrize(
    "shape", [(4, 4), (4, 2, 3), (1, 2, 1), (3, 0, 3), (2, 2, 2, 2)], ids=["2d", "nonsquare", "n1", "m0", "4d"]
)
def test_bad_shapes_raise(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        estimate_mi(np.zeros(shape))


def test_bad_n_boot_raises() -> None:
    with pytest.raises(ValueError):
        estimate_mi(_good(), n_boot=0)


def test_to_dict_is_json_friendly() -> None:
    est = estimate_mi(_good(), n_boot=20)
    assert isinstance(est, MIEstimate)
    d = json.loads(json.dumps(est.to_dict(), allow_nan=False))
    assert d["bits"] == pytest.approx(est.bits)
    assert len(d["pointwise_bits"]) == 4 and len(d["pointwise_bits"][0]) == 2
    assert isinstance(d["ci"], list) and isinstance(d["upper_is_bound"], bool)
    with pytest.raises(AttributeError):
        est.bits = 0.0  # type: ignore[misc]


# --- grouped -----------------------------------------------------------------------------------------------------


def _groups(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    specs = [(0.3, 12, 4), (0.5, 16, 8), (0.7, 20, 6)]
    return [_channel(3, 4, d, n, ms, rng)[0] for d, n, ms in specs]


def test_grouped_is_term_weighted_mean() -> None:
    groups = _groups(0)
    g = estimate_mi_groups(groups, n_boot=500)
    assert isinstance(g, GroupedMIEstimate)
    sizes = np.array([12 * 4, 16 * 8, 20 * 6], dtype=float)
    assert g.weights == pytest.approx(tuple(sizes / sizes.sum()))
    per = [estimate_mi(lp, n_boot=1).bits for lp in groups]
    assert g.bits == pytest.approx(float(np.dot(g.weights, per)))
    pooled = np.concatenate([e.pointwise_bits.ravel() for e in g.per_group]).mean()
    assert g.bits == pytest.approx(pooled)
    assert [e.bits for e in g.per_group] == pytest.approx(per)
    assert g.upper_bits == pytest.approx(float(np.dot(g.weights, [e.upper_bits for e in g.per_group])))
    assert g.ci[0] <= g.bits <= g.ci[1]
    assert (g.n_groups, g.n_terms) == (3, int(sizes.sum()))
    json.dumps(g.to_dict(), allow_nan=False)
    assert "pointwise_bits" in g.to_dict(include_pointwise=True)["per_group"][0]


def test_grouped_single_group_matches_estimate() -> None:
    lp = _groups(1)[1]
    g = estimate_mi_groups([lp], n_boot=2000)
    e = estimate_mi(lp, n_boot=2000)
    assert g.bits == pytest.approx(e.bits)
    assert g.ci == g.per_group[0].ci  # the two-stage scheme reduces to the row bootstrap
    assert g.ci == pytest.approx(e.ci, abs=0.05)  # same scheme, different random draws


def test_grouped_ci_covers_weighted_drawn_set_mi() -> None:
    """Two-stage interval covers Σ_g w_g I_g (drawn sets) in >= 90% of 100 seeds (it is conservative)."""
    covered, seeds = 0, 100
    for s in range(seeds):
        rng = np.random.default_rng(5000 + s)
        draws = [_channel(3, 4, 0.5, 16, 8, rng) for _ in range(3)]
        g = estimate_mi_groups([lp for lp, _ in draws], n_boot=500, seed=s)
        truth = float(np.dot(g.weights, [_drawn_set_mi(x, 4, 0.5) for _, x in draws]))
        covered += g.ci[0] <= truth <= g.ci[1]
    assert covered / seeds >= 0.90


def test_grouped_errors() -> None:
    with pytest.raises(ValueError):
        estimate_mi_groups([])
    bad = _good()
    bad[0, 0, 1] = np.nan
    with pytest.raises(ValueError, match="group 1"):
        estimate_mi_groups([_good(), bad])


# --- exact MI, rate, IB terms ------------------------------------------------------------------------------------


def test_exact_mi_bits_known_channels() -> None:
    assert exact_mi_bits(np.eye(8)) == pytest.approx(3.0)
    assert exact_mi_bits(np.full((5, 7), 1 / 7)) == pytest.approx(0.0, abs=1e-12)
    eps = 0.1
    bsc = np.array([[1 - eps, eps], [eps, 1 - eps]])
    h = -(eps * math.log2(eps) + (1 - eps) * math.log2(1 - eps))
    assert exact_mi_bits(bsc) == pytest.approx(1.0 - h)
    # Z-channel with non-uniform prior, against a direct computation
    p, px = np.array([[1.0, 0.0], [0.5, 0.5]]), np.array([0.3, 0.7])
    pz = px @ p
    direct = sum(px[i] * p[i, z] * math.log2(p[i, z] / pz[z]) for i in range(2) for z in range(2) if p[i, z] > 0)
    assert exact_mi_bits(p, px) == pytest.approx(direct)
    with pytest.raises(ValueError):
        exact_mi_bits(np.array([[0.5, 0.4]]))
    with pytest.raises(ValueError):
        exact_mi_bits(np.eye(2), np.array([0.5, 0.6]))


def test_bits_per_token() -> None:
    assert bits_per_token(12.0, 48.0) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        bits_per_token(1.0, 0.0)


def test_correctness_bits_aliases_and_sign() -> None:
    # aliases 0.2 + 0.3 = 0.5 with context vs 0.25 without: +1 bit
    assert correctness_bits(np.log([0.2, 0.3]), math.log(0.25)) == pytest.approx(1.0)
    assert correctness_bits(math.log(0.25), np.log([0.2, 0.3])) == pytest.approx(-1.0)
    assert correctness_bits(np.log([0.5]), np.log([0.1, 0.4])) == pytest.approx(0.0, abs=1e-12)
    # -inf alias is fine (zero prob), all-alias logsumexp is stable for very negative log-probs
    assert correctness_bits(np.array([-1000.0, -1000.0]), np.array([-1001.0])) == pytest.approx(
        (math.log(2.0) + 1.0) / math.log(2.0)
    )
    assert correctness_bits(np.array([math.log(0.5), -np.inf]), math.log(0.5)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        correctness_bits(np.array([]), 0.0)
    with pytest.raises(ValueError):
        correctness_bits(np.array([np.nan]), 0.0)


def test_conciseness_and_ib_score() -> None:
    assert conciseness_bits(math.log(1 / 8)) == pytest.approx(3.0)
    assert conciseness_bits(0.0) == 0.0
    with pytest.raises(ValueError):
        conciseness_bits(float("nan"))
    assert ib_score(3.0, 1.0) == pytest.approx(-7.0)  # default beta = 10
    assert ib_score(3.0, 1.0, beta=2.0) == pytest.approx(1.0)
    assert ib_score(3.0, 1.0, beta=0.0) == pytest.approx(3.0)
    # more correct or more concise is better (lower score)
    assert ib_score(3.0, 2.0) < ib_score(3.0, 1.0)
    assert ib_score(2.0, 1.0) < ib_score(3.0, 1.0)


# --- Monte Carlo interval (contexts fixed) and paired comparisons -----------------------------------------------


@pytest.mark.parametrize(
    ("k", "m", "delta", "n", "n_samples"),
    [(3, 4, 0.3, 16, 8), (3, 4, 0.7, 16, 8), (4, 8, 0.5, 16, 8), (3, 4, 0.5, 8, 4), (3, 4, 0.5, 16, 2)],
)
def test_mc_ci_covers_drawn_set_mi_given_the_contexts(k: int, m: int, delta: float, n: int, n_samples: int) -> None:
    """Contexts drawn once, compressions redrawn 300 times: the MC interval covers the exact drawn-set MI in >= 90%
    (measured 93.5-96.8%), and the mean MC se is within 15% of the actual sd of the estimates."""
    x = np.random.default_rng(7).integers(0, m, size=(n, k))
    truth = _drawn_set_mi(x, m, delta)
    covered, ses, ests = 0, [], []
    for s in range(300):
        rng = np.random.default_rng(s)
        lp = _sample_channel(x, m, delta, n_samples, rng.random((n, n_samples, k)),
                             rng.integers(0, m, size=(n, n_samples, k)))
        est = estimate_mi(lp, n_boot=1)
        assert est.mc_ci is not None and est.mc_se_bits is not None
        covered += est.mc_ci[0] <= truth <= est.mc_ci[1]
        ses.append(est.mc_se_bits)
        ests.append(est.bits)
    assert covered / 300 >= 0.90, f"coverage {covered / 300:.3f}"
    assert np.mean(ses) == pytest.approx(np.std(ests), rel=0.15)


def test_mc_se_by_hand_and_not_estimable_with_one_draw() -> None:
    pw = np.array([[1.0, 0.0, 2.0], [0.5, 0.5, 0.5]])  # row variances (ddof 1): 1 and 0
    assert mc_standard_error(pw) == pytest.approx(math.sqrt((1.0 + 0.0) / 3) / 2)
    assert mc_standard_error(pw[:, :1]) is None
    lp1, _ = _channel(3, 4, 0.5, 8, 1, np.random.default_rng(0))
    e1 = estimate_mi(lp1, n_boot=10)
    assert e1.mc_se_bits is None and e1.mc_ci is None and np.isnan(e1.context_var_bits).all()
    d = json.loads(json.dumps(e1.to_dict(), allow_nan=False))
    assert d["mc_se_bits"] is None and d["mc_ci"] is None and d["population_ci"] == d["ci"]
    lp, _ = _channel(3, 4, 0.5, 8, 4, np.random.default_rng(0))
    e = estimate_mi(lp, n_boot=10)
    assert e.population_ci == e.ci
    assert e.mc_se_bits == pytest.approx(mc_standard_error(e.pointwise_bits))
    assert e.context_bits == pytest.approx(e.pointwise_bits.mean(axis=1))
    assert e.context_var_bits == pytest.approx(e.pointwise_bits.var(axis=1, ddof=1))
    half = float(sps.t.ppf(0.975, 8 * 3)) * e.mc_se_bits
    assert e.mc_ci == pytest.approx((e.bits - half, min(e.bits + half, 3.0)))
    assert e.mc_ci[1] <= e.log2_n


def test_grouped_mc_se_combines_groups_by_weight() -> None:
    g = estimate_mi_groups(_groups(0), n_boot=50)
    se = math.sqrt(sum(w**2 * e.mc_se_bits**2 for w, e in zip(g.weights, g.per_group, strict=True)))
    assert g.mc_se_bits == pytest.approx(se)
    assert g.mc_ci is not None and g.mc_ci[0] < g.bits < g.mc_ci[1]
    assert g.to_dict()["mc_se_bits"] == pytest.approx(se) and g.population_ci == g.ci
    one = _channel(3, 4, 0.5, 8, 1, np.random.default_rng(1))[0]
    g1 = estimate_mi_groups([*_groups(0), one], n_boot=50)
    assert g1.mc_se_bits is None and g1.mc_ci is None


def _hetero_logp(x: np.ndarray, m: int, deltas: np.ndarray, n_samples: int, rng: np.random.Generator
                 ) -> np.ndarray:
    """logp (N, M, N) of the attribute channel with a per-context noise level deltas[i] (context i's summaries)."""
    n, k = x.shape
    u, repl = rng.random((n, n_samples, k)), rng.integers(0, m, size=(n, n_samples, k))
    z = np.where(u >= deltas[:, None, None], x[:, None, :], repl)
    hit = z[:, :, None, :] == x[None, None, :, :]  # (N, M, N, k)
    dl = deltas[None, None, :, None]
    return np.log(np.where(hit, 1.0 - dl + dl / m, dl / m)).sum(axis=-1)


def _hetero_truth(x: np.ndarray, m: int, deltas: np.ndarray) -> float:
    p = np.stack([_channel_matrix(x[i : i + 1], m, float(d))[0] for i, d in enumerate(deltas)])
    return exact_mi_bits(p)


def test_paired_difference_tells_compressors_apart_where_population_intervals_cannot() -> None:
    """12 contexts of very different informativeness (per-context noise 0.05..0.95), two compressors on the same
    contexts, B slightly noisier (+0.05). The population intervals overlap (they carry the between-context spread);
    the paired Monte Carlo test separates them, and its interval covers the exact drawn-set difference."""
    k, m, n, ms = 4, 8, 12, 32
    x = np.random.default_rng(3).integers(0, m, size=(n, k))
    da = np.linspace(0.05, 0.9, n)
    db = da + 0.05
    truth = _hetero_truth(x, m, da) - _hetero_truth(x, m, db)
    assert 0.1 < truth < 0.4
    rng = np.random.default_rng(0)
    ea = estimate_mi(_hetero_logp(x, m, da, ms, rng), n_boot=2000)
    eb = estimate_mi(_hetero_logp(x, m, db, ms, rng), n_boot=2000)
    assert ea.ci[0] < eb.ci[1] and eb.ci[0] < ea.ci[1]  # population intervals overlap
    assert ea.ci[1] - ea.ci[0] > 8 * ea.mc_se_bits  # and are far wider than the MC error
    d = paired_mi_difference(ea.context_bits, eb.context_bits, a_var=ea.context_var_bits, b_var=eb.context_var_bits,
                             m_a=ms, m_b=ms)
    assert d.diff_bits == pytest.approx(ea.bits - eb.bits)
    assert d.mc_p is not None and d.mc_p < 1e-3 and d.mc_ci is not None and d.mc_ci[0] > 0
    assert d.mc_ci[0] <= truth <= d.mc_ci[1]
    assert d.mc_se_bits == pytest.approx(math.hypot(ea.mc_se_bits, eb.mc_se_bits))
    json.dumps(d.to_dict(), allow_nan=False)


def test_paired_mc_interval_covers_the_drawn_set_difference() -> None:
    """Over 300 redraws of both compressors' summaries (contexts fixed) the paired MC interval covers the exact
    drawn-set difference in >= 90% (measured 95%), and the mean MC se matches the sd of the difference."""
    k, m, n, ms = 3, 4, 12, 8
    x = np.random.default_rng(5).integers(0, m, size=(n, k))
    da, db = np.linspace(0.1, 0.9, n), np.linspace(0.2, 1.0, n)
    truth = _hetero_truth(x, m, da) - _hetero_truth(x, m, db)
    covered, diffs, ses = 0, [], []
    for s in range(300):
        rng = np.random.default_rng(s)
        ea = estimate_mi(_hetero_logp(x, m, da, ms, rng), n_boot=1)
        eb = estimate_mi(_hetero_logp(x, m, db, ms, rng), n_boot=1)
        d = paired_mi_difference(ea.context_bits, eb.context_bits, a_var=ea.context_var_bits,
                                 b_var=eb.context_var_bits, m_a=ms, m_b=ms, n_boot=1)
        assert d.mc_ci is not None and d.mc_se_bits is not None
        covered += d.mc_ci[0] <= truth <= d.mc_ci[1]
        diffs.append(d.diff_bits)
        ses.append(d.mc_se_bits)
    assert covered / 300 >= 0.90, covered / 300
    assert np.mean(ses) == pytest.approx(np.std(diffs), rel=0.15)


def test_paired_difference_by_hand_and_edge_cases() -> None:
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, 1.0, 2.0, 3.5])
    d = paired_mi_difference(a, b, a_var=[0.4] * 4, b_var=[0.2, 0.2, 0.2, 0.2], m_a=4, m_b=[2, 2, 2, 2], n_boot=500)
    assert (d.n_contexts, d.bits_a, d.bits_b, d.diff_bits) == (4, 2.5, 1.75, pytest.approx(0.75))
    se = math.sqrt(4 * (0.4 / 4 + 0.2 / 2)) / 4
    assert d.mc_se_bits == pytest.approx(se)
    assert d.mc_ci == pytest.approx((0.75 - 1.959964 * se, 0.75 + 1.959964 * se), abs=1e-5)
    assert d.mc_p == pytest.approx(2 * sps.norm.sf(0.75 / se))
    assert d.t_p == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert d.wilcoxon_p == pytest.approx(sps.wilcoxon(a - b).pvalue)
    assert d.population_ci is not None and d.population_ci[0] <= 0.75 <= d.population_ci[1]
    # M = 1 (NaN variances) or no variances: no MC part; one context: no population part
    d1 = paired_mi_difference(a, b, a_var=[np.nan] * 4, b_var=[0.1] * 4, m_a=1, m_b=1)
    assert d1.mc_se_bits is None and d1.mc_p is None and d1.t_p is not None
    assert paired_mi_difference(a, b).mc_se_bits is None
    d2 = paired_mi_difference([1.0], [0.0], a_var=[0.5], b_var=[0.5], m_a=2, m_b=2)
    assert d2.population_ci is None and d2.t_p is None and d2.mc_se_bits == pytest.approx(math.sqrt(0.5))
    same = paired_mi_difference(a, a, a_var=[0.0] * 4, b_var=[0.0] * 4, m_a=2, m_b=2)
    assert same.diff_bits == 0.0 and same.mc_p == 1.0 and same.wilcoxon_p == 1.0 and same.t_p is None
    with pytest.raises(ValueError):
        paired_mi_difference(a, b[:3])
    with pytest.raises(ValueError):
        paired_mi_difference([np.inf], [0.0])
    with pytest.raises(ValueError):
        paired_mi_difference(a, b, a_var=[0.1] * 3, b_var=[0.1] * 4, m_a=2, m_b=2)


def test_run_table_mi_cell_shows_both_intervals() -> None:
    """`harness run`'s MI cell: bits ±MC se [pop lo, hi]; '±n/a MC' with one draw per context or an old row."""
    from harness.pipeline.run import mi_bits_cell

    e = estimate_mi(_good(4, 3), n_boot=50)
    d = e.to_dict()
    assert mi_bits_cell(d) == f"{e.bits:.3f} ±{e.mc_se_bits:.3f} MC [pop {e.ci[0]:.3f}, {e.ci[1]:.3f}]"
    d1 = estimate_mi(_good(4, 1), n_boot=50).to_dict()
    assert " ±n/a MC [pop " in mi_bits_cell(d1)
    old = {"bits": 1.0, "ci": [0.5, 1.5]}  # a row written before the MC error was kept
    assert mi_bits_cell(old, ".2f") == "1.00 ±n/a MC [pop 0.50, 1.50]"
