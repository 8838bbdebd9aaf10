"""The paired (per-prompt) null comparisons: valid p, monotone in the effect, uniform under H0."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from dlm_sway.core.calibration import Z_LIMIT, compare_to_null
from dlm_sway.core.paired import (
    EXCHANGEABLE_METHODS,
    INDEPENDENT_PROMPT_METHODS,
    PAIRED_METHODS,
    paired_test,
    paired_tests,
)


def _table(seed: int, k: int, p: int, rho: float = 0.0, sd: float = 0.5) -> np.ndarray:
    """K + 1 exchangeable rows of positive per-prompt values (row 0 plays the adapter);
    log values share a per-row factor, so prompts correlate by ``rho``."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal((k + 1, 1)) * math.sqrt(rho)
    own = rng.standard_normal((k + 1, p)) * math.sqrt(1.0 - rho)
    offsets = rng.normal(-6.0, 1.0, size=p)  # prompts differ in level, as real prompts do
    return np.exp(offsets + sd * (common + own))


tables = st.tuples(
    st.integers(0, 2**32 - 1), st.integers(3, 25), st.integers(1, 12), st.floats(0.0, 0.9)
)


@settings(max_examples=100, deadline=None)
@given(tables, st.floats(-3.0, 3.0))
def test_p_is_a_probability_and_z_its_quantile(
    spec: tuple[int, int, int, float], shift: float
) -> None:
    seed, k, p, rho = spec
    t = _table(seed, k, p, rho)
    x = t[0] * math.exp(shift)
    for method, res in paired_tests(x, t[1:]).items():
        assert (res.k, res.prompts) == (k, p)
        if res.degenerate is not None:
            # few nulls and prompts can leave every null's rank sum equal: no reference spread
            assert method == "rank_t" and "no spread" in res.degenerate, (method, res.degenerate)
            assert res.p_value is None and not res.passes(-Z_LIMIT)
            continue
        assert res.p_value is not None and res.z is not None
        assert 0.0 < res.p_value <= 1.0, (method, res.p_value)
        assert abs(res.z) <= Z_LIMIT
        # z is Φ⁻¹(1 − p), computed from the smaller tail (so compare in p space)
        assert stats.norm.sf(res.z) == pytest.approx(res.p_value, rel=1e-6), method


@settings(max_examples=60, deadline=None)
@given(tables)
def test_p_never_rises_as_the_effect_grows(spec: tuple[int, int, int, float]) -> None:
    seed, k, p, rho = spec
    t = _table(seed, k, p, rho)
    for method in PAIRED_METHODS:
        res = [paired_test(t[0] * c, t[1:], method=method) for c in (0.5, 1.0, 1.5, 8.0)]
        if res[0].degenerate is not None:  # a property of the nulls alone: every c agrees
            assert all(r.degenerate == res[0].degenerate for r in res)
            continue
        ps = [r.p_value for r in res]
        assert all(a is not None for a in ps)
        assert all(a >= b - 1e-12 for a, b in zip(ps, ps[1:], strict=False)), (method, ps)  # type: ignore[operator]


@pytest.mark.parametrize("method", PAIRED_METHODS)
def test_a_clear_effect_on_every_prompt_is_found(method: str) -> None:
    t = _table(7, 20, 12, rho=0.2, sd=0.3)
    res = paired_test(t[0] * 20.0, t[1:], method=method)  # type: ignore[arg-type]
    assert res.passes(1.645), res
    assert not paired_test(t[0] / 20.0, t[1:], method=method).passes(0.0)  # type: ignore[arg-type]


def _p_values(method: str, k: int, p: int, rho: float, n: int, seed0: int) -> np.ndarray:
    out = []
    for s in range(n):
        t = _table(seed0 + s, k, p, rho)
        res = paired_test(t[0], t[1:], method=method)  # type: ignore[arg-type]
        assert res.p_value is not None
        out.append(res.p_value)
    return np.asarray(out)


def _uniform_enough(ps: np.ndarray, what: str) -> None:
    n = ps.size
    for alpha in (0.05, 0.5):
        hits = int(np.sum(ps <= alpha))
        assert hits <= stats.binom.ppf(0.999, n, alpha), f"{what}: {hits}/{n} p ≤ {alpha}"
    # discrete (rank) p-values are conservative, so only the upper tail is bounded above
    assert stats.kstest(ps, "uniform", alternative="greater").pvalue > 1e-4, what


@pytest.mark.parametrize("method", EXCHANGEABLE_METHODS)
@pytest.mark.parametrize(("k", "rho"), [(10, 0.0), (10, 0.4), (20, 0.2)])
def test_exchangeable_methods_are_valid_with_correlated_prompts(
    method: str, k: int, rho: float
) -> None:
    """Under H0 (adapter = one more null row) p is ~uniform whatever the prompts' correlation."""
    ps = _p_values(method, k, 6, rho, 300, seed0=10_000 * k + int(100 * rho))
    _uniform_enough(ps, f"{method} K={k} rho={rho}")
    assert np.sum(ps <= 0.05) >= 4, f"{method}: never rejects — not a calibrated test"


@pytest.mark.parametrize("method", INDEPENDENT_PROMPT_METHODS)
def test_independence_methods_are_valid_only_with_independent_prompts(method: str) -> None:
    _uniform_enough(_p_values(method, 10, 6, 0.0, 300, seed0=1), f"{method} independent")
    ps = _p_values(method, 10, 6, 0.5, 300, seed0=2)
    # the documented failure: correlated prompts make the rank sum / Stouffer far too liberal
    assert np.sum(ps <= 0.05) > stats.binom.ppf(0.999, ps.size, 0.05), method


def test_mean_t_is_todays_calibration() -> None:
    t = _table(3, 10, 8)
    res = paired_test(t[0], t[1:], method="mean_t")
    ref = compare_to_null(float(t[0].mean()), list(t[1:].mean(axis=1)), log_scale=True)
    assert res.z == pytest.approx(ref.z)
    assert res.p_value == pytest.approx(ref.p_value)


@pytest.mark.parametrize("method", PAIRED_METHODS)
def test_sign_minus_one_mirrors_on_log_scale(method: str) -> None:
    t = _table(4, 10, 5)
    down = paired_test(t[0], t[1:], method=method, sign=-1)  # type: ignore[arg-type]
    up = paired_test(1.0 / t[0], 1.0 / t[1:], method=method)  # type: ignore[arg-type]
    assert down.p_value == pytest.approx(up.p_value)


def test_rank_exact_matches_enumeration() -> None:
    k = 4
    rng = np.random.default_rng(0)
    nulls = rng.random((k, 2)) + 1.0
    for ranks in [(1, 1), (3, 2), (5, 5), (5, 1)]:
        cols = np.sort(nulls, axis=0)
        # an adapter value just above the (r−1)-th smallest null on each prompt
        x = np.array([cols[r - 2, i] + 1e-6 if r > 1 else 0.5 for i, r in enumerate(ranks)])
        total = sum(ranks)
        want = sum(a + b >= total for a in range(1, k + 2) for b in range(1, k + 2)) / (k + 1) ** 2
        res = paired_test(x, nulls, method="rank_exact")
        assert res.p_value == pytest.approx(want), ranks


def test_a_prompt_where_every_null_agrees_is_degenerate_not_a_pass() -> None:
    t = _table(5, 10, 4)
    t[1:, 2] = 0.01
    for method in ("paired_t", "stouffer"):
        res = paired_test(t[0] * 100, t[1:], method=method)  # type: ignore[arg-type]
        assert res.degenerate is not None and "prompt(s) [2]" in res.degenerate
        assert res.p_value is None and not res.passes(-40.0)


def test_a_prompt_where_all_but_one_null_agree_is_degenerate_for_paired_t() -> None:
    t = _table(6, 10, 4)
    t[1:10, 1] = 0.01  # nulls 1..9 agree; leaving null 10 in, null k's reference is flat
    res = paired_test(t[0] * 100, t[1:], method="paired_t")
    assert res.degenerate is not None and "prompt(s) [1]" in res.degenerate
    assert not res.passes(-40.0)


@pytest.mark.parametrize(
    ("adapter", "nulls", "kw", "match"),
    [
        (np.ones(3), np.ones((5, 4)), {}, r"shape \(K, 3\)"),
        (np.ones((2, 3)), np.ones((5, 3)), {}, r"vector \(P,\)"),
        (np.ones(0), np.ones((5, 0)), {}, r"vector \(P,\)"),
        (np.ones(3), np.ones((2, 3)), {}, "at least 3 nulls"),
        (np.array([1.0, np.nan, 1.0]), np.ones((5, 3)), {}, "finite"),
        (np.array([1.0, -1.0, 1.0]), np.ones((5, 3)), {}, "non-negative"),
        (np.ones(3), np.ones((5, 3)), {"sign": 0}, "sign"),
        (np.ones(3), np.ones((5, 3)), {"sign": True}, "sign"),
        (np.ones(3), np.ones((5, 3)), {"log_floor": 0.0}, "log_floor"),
        (np.ones(3), np.ones((5, 3)), {"method": "median"}, "unknown paired method"),
    ],
)
def test_bad_input_is_refused_with_the_reason(
    adapter: np.ndarray, nulls: np.ndarray, kw: dict[str, object], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        paired_test(adapter, nulls, **kw)  # type: ignore[arg-type]


def test_negative_metrics_work_off_log_scale() -> None:
    rng = np.random.default_rng(9)
    nulls = rng.normal(-1.0, 0.2, size=(10, 6))
    for method in PAIRED_METHODS:
        res = paired_test(nulls[0] + 2.0, nulls[1:], method=method, log_scale=False)
        assert res.p_value is not None and res.p_value < 0.05, method
