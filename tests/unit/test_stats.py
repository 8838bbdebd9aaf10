"""Null statistics, the judge's score mapping, bootstrap CI and R²."""

from __future__ import annotations

import math
import statistics

import pytest

from dlm_sway.core.judge import score_from_z
from dlm_sway.core.stats import MIN_STD, NullStats, bootstrap_ci, r_squared


class TestNullStatsFromSamples:
    def test_population_std_and_mean(self) -> None:
        xs = [0.1, 0.2, 0.4, 0.5]
        s = NullStats.from_samples(xs)
        assert s.mean == pytest.approx(statistics.fmean(xs))
        assert s.std == pytest.approx(statistics.pstdev(xs))
        assert s.std != pytest.approx(statistics.stdev(xs))  # not the sample (n-1) std
        assert s.n == 4
        assert not s.degenerate
        assert s.samples == tuple(xs)

    def test_single_sample_is_degenerate(self) -> None:
        s = NullStats.from_samples([0.3])
        assert s.degenerate and s.n == 1
        assert s.std == MIN_STD

    def test_all_equal_is_degenerate_with_floored_std(self) -> None:
        s = NullStats.from_samples([0.2, 0.2, 0.2])
        assert s.degenerate
        assert s.std == MIN_STD

    def test_non_finite_samples_are_dropped(self) -> None:
        s = NullStats.from_samples([0.1, float("nan"), 0.3, float("inf")])
        assert s.n == 2 and s.mean == pytest.approx(0.2)

    def test_no_finite_sample_is_an_error(self) -> None:
        with pytest.raises(ValueError):
            NullStats.from_samples([float("nan")])
        with pytest.raises(ValueError):
            NullStats.from_samples([])

    def test_round_trips_through_a_mapping(self) -> None:
        s = NullStats.from_samples([0.1, 0.2, 0.6])
        assert NullStats.from_mapping(s.to_dict()) == s
        assert s.median == pytest.approx(0.2)


class TestScoreFromZ:
    def test_anchor_values(self) -> None:
        assert score_from_z(0.0) == pytest.approx(0.5)
        assert score_from_z(3.0) == pytest.approx(0.7311, abs=1e-4)
        assert score_from_z(-3.0) == pytest.approx(1 - 0.7311, abs=1e-4)

    def test_monotone_bounded_and_safe_for_huge_z(self) -> None:
        zs = [-1e9, -10.0, -1.0, 0.0, 1.0, 10.0, 1e9]
        scores = [score_from_z(z) for z in zs]
        assert scores == sorted(scores)
        assert all(0.0 <= s <= 1.0 for s in scores)


class TestBootstrapCI:
    def test_single_prompt_has_no_interval(self) -> None:
        # one prompt says nothing about spread; a zero-width CI would overstate certainty
        assert bootstrap_ci([0.3]) is None

    DATA = [0.11, 0.52, 0.23, 0.91, 0.44, 0.07, 0.63]

    def test_deterministic_for_a_seed(self) -> None:
        assert bootstrap_ci(self.DATA, seed=3) == bootstrap_ci(self.DATA, seed=3)
        assert bootstrap_ci(self.DATA, seed=3) != bootstrap_ci(self.DATA, seed=4)

    def test_contains_the_mean(self) -> None:
        ci = bootstrap_ci(self.DATA, seed=0)
        assert ci is not None
        lo, hi = ci
        assert lo < statistics.fmean(self.DATA) < hi
        assert min(self.DATA) <= lo and hi <= max(self.DATA)

    def test_wider_at_higher_confidence(self) -> None:
        lo90, hi90 = bootstrap_ci(self.DATA, confidence=0.90, seed=0) or (0.0, 0.0)
        lo99, hi99 = bootstrap_ci(self.DATA, confidence=0.99, seed=0) or (0.0, 0.0)
        assert hi99 - lo99 > hi90 - lo90 > 0.0

    def test_constant_samples_give_a_point(self) -> None:
        assert bootstrap_ci([0.3, 0.3, 0.3]) == (0.3, 0.3)

    @pytest.mark.parametrize("bad", [[], [0.1, float("nan")], [float("inf"), 0.2]])
    def test_none_on_empty_or_non_finite(self, bad: list[float]) -> None:
        assert bootstrap_ci(bad) is None


class TestRSquared:
    def test_perfect_line(self) -> None:
        assert r_squared([0, 1, 2, 3], [1, 3, 5, 7]) == pytest.approx(1.0)

    def test_noisy_line_is_between_zero_and_one(self) -> None:
        r2 = r_squared([0, 1, 2, 3, 4], [0.0, 1.3, 1.7, 3.4, 3.9])
        assert 0.8 < r2 < 1.0

    def test_no_linear_relation_is_near_zero(self) -> None:
        assert r_squared([0, 1, 2, 3, 4], [1, -1, 0, -1, 1]) == pytest.approx(0.0, abs=1e-9)

    @pytest.mark.parametrize(
        ("xs", "ys", "expected"),
        [
            ([], [], 0.0),
            ([1.0], [2.0], 0.0),  # fewer than two points
            ([2.0, 2.0, 2.0], [1.0, 2.0, 3.0], 0.0),  # constant x
            ([0.0, 1.0, 2.0], [5.0, 5.0, 5.0], 1.0),  # constant y
        ],
    )
    def test_edge_cases(self, xs: list[float], ys: list[float], expected: float) -> None:
        assert r_squared(xs, ys) == expected
        assert not math.isnan(r_squared(xs, ys))
