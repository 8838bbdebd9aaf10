"""Measure sway's own error rates: false positives on nulls, power on planted effects.

A false positive is a PASS for an adapter that learned nothing. To manufacture
one, :class:`NullAsFinetune` presents a seeded *null* adapter as the fine-tune;
the suite then draws its own K nulls from other seeds and judges the impostor
exactly as it would judge a real adapter. Over many trials the PASS rate is the
false-positive rate (FPR); on a backend with a planted signal it is the power.

Every trial goes through the public path — a spec dict, :func:`from_dict`,
:func:`dlm_sway.suite.runner.run` — with one ``null_adapter`` and one
``delta_kl`` entry, and PASS is read from the probe's verdict. Two settings
differ from a user's suite, on purpose:

* ``assert_mean_gte: 0``: the practical floor is switched off so only the null
  comparison (and the noise floor) decides. The floor is a size rule, not a
  statistical one; with it on, the FPR would look lower than the test's.
* ``cache: false`` on ``null_adapter``: every trial draws fresh nulls.

Seeds are laid out in disjoint blocks: trial ``t`` uses nulls
``seed0 + t·(K+1) + i`` (i < K) and the impostor ``seed0 + t·(K+1) + K``, so no
seed serves twice in one study and the trials are independent. Studies at
different K over the same ``seed0`` reuse seeds across K, which lets a memoising
backend score each null adapter once.

Because the verdict's other conditions do not depend on ``assert_z_gte``, one
run at the lowest threshold answers every threshold: PASS at ``t`` is "PASS at
the lowest threshold and z ≥ t".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats as _sps

from dlm_sway.core.calibration import Method
from dlm_sway.core.result import Verdict
from dlm_sway.core.scoring import (
    ConstructedNullBackend,
    DifferentialBackend,
    NoiseFloorMeasurable,
    NullConstruction,
    ScoringModel,
    TokenDist,
)
from dlm_sway.suite.loader import from_dict
from dlm_sway.suite.runner import run

#: One-sided z for α = 0.05 and the default ``assert_z_gte`` (α = 0.00135).
Z_05 = float(_sps.norm.isf(0.05))
Z_3 = 3.0
DEFAULT_THRESHOLDS: tuple[float, ...] = (Z_05, Z_3)
PROBE = "quality_delta_kl"
LayoutPairs = list[tuple[TokenDist, TokenDist]]
FloatArray = npt.NDArray[np.float64]


def nominal_alpha(z: float) -> float:
    """The one-sided error rate a z threshold promises: 1 − Φ(z)."""
    return float(_sps.norm.sf(z))


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial rate ``k/n`` (sensible at k = 0 and k = n)."""
    if n <= 0:
        return (0.0, 1.0)
    z = float(_sps.norm.isf((1.0 - confidence) / 2.0))
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return (lo, hi)


def binomial_allowance(n: int, alpha: float, q: float = 0.99) -> int:
    """Most PASSes out of ``n`` trials still consistent with a true rate of ``alpha``:
    the exact binomial ``q`` quantile (exceeded with probability ≤ 1 − q under α)."""
    return int(_sps.binom.ppf(q, n, alpha))


class NullAsFinetune:
    """A backend whose "fine-tune" is the inner backend's null adapter at ``ft_seed``.

    ``as_base()`` and ``as_null_adapter(...)`` pass through, so the suite's own
    nulls come from the inner backend at other seeds; asking for ``ft_seed``
    itself raises (the impostor would be compared with itself). No scaling view.
    ``base_layout_pairs`` passes through when the inner backend has it; with
    ``layout_memo`` (a dict shared across trials) it is measured once, since the
    base model — and so its batch-layout jitter — is the same in every trial.
    """

    base_layout_pairs: Callable[[Sequence[str], int], LayoutPairs]

    def __init__(
        self,
        inner: ConstructedNullBackend,
        *,
        ft_seed: int,
        construction: NullConstruction = "norm_matched",
        init_scale: float = 0.02,
        layout_memo: dict[tuple[tuple[str, ...], int], LayoutPairs] | None = None,
    ) -> None:
        self._inner = inner
        self.ft_seed = ft_seed
        self.construction: NullConstruction = construction
        self._init_scale = init_scale
        self._memo = layout_memo
        if isinstance(inner, NoiseFloorMeasurable):
            self.base_layout_pairs = self._layout_pairs

    @property
    def null_constructions(self) -> tuple[NullConstruction, ...]:
        return tuple(self._inner.null_constructions)

    def as_base(self) -> AbstractContextManager[ScoringModel]:
        return self._inner.as_base()

    def as_finetuned(self) -> AbstractContextManager[ScoringModel]:
        return self._inner.as_null_adapter(
            self.ft_seed, init_scale=self._init_scale, construction=self.construction
        )

    def as_null_adapter(
        self,
        seed: int,
        *,
        init_scale: float = 0.02,
        rank_scale: float = 1.0,
        construction: NullConstruction = "init_scale",
    ) -> AbstractContextManager[ScoringModel]:
        if seed == self.ft_seed:
            raise ValueError(f"null seed {seed} is the seed of the null presented as the fine-tune")
        return self._inner.as_null_adapter(
            seed, init_scale=init_scale, rank_scale=rank_scale, construction=construction
        )

    def _layout_pairs(self, prompts: Sequence[str], top_k: int) -> LayoutPairs:
        inner: Any = self._inner
        if self._memo is None:
            pairs: LayoutPairs = inner.base_layout_pairs(prompts, top_k)
            return pairs
        key = (tuple(prompts), top_k)
        if key not in self._memo:
            self._memo[key] = inner.base_layout_pairs(prompts, top_k)
        return self._memo[key]


@dataclass(frozen=True, slots=True)
class TrialRecord:
    """One trial: the probe's verdict at the lowest threshold and its statistics."""

    seed_base: int
    raw: float
    z: float
    p_value: float | None
    p_empirical: float | None
    effect_ratio: float | None
    verdict: str
    null_samples: tuple[float, ...]
    passed: tuple[bool, ...]


@dataclass(frozen=True, slots=True)
class Rate:
    """PASS rate at one z threshold, with its Wilson 95% interval."""

    z_threshold: float
    nominal_alpha: float
    passes: int
    trials: int

    @property
    def rate(self) -> float:
        return self.passes / self.trials if self.trials else math.nan

    @property
    def wilson95(self) -> tuple[float, float]:
        return wilson_interval(self.passes, self.trials)

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.wilson95
        return {
            "z_threshold": self.z_threshold,
            "nominal_alpha": self.nominal_alpha,
            "passes": self.passes,
            "trials": self.trials,
            "rate": self.rate,
            "wilson95": [lo, hi],
            "binomial_99_allowance": binomial_allowance(self.trials, self.nominal_alpha),
        }


@dataclass(frozen=True)
class StudyResult:
    """PASS rates of one configuration over independent trials."""

    config: dict[str, Any]
    rates: tuple[Rate, ...]
    records: tuple[TrialRecord, ...] = field(repr=False)
    wall_s: float

    def at(self, z_threshold: float) -> Rate:
        for r in self.rates:
            if math.isclose(r.z_threshold, z_threshold, rel_tol=0.0, abs_tol=1e-9):
                return r
        raise KeyError(
            f"no rate at z ≥ {z_threshold}; measured {[r.z_threshold for r in self.rates]}"
        )

    def to_dict(self, *, records: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.config,
            "wall_s": self.wall_s,
            "rates": [r.to_dict() for r in self.rates],
        }
        if records:
            out["records"] = [
                {"seed_base": t.seed_base, "raw": t.raw, "z": t.z, "p": t.p_value}
                for t in self.records
            ]
        return out


def study_spec(
    prompts: Sequence[str],
    *,
    runs: int,
    construction: NullConstruction,
    method: Method,
    z_threshold: float,
    seed_base: int,
    seed: int = 0,
    init_scale: float = 0.02,
) -> dict[str, Any]:
    """The two-entry suite every trial runs (practical floor off, null cache off)."""
    return {
        "version": 1,
        # A label only: the runner is handed the backend, it never builds one from this.
        "models": {"ft": {"kind": "dummy", "base": "quality-study"}},
        "defaults": {"seed": seed, "top_k": 256},
        "suite": [
            {
                "name": "quality_null",
                "kind": "null_adapter",
                "runs": runs,
                "null": construction,
                "calibration": method,
                "init_scale": init_scale,
                "seed_base": seed_base,
                "cache": False,
            },
            {
                "name": PROBE,
                "kind": "delta_kl",
                "prompts": list(prompts),
                "assert_mean_gte": 0.0,
                "assert_z_gte": z_threshold,
            },
        ],
    }


def run_trial(
    backend: DifferentialBackend,
    prompts: Sequence[str],
    *,
    runs: int,
    construction: NullConstruction,
    method: Method,
    thresholds: Sequence[float],
    seed_base: int,
    init_scale: float = 0.02,
) -> TrialRecord:
    """Run the study suite once; PASS at each threshold comes from the probe's verdict."""
    lowest = min(thresholds)
    spec = study_spec(
        prompts,
        runs=runs,
        construction=construction,
        method=method,
        z_threshold=lowest,
        seed_base=seed_base,
        init_scale=init_scale,
    )
    suite = run(from_dict(spec, source="quality study"), backend, skip_preflight=True)
    res = next(p for p in suite.probes if p.name == PROBE)
    null = next(p for p in suite.probes if p.kind == "null_adapter")
    calibrated = res.verdict in (Verdict.PASS, Verdict.WARN, Verdict.FAIL) and res.null is not None
    if not calibrated or res.z_score is None or res.raw is None:
        # An uncalibrated delta_kl with the practical floor off would PASS anything:
        # a study must never count such a trial.
        raise RuntimeError(f"trial at seed_base={seed_base} was not calibrated: {res.message}")
    stats = null.calibration.stats.get(PROBE) if null.calibration is not None else None
    samples = stats.samples if stats is not None else ()
    emp = res.null.p_empirical if res.null is not None else None
    ok = res.verdict == Verdict.PASS
    return TrialRecord(
        seed_base=seed_base,
        raw=float(res.raw),
        z=float(res.z_score),
        p_value=res.p_value,
        p_empirical=None if emp is None else float(emp),
        effect_ratio=res.effect_ratio,
        verdict=res.verdict.value,
        null_samples=tuple(float(x) for x in samples),
        passed=tuple(ok and res.z_score >= t for t in thresholds),
    )


def _thresholds(z_threshold: float | Sequence[float]) -> tuple[float, ...]:
    ts = (z_threshold,) if isinstance(z_threshold, int | float) else tuple(z_threshold)
    if not ts:
        raise ValueError("give at least one z threshold")
    return tuple(sorted(float(t) for t in ts))


def _summarise(
    config: dict[str, Any], thresholds: tuple[float, ...], records: list[TrialRecord], t0: float
) -> StudyResult:
    rates = tuple(
        Rate(t, nominal_alpha(t), sum(r.passed[i] for r in records), len(records))
        for i, t in enumerate(thresholds)
    )
    return StudyResult(config, rates, tuple(records), time.perf_counter() - t0)


def fpr_study(
    make_backend: Callable[[], ConstructedNullBackend],
    *,
    trials: int,
    runs: int,
    construction: NullConstruction = "norm_matched",
    method: Method = "t_prediction",
    z_threshold: float | Sequence[float] = DEFAULT_THRESHOLDS,
    prompts: Sequence[str],
    seed0: int = 0,
    ft_construction: NullConstruction = "norm_matched",
    init_scale: float = 0.02,
    layout_memo: dict[tuple[tuple[str, ...], int], LayoutPairs] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> StudyResult:
    """False-positive rate: a null adapter (``ft_construction``) poses as the fine-tune
    and is judged against ``runs`` nulls of ``construction`` with ``method``.

    ``make_backend`` is called once per study; return a shared, memoising backend
    to reuse null views across studies. ``layout_memo`` shares the base model's
    noise-floor measurement across studies (a fresh one per study by default).
    """
    if trials < 1 or runs < 2:
        raise ValueError("need trials >= 1 and runs >= 2")
    thresholds = _thresholds(z_threshold)
    inner = make_backend()
    memo = {} if layout_memo is None else layout_memo
    t0 = time.perf_counter()
    records: list[TrialRecord] = []
    for t in range(trials):
        seed_base = seed0 + t * (runs + 1)
        backend = NullAsFinetune(
            inner,
            ft_seed=seed_base + runs,
            construction=ft_construction,
            init_scale=init_scale,
            layout_memo=memo,
        )
        records.append(
            run_trial(
                backend,
                prompts,
                runs=runs,
                construction=construction,
                method=method,
                thresholds=thresholds,
                seed_base=seed_base,
                init_scale=init_scale,
            )
        )
        if progress is not None:
            progress(t + 1, trials)
    config = {
        "study": "fpr",
        "construction": construction,
        "ft_construction": ft_construction,
        "method": method,
        "k": runs,
        "prompts": len(prompts),
        "trials": trials,
        "seed0": seed0,
    }
    return _summarise(config, thresholds, records, t0)


def power_study(
    make_backend: Callable[[float, int], DifferentialBackend],
    *,
    strengths: Sequence[float],
    trials: int,
    runs: int,
    construction: NullConstruction = "norm_matched",
    method: Method = "t_prediction",
    z_threshold: float | Sequence[float] = DEFAULT_THRESHOLDS,
    prompts: Sequence[str],
    seed0: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> list[StudyResult]:
    """Detection rate per planted strength: ``make_backend(strength, trial)`` returns a
    backend whose own fine-tune carries that planted signal (trial varies its noise)."""
    if trials < 1 or runs < 2:
        raise ValueError("need trials >= 1 and runs >= 2")
    thresholds = _thresholds(z_threshold)
    out: list[StudyResult] = []
    done = 0
    for strength in strengths:
        t0 = time.perf_counter()
        records: list[TrialRecord] = []
        for t in range(trials):
            backend = make_backend(strength, t)
            records.append(
                run_trial(
                    backend,
                    prompts,
                    runs=runs,
                    construction=construction,
                    method=method,
                    thresholds=thresholds,
                    seed_base=seed0 + t * (runs + 1),
                )
            )
            done += 1
            if progress is not None:
                progress(done, trials * len(strengths))
        config = {
            "study": "power",
            "strength": strength,
            "construction": construction,
            "method": method,
            "k": runs,
            "prompts": len(prompts),
            "trials": trials,
            "seed0": seed0,
        }
        out.append(_summarise(config, thresholds, records, t0))
    return out


# --------------------------------------------------------------------------- paired studies
#
# The functions below measure the candidate statistics of :mod:`dlm_sway.core.paired`
# on per-prompt tables instead of through the runner: a pool of null adapters is
# scored once (one row of per-prompt divergences each, exactly as delta_kl computes
# them), and every trial then takes disjoint rows of the pool. That makes thousands
# of trials per cell affordable and lets every method judge the very same trials.


__all__ = [
    "DEFAULT_THRESHOLDS",
    "Z_05",
    "Z_3",
    "NullAsFinetune",
    "Rate",
    "StudyResult",
    "TrialRecord",
    "binomial_allowance",
    "fpr_study",
    "nominal_alpha",
    "power_study",
    "run_trial",
    "study_spec",
    "wilson_interval",
]
