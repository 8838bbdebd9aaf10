"""``adapter_ablation``: how the adapter's effect responds to its LoRA scale λ.

Scales the adapter's additive term by each λ and measures the mean divergence
from the base (λ=0). λ=0 and λ=1 are always measured, whatever the grid. A healthy adapter's effect grows smoothly (high R²),
reaches 90% of its maximum near λ=1 (not at a small fraction of it, which
signals a fragile adapter, nor beyond it, an undertrained one) and keeps
growing past 1 (overshoot > 1) instead of collapsing.

Two deliberate departures from the reference:

* Saturation is measured against the effect at λ=1 (the trained operating
  point), not against the whole curve's maximum. With the default grid up to
  1.25, the reference rule put every linear curve's 90% point at λ=1.25,
  outside its own pass band, so it contradicted the overshoot check.
* A curve's shape says nothing when the effect itself is noise. A null adapter
  cannot be scaled, so the null calibrates the *effect at λ=1* (the mean
  divergence base→fine-tune on these prompts, a ``delta_kl`` statistic). That
  effect is the result's ``raw`` and what the judge weighs against the nulls;
  linearity, saturation band and overshoot are its fixed checks. A PASS needs
  both, whatever the grid.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from dlm_sway.core.divergence import DivergenceKind, divergence
from dlm_sway.core.judge import Check
from dlm_sway.core.result import ProbeResult, Verdict
from dlm_sway.core.scoring import (
    ScalableDifferentialBackend,
    SweepMember,
    TokenDist,
    open_view,
    shared_forwards,
)
from dlm_sway.core.stats import r_squared
from dlm_sway.probes._dists import dists
from dlm_sway.probes._fields import (
    LAMBDA_MAX,
    FloatPair,
    Fraction,
    NonNegNats,
    TopK,
    ZBar,
    non_blank_items,
    reachable_mean_bar,
)
from dlm_sway.probes._verdict import calibrate, judge, judged_result
from dlm_sway.probes.base import Probe, ProbeSpec, RunContext, bare_result

_DEFAULT_LAMBDAS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]


class AdapterAblationSpec(ProbeSpec):
    kind: Literal["adapter_ablation"] = "adapter_ablation"
    prompts: list[str] = Field(min_length=1)
    #: LoRA scales in [0, 4]; 0 (the base) and 1 (the trained adapter) are always measured.
    lambdas: list[float] = Field(default_factory=lambda: list(_DEFAULT_LAMBDAS))
    divergence: DivergenceKind = "js"
    top_k: TopK | None = None
    assert_linearity_gte: Fraction = 0.85
    #: [low, high] λ band the saturation point (a grid λ) must fall in.
    assert_saturation_between: FloatPair = (0.3, 1.05)
    #: d(λ_max)/d(1), a ratio in [0, 100]; only judged when the grid has a λ > 1.
    assert_overshoot_gte: float = Field(default=1.02, ge=0.0, le=100.0)
    assert_z_gte: ZBar = 3.0
    #: The effect at λ=1 (mean divergence) below which the curve's shape is not evidence.
    assert_mean_gte: NonNegNats = 0.02

    @field_validator("prompts")
    @classmethod
    def _non_blank(cls, value: list[str]) -> list[str]:
        return non_blank_items(value)

    @field_validator("lambdas")
    @classmethod
    def _lambdas(cls, value: list[float]) -> list[float]:
        if len(set(value)) < 3:
            raise ValueError("need at least 3 distinct λ values, e.g. [0, 0.5, 1, 1.25]")
        if any(not math.isfinite(x) or not 0 <= x <= LAMBDA_MAX for x in value):
            raise ValueError(f"λ values must be finite and in [0, {LAMBDA_MAX:g}]")
        return sorted(set(value))

    @model_validator(mode="after")
    def _band(self) -> AdapterAblationSpec:
        lo, hi = self.assert_saturation_between
        if not 0 <= lo <= hi <= LAMBDA_MAX:
            raise ValueError(
                f"assert_saturation_between must be [low, high] with 0 ≤ low ≤ high ≤ "
                f"{LAMBDA_MAX:g}, got [{lo:g}, {hi:g}]"
            )
        # The saturation point is a measured λ > 0: a band holding none can never pass.
        grid = sorted({*self.lambdas, 0.0, 1.0})
        if not any(lo <= x <= hi for x in grid if x > 0):
            shown = ", ".join(f"{x:g}" for x in grid)
            raise ValueError(
                f"assert_saturation_between [{lo:g}, {hi:g}] holds no λ of the measured grid "
                f"[{shown}], so saturation could never pass; widen the band or add a λ in it"
            )
        reachable_mean_bar(self.divergence, self.assert_mean_gte)
        return self


def saturation_lambda(lams: list[float], ds: list[float]) -> tuple[float | None, str]:
    """First λ reaching 90% of the effect at λ=1 (or of the maximum without λ=1).

    Also says whether the rise up to that point was monotone.
    """
    ones = [i for i, x in enumerate(lams) if abs(x - 1.0) < 1e-6]
    peak = ds[ones[0]] if ones else max(ds)
    if not math.isfinite(peak) or peak <= 0.0:
        return None, "flat_curve"
    target = 0.9 * peak
    idx = next(i for i, d in enumerate(ds) if d >= target)
    monotone = all(ds[i + 1] - ds[i] >= -1e-9 for i in range(idx))
    return lams[idx], "found" if monotone else "non_monotonic"


def overshoot(lams: list[float], ds: list[float]) -> float:
    """d(λ_max)/d(1); 1.0 when λ=1 is absent, is the largest λ, or d(1) ≤ 0."""
    ones = [i for i, x in enumerate(lams) if abs(x - 1.0) < 1e-6]
    if not ones or ones[0] == len(lams) - 1 or ds[ones[0]] <= 0.0:
        return 1.0
    return ds[-1] / ds[ones[0]]


def measured_lambdas(requested: list[float]) -> list[float]:
    """The grid actually measured: the requested λs plus 0 (the base, the curve's
    origin) and 1 (the trained adapter, whose effect the verdict judges), so no grid
    can leave the effect unjudged and pass on the curve's shape alone."""
    return sorted({*requested, 0.0, 1.0})


class AdapterAblationProbe(Probe):
    """Divergence vs LoRA scale λ: linearity, saturation point and overshoot."""

    kind = "adapter_ablation"
    spec_cls = AdapterAblationSpec
    category = "ablation"
    calibrated = True

    def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
        assert isinstance(spec, AdapterAblationSpec)
        backend = ctx.require_backend
        if not isinstance(backend, ScalableDifferentialBackend):
            return bare_result(
                spec,
                Verdict.SKIP,
                "requires LoRA-scale access; this backend cannot scale the adapter",
            )
        top_k = spec.top_k or ctx.top_k
        lams = measured_lambdas(spec.lambdas)
        curve = [0.0 if lam == 0.0 else math.nan for lam in lams]
        with shared_forwards(backend, [_member(lam) for lam in lams]):
            ref = self._at(backend, 0.0, spec.prompts, top_k)
            for i, lam in enumerate(lams[1:], start=1):
                scaled = self._at(backend, lam, spec.prompts, top_k)
                curve[i] = float(
                    np.mean(
                        [
                            divergence(r, s, spec.divergence)
                            for r, s in zip(ref, scaled, strict=True)
                        ]
                    )
                )
        flat = not max(curve) > 0.0
        # A flat curve is a perfect line, but "R²=1, linear" would be a false comfort.
        lin = 0.0 if flat else r_squared(lams, curve)
        sat, reason = saturation_lambda(lams, curve)
        over = overshoot(lams, curve)
        over_measured = any(x > 1.0 + 1e-6 for x in lams) and not flat
        effect_at_1 = curve[lams.index(1.0)]
        checks = _shape_checks(spec, lin, sat, reason, over if over_measured else None)
        cal = calibrate(effect_at_1, ctx, spec, log_scale=True)
        unit = "JS" if spec.divergence == "js" else "KL(ft‖base)"
        what = (
            f"effect at λ=1 {effect_at_1:.4g} nats (mean {unit} over {len(spec.prompts)} prompt(s))"
        )
        judgement = judge(
            effect_at_1,
            cal,
            spec,
            ctx,
            what=what,
            non_negative=True,  # a divergence
            checks=checks,
            min_effect=spec.assert_mean_gte,
            fixed_score=_shape_score(
                spec, lin, sat is not None and checks[1].ok, over_measured, over
            ),
            noise_floor=True,
        )
        sat_text = (
            f"saturation λ={sat:g}" if sat is not None else f"saturation undetected ({reason})"
        )
        over_text = (
            f"overshoot {over:.3f}" if over_measured else "overshoot not measured (no λ > 1)"
        )
        return judged_result(
            spec,
            cal,
            judgement,
            raw=effect_at_1,
            measured=f"{what}; curve R²={lin:.3f}, {sat_text}, {over_text}",
            evidence={
                "lambdas": lams,
                "lambdas_requested": spec.lambdas,
                "mean_divergence_per_lambda": curve,
                "linearity": lin,
                "saturation_lambda": sat,
                "saturation_reason": reason,
                "overshoot": over if over_measured else None,
            },
            non_negative=True,
            log_scale=True,
        )

    @classmethod
    def calibrate_spec(cls, ctx: RunContext, target: ProbeSpec | None = None) -> ProbeSpec | None:
        """Calibrate the effect at λ=1 (always measured): a ``delta_kl`` on the same
        prompts and settings."""
        if not isinstance(target, AdapterAblationSpec):
            return None
        from dlm_sway.probes.delta_kl import DeltaKLSpec

        return DeltaKLSpec(
            name=f"{target.name}@λ=1",
            prompts=target.prompts,
            divergence=target.divergence,
            top_k=target.top_k,
        )

    @staticmethod
    def _at(
        backend: ScalableDifferentialBackend, lam: float, prompts: list[str], top_k: int
    ) -> list[TokenDist]:
        """λ=0 and λ=1 reuse the base / fine-tuned views (identical by construction, cached)."""
        with open_view(backend, _member(lam)) as view:
            return dists(view, prompts, top_k)


def _member(lam: float) -> SweepMember:
    """The view :meth:`AdapterAblationProbe._at` opens for ``lam``."""
    if lam == 0.0:
        return SweepMember.base()
    return SweepMember.finetuned() if lam == 1.0 else SweepMember.scaled(lam)


def _shape_checks(
    spec: AdapterAblationSpec, lin: float, sat: float | None, reason: str, over: float | None
) -> tuple[Check, ...]:
    """The curve's fixed criteria: linearity, saturation band, overshoot (when measured)."""
    lo, hi = spec.assert_saturation_between
    checks = [
        Check(
            lin >= spec.assert_linearity_gte,
            f"linearity R²={lin:.3f} {'≥' if lin >= spec.assert_linearity_gte else '<'} "
            f"{spec.assert_linearity_gte:g} (assert_linearity_gte)",
        ),
        Check(
            sat is not None and lo <= sat <= hi,
            f"saturation λ={sat:g} {'in' if lo <= sat <= hi else 'outside'} [{lo:g}, {hi:g}] "
            "(assert_saturation_between)"
            if sat is not None
            else f"saturation undetected ({reason}; assert_saturation_between [{lo:g}, {hi:g}])",
        ),
    ]
    if over is not None:
        ok = over >= spec.assert_overshoot_gte
        checks.append(
            Check(
                ok,
                f"overshoot {over:.3f} {'≥' if ok else '<'} {spec.assert_overshoot_gte:g} "
                "(assert_overshoot_gte)",
            )
        )
    return tuple(checks)


def _shape_score(
    spec: AdapterAblationSpec, lin: float, ok_sat: bool, over_measured: bool, over: float
) -> float:
    """How well the curve's shape meets its criteria, in [0, 1] (fixed thresholds only)."""
    return (
        0.4 * min(1.0, max(0.0, lin / max(spec.assert_linearity_gte, 1e-9)))
        + 0.3 * (1.0 if ok_sat else 0.3)
        + 0.3 * (min(1.0, max(0.0, (over - 1.0) / 0.2)) if over_measured else 1.0)
    )


__all__ = [
    "AdapterAblationProbe",
    "AdapterAblationSpec",
    "measured_lambdas",
    "overshoot",
    "saturation_lambda",
]
