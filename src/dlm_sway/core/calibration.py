"""Compare one probe's raw value against the raws of its K null adapters.

Every calibrated probe funnels through :func:`compare_to_null`, so the whole
suite speaks one statistical language: a one-sided p-value for "the adapter's
raw lies beyond the null in the probe's good direction", and ``z``, the
standard-normal quantile of that p (``z = Φ⁻¹(1 − p)``).  Because ``z`` is
derived from ``p``, a z threshold means the same error rate whatever K is.

Two decision methods:

``"t_prediction"`` (default)
    Treat the K nulls as a normal sample with mean ``m`` and sample standard
    deviation ``s`` (ddof=1).  If the adapter's raw ``x`` were one more draw
    from that distribution, ``(x − m) / (s·√(1 + 1/K))`` would follow Student's
    t with K−1 degrees of freedom (the prediction-interval pivot).  The
    one-sided p is the t survival function at that statistic.  This is exact
    under normality for any K ≥ 2, which is why non-negative, right-skewed
    divergences should be compared on log scale (``log_scale=True``).

``"reference_z"``
    The reference tool's rule: ``(x − m) / pstdev`` (ddof=0) read against the
    standard normal.  It ignores that ``m`` and the spread are estimated from
    K values, so with few nulls its false-positive rate is far above the
    nominal level (about 18 % instead of 5 % at K=3).  Kept for compatibility.

When K ≥ :data:`EMPIRICAL_MIN_K` the rank-based empirical p
``(b + 1)/(K + 1)`` is reported alongside; it needs no normality but cannot
go below ``1/(K + 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

# scipy.special, not scipy.stats: the same functions, without ~0.3 s of import per run.
from scipy import special as _spc

Method = Literal["t_prediction", "reference_z"]
#: A route to a p-value: one of the two decision methods, or the rank-based empirical p.
PRoute = Literal["t_prediction", "reference_z", "empirical"]

METHODS: tuple[Method, ...] = ("t_prediction", "reference_z")

#: Smallest p ever reported; keeps ``z`` finite (Φ⁻¹(1 − 1e-300) ≈ 37.05).
P_FLOOR = 1e-300
#: ``|z|`` never exceeds this.
Z_LIMIT = 40.0
#: Empirical p is reported only from this many finite nulls on (1/20 = 0.05 reachable).
EMPIRICAL_MIN_K = 19
#: Null spread below ``SPREAD_RTOL · max(1, |mean|)`` counts as no spread at all.
SPREAD_RTOL = 1e-12
#: Default floor applied before taking logs on ``log_scale``.
LOG_FLOOR = 1e-12

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class NullComparison:
    """How one raw value stands against its null samples.

    ``z``/``p_value``/``statistic`` are None exactly when ``degenerate`` holds a
    reason.  ``k`` counts the finite null samples actually used; ``n_dropped``
    the non-finite ones that were discarded.
    """

    z: float | None
    p_value: float | None
    p_empirical: float | None
    statistic: float | None
    effect_ratio: float | None
    k: int
    method: Method
    log_scale: bool
    degenerate: str | None
    n_dropped: int = 0

    @property
    def usable(self) -> bool:
        return self.degenerate is None

    def passes(self, z_threshold: float) -> bool | None:
        """``z >= z_threshold`` (inclusive); None when no calibrated comparison exists."""
        if self.degenerate is not None or self.z is None:
            return None
        return self.z >= z_threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "z": self.z,
            "p_value": self.p_value,
            "p_empirical": self.p_empirical,
            "statistic": self.statistic,
            "effect_ratio": self.effect_ratio,
            "k": self.k,
            "method": self.method,
            "log_scale": self.log_scale,
            "degenerate": self.degenerate,
            "n_dropped": self.n_dropped,
        }


# --------------------------------------------------------------------------- helpers


def _check_sign(sign: int) -> int:
    if sign not in (1, -1) or isinstance(sign, bool):
        raise ValueError(f"sign must be +1 or -1, got {sign!r}")
    return int(sign)


def _check_method(method: str) -> Method:
    if method == "t_prediction":
        return "t_prediction"
    if method == "reference_z":
        return "reference_z"
    raise ValueError(f"unknown calibration method {method!r}; expected one of {METHODS}")


def _clamp_p(p: FloatArray) -> FloatArray:
    return np.clip(np.nan_to_num(p, nan=1.0), P_FLOOR, 1.0)


def _z_from_tails(upper: FloatArray, lower: FloatArray) -> FloatArray:
    """z from both tail probabilities; uses the smaller tail so neither side loses precision."""
    up = _clamp_p(upper)
    lo = _clamp_p(lower)
    z = np.where(up <= 0.5, -_spc.ndtri(up), _spc.ndtri(lo))
    return np.clip(np.asarray(z, dtype=np.float64), -Z_LIMIT, Z_LIMIT)


def _to_log(values: FloatArray, floor: float) -> FloatArray:
    return np.log(np.maximum(values, floor))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# --------------------------------------------------------------------------- vectorised core


def null_p_values(
    raw: npt.ArrayLike,
    nulls: npt.ArrayLike,
    *,
    sign: int = 1,
    method: Method = "t_prediction",
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Vectorised decision statistic for many (raw, nulls) rows at once.

    ``raw`` has shape ``(...)`` and ``nulls`` shape ``(..., K)``; values must
    already be on the comparison scale (take logs first for log-scale metrics)
    and finite.  Returns ``(statistic, p, z)``, each of shape ``(...)``; rows
    whose null has no usable spread (or K < 2) get NaN in all three.  This is
    the exact computation :func:`compare_to_null` performs for a single row.
    """
    sgn = _check_sign(sign)
    meth = _check_method(method)
    x = np.asarray(raw, dtype=np.float64)
    null = np.asarray(nulls, dtype=np.float64)
    if null.ndim < 1:
        raise ValueError("nulls must have a trailing axis of null samples")
    k = null.shape[-1]
    out_shape = np.broadcast_shapes(x.shape, null.shape[:-1])
    nan = np.full(out_shape, np.nan)
    if k < 2:
        return nan, nan.copy(), nan.copy()
    m = null.mean(axis=-1)
    ddof = 1 if meth == "t_prediction" else 0
    spread = null.std(axis=-1, ddof=ddof)
    ok = spread > SPREAD_RTOL * np.maximum(1.0, np.abs(m))
    safe = np.where(ok, spread, 1.0)
    with np.errstate(over="ignore", invalid="ignore"):
        if meth == "t_prediction":
            stat = sgn * (x - m) / (safe * math.sqrt(1.0 + 1.0 / k))
            upper = _spc.stdtr(k - 1, -stat)
            lower = _spc.stdtr(k - 1, stat)
        else:
            stat = sgn * (x - m) / safe
            upper = _spc.ndtr(-stat)
            lower = _spc.ndtr(stat)
        stat = np.asarray(stat, dtype=np.float64)
        p = _clamp_p(np.asarray(upper, dtype=np.float64))
        if meth == "reference_z":
            # The reference reports the statistic itself; only clamp it.
            z = np.clip(np.nan_to_num(stat, nan=0.0), -Z_LIMIT, Z_LIMIT)
        else:
            z = _z_from_tails(
                np.asarray(upper, dtype=np.float64), np.asarray(lower, dtype=np.float64)
            )
    stat = np.where(ok, stat, np.nan)
    p = np.where(ok, p, np.nan)
    z = np.where(ok, z, np.nan)
    return (
        np.broadcast_to(stat, out_shape).astype(np.float64),
        np.broadcast_to(p, out_shape).astype(np.float64),
        np.broadcast_to(z, out_shape).astype(np.float64),
    )


# --------------------------------------------------------------------------- public API


def compare_to_null(
    raw: float,
    null_samples: Sequence[float],
    *,
    sign: int = 1,
    log_scale: bool = False,
    method: Method = "t_prediction",
    log_floor: float = LOG_FLOOR,
) -> NullComparison:
    """Say how far ``raw`` stands beyond ``null_samples`` in the probe's good direction.

    ``sign=+1`` when higher raw is better for the adapter, ``-1`` when lower is.
    ``log_scale=True`` for non-negative, divergence-type metrics: both sides go
    through ``log(max(v, log_floor))`` before comparison (effect ratio stays on
    the original scale).  Non-finite null samples are dropped; a non-finite raw,
    or a negative value on log scale, raises :class:`ValueError` (the caller must
    decide what such a value means before asking for calibration).
    """
    sgn = _check_sign(sign)
    meth = _check_method(method)
    x = float(raw)
    if not math.isfinite(x):
        raise ValueError(f"raw must be finite to compare with a null, got {x!r}")
    if not (math.isfinite(log_floor) and log_floor > 0.0):
        raise ValueError(f"log_floor must be a positive finite number, got {log_floor!r}")

    all_nulls = np.asarray([float(v) for v in null_samples], dtype=np.float64)
    finite = all_nulls[np.isfinite(all_nulls)]
    k = int(finite.size)
    n_dropped = int(all_nulls.size - k)

    if log_scale:
        if x < 0.0:
            raise ValueError(
                f"raw {x:g} is negative: log_scale comparison is only for non-negative metrics"
            )
        if k and float(finite.min()) < 0.0:
            raise ValueError(
                f"null sample {float(finite.min()):g} is negative: log_scale comparison "
                "is only for non-negative metrics"
            )

    ratio: float | None = None
    if k:
        med = float(np.median(finite))
        if abs(med) >= 1e-12:
            ratio = x / med
            if not math.isfinite(ratio):
                ratio = None

    xs = float(_to_log(np.asarray(x), log_floor)) if log_scale else x
    ns = _to_log(finite, log_floor) if log_scale else finite

    p_emp: float | None = None
    if k >= EMPIRICAL_MIN_K:
        at_least = int(np.count_nonzero(ns >= xs)) if sgn > 0 else int(np.count_nonzero(ns <= xs))
        p_emp = (at_least + 1) / (k + 1)

    def _degenerate(reason: str) -> NullComparison:
        return NullComparison(
            z=None,
            p_value=None,
            p_empirical=p_emp,
            statistic=None,
            effect_ratio=ratio,
            k=k,
            method=meth,
            log_scale=log_scale,
            degenerate=reason,
            n_dropped=n_dropped,
        )

    dropped_note = f" ({n_dropped} non-finite dropped)" if n_dropped else ""
    if k == 0:
        return _degenerate(f"no finite null samples{dropped_note}: need at least 2 (raise runs:)")
    if k == 1:
        return _degenerate(f"only 1 null sample{dropped_note}: need at least 2 (raise runs:)")
    scale_word = "log-scale " if log_scale else ""
    if float(np.ptp(ns)) == 0.0:
        if float(np.ptp(finite)) == 0.0:
            what = f"all {k} null samples are identical"
        else:
            what = f"all {k} null samples are at or below the log floor {log_floor:g}"
        return _degenerate(f"{what}{dropped_note}: the null has no spread")

    m = float(ns.mean())
    sd = float(ns.std(ddof=1 if meth == "t_prediction" else 0))
    if not sd > SPREAD_RTOL * max(1.0, abs(m)):
        return _degenerate(
            f"the {k} {scale_word}null samples spread by only {sd:.3g} around {m:.6g}"
            f"{dropped_note}: the null has no usable spread"
        )

    stat, p, z = null_p_values(xs, ns, sign=sgn, method=meth)
    return NullComparison(
        z=float(z),
        p_value=float(p),
        p_empirical=p_emp,
        statistic=float(stat),
        effect_ratio=ratio,
        k=k,
        method=meth,
        log_scale=log_scale,
        degenerate=None,
        n_dropped=n_dropped,
    )


def min_achievable_p(k: int, method: PRoute) -> float:
    """Smallest p-value the given route can report from ``k`` null samples.

    What "too few nulls for α" means for each route:

    * ``"empirical"``: the rank p ``(b + 1)/(K + 1)`` is at least ``1/(K + 1)``,
      so with ``K < nulls_needed_for_alpha(α)`` no adapter, however strong, can
      reach α. This is a hard limit (K ≥ 19 for 0.05, K ≥ 99 for 0.01).
    * ``"t_prediction"``: any K ≥ 2 can in principle reach any α (the t tail
      goes to zero), so the floor is :data:`P_FLOOR`. "Too few" here is a
      matter of power: the raw must clear the mean by
      ``prediction_threshold(K, α)`` null standard deviations, which is 3.4 sd
      at K=3 and α=0.05, and ~22 sd at K=3 for z ≥ 3. It is also only valid
      if the nulls are roughly normal on the compared scale.
    * ``"reference_z"``: the floor is :data:`P_FLOOR` for K ≥ 2, but the p
      is too small for small K (it treats the K-sample mean and spread as
      exact), so reaching α does not mean an error rate of α. Few nulls make
      this route over-confident rather than powerless.

    K < 2 gives 1.0 for every route: no comparison is possible.
    """
    if method not in ("t_prediction", "reference_z", "empirical"):
        raise ValueError(f"unknown p-value route {method!r}")
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    if method == "empirical":
        return 1.0 / (k + 1)
    return 1.0 if k < 2 else P_FLOOR


def nulls_needed_for_alpha(alpha: float) -> int:
    """Fewest nulls for which the empirical p ``(b + 1)/(K + 1)`` can be ≤ ``alpha``."""
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    return max(1, math.ceil(1.0 / alpha - 1e-9) - 1)


def prediction_threshold(k: int, alpha: float) -> float:
    """How many null sample-SDs above the null mean a raw must sit for the
    ``t_prediction`` one-sided p to reach ``alpha`` with ``k`` nulls:
    ``t_{1−α, K−1} · √(1 + 1/K)``.  Useful for warning that K is too small."""
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    if k < 2:
        return math.inf
    return -float(_spc.stdtrit(k - 1, alpha)) * math.sqrt(1.0 + 1.0 / k)


__all__ = [
    "EMPIRICAL_MIN_K",
    "LOG_FLOOR",
    "METHODS",
    "P_FLOOR",
    "SPREAD_RTOL",
    "Z_LIMIT",
    "Method",
    "NullComparison",
    "PRoute",
    "compare_to_null",
    "min_achievable_p",
    "null_p_values",
    "nulls_needed_for_alpha",
    "prediction_threshold",
]
