"""The probe side of the one judge: calibrate a raw value, judge it, build the result.

A probe measures; :func:`calibrate` compares the measurement with this entry's
null samples (and each rank multiplier's), :func:`judge` hands both to
:mod:`dlm_sway.core.judge` with the entry's bar, and :func:`judged_result` turns
the judgement into a :class:`ProbeResult` whose typed fields (``null``,
``headline``, ``measured``, ``direction``) are what Holm, the composite score and
every report read. No probe decides a verdict or caps a score on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from dlm_sway.core.calibration import Method, NullComparison, compare_to_null
from dlm_sway.core.judge import Bar, Check, Judgement, judge_effect, versus
from dlm_sway.core.result import Direction, NullSummary, ProbeResult, safe_finalize
from dlm_sway.core.stats import NullStats
from dlm_sway.probes.base import ProbeSpec, RunContext


@dataclass(frozen=True, slots=True)
class Calibration:
    """How one raw value stands against its null distribution (None fields: uncalibrated)."""

    stats: NullStats | None
    comparison: NullComparison | None
    z_by_rank: dict[str, float] = field(default_factory=dict)
    #: Why the suite's null_adapter could not calibrate this entry (None: it did, or
    #: the suite has no null_adapter).
    failed: str | None = None

    @property
    def z(self) -> float | None:
        return None if self.comparison is None else self.comparison.z

    @property
    def p_value(self) -> float | None:
        return None if self.comparison is None else self.comparison.p_value

    @property
    def effect_ratio(self) -> float | None:
        return None if self.comparison is None else self.comparison.effect_ratio

    @property
    def usable(self) -> bool:
        return self.comparison is not None and self.comparison.z is not None

    @property
    def degenerate(self) -> str | None:
        return None if self.comparison is None else self.comparison.degenerate

    def versus(self) -> str:
        """'vs 10 norm-matched nulls' for messages."""
        if self.stats is None:
            return "vs null"
        k = self.comparison.k if self.comparison is not None else self.stats.n
        return versus(self.stats.construction, k)

    def fallback_note(self, kind: str) -> str:
        """Why the fixed thresholds decide, in words."""
        if self.degenerate:
            return f"null unusable ({self.degenerate}): fixed thresholds for {kind}"
        return f"no null calibration for {kind}: fixed thresholds"

    def summary(
        self, z_threshold: float, *, non_negative: bool, log_scale: bool
    ) -> NullSummary | None:
        """The typed null block of the result (None when the entry had no null)."""
        if self.stats is None:
            return None
        c = self.comparison
        return NullSummary(
            construction=self.stats.construction,
            method=self.stats.method,
            k=c.k if c is not None else self.stats.n,
            samples=tuple(self.stats.samples),
            z_threshold=z_threshold,
            log_scale=log_scale,
            non_negative=non_negative,
            statistic=None if c is None else c.statistic,
            p_empirical=None if c is None else c.p_empirical,
            degenerate=None if c is None else c.degenerate,
            z_by_rank=dict(self.z_by_rank),
        )


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
    failed = ctx.calibration_failures.get(spec.name) if stats is None else None
    if raw is None or not math.isfinite(raw) or stats is None:
        return Calibration(stats=stats, comparison=None, failed=failed)
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


def z_bar(spec: ProbeSpec) -> float:
    """The entry's ``assert_z_gte`` (3.0 for probes that declare none)."""
    return float(getattr(spec, "assert_z_gte", 3.0))


def judge(
    raw: float,
    cal: Calibration,
    spec: ProbeSpec,
    ctx: RunContext,
    *,
    what: str,
    non_negative: bool = True,
    checks: tuple[Check, ...] = (),
    min_effect: float | None = None,
    min_effect_name: str = "assert_mean_gte",
    fixed_score: float | None = None,
    noise_floor: bool = False,
    uncalibrated_reason: str | None = None,
) -> Judgement:
    """The entry's bar, its calibration and its fixed checks → :func:`judge_effect`.

    ``noise_floor=True`` for divergence-type metrics, which the run's measured
    batch-layout jitter (a JS) bounds from below. ``uncalibrated_reason`` says why
    fixed thresholds decide for a probe that opts out of null calibration.
    """
    bar = Bar(
        z=z_bar(spec),
        min_effect=min_effect,
        min_effect_name=min_effect_name,
        noise_floor=ctx.noise_floor if noise_floor else None,
    )
    return judge_effect(
        raw,
        cal.comparison if cal.usable else None,
        bar,
        what=what,
        versus=cal.versus(),
        non_negative=non_negative,
        checks=checks,
        uncalibrated_reason=uncalibrated_reason or cal.fallback_note(spec.kind),
        calibration_failed=cal.failed,
        fixed_score=fixed_score,
    )


def size_checks(
    effect: float, label: str, *, min_effect: float, noise_floor: float | None
) -> tuple[Check, Check]:
    """The two checks every effect needs besides the null: large enough to matter
    (``assert_mean_gte``) and above the run's numerical noise floor. ``label`` names the
    effect in words ("the most-moved cluster's mean JS, 0.12 nats,")."""
    return (
        Check(effect >= min_effect, f"{label} is below {min_effect:g} (assert_mean_gte)"),
        Check(
            noise_floor is None or effect > noise_floor,
            f"{label} is at or below the noise floor {noise_floor or 0.0:.3g}",
        ),
    )


def judged_result(
    spec: ProbeSpec,
    cal: Calibration,
    judgement: Judgement,
    *,
    raw: float | None,
    measured: str,
    evidence: dict[str, Any],
    direction: Direction = Direction.EFFECT,
    non_negative: bool = True,
    log_scale: bool = False,
    p_value: float | None = None,
    z_score: float | None = None,
    ci_95: tuple[float, float] | None = None,
    base_value: float | None = None,
    ft_value: float | None = None,
) -> ProbeResult:
    """The result of a judged measurement, typed the one way Holm and reports read it.

    ``p_value``/``z_score`` default to the calibration's; harm probes pass their
    harm-direction numbers. Guarded by :func:`safe_finalize` (a NaN never PASSes).
    """
    return safe_finalize(
        ProbeResult(
            name=spec.name,
            kind=spec.kind,
            verdict=judgement.verdict,
            score=judgement.score,
            raw=raw,
            z_score=cal.z if z_score is None else z_score,
            p_value=cal.p_value if p_value is None else p_value,
            effect_ratio=cal.effect_ratio if non_negative else None,
            base_value=base_value,
            ft_value=ft_value,
            ci_95=ci_95,
            evidence=dict(evidence),
            message=judgement.message,
            direction=direction,
            headline=judgement.headline,
            measured=measured,
            null=cal.summary(z_bar(spec), non_negative=non_negative, log_scale=log_scale),
        )
    )


__all__ = [
    "Calibration",
    "calibrate",
    "judge",
    "judged_result",
    "null_for",
    "size_checks",
    "z_bar",
]
