"""Candidate null comparisons that use the prompt dimension (paired by prompt).

:func:`dlm_sway.core.calibration.compare_to_null` compares *one* number, the
adapter's mean over prompts, with the K null means. The functions here take the
whole table instead: the adapter's per-prompt values ``x`` (shape ``(P,)``) and
the nulls' per-prompt values ``n`` (shape ``(K, P)``), paired by prompt, and
return a one-sided p for "the adapter lies beyond the nulls in the good
direction" with its z-equivalent ``Φ⁻¹(1 − p)``.

Under H0 the adapter is one more draw of the null, so the K + 1 rows are
exchangeable. That is all the *exchangeable* methods assume; they do **not**
assume prompts are independent, which matters because a random adapter that
moves one prompt a lot tends to move the others a lot too (measured on the
tiny Llama: mean cross-prompt correlation of log JS 0.16–0.18). The unknown
cross-prompt dependence is learnt from the nulls themselves: each null is
scored *leave-one-out* against the other K − 1 exactly as the adapter is scored
against all K, and the spread of those K scores (mean known to be 0) gives the
scale, read on Student's t with K − 1 degrees of freedom. For a statistic
linear in the values this is exactly the t-prediction pivot; the per-prompt
standardisation makes it approximate, which the quality lane measures.

Methods (``PairedMethod``):

``mean_t``      the baseline: t-prediction of the mean over prompts (what every
                calibrated probe does today, via ``compare_to_null``).
``geomean_t``   t-prediction of the mean over prompts of the (log) values.
``paired_t``    per prompt, the adapter's log-ratio to that prompt's null mean
                over the prompt's null sd (a t-prediction pivot); summed over
                prompts; scaled by the leave-one-out null scores; t, K − 1 dof.
``rank_t``      as ``paired_t`` with standardised per-prompt ranks (no
                normality per prompt; bounded, so it saturates with few prompts).
``rank_exact``  rank sum read on its exact distribution — assumes prompts are
                independent under H0 (not implied by exchangeability).
``stouffer``    per-prompt t-prediction z summed / √P, read on the normal —
                assumes independent prompts too.

The last two are kept as measured counter-examples: on a real model they are
far too liberal (see docs/statistics.md, "Power and the prompt dimension").
Why none of them beats ``mean_t``: a random adapter's effect has a component
shared by all prompts, whose variance only the K nulls can estimate (K − 1
degrees of freedom, whatever P is); the per-prompt structure cannot replace it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import stats as _sps

from dlm_sway.core.calibration import LOG_FLOOR, P_FLOOR, Z_LIMIT, null_p_values

PairedMethod = Literal["mean_t", "geomean_t", "paired_t", "rank_t", "rank_exact", "stouffer"]
#: Methods whose p needs only that the adapter be exchangeable with the nulls under H0.
EXCHANGEABLE_METHODS: tuple[PairedMethod, ...] = ("mean_t", "geomean_t", "paired_t", "rank_t")
#: Methods that also assume the prompts are independent under H0.
INDEPENDENT_PROMPT_METHODS: tuple[PairedMethod, ...] = ("rank_exact", "stouffer")
PAIRED_METHODS: tuple[PairedMethod, ...] = EXCHANGEABLE_METHODS + INDEPENDENT_PROMPT_METHODS
#: Leave-one-out needs each null scored against at least 2 others.
MIN_K = 3

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class PairedTest:
    """One comparison of an adapter's per-prompt values with a null table.

    ``p_value``/``z``/``statistic`` are None exactly when ``degenerate`` says why
    no comparison is possible (e.g. a prompt on which every null gave one value).
    """

    method: PairedMethod
    p_value: float | None
    z: float | None
    statistic: float | None
    k: int
    prompts: int
    degenerate: str | None = None

    def passes(self, z_threshold: float) -> bool:
        """``z ≥ z_threshold``; a degenerate comparison never passes."""
        return self.z is not None and self.z >= z_threshold


# --------------------------------------------------------------------------- helpers


def _z_of(upper: float, lower: float) -> float:
    """z from both tail probabilities, using the smaller one (no precision loss)."""
    up = min(max(upper, P_FLOOR), 1.0)
    lo = min(max(lower, P_FLOOR), 1.0)
    z = float(_sps.norm.isf(up)) if up <= 0.5 else -float(_sps.norm.isf(lo))
    return max(-Z_LIMIT, min(Z_LIMIT, z))


def _result(
    method: PairedMethod, k: int, prompts: int, stat: float, upper: float, lower: float
) -> PairedTest:
    p = min(max(upper, P_FLOOR), 1.0)
    return PairedTest(method, p, _z_of(upper, lower), stat, k, prompts)


def _prepare(
    adapter: npt.ArrayLike, nulls: npt.ArrayLike, sign: int, log_scale: bool, log_floor: float
) -> tuple[FloatArray, FloatArray]:
    """Validate shapes and values; return both on the comparison scale, oriented by sign."""
    if sign not in (1, -1) or isinstance(sign, bool):
        raise ValueError(f"sign must be +1 or -1, got {sign!r}")
    if not (math.isfinite(log_floor) and log_floor > 0.0):
        raise ValueError(f"log_floor must be a positive finite number, got {log_floor!r}")
    x = np.asarray(adapter, dtype=np.float64)
    n = np.asarray(nulls, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"adapter must be a non-empty vector (P,), got shape {x.shape}")
    if n.ndim != 2 or n.shape[1] != x.size:
        raise ValueError(
            f"nulls must have shape (K, {x.size}) to pair with the adapter, got {n.shape}"
        )
    if n.shape[0] < MIN_K:
        raise ValueError(
            f"need at least {MIN_K} nulls for a leave-one-out reference, got {n.shape[0]}"
        )
    if not (np.isfinite(x).all() and np.isfinite(n).all()):
        raise ValueError("adapter and null values must be finite")
    if log_scale:
        if float(x.min()) < 0.0 or float(n.min()) < 0.0:
            raise ValueError("log_scale comparison is only for non-negative metrics")
        x = np.log(np.maximum(x, log_floor))
        n = np.log(np.maximum(n, log_floor))
    return sign * x, sign * n


def _loo(n: FloatArray) -> FloatArray:
    """``(K, P, K − 1)``: for each null k, every prompt's values of the other nulls."""
    k = n.shape[0]
    others = np.array([[j for j in range(k) if j != i] for i in range(k)], dtype=np.intp)
    return np.transpose(n[others], (0, 2, 1))


def _flat_prompts(n: FloatArray) -> str | None:
    flat = np.flatnonzero(np.ptp(n, axis=0) <= 1e-12 * np.maximum(1.0, np.abs(n).max(axis=0)))
    if flat.size:
        return f"the nulls have no spread on prompt(s) {flat.tolist()[:5]}: no per-prompt scale"
    return None


def _scaled_t(method: PairedMethod, s0: float, s_null: FloatArray, prompts: int) -> PairedTest:
    """``s0 / √mean(s_k²)`` on t(K − 1): the leave-one-out scores have mean 0 under H0."""
    k = int(s_null.size)
    scale = math.sqrt(float(np.mean(s_null**2)))
    if not scale > 0.0:
        return PairedTest(method, None, None, None, k, prompts, "the null scores have no spread")
    stat = s0 / scale
    return _result(
        method, k, prompts, stat, float(_sps.t.sf(stat, k - 1)), float(_sps.t.cdf(stat, k - 1))
    )


# --------------------------------------------------------------------------- the methods


def _mean_t(x: FloatArray, n: FloatArray, method: PairedMethod, log_mean: bool) -> PairedTest:
    k, p = n.shape
    if log_mean:  # log of the mean on the original scale, as compare_to_null(log_scale=True)
        x0, nk = float(np.log(np.mean(np.exp(x)))), np.log(np.mean(np.exp(n), axis=1))
    else:
        x0, nk = float(x.mean()), n.mean(axis=1)
    stat, pv, _ = null_p_values(x0, nk, method="t_prediction")
    if not math.isfinite(float(stat)):
        return PairedTest(method, None, None, None, k, p, "the null means have no spread")
    s = float(stat)
    return _result(method, k, p, s, float(pv), float(_sps.t.cdf(s, k - 1)))


def _per_prompt_z(x: FloatArray, n: FloatArray) -> FloatArray:
    """Per prompt, the z-equivalent of the adapter's t-prediction p against that prompt's
    K nulls: exactly N(0, 1) under H0 when the prompt's (log) nulls are normal."""
    _, _, z0 = null_p_values(x, n.T, method="t_prediction")
    return z0


def _standardised(x: FloatArray, n: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Per-prompt log-ratios over the null sd, as prediction pivots (t with K − 1 dof for
    the adapter, K − 2 for a null against the other K − 1); the null scores are shrunk by
    the ratio of those t sds so both sides have the same variance (exact from K = 5)."""
    k = n.shape[0]
    t0 = (x - n.mean(axis=0)) / (n.std(axis=0, ddof=1) * math.sqrt(1.0 + 1.0 / k))
    rest = _loo(n)  # (K, P, K − 1)
    tk = (n - rest.mean(axis=2)) / (rest.std(axis=2, ddof=1) * math.sqrt(1.0 + 1.0 / (k - 1)))
    if k >= 5:
        tk = tk * math.sqrt(((k - 1) / (k - 3)) / ((k - 2) / (k - 4)))
    return t0, tk


def _ranks(x: FloatArray, n: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Adapter rank 1 + #{nulls strictly below} (ties count against it) and null mid-ranks."""
    r0 = 1.0 + np.sum(n < x[None, :], axis=0)
    rk = _sps.rankdata(n, axis=0)
    return r0.astype(np.float64), np.asarray(rk, dtype=np.float64)


def _rank_sum_sf(total: float, prompts: int, k: int) -> tuple[float, float]:
    """P(S ≥ total) and P(S < total) for S the sum of ``prompts`` i.i.d. uniforms on
    1..K+1 (the two add to 1, so the z-equivalent is exactly Φ⁻¹(1 − p))."""
    face = np.full(k + 1, 1.0 / (k + 1))
    pmf = np.ones(1)
    for _ in range(prompts):
        pmf = np.convolve(pmf, face)
    # pmf[j] is P(S = prompts + j); S takes integer values
    j = min(max(int(math.ceil(total - prompts - 1e-9)), 0), pmf.size)
    return float(pmf[j:].sum()), float(pmf[:j].sum())


def paired_test(
    adapter: npt.ArrayLike,
    nulls: npt.ArrayLike,
    *,
    method: PairedMethod = "paired_t",
    sign: int = 1,
    log_scale: bool = True,
    log_floor: float = LOG_FLOOR,
) -> PairedTest:
    """One-sided test of the adapter's per-prompt values ``adapter`` (P,) against the
    nulls' per-prompt values ``nulls`` (K, P), paired by prompt.

    ``sign=+1`` when larger is better for the adapter. ``log_scale`` compares
    logs (for non-negative, divergence-type metrics). Raises ``ValueError`` on
    mismatched shapes, K < 3, non-finite values or negatives on log scale.
    """
    x, n = _prepare(adapter, nulls, sign, log_scale, log_floor)
    k, p = n.shape
    if method == "mean_t":
        return _mean_t(x, n, method, log_mean=log_scale)
    if method == "geomean_t":
        return _mean_t(x, n, method, log_mean=False)
    if method in ("paired_t", "stouffer"):
        why = _flat_prompts(n)
        if why is not None:
            return PairedTest(method, None, None, None, k, p, why)
        if method == "paired_t":
            with np.errstate(divide="ignore", invalid="ignore"):
                t0, tk = _standardised(x, n)
            bad = np.flatnonzero(~np.isfinite(tk).all(axis=0))
            if bad.size:
                why = f"all but one null agree on prompt(s) {bad.tolist()[:5]}: no per-prompt scale"
                return PairedTest(method, None, None, None, k, p, why)
            return _scaled_t(
                method, float(t0.sum()) / math.sqrt(p), tk.sum(axis=1) / math.sqrt(p), p
            )
        z0 = _per_prompt_z(x, n)
        stat = float(z0.sum()) / math.sqrt(p)
        return _result(method, k, p, stat, float(_sps.norm.sf(stat)), float(_sps.norm.cdf(stat)))
    if method == "rank_t":
        r0, rk = _ranks(x, n)
        u0 = (r0 - (k + 2) / 2.0) / math.sqrt(((k + 1) ** 2 - 1) / 12.0)
        uk = (rk - (k + 1) / 2.0) / math.sqrt((k * k - 1) / 12.0)
        return _scaled_t(method, float(u0.sum()) / math.sqrt(p), uk.sum(axis=1) / math.sqrt(p), p)
    if method == "rank_exact":
        r0, _ = _ranks(x, n)
        total = float(r0.sum())
        upper, lower = _rank_sum_sf(total, p, k)
        mean, var = p * (k + 2) / 2.0, p * ((k + 1) ** 2 - 1) / 12.0
        return _result(method, k, p, (total - mean) / math.sqrt(var), upper, lower)
    raise ValueError(f"unknown paired method {method!r}; expected one of {PAIRED_METHODS}")


def paired_tests(
    adapter: npt.ArrayLike,
    nulls: npt.ArrayLike,
    *,
    methods: tuple[PairedMethod, ...] = PAIRED_METHODS,
    sign: int = 1,
    log_scale: bool = True,
) -> dict[PairedMethod, PairedTest]:
    """:func:`paired_test` for several methods on one table."""
    return {
        m: paired_test(adapter, nulls, method=m, sign=sign, log_scale=log_scale) for m in methods
    }


__all__ = [
    "EXCHANGEABLE_METHODS",
    "INDEPENDENT_PROMPT_METHODS",
    "MIN_K",
    "PAIRED_METHODS",
    "PairedMethod",
    "PairedTest",
    "paired_test",
    "paired_tests",
]
