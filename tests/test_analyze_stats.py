"""harness.analyze.stats: rate–distortion fit, logistic factors, paired tests, correlation (no models, no store);
and `harness compare`'s paired MI test on a small store written row by row (no models)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import optimize
from scipy import stats as sps

from harness.analyze import stats
from harness.analyze.stats import (
    correlation,
    discordant,
    fit_rate_distortion,
    logistic_factors,
    mcnemar_exact,
    paired_bootstrap_diff,
    rd_curve,
)

# ----------------------------------------------------------------------------- rate–distortion


def test_rd_fit_recovers_planted_parameters_and_intervals_cover_them():
    rng = np.random.default_rng(1)
    c, b, d0 = 0.6, 0.8, 0.1
    r = np.repeat(np.linspace(0.0, 6.0, 10), 2)
    d = rd_curve(r, c, b, d0) + rng.normal(0.0, 0.01, r.size)
    fit = fit_rate_distortion(r, d, n_boot=300, seed=0)
    assert fit.identifiable and fit.ok and fit.n_points == 20 and fit.n_distinct == 20
    assert fit.C == pytest.approx(c, abs=0.05)
    assert fit.b == pytest.approx(b, abs=0.1)
    assert fit.D0 == pytest.approx(d0, abs=0.02)
    for name, true in (("C", c), ("b", b), ("D0", d0)):
        lo, hi = fit.ci[name]
        assert lo <= true <= hi, (name, lo, true, hi)
        assert hi - lo < 0.5  # informative, not the whole bound box
    assert fit.n_boot_ok > 250 and fit.rmse is not None and fit.rmse < 0.02
    np.testing.assert_allclose(fit.predict([0.0]), [fit.C + fit.D0])


def test_rd_fit_is_deterministic_for_a_seed():
    r = np.linspace(0, 4, 8)
    d = rd_curve(r, 0.5, 1.0, 0.2) + np.array([0.01, -0.01, 0.02, 0.0, -0.02, 0.01, 0.0, -0.01])
    a = fit_rate_distortion(r, d, n_boot=100, seed=3)
    b = fit_rate_distortion(r, d, n_boot=100, seed=3)
    assert a.ci == b.ci and a.C == b.C


@pytest.mark.parametrize("k", [0, 1, 4])
def test_rd_fit_under_five_points_is_not_identifiable(k):
    r = np.arange(k, dtype=float)
    fit = fit_rate_distortion(r, 1.0 - 0.1 * r)
    assert not fit.identifiable and not fit.ok and fit.C is None
    assert f"not identifiable ({k} points" in fit.note
    with pytest.raises(ValueError):
        fit.predict(1.0)


def test_rd_fit_counts_distinct_points_and_drops_nan():
    r = [1.0, 1.0, 2.0, 2.0, 3.0, 4.0, float("nan")]
    d = [0.5, 0.5, 0.4, 0.4, 0.3, 0.2, 0.1]
    fit = fit_rate_distortion(r, d)
    assert fit.n_points == 6 and fit.n_distinct == 4 and not fit.identifiable


def test_rd_fit_reports_a_failed_optimisation(monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("Optimal parameters not found")

    monkeypatch.setattr(optimize, "curve_fit", boom)
    fit = fit_rate_distortion(np.arange(6.0), np.linspace(0.9, 0.2, 6))
    assert fit.identifiable and not fit.ok and "did not converge" in fit.note


def test_rd_fit_respects_bounds():
    # increasing distortion with rate: the best fit within b > 0, C ≥ 0 is a flat line at D0 within [0, 1]
    r = np.arange(6.0)
    fit = fit_rate_distortion(r, np.linspace(0.1, 0.6, 6), n_boot=50)
    assert fit.ok and fit.C >= 0 and fit.b > 0 and 0 <= fit.D0 <= 1


# ----------------------------------------------------------------------------- paired tests


def test_mcnemar_exact_hand_computed_cases():
    a = [1, 1, 1, 1, 1, 0, 1, 0]
    b = [0, 0, 0, 0, 0, 0, 1, 0]
    assert discordant(a, b) == (5, 0)
    assert mcnemar_exact(a, b) == pytest.approx(2 * 0.5**5)  # 0.0625
    # 7 vs 1 discordant: 2 * (C(8,0) + C(8,1)) / 2^8
    a = [1] * 7 + [0] + [1, 0]
    b = [0] * 7 + [1] + [1, 0]
    assert discordant(a, b) == (7, 1)
    assert mcnemar_exact(a, b) == pytest.approx(2 * (1 + 8) / 256)
    assert mcnemar_exact(b, a) == pytest.approx(2 * (1 + 8) / 256)
    assert mcnemar_exact([1, 0], [0, 1]) == pytest.approx(1.0)
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]) == 1.0  # no discordant pairs
    with pytest.raises(ValueError):
        mcnemar_exact([1, 0], [1])


def test_paired_bootstrap_covers_the_true_difference():
    rng = np.random.default_rng(7)
    n = 600
    u = rng.random(n)
    a = (u < 0.7).astype(int)  # P(a)=0.7
    b = (u < 0.5).astype(int)  # P(b)=0.5, positively correlated with a
    res = paired_bootstrap_diff(a, b, n_boot=2000, seed=0)
    assert res.n == n and res.diff == pytest.approx(a.mean() - b.mean())
    assert res.lo <= 0.2 <= res.hi
    assert res.lo > 0  # the difference is detected
    assert res.hi - res.lo < 0.1
    # paired: the interval is narrower than an unpaired one would be (sd of a−b is small here)
    unpaired_half = 1.96 * math.sqrt(0.7 * 0.3 / n + 0.5 * 0.5 / n)
    assert (res.hi - res.lo) / 2 < unpaired_half


def test_paired_bootstrap_no_difference_interval_contains_zero_and_is_seeded():
    a = [1, 0, 1, 0, 1, 1, 0, 0, 1, 0]
    r1 = paired_bootstrap_diff(a, a, n_boot=500, seed=1)
    assert (r1.diff, r1.lo, r1.hi) == (0.0, 0.0, 0.0)
    b = [0, 1, 1, 0, 1, 0, 0, 1, 1, 0]
    assert paired_bootstrap_diff(a, b, 500, 4) == paired_bootstrap_diff(a, b, 500, 4)
    with pytest.raises(ValueError):
        paired_bootstrap_diff([], [])


# ----------------------------------------------------------------------------- correlation


def test_correlation_values_and_too_few_points():
    assert correlation([1, 2], [3, 4]) is None
    assert correlation([1, 2, float("nan")], [3, 4, 5]) is None
    x = np.arange(1.0, 8.0)
    c = correlation(x, 2 * x + 1)
    assert c is not None and c.n == 7 and c.pearson_r == pytest.approx(1.0) and c.spearman_rho == pytest.approx(1.0)
    c = correlation(x, x**4)  # monotone, not linear
    assert c.spearman_rho == pytest.approx(1.0) and c.pearson_r < 0.99
    c = correlation(x, -x)
    assert c.pearson_r == pytest.approx(-1.0)
    c = correlation(x, np.ones(7))
    assert c is not None and math.isnan(c.pearson_r)


def test_small_n_correlation_p_values_are_exact_permutation_p_values():
    c = correlation([2.0, 3.8, 4.0], [0.41, 0.53, 0.69])  # perfect rank order of 3 points
    # 2 of the 3! pairings reach |ρ| = 1: p = 1/3, where the t approximation says 0
    assert c.exact and c.spearman_rho == pytest.approx(1.0) and c.spearman_p == pytest.approx(1 / 3)
    c = correlation(np.arange(7.0), np.arange(7.0) ** 2)
    assert c.exact and c.spearman_p == pytest.approx(2 / 5040) and 0 < c.pearson_p < 0.01
    c = correlation(np.arange(9.0), np.arange(9.0) ** 2)
    assert not c.exact and c.spearman_p < 1e-6  # n > 8: scipy's asymptotic p-values
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=6), rng.normal(size=6)
    c = correlation(x, y)
    ref = sps.permutation_test((x,), lambda a: sps.spearmanr(a, y)[0], permutation_type="pairings",
                                 n_resamples=np.inf)  # scipy's exact enumeration, independent of ours
    assert c.spearman_p == pytest.approx(ref.pvalue) and 0.05 < c.spearman_p < 1


# ----------------------------------------------------------------------------- logistic factors


def _synthetic(n: int = 1200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    fam = rng.choice(["a", "b", "c"], n)
    size = rng.uniform(27, 31, n)  # log2 params
    noise = rng.normal(0, 1, n)  # a factor with no effect
    sid = rng.integers(0, 150, n)
    lp = -12.0 + 0.4 * size + 1.0 * (fam == "b") - 1.0 * (fam == "c")
    y = (rng.random(n) < 1 / (1 + np.exp(-lp))).astype(int)
    return pd.DataFrame({"y": y, "family": fam, "log2_size": size, "noise": noise, "sample": sid})


def test_logistic_recovers_planted_coefficients():
    res = logistic_factors(_synthetic(), "y", ["family", "log2_size", "noise"], "sample")
    assert res.ok and res.robust and res.n == 1200 and res.n_clusters == 150
    co = {c.term: c for c in res.coefs}
    assert set(co) == {"const", "family=b", "family=c", "log2_size", "noise"}
    assert co["log2_size"].lo <= 0.4 <= co["log2_size"].hi and co["log2_size"].lo > 0
    assert co["family=b"].lo <= 1.0 <= co["family=b"].hi and co["family=b"].lo > 0
    assert co["family=c"].lo <= -1.0 <= co["family=c"].hi and co["family=c"].hi < 0
    assert co["noise"].lo < 0 < co["noise"].hi
    lr = {t.factor: t for t in res.lr_tests}
    assert lr["family"].df == 2 and lr["log2_size"].df == 1
    assert lr["log2_size"].p < 1e-6 and lr["family"].p < 1e-6 and lr["noise"].p > 0.01
    assert res.notes == []


def test_logistic_cluster_robust_intervals_widen_with_duplicated_clusters():
    d = _synthetic(300, seed=2)
    dup = pd.concat([d] * 6, ignore_index=True)  # every row 6 times: the same sample counted 6 times
    dup["row"] = np.arange(len(dup))
    naive = logistic_factors(dup, "y", ["log2_size"], "row")  # one cluster per row: ~ the naive covariance
    robust = logistic_factors(dup, "y", ["log2_size"], "sample")
    w_naive = next(c.hi - c.lo for c in naive.coefs if c.term == "log2_size")
    w_robust = next(c.hi - c.lo for c in robust.coefs if c.term == "log2_size")
    assert w_robust > 1.8 * w_naive


def test_logistic_flags_confounded_and_constant_factors():
    d = _synthetic(600, seed=3)
    # family determines size exactly: a → 27, b → 29, c → 31 (as when each family has one size)
    d["comp_size"] = d["family"].map({"a": 27.0, "b": 29.0, "c": 31.0})
    d["predictor_size"] = 30.0
    res = logistic_factors(d, "y", ["family", "comp_size", "predictor_size"], "sample")
    assert res.ok
    assert res.dropped == {"predictor_size": "constant", "comp_size": "confounded"}
    assert any("comp_size is confounded with family" in n for n in res.notes)
    assert any("predictor_size is constant" in n for n in res.notes)
    assert res.factors == ["family"]
    # a numeric copy of another factor is confounded too
    d["size2"] = 2 * d["log2_size"] + 1
    res = logistic_factors(d, "y", ["log2_size", "size2"], "sample")
    assert res.dropped == {"size2": "confounded"} and [c.term for c in res.coefs] == ["const", "log2_size"]


def test_logistic_degenerate_inputs_give_notes_not_crashes():
    d = _synthetic(200, seed=4)
    ones = d.assign(y=1)
    res = logistic_factors(ones, "y", ["family"], "sample")
    assert not res.ok and "constant" in res.notes[-1]
    res = logistic_factors(d.assign(k=1.0), "y", ["k"], "sample")
    assert not res.ok and "no factor varies" in res.notes[-1]
    res = logistic_factors(d.iloc[:0], "y", ["family"], "sample")
    assert not res.ok and res.n == 0
    # perfect separation: the outcome is the family
    sep = d.assign(y=(d["family"] == "a").astype(int))
    res = logistic_factors(sep, "y", ["family"], "sample")
    assert any("separation" in n or "converge" in n or "failed" in n for n in res.notes)
    one = d.assign(sample=0)
    res = logistic_factors(one, "y", ["log2_size"], "sample")
    assert res.ok and not res.robust and any("one cluster" in n for n in res.notes)
    with pytest.raises(ValueError):
        logistic_factors(d, "y", ["nope"], "sample")


def test_logistic_missing_rows_are_noted():
    d = _synthetic(300, seed=5)
    d.loc[:9, "log2_size"] = np.nan
    res = logistic_factors(d, "y", ["log2_size"], "sample")
    assert res.ok and res.n == 290 and any("10 rows" in n for n in res.notes)


def test_min_points_constant():
    assert stats.MIN_RD_POINTS == 5


def test_not_crossed_flags_family_seen_at_disjoint_sizes():
    d = pd.DataFrame({"fam": ["llama", "qwen2", "qwen2", "llama"], "size": [27.0, 28.9, 30.5, 27.0]})
    assert stats.not_crossed(d, "fam", "size") == {"llama": [27.0], "qwen2": [28.9, 30.5]}
    crossed = pd.concat([d, pd.DataFrame({"fam": ["llama"], "size": [28.9]})])  # one size now in both families
    assert stats.not_crossed(crossed, "fam", "size") is None
    assert stats.not_crossed(d[d["fam"] == "qwen2"], "fam", "size") is None  # one family: nothing to confound


# ----------------------------------------------------------------------------- paired MI in `harness compare`


def _mi_store(url: str, *, with_terms: bool = True) -> tuple[str, str, dict[str, object]]:
    """A store with two compressors (one predictor each) on 12 contexts of one question, and each compressor's MI
    scored by a common proxy, written through `store_mi_row` from rows built as the MI stage builds them (estimates
    of a channel whose per-context noise differs; compressor B is noisier). Returns (cell A, cell B, estimates)."""
    from harness.mi import estimate_mi, estimate_mi_groups
    from harness.pipeline.mi_stage import _context_terms
    from harness.pipeline.record import store_mi_row
    from harness.records import Document, ModelIdentity, Sample, Usage
    from harness.store import Store
    from tests.test_mi import _hetero_logp

    n, ms, k, m = 12, 16, 4, 8
    x = np.random.default_rng(3).integers(0, m, size=(n, k))
    da = np.linspace(0.05, 0.9, n)
    rng = np.random.default_rng(0)
    sids = [f"s{i:02d}" for i in range(n)]
    lp = {"A": _hetero_logp(x, m, da, ms, rng), "B": _hetero_logp(x, m, da + 0.05, ms, rng)}
    est = {c: estimate_mi(v, n_boot=200) for c, v in lp.items()}
    with Store.open(url) as st:
        st.start_run(run_id="r", name="mi", config={}, package_versions={})
        ids = {c: st.model_id(ModelIdentity("transformers", c, "rev", "float32", "t")) for c in ("A", "B", "P", "S")}
        st.add_samples("t", [Sample(s, "q?", (Document("d", s),), ("1",), group_id="g") for s in sids])
        for c in ("A", "B"):
            st.upsert_cell(cell_id=f"r/{c}", run_id="r", task="t", predictor_model_id=ids["P"], arm="compressed",
                           compressor_model_id=ids[c], knobs={})
            for s in sids:
                cid = st.add_compression(compressor_model_id=ids[c], task="t", sample_id=s, knob_hash="", text="z",
                                         sample_index=0, n_tokens=3, run_id="r", usage=Usage(10, 3, 0.1))
                pid = st.add_prediction(cell_id=f"r/{c}", sample_id=s, arm="compressed", text="1", compression_id=cid,
                                        usage=Usage(5, 1, 0.1))
                st.add_score(prediction_id=pid, metric="exact", value=1.0, correct=True)
            g = estimate_mi_groups([lp[c]], n_boot=200)
            row = {"mode": "conditional", "group_id": "*", "samples_per_context": ms, "sampling": {},
                   "n_contexts": n, "bits": g.bits, "ci": list(g.ci), "mc_se_bits": g.mc_se_bits,
                   "mc_ci": list(g.mc_ci), "upper_bits": g.upper_bits, "saturated_fraction": 0.0,
                   "bits_per_token": g.bits / 3, "mean_tokens": 3.0, "error": None}
            if with_terms:
                row.update(_context_terms(sids, est[c]))
            store_mi_row(st, "r", "t", ids[c], ids["S"], row, "")
    return "r/A", "r/B", est


def test_compare_reports_the_paired_mi_difference_over_shared_contexts(tmp_path, capsys):
    """Both cells' MI rows carry per-context terms from the same proxy scorer: `compare` reports the paired
    difference, equal to `paired_mi_difference` on those terms; the MC test separates A and B (B noisier)."""
    from harness.analyze.compare import compare_cells, format_comparison
    from harness.cli import main
    from harness.mi import paired_mi_difference

    url = str(tmp_path / "mi.db")
    a, b, est = _mi_store(url)
    res = compare_cells(url, a, b, n_boot=500)
    d = res.mi_paired
    assert d is not None and d.n_contexts == 12
    want = paired_mi_difference(est["A"].context_bits, est["B"].context_bits, a_var=est["A"].context_var_bits,
                                b_var=est["B"].context_var_bits, m_a=16, m_b=16, n_boot=500)
    assert d.diff_bits == pytest.approx(est["A"].bits - est["B"].bits)
    assert d.mc_se_bits == pytest.approx(want.mc_se_bits) and d.mc_p == pytest.approx(want.mc_p)
    assert d.population_ci == pytest.approx(want.population_ci)
    assert d.mc_p < 0.01 and d.diff_bits > 0
    out = format_comparison(res)
    assert f"MI: A − B = {d.diff_bits:+.3f} bits over 12 shared contexts" in out
    assert "Monte Carlo, given these contexts: ±" in out and "Wilcoxon p = " in out
    assert main(["compare", url, a, b]) == 0
    assert "MI: A − B = " in capsys.readouterr().out
    # the report's MI column shows both intervals: the MC se from detail_json and the population CI from ci_lo/hi
    from harness.analyze.frames import cell_frame
    from harness.analyze.render import fmt_mi
    from harness.results import load

    cells, _, _ = cell_frame(load(url))
    r = cells.set_index("cell_id").loc[a]
    assert r["mi_mc_se"] is not None and r["mi_mc_se"] > 0
    assert fmt_mi(r) == f"{r['mi_bits']:.2f} ±{r['mi_mc_se']:.2f} MC [pop {r['mi_lo']:.2f}, {r['mi_hi']:.2f}]"


def test_compare_without_per_context_terms_says_why(tmp_path):
    """MI rows stored without per-context terms (older runs): no paired test, and a note saying why."""
    from harness.analyze.compare import compare_cells

    url = str(tmp_path / "old.db")
    a, b, _ = _mi_store(url, with_terms=False)
    res = compare_cells(url, a, b, n_boot=200)
    assert res.mi_paired is None
    assert any("no per-context terms" in n for n in res.notes)
    assert res.mi["MI bits"][0] is not None  # the pooled estimates are still shown
