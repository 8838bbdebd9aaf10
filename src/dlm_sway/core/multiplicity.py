"""Multiple-comparison control across the probes of a suite, and p ↔ z conversion.

A suite runs several calibrated probes; gating on each probe's own p at α lets
the chance of at least one false PASS grow with the number of probes.  Holm's
step-down procedure controls that family-wise error rate at α under any
dependence between the probes, and is never less powerful than Bonferroni.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# scipy.special, not scipy.stats: the same functions, without ~0.3 s of import per run.
from scipy import special as _spc

from dlm_sway.core.calibration import P_FLOOR, Z_LIMIT


def _check_p(name: str, p: object) -> float:
    if p is None or isinstance(p, bool):
        raise ValueError(f"p-value for {name!r} is {p!r}: every probe in the family needs a p")
    try:
        value = float(p)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"p-value for {name!r} is not a number: {p!r}") from exc
    if math.isnan(value):
        raise ValueError(f"p-value for {name!r} is NaN: every probe in the family needs a p")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"p-value for {name!r} is {value!r}, outside [0, 1]")
    return value


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm step-down adjusted p-values, in the input's key order.

    With the m p-values sorted ascending, p₍₁₎ ≤ … ≤ p₍ₘ₎, the adjusted value of
    the i-th is ``max_{j ≤ i} min(1, (m − j + 1)·p₍ⱼ₎)``.  Rejecting every
    hypothesis whose adjusted p is ≤ α controls the family-wise error rate at α.
    Ties keep their input order.  None, NaN or out-of-range inputs raise
    :class:`ValueError`: a probe without a p-value must be left out of the
    family explicitly, not silently counted as a pass or a fail.
    """
    names = list(p_values)
    values = [_check_p(name, p_values[name]) for name in names]
    m = len(values)
    order = sorted(range(m), key=lambda i: values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * values[i]))
        adjusted[i] = running
    return {name: adjusted[i] for i, name in enumerate(names)}


def holm_reject(p_values: Mapping[str, float], alpha: float) -> dict[str, bool]:
    """``adjusted p ≤ alpha`` per key, after :func:`holm`."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    return {name: adj <= alpha for name, adj in holm(p_values).items()}


def z_from_p(p: float) -> float:
    """Standard-normal quantile Φ⁻¹(1 − p); p is clamped into [P_FLOOR, 1], z into ±Z_LIMIT."""
    value = float(p)
    if math.isnan(value):
        raise ValueError("p is NaN")
    value = min(1.0, max(P_FLOOR, value))
    z = -float(_spc.ndtri(value))
    return max(-Z_LIMIT, min(Z_LIMIT, z))


def p_from_z(z: float) -> float:
    """One-sided upper-tail p = 1 − Φ(z), clamped into [P_FLOOR, 1]."""
    value = float(z)
    if math.isnan(value):
        raise ValueError("z is NaN")
    return min(1.0, max(P_FLOOR, float(_spc.ndtr(-value))))


__all__ = ["holm", "holm_reject", "p_from_z", "z_from_p"]
