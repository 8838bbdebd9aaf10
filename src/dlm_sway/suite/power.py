"""The prompt-dimension power study: per-prompt null tables and paired candidate tests.

Split from :mod:`dlm_sway.suite.quality` (which runs whole suites): here a pool of
null adapters is scored once into per-prompt tables and every candidate statistic
of :mod:`dlm_sway.core.paired` judges the very same trials (docs/statistics.md §11).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dlm_sway.core.divergence import DivergenceKind, divergence
from dlm_sway.core.paired import PAIRED_METHODS, PairedMethod, paired_tests
from dlm_sway.core.scoring import (
    ConstructedNullBackend,
    DifferentialBackend,
    NullConstruction,
    ScoringModel,
    TokenDist,
)
from dlm_sway.probes._dists import dists
from dlm_sway.suite.quality import (
    DEFAULT_THRESHOLDS,
    FloatArray,
    Rate,
    _thresholds,
    nominal_alpha,
)


def prompt_divergences(
    view: ScoringModel,
    base: Sequence[TokenDist],
    prompts: Sequence[str],
    *,
    top_k: int = 256,
    kind: DivergenceKind = "js",
) -> FloatArray:
    """Per prompt, the divergence base → ``view`` (what delta_kl averages into its raw)."""
    out = dists(view, prompts, top_k)
    return np.array([divergence(b, f, kind) for b, f in zip(base, out, strict=True)])


def base_dists(
    backend: DifferentialBackend, prompts: Sequence[str], *, top_k: int = 256
) -> list[TokenDist]:
    with backend.as_base() as view:
        return dists(view, prompts, top_k)


def null_table(
    backend: ConstructedNullBackend,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    base: Sequence[TokenDist],
    construction: NullConstruction = "norm_matched",
    rank_scale: float = 1.0,
    top_k: int = 256,
) -> FloatArray:
    """``(len(seeds), P)`` per-prompt divergences of one null adapter per seed."""
    rows = []
    for seed in seeds:
        with backend.as_null_adapter(
            seed, rank_scale=rank_scale, construction=construction
        ) as view:
            rows.append(prompt_divergences(view, base, prompts, top_k=top_k))
    return np.asarray(rows, dtype=np.float64).reshape(len(seeds), len(prompts))


def scale_for_ratio(
    measure: Callable[[float], float],
    target: float,
    *,
    lo: float,
    hi: float,
    iters: int = 40,
    rtol: float = 0.005,
) -> float:
    """The scale ``s`` in ``[lo, hi]`` with ``measure(s) ≈ target`` (bisection on log ``s``;
    ``measure`` must increase with ``s``). Used to plant an effect of a given ratio."""
    if not (0.0 < lo < hi) or not measure(lo) <= target <= measure(hi):
        raise ValueError(f"target {target:g} is not bracketed by measure({lo:g}), measure({hi:g})")
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        value = measure(mid)
        if abs(value / target - 1.0) <= rtol:
            return mid
        lo, hi = (mid, hi) if value < target else (lo, mid)
    return math.sqrt(lo * hi)


#: Pseudo-method of :func:`paired_study`: the mean's z against the whole pool's normal fit
#: of log means — a test that knows the null (K → ∞); the ceiling for tests on the mean.
ORACLE = "oracle_mean"


@dataclass(frozen=True)
class PairedStudy:
    """PASS rates of every paired method on the same trials (per-prompt tables)."""

    config: dict[str, Any]
    rates: dict[str, tuple[Rate, ...]]
    #: Per trial: adapter mean over prompts ÷ median of its K null means.
    ratios: tuple[float, ...] = field(repr=False)
    degenerate: dict[str, int] = field(default_factory=dict)

    def at(self, method: str, z_threshold: float) -> Rate:
        for r in self.rates[method]:
            if math.isclose(r.z_threshold, z_threshold, rel_tol=0.0, abs_tol=1e-9):
                return r
        raise KeyError(f"no rate for {method} at z ≥ {z_threshold}")

    def to_dict(self) -> dict[str, Any]:
        ratios = np.asarray(self.ratios)
        return {
            **self.config,
            "ratio_median": float(np.median(ratios)) if ratios.size else None,
            "ratio_iqr": [float(q) for q in np.quantile(ratios, [0.25, 0.75])]
            if ratios.size
            else None,
            "degenerate": self.degenerate,
            "rates": {m: [r.to_dict() for r in rs] for m, rs in self.rates.items()},
        }


def paired_study(
    pool: FloatArray,
    *,
    k: int,
    adapters: FloatArray | None = None,
    methods: Sequence[PairedMethod] = PAIRED_METHODS,
    z_threshold: float | Sequence[float] = DEFAULT_THRESHOLDS,
    max_trials: int | None = None,
    config: dict[str, Any] | None = None,
) -> PairedStudy:
    """Judge trials built from disjoint rows of a null ``pool`` ``(N, P)`` with every method.

    Without ``adapters`` it is a false-positive study: trial ``t`` takes rows
    ``t·(K+1) … t·(K+1)+K−1`` as its nulls and row ``t·(K+1)+K`` as the impostor.
    With ``adapters`` ``(T, P)`` it is a power study: trial ``t`` judges
    ``adapters[t]`` against rows ``t·K … t·K+K−1``. Rates are also given for
    :data:`ORACLE` (not a usable test: it reads the whole pool).
    """
    thresholds = _thresholds(z_threshold)
    table = np.asarray(pool, dtype=np.float64)
    block = k if adapters is not None else k + 1
    trials = table.shape[0] // block
    if adapters is not None:
        trials = min(trials, int(np.asarray(adapters).shape[0]))
    if max_trials is not None:
        trials = min(trials, max_trials)
    if trials < 1:
        raise ValueError(f"a pool of {table.shape[0]} nulls holds no trial at K={k}")
    passes = {m: [0] * len(thresholds) for m in (*methods, ORACLE)}
    degenerate = dict.fromkeys(methods, 0)
    ratios: list[float] = []
    # The oracle knows the null distribution of the log mean (the whole pool: K → ∞).
    log_means = np.log(table.mean(axis=1))
    centre, spread = float(log_means.mean()), float(log_means.std(ddof=1))
    for t in range(trials):
        rows = table[t * block : t * block + block]
        nulls = rows[:k]
        x = rows[k] if adapters is None else np.asarray(adapters[t], dtype=np.float64)
        ratios.append(float(x.mean() / np.median(nulls.mean(axis=1))))
        for m, res in paired_tests(x, nulls, methods=tuple(methods)).items():
            degenerate[m] += res.degenerate is not None
            for i, z in enumerate(thresholds):
                passes[m][i] += res.passes(z)
        oracle_z = (math.log(float(x.mean())) - centre) / spread
        for i, z in enumerate(thresholds):
            passes[ORACLE][i] += oracle_z >= z
    rates: dict[str, tuple[Rate, ...]] = {
        m: tuple(Rate(z, nominal_alpha(z), c, trials) for z, c in zip(thresholds, cs, strict=True))
        for m, cs in passes.items()
    }
    cfg = {"study": "fpr" if adapters is None else "power", "k": k, "trials": trials}
    cfg.update(config or {})
    return PairedStudy(cfg, rates, tuple(ratios), {m: c for m, c in degenerate.items() if c})


__all__ = [
    "ORACLE",
    "PairedStudy",
    "base_dists",
    "null_table",
    "paired_study",
    "prompt_divergences",
    "scale_for_ratio",
]
