"""Paired and prompt-clustered bootstrap confidence intervals."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from dlm_sway.core.bootstrap import cluster_bootstrap_ci, paired_bootstrap_ci
from dlm_sway.core.stats import bootstrap_ci


def _width(ci: tuple[float, float] | None) -> float:
    assert ci is not None
    return ci[1] - ci[0]


def _unpaired_ci(
    base: npt.NDArray[np.float64], ft: npt.NDArray[np.float64], seed: int = 0
) -> tuple[float, float]:
    """Bootstrap of mean(ft) − mean(base) drawing the two samples independently."""
    rng = np.random.default_rng(seed)
    n = base.size
    diffs = ft[rng.integers(0, n, (2000, n))].mean(1) - base[rng.integers(0, n, (2000, n))].mean(1)
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- paired


def test_paired_ci_narrower_than_unpaired_when_correlated() -> None:
    rng = np.random.default_rng(1)
    difficulty = rng.normal(0.0, 2.0, size=60)
    base = difficulty + rng.normal(0.0, 0.1, size=60)
    ft = difficulty + 0.3 + rng.normal(0.0, 0.1, size=60)
    paired = paired_bootstrap_ci(base.tolist(), ft.tolist())
    unpaired = _unpaired_ci(base, ft)
    assert paired is not None
    assert paired[0] < 0.3 < paired[1]
    assert unpaired[0] < 0.0 < unpaired[1]  # unpaired cannot even tell the sign
    assert _width(paired) < 0.15 * _width(unpaired)


def test_paired_ci_is_deterministic_per_seed() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(size=40).tolist()
    ft = rng.normal(size=40).tolist()
    assert paired_bootstrap_ci(base, ft, seed=3) == paired_bootstrap_ci(base, ft, seed=3)
    assert paired_bootstrap_ci(base, ft, seed=3) != paired_bootstrap_ci(base, ft, seed=4)


def test_paired_median_statistic() -> None:
    base = [0.0] * 30
    ft = [1.0] * 20 + [100.0] * 10
    med = paired_bootstrap_ci(base, ft, statistic="median_diff")
    mean = paired_bootstrap_ci(base, ft)
    assert med is not None and mean is not None
    assert med[0] == 1.0
    assert mean[0] > 10.0


def test_paired_edge_cases() -> None:
    assert paired_bootstrap_ci([], []) is None
    assert paired_bootstrap_ci([1.0], [2.0]) is None  # one prompt: no spread to resample
    assert paired_bootstrap_ci([1.0, float("nan")], [2.0, 3.0]) is None
    assert paired_bootstrap_ci([1.0, 2.0], [2.0, float("inf")]) is None
    # Different scores, identical differences: no spread in the statistic.
    assert paired_bootstrap_ci([1.0, 5.0, 9.0], [1.5, 5.5, 9.5]) == (0.5, 0.5)
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap_ci([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        paired_bootstrap_ci([1.0, 2.0], [1.0, 3.0], confidence=1.0)
    with pytest.raises(ValueError):
        paired_bootstrap_ci([1.0, 2.0], [1.0, 3.0], statistic="max")  # type: ignore[arg-type]


def test_paired_large_input_is_chunked_and_consistent() -> None:
    rng = np.random.default_rng(4)
    base = rng.normal(size=5000)
    ft = base + rng.normal(0.2, 1.0, size=5000)
    ci = paired_bootstrap_ci(base.tolist(), ft.tolist(), n_bootstrap=1000)
    assert ci is not None
    se = 1.0 / np.sqrt(5000)
    assert ci[0] == pytest.approx(float(np.mean(ft - base)) - 1.96 * se, abs=0.3 * se)
    assert ci[1] == pytest.approx(float(np.mean(ft - base)) + 1.96 * se, abs=0.3 * se)


# --------------------------------------------------------------------------- cluster


def _clustered(
    rng: np.random.Generator, n_clusters: int, tokens: int, between: float, within: float
) -> list[list[float]]:
    effects = rng.normal(0.0, between, size=n_clusters)
    return [(e + rng.normal(0.0, within, size=tokens)).tolist() for e in effects]


def test_cluster_ci_wider_than_naive_token_ci_when_tokens_correlate() -> None:
    rng = np.random.default_rng(5)
    clusters = _clustered(rng, 30, 50, between=1.0, within=0.2)
    cluster = cluster_bootstrap_ci(clusters)
    naive = bootstrap_ci([v for c in clusters for v in c])
    assert _width(cluster) > 3.0 * _width(naive)


def test_cluster_ci_covers_truth_where_naive_fails() -> None:
    """200 data sets with true mean 0: cluster coverage near 95 %, token-level far below."""
    rng = np.random.default_rng(6)
    hit_cluster = hit_naive = 0
    reps = 200
    for i in range(reps):
        clusters = _clustered(rng, 30, 20, between=1.0, within=0.5)
        c = cluster_bootstrap_ci(clusters, n_bootstrap=400, seed=i)
        n = bootstrap_ci([v for cl in clusters for v in cl], n_bootstrap=400, seed=i)
        assert c is not None and n is not None
        hit_cluster += c[0] <= 0.0 <= c[1]
        hit_naive += n[0] <= 0.0 <= n[1]
    assert hit_cluster / reps > 0.85
    assert hit_naive / reps < 0.5


def test_cluster_ci_is_token_weighted_and_matches_direct_resampling() -> None:
    clusters = [[1.0], [2.0, 2.0, 2.0], [0.0, 4.0], [5.0, 5.0, 5.0, 5.0, 5.0]]
    ci = cluster_bootstrap_ci(clusters, n_bootstrap=500, seed=7)
    rng = np.random.default_rng(7)
    idx = rng.integers(0, 4, size=(500, 4))
    stats = [sum(sum(clusters[j]) for j in row) / sum(len(clusters[j]) for j in row) for row in idx]
    lo, hi = np.quantile(stats, [0.025, 0.975])
    assert ci is not None
    assert ci[0] == pytest.approx(float(lo))
    assert ci[1] == pytest.approx(float(hi))


def test_cluster_edge_cases() -> None:
    assert cluster_bootstrap_ci([]) is None
    assert cluster_bootstrap_ci([[], []]) is None
    assert cluster_bootstrap_ci([[1.0, 2.0, 3.0]]) is None  # a single prompt
    assert cluster_bootstrap_ci([[1.0, 2.0], [float("nan")]]) is None
    # Equal cluster means (any sizes): no between-prompt spread.
    assert cluster_bootstrap_ci([[1.0, 3.0], [2.0], [], [2.0, 2.0, 2.0]]) == (2.0, 2.0)
    a = cluster_bootstrap_ci([[1.0, 2.0], [3.0], [0.5, 0.7, 0.9]], seed=1)
    assert a == cluster_bootstrap_ci([[1.0, 2.0], [3.0], [0.5, 0.7, 0.9]], seed=1)
    with pytest.raises(ValueError):
        cluster_bootstrap_ci([[1.0], [2.0]], n_bootstrap=0)
