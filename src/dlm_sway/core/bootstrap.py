"""Bootstrap confidence intervals that respect how sway's data are structured.

* :func:`paired_bootstrap_ci`: base and fine-tuned scores come from the *same*
  prompts, so a prompt is resampled together with both of its scores.  Prompt
  difficulty then cancels in the difference and the interval is as narrow as
  the data honestly allow.
* :func:`cluster_bootstrap_ci`: per-token values within one prompt are strongly
  correlated; resampling tokens as if independent gives intervals that are far
  too narrow.  Whole prompts are resampled instead, and the statistic is the
  token-weighted grand mean.

Both use percentile intervals, are deterministic for a given ``seed``
(``numpy.random.default_rng``), and return None when the input cannot support
an interval: empty, non-finite, or a single prompt (one prompt carries no
information about prompt-to-prompt variation, so a zero-width interval would
overstate certainty).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

PairedStatistic = Literal["mean_diff", "median_diff"]

FloatArray = npt.NDArray[np.float64]

#: Upper bound on resample-index entries materialised at once (keeps memory ~32 MiB).
_CHUNK_CELLS = 1 << 22


def _check_params(n_bootstrap: int, confidence: float) -> None:
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")


def _percentile_interval(stats: FloatArray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(stats, [tail, 1.0 - tail])
    return (float(lo), float(hi))


def _row_chunks(n_bootstrap: int, width: int) -> list[int]:
    rows = max(1, _CHUNK_CELLS // max(1, width))
    sizes = [rows] * (n_bootstrap // rows)
    if n_bootstrap % rows:
        sizes.append(n_bootstrap % rows)
    return sizes


def paired_bootstrap_ci(
    base: Sequence[float],
    ft: Sequence[float],
    *,
    statistic: PairedStatistic = "mean_diff",
    n_bootstrap: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile CI of ``mean(ft − base)`` (or the median), resampling prompts jointly.

    ``base[i]`` and ``ft[i]`` must be the same prompt's scores; they are drawn
    together, so between-prompt variation shared by both cancels.  Returns None
    for empty input, any non-finite value, or a single prompt; ``(v, v)`` when
    every per-prompt difference equals ``v``.  Mismatched lengths raise
    :class:`ValueError` (that is a wiring bug, not a data condition).
    """
    _check_params(n_bootstrap, confidence)
    if statistic not in ("mean_diff", "median_diff"):
        raise ValueError(f"unknown paired statistic {statistic!r}")
    b = np.asarray(base, dtype=np.float64).ravel()
    f = np.asarray(ft, dtype=np.float64).ravel()
    if b.size != f.size:
        raise ValueError(f"paired samples differ in length: base {b.size}, ft {f.size}")
    n = int(b.size)
    if n < 2 or not (np.all(np.isfinite(b)) and np.all(np.isfinite(f))):
        return None
    d = f - b
    if float(np.ptp(d)) == 0.0:
        v = float(d[0])
        return (v, v)
    rng = np.random.default_rng(seed)
    parts: list[FloatArray] = []
    for rows in _row_chunks(n_bootstrap, n):
        sample = d[rng.integers(0, n, size=(rows, n))]
        if statistic == "mean_diff":
            parts.append(sample.mean(axis=1))
        else:
            parts.append(np.median(sample, axis=1))
    return _percentile_interval(np.concatenate(parts), confidence)


def cluster_bootstrap_ci(
    clusters: Sequence[Sequence[float]],
    *,
    n_bootstrap: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile CI of the token-weighted grand mean, resampling whole clusters.

    ``clusters[i]`` holds the per-token values of prompt ``i``.  Each bootstrap
    replicate draws prompts with replacement and computes
    ``Σ tokens / # tokens`` over the drawn prompts, so long prompts weigh more,
    exactly as in the point estimate.  Empty clusters carry no tokens and are
    ignored.  Returns None when no tokens remain, any value is non-finite, or
    fewer than two non-empty clusters remain; ``(v, v)`` when every non-empty
    cluster has mean ``v``.
    """
    _check_params(n_bootstrap, confidence)
    arrays = [np.asarray(c, dtype=np.float64).ravel() for c in clusters]
    arrays = [a for a in arrays if a.size]
    if not arrays or not all(np.all(np.isfinite(a)) for a in arrays):
        return None
    sums = np.array([float(a.sum()) for a in arrays], dtype=np.float64)
    counts = np.array([float(a.size) for a in arrays], dtype=np.float64)
    if not np.all(np.isfinite(sums)):
        return None
    n_clusters = int(sums.size)
    if n_clusters < 2:
        return None
    means = sums / counts
    if float(np.ptp(means)) == 0.0:
        v = float(means[0])
        return (v, v)
    rng = np.random.default_rng(seed)
    parts: list[FloatArray] = []
    for rows in _row_chunks(n_bootstrap, n_clusters):
        idx = rng.integers(0, n_clusters, size=(rows, n_clusters))
        parts.append(sums[idx].sum(axis=1) / counts[idx].sum(axis=1))
    return _percentile_interval(np.concatenate(parts), confidence)


__all__ = ["PairedStatistic", "cluster_bootstrap_ci", "paired_bootstrap_ci"]
