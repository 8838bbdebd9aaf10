"""Shared calibration for numeric probes: one raw value against its null samples.

Every probe that has a null calls :func:`calibrate` and gets the z-equivalent,
p-value, effect ratio and per-rank profile computed the same way, by
:func:`dlm_sway.core.calibration.compare_to_null`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from dlm_sway.core.calibration import Method, NullComparison, compare_to_null
from dlm_sway.core.result import ProbeResult, Verdict, safe_finalize
from dlm_sway.core.stats import NullStats, effect_ratio, score_from_z
from dlm_sway.probes.base import ProbeSpec, RunContext

_SHORT = {"norm_matched": "norm-matched", "init_scale": "fixed-std", "permuted": "permuted"}


def no_calibration_note(kind: str) -> str:
    return f"(no calibration for {kind}: fixed thresholds)"


@dataclass(frozen=True, slots=True)
class Calibration:
    """How one raw value stands against its null distribution (None fields: uncalibrated)."""

    stats: NullStats | None
    comparison: NullComparison | None
    z_by_rank: dict[str, float] = field(default_factory=dict)

    @property
    def z(self) -> float | None:
        return None if self.comparison is None else self.comparison.z

    @property
    def p_value(self) -> float | None:
        return None if self.comparison is None else self.comparison.p_value

    @property
    def effect_ratio(self) -> float | None:
        if self.comparison is not None:
            return self.comparison.effect_ratio
        return None

    @property
    def usable(self) -> bool:
        return self.comparison is not None and self.comparison.z is not None

    @property
    def degenerate(self) -> str | None:
        return None if self.comparison is None else self.comparison.degenerate

    def score(self) -> float | None:
        return None if self.z is None else score_from_z(self.z)

    def versus(self) -> str:
        """'vs 10 norm-matched nulls' for messages."""
        if self.stats is None:
            return "vs null"
        k = self.comparison.k if self.comparison is not None else self.stats.n
        return f"vs {k} {_SHORT.get(self.stats.construction, self.stats.construction)} nulls"

    def evidence(self, z_threshold: float) -> dict[str, Any]:
        """The ``evidence["null"]`` block reports read."""
        if self.stats is None:
            return {}
        out: dict[str, Any] = {
            "construction": self.stats.construction,
            "k": self.stats.n,
            "method": self.stats.method,
            "mean": self.stats.mean,
            "median": self.stats.median,
            "z_threshold": z_threshold,
        }
        if self.comparison is not None:
            c = self.comparison
            out.update(
                k=c.k,
                p_empirical=c.p_empirical,
                statistic=c.statistic,
                log_scale=c.log_scale,
                degenerate=c.degenerate,
            )
        return out


def null_for(ctx: RunContext, spec: ProbeSpec) -> NullStats | None:
    """Stats calibrated for this very entry. Keyed by name: two entries of one kind
    with different prompts have different nulls."""
    return ctx.null_stats.get(spec.name)


def _compare(raw: float, stats: NullStats, *, sign: int, log_scale: bool) -> NullComparison | None:
    if not stats.samples:
        return None
    method: Method = "reference_z" if stats.method == "reference_z" else "t_prediction"
    return compare_to_null(raw, stats.samples, sign=sign, log_scale=log_scale, method=method)


def calibrate(
    raw: float | None,
    ctx: RunContext,
    spec: ProbeSpec,
    *,
    sign: int = 1,
    log_scale: bool = False,
) -> Calibration:
    """Compare ``raw`` with this entry's nulls (and each rank multiplier's nulls).

    ``log_scale`` for non-negative divergence-type metrics, whose null spread is
    multiplicative; ``sign=-1`` for lower-is-better metrics.
    """
    stats = null_for(ctx, spec)
    if raw is None or not math.isfinite(raw) or stats is None:
        return Calibration(stats=stats, comparison=None)
    comparison = _compare(raw, stats, sign=sign, log_scale=log_scale)
    by_rank: dict[str, float] = {}
    for rank_key, group in ctx.null_stats_by_rank.items():
        rs = group.get(spec.name)
        if rs is None:
            continue
        rc = _compare(raw, rs, sign=sign, log_scale=log_scale)
        if rc is not None and rc.z is not None:
            by_rank[rank_key] = rc.z
    return Calibration(stats=stats, comparison=comparison, z_by_rank=by_rank)


def calibrated_pass(
    cal: Calibration, *, z_threshold: float, checks_ok: bool, effect_ok: bool
) -> tuple[bool, float | None]:
    """(passed, score) on the calibrated path: beyond the null *and* every fixed check;
    no effect scores 0, and a FAIL never scores above 0.25."""
    assert cal.z is not None
    passed = cal.z >= z_threshold and checks_ok and effect_ok
    score = cal.score() if effect_ok else 0.0
    if not passed and score is not None:
        score = min(score, 0.25)
    return passed, score


def calibrated_result(
    spec: ProbeSpec,
    cal: Calibration,
    *,
    verdict: Verdict,
    score: float | None,
    raw: float | None,
    evidence: dict[str, Any],
    message: str,
    ci_95: tuple[float, float] | None = None,
    base_value: float | None = None,
    ft_value: float | None = None,
) -> ProbeResult:
    """A numeric probe's result with its calibration reported the one way Holm and the
    reports read it (z, p, effect ratio, ``evidence["null"]``, the rank profile), then
    guarded by :func:`safe_finalize`."""
    evidence = dict(evidence)
    if cal.z_by_rank:
        evidence["z_by_rank"] = cal.z_by_rank
    if cal.stats is not None:
        evidence["null"] = cal.evidence(float(getattr(spec, "assert_z_gte", 3.0)))
    return safe_finalize(
        ProbeResult(
            name=spec.name,
            kind=spec.kind,
            verdict=verdict,
            score=score,
            raw=raw,
            z_score=cal.z,
            p_value=cal.p_value,
            effect_ratio=cal.effect_ratio,
            base_value=base_value,
            ft_value=ft_value,
            ci_95=ci_95,
            evidence=evidence,
            message=message,
        )
    )


__all__ = [
    "Calibration",
    "calibrate",
    "calibrated_pass",
    "calibrated_result",
    "effect_ratio",
    "no_calibration_note",
    "null_for",
]
