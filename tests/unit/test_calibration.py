"""Null calibration: t prediction test, reference z, log scale, empirical p, degenerate nulls."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as sps

from dlm_sway.core.calibration import (
    EMPIRICAL_MIN_K,
    P_FLOOR,
    Z_LIMIT,
    NullComparison,
    compare_to_null,
    min_achievable_p,
    null_p_values,
    nulls_needed_for_alpha,
    prediction_threshold,
)

Z_05 = float(sps.norm.isf(0.05))


# --------------------------------------------------------------------------- false-positive rate


@pytest.mark.parametrize("k", [3, 5, 10])
def test_t_prediction_false_positive_rate_is_nominal_under_the_null(k: int) -> None:
    """Raw and the K nulls are i.i.d. N(0, 1); a PASS at α=0.05 is a false positive.

    Measured with 20 000 draws, seed 20240611 + K (t_prediction vs reference_z):
    K=3: 0.0485 vs 0.1849;  K=5: 0.0508 vs 0.1260;  K=10: 0.0462 vs 0.0824.
    The t prediction test holds 5 % at every K; the reference z does not.
    """
    n = 20_000
    rng = np.random.default_rng(20240611 + k)
    nulls = rng.standard_normal((n, k))
    raw = rng.standard_normal(n)
    _, p, z = null_p_values(raw, nulls, method="t_prediction")
    fpr = float(np.mean(p <= 0.05))
    slack = 4.0 * math.sqrt(0.05 * 0.95 / n)  # ≈ 0.006
    assert abs(fpr - 0.05) < slack, fpr
    # Gating on z ≥ Φ⁻¹(0.95) is the same decision as p ≤ 0.05.
    assert float(np.mean(z >= Z_05)) == pytest.approx(fpr, abs=1.0 / n)


@pytest.mark.parametrize(("k", "at_least"), [(3, 0.15), (5, 0.10), (10, 0.07)])
def test_reference_z_is_overconfident_with_few_nulls(k: int, at_least: float) -> None:
    """Same setup as above; the population-std z against N(0, 1) exceeds 5 % clearly
    (≈ 18 % at K=3, ≈ 13 % at K=5, ≈ 8 % at K=10)."""
    n = 20_000
    rng = np.random.default_rng(20240611 + k)
    nulls = rng.standard_normal((n, k))
    raw = rng.standard_normal(n)
    _, p, _ = null_p_values(raw, nulls, method="reference_z")
    assert float(np.mean(p <= 0.05)) > at_least


def test_log_scale_false_positive_rate_on_lognormal_nulls() -> None:
    """Divergences are right-skewed; on log scale a lognormal null is exactly normal.

    Measured (K=5, σ=1, 20 000 draws): log scale 0.050, linear scale 0.116; at K=3
    the linear-scale rate is ≈ 0.13. Skew alone more than doubles the error rate.
    """
    n, k = 20_000, 5
    rng = np.random.default_rng(7)
    nulls = rng.lognormal(mean=-4.0, sigma=1.0, size=(n, k))
    raw = rng.lognormal(mean=-4.0, sigma=1.0, size=n)
    _, p_log, _ = null_p_values(np.log(raw), np.log(nulls))
    assert abs(float(np.mean(p_log <= 0.05)) - 0.05) < 4.0 * math.sqrt(0.05 * 0.95 / n)
    _, p_lin, _ = null_p_values(raw, nulls)
    assert float(np.mean(p_lin <= 0.05)) > 0.08
    # A sample of rows through the scalar path agrees with the vectorised one.
    for i in range(20):
        cmp = compare_to_null(float(raw[i]), nulls[i].tolist(), log_scale=True)
        assert cmp.p_value == pytest.approx(float(p_log[i]), rel=1e-9)


def test_scalar_and_vectorised_paths_agree() -> None:
    rng = np.random.default_rng(3)
    nulls = rng.normal(size=(30, 6))
    raw = rng.normal(scale=3.0, size=30)
    for method in ("t_prediction", "reference_z"):
        for sign in (1, -1):
            stat, p, z = null_p_values(raw, nulls, sign=sign, method=method)
            for i in range(30):
                c = compare_to_null(float(raw[i]), nulls[i].tolist(), sign=sign, method=method)
                assert c.statistic == pytest.approx(float(stat[i]), rel=1e-12)
                assert c.p_value == pytest.approx(float(p[i]), rel=1e-9)
                assert c.z == pytest.approx(float(z[i]), rel=1e-9, abs=1e-12)


# --------------------------------------------------------------------------- exact values


def test_t_prediction_matches_hand_computation() -> None:
    # m = 2, s = 1, K = 3: t = 3 / sqrt(4/3); with 2 dof, sf(t) = (1 − t/sqrt(t² + 2)) / 2.
    c = compare_to_null(5.0, [1.0, 2.0, 3.0])
    t = 3.0 / math.sqrt(4.0 / 3.0)
    p = 0.5 * (1.0 - t / math.sqrt(t * t + 2.0))
    assert c.method == "t_prediction"
    assert c.k == 3
    assert c.statistic == pytest.approx(t)
    assert c.p_value == pytest.approx(p)
    assert c.z == pytest.approx(float(sps.norm.isf(p)))
    assert c.p_empirical is None
    assert c.degenerate is None


def test_reference_z_matches_the_reference_rule() -> None:
    c = compare_to_null(5.0, [1.0, 2.0, 3.0], method="reference_z")
    z = 3.0 / math.sqrt(2.0 / 3.0)
    assert c.statistic == pytest.approx(z)
    assert c.z == pytest.approx(z)
    assert c.p_value == pytest.approx(float(sps.norm.sf(z)))


@pytest.mark.parametrize(("k", "table"), [(5, 2.34), (8, 2.01), (10, 1.92), (20, 1.77), (32, 1.72)])
def test_prediction_threshold_matches_t_quantiles(k: int, table: float) -> None:
    """One-sided 95 % thresholds in null-SD units, as tabulated from t quantiles."""
    thr = prediction_threshold(k, 0.05)
    assert thr == pytest.approx(table, abs=0.006)
    rng = np.random.default_rng(k)
    nulls = rng.normal(size=k)
    m, s = float(nulls.mean()), float(nulls.std(ddof=1))
    c = compare_to_null(m + thr * s, nulls.tolist())
    assert c.p_value == pytest.approx(0.05, rel=1e-6)
    assert c.passes(Z_05 - 1e-9) is True
    assert prediction_threshold(1, 0.05) == math.inf


# --------------------------------------------------------------------------- log scale


def test_log_scale_detects_ten_fold_effect_on_lognormal_nulls() -> None:
    rng = np.random.default_rng(11)
    nulls = rng.lognormal(mean=math.log(0.01), sigma=0.3, size=10)
    raw = 10.0 * float(np.median(nulls))
    c = compare_to_null(raw, nulls.tolist(), log_scale=True)
    assert c.log_scale is True
    assert c.effect_ratio == pytest.approx(10.0)
    assert c.z is not None and c.z > 3.5
    assert c.passes(3.0) is True
    # The comparison really happens on logs.
    logs = np.log(nulls)
    t = (math.log(raw) - logs.mean()) / (logs.std(ddof=1) * math.sqrt(1.1))
    assert c.statistic == pytest.approx(t)


def test_log_scale_floor_and_zero_raw() -> None:
    c = compare_to_null(0.0, [0.1, 0.2, 0.3], log_scale=True, log_floor=1e-6)
    assert c.z is not None and c.z < 0.0
    assert c.effect_ratio == pytest.approx(0.0)
    assert c.statistic is not None
    logs = np.log([0.1, 0.2, 0.3])
    expected = (math.log(1e-6) - logs.mean()) / (logs.std(ddof=1) * math.sqrt(4.0 / 3.0))
    assert c.statistic == pytest.approx(expected)


def test_log_scale_rejects_negative_values() -> None:
    with pytest.raises(ValueError, match="negative"):
        compare_to_null(-0.1, [0.1, 0.2, 0.3], log_scale=True)
    with pytest.raises(ValueError, match="negative"):
        compare_to_null(0.1, [0.1, -0.2, 0.3], log_scale=True)
    with pytest.raises(ValueError, match="log_floor"):
        compare_to_null(0.1, [0.1, 0.2], log_scale=True, log_floor=0.0)


# --------------------------------------------------------------------------- sign


def test_sign_minus_one_rewards_lower_raw() -> None:
    nulls = [2.0, 2.5, 3.0, 2.2, 2.8]
    low = compare_to_null(0.5, nulls, sign=-1)
    high = compare_to_null(0.5, nulls, sign=+1)
    assert low.z is not None and high.z is not None
    assert low.z > 2.0 > -2.0 > high.z
    assert low.z == pytest.approx(-high.z, rel=1e-9)
    mirrored = compare_to_null(-0.5, [-v for v in nulls], sign=+1)
    assert low.statistic == pytest.approx(mirrored.statistic)
    assert low.p_value == pytest.approx(mirrored.p_value)


@pytest.mark.parametrize("bad", [0, 2, -2, True])
def test_sign_must_be_plus_or_minus_one(bad: int) -> None:
    with pytest.raises(ValueError, match="sign"):
        compare_to_null(1.0, [0.0, 1.0], sign=bad)


def test_unknown_method_rejected() -> None:
    with pytest.raises(ValueError, match="method"):
        compare_to_null(1.0, [0.0, 1.0], method="z")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- degenerate


def test_single_null_is_degenerate() -> None:
    c = compare_to_null(1.0, [0.1])
    assert c.degenerate == "only 1 null sample: need at least 2 (raise runs:)"
    assert c.z is None and c.p_value is None and c.statistic is None
    assert c.passes(0.0) is None
    assert c.effect_ratio == pytest.approx(10.0)
    assert not c.usable


def test_no_nulls_is_degenerate() -> None:
    c = compare_to_null(1.0, [])
    assert c.k == 0
    assert c.degenerate is not None and "no finite null samples" in c.degenerate
    assert c.effect_ratio is None


def test_identical_nulls_are_degenerate() -> None:
    c = compare_to_null(1.0, [0.25] * 5)
    assert c.degenerate == "all 5 null samples are identical: the null has no spread"
    assert c.z is None and c.p_value is None
    assert c.effect_ratio == pytest.approx(4.0)


def test_identical_nulls_degenerate_for_reference_too() -> None:
    c = compare_to_null(1.0, [0.25, 0.25], method="reference_z")
    assert c.degenerate == "all 2 null samples are identical: the null has no spread"
    c1 = compare_to_null(1.0, [0.25], method="reference_z")
    assert c1.degenerate is not None and c1.degenerate.startswith("only 1 null sample")


def test_near_zero_spread_is_degenerate_without_dividing() -> None:
    c = compare_to_null(2.0, [1.0, 1.0 + 1e-14, 1.0])
    assert c.z is None
    assert c.degenerate is not None and "no usable spread" in c.degenerate
    # Relative: a spread of 1e-6 around 1e9 is still below 1e-12 · |m|.
    c2 = compare_to_null(2e9, [1e9, 1e9 + 1e-4, 1e9 - 1e-4])
    assert c2.degenerate is not None


def test_small_but_real_spread_is_not_degenerate_and_stays_finite() -> None:
    c = compare_to_null(1e6, [0.0, 1e-6, 2e-6])
    assert c.degenerate is None
    assert c.z is not None and math.isfinite(c.z) and c.z > 5.0
    ref = compare_to_null(1e6, [0.0, 1e-6, 2e-6], method="reference_z")
    assert ref.z == Z_LIMIT
    assert ref.p_value == P_FLOOR


def test_all_nulls_below_log_floor_are_degenerate() -> None:
    c = compare_to_null(0.5, [0.0, 1e-15, 1e-14], log_scale=True)
    assert c.degenerate is not None
    assert "at or below the log floor" in c.degenerate


def test_non_finite_nulls_dropped_and_counted() -> None:
    c = compare_to_null(5.0, [1.0, float("nan"), 2.0, float("inf"), 3.0])
    ref = compare_to_null(5.0, [1.0, 2.0, 3.0])
    assert c.k == 3 and c.n_dropped == 2
    assert c.z == ref.z
    d = compare_to_null(5.0, [1.0, float("nan")])
    assert (
        d.degenerate == "only 1 null sample (1 non-finite dropped): need at least 2 (raise runs:)"
    )


@pytest.mark.parametrize("raw", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_raw_raises(raw: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        compare_to_null(raw, [0.0, 1.0, 2.0])


@given(
    raw=st.floats(-1e12, 1e12),
    nulls=st.lists(st.floats(-1e12, 1e12), min_size=0, max_size=25),
    sign=st.sampled_from([1, -1]),
    method=st.sampled_from(["t_prediction", "reference_z"]),
)
def test_output_always_well_formed(raw: float, nulls: list[float], sign: int, method: str) -> None:
    c = compare_to_null(raw, nulls, sign=sign, method=method)  # type: ignore[arg-type]
    assert (c.degenerate is None) == (c.z is not None) == (c.p_value is not None)
    if c.z is not None and c.p_value is not None:
        assert math.isfinite(c.z) and -Z_LIMIT <= c.z <= Z_LIMIT
        assert P_FLOOR <= c.p_value <= 1.0
    assert (c.p_empirical is None) == (c.k < EMPIRICAL_MIN_K)


# --------------------------------------------------------------------------- empirical p


def test_empirical_p_needs_nineteen_nulls() -> None:
    rng = np.random.default_rng(5)
    assert compare_to_null(10.0, rng.normal(size=18).tolist()).p_empirical is None
    c = compare_to_null(10.0, rng.normal(size=19).tolist())
    assert c.p_empirical == pytest.approx(1.0 / 20.0)


def test_empirical_p_counts_ties_as_extreme() -> None:
    nulls = [float(i) for i in range(24)]  # 0..23
    c = compare_to_null(20.0, nulls)
    # b = #{null ≥ 20} = 4 (20, 21, 22, 23)
    assert c.p_empirical == pytest.approx((4 + 1) / (24 + 1))
    low = compare_to_null(2.0, nulls, sign=-1)
    # b = #{null ≤ 2} = 3
    assert low.p_empirical == pytest.approx((3 + 1) / (24 + 1))


def test_empirical_p_reported_even_for_a_degenerate_null() -> None:
    c = compare_to_null(1.0, [0.5] * 20)
    assert c.degenerate is not None
    assert c.p_empirical == pytest.approx(1.0 / 21.0)


def test_empirical_p_on_log_scale_uses_same_ranks() -> None:
    rng = np.random.default_rng(9)
    nulls = rng.lognormal(size=30).tolist()
    raw = float(np.quantile(nulls, 0.9))
    lin = compare_to_null(raw, nulls)
    log = compare_to_null(raw, nulls, log_scale=True)
    assert lin.p_empirical == log.p_empirical


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(("alpha", "k"), [(0.05, 19), (0.01, 99), (0.1, 9), (0.005, 199)])
def test_nulls_needed_for_alpha(alpha: float, k: int) -> None:
    assert nulls_needed_for_alpha(alpha) == k


@given(st.floats(min_value=1e-4, max_value=0.9))
def test_nulls_needed_is_the_smallest_reaching_alpha(alpha: float) -> None:
    k = nulls_needed_for_alpha(alpha)
    assert min_achievable_p(k, "empirical") <= alpha * (1 + 1e-9)
    if k > 1:
        assert min_achievable_p(k - 1, "empirical") > alpha


def test_min_achievable_p() -> None:
    assert min_achievable_p(19, "empirical") == pytest.approx(0.05)
    assert min_achievable_p(3, "t_prediction") == P_FLOOR
    assert min_achievable_p(1, "t_prediction") == 1.0
    assert min_achievable_p(1, "reference_z") == 1.0
    with pytest.raises(ValueError):
        min_achievable_p(3, "bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        nulls_needed_for_alpha(0.0)


def test_passes_is_inclusive_and_to_dict_is_complete() -> None:
    c = NullComparison(
        z=2.0,
        p_value=0.02,
        p_empirical=None,
        statistic=2.5,
        effect_ratio=3.0,
        k=5,
        method="t_prediction",
        log_scale=True,
        degenerate=None,
    )
    assert c.passes(2.0) is True
    assert c.passes(2.0001) is False
    d = c.to_dict()
    assert d["z"] == 2.0 and d["method"] == "t_prediction" and d["n_dropped"] == 0
    assert set(d) == set(NullComparison.__slots__)


def test_effect_ratio_none_when_null_median_is_zero() -> None:
    c = compare_to_null(1.0, [-1.0, 0.0, 1.0])
    assert c.effect_ratio is None
    assert c.z is not None


def test_raw_far_below_null_gives_finite_negative_z() -> None:
    c = compare_to_null(-1e9, [0.0, 1.0, 2.0])
    assert c.z is not None and -Z_LIMIT <= c.z < -5.0
    assert c.p_value is not None and c.p_value == pytest.approx(1.0)
