"""``delta_kl``: does the adapter move next-token distributions beyond a random adapter?

The cheapest, most general check that an adapter did *something*: the mean
Jensen–Shannon (or KL(ft‖base)) divergence between base and fine-tuned
next-token distributions over a set of prompts. Calibrated on the entry's own
prompts, so the null answers "how much would a random adapter of this
structure move these same prompts?".
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from dlm_sway.core.divergence import LN2, DivergenceKind, divergence
from dlm_sway.core.result import ProbeResult, Verdict, safe_finalize
from dlm_sway.core.stats import bootstrap_ci
from dlm_sway.probes._dists import dists
from dlm_sway.probes._verdict import calibrate, no_calibration_note
from dlm_sway.probes.base import SENTINEL_PROMPTS, Probe, ProbeSpec, RunContext


class DeltaKLSpec(ProbeSpec):
    kind: Literal["delta_kl"] = "delta_kl"
    prompts: list[str] = Field(min_length=1)
    divergence: DivergenceKind = "js"
    top_k: int | None = Field(default=None, ge=1)
    assert_mean_gte: float = Field(default=0.02, ge=0.0)
    assert_z_gte: float = 3.0

    @field_validator("prompts")
    @classmethod
    def _non_blank(cls, value: list[str]) -> list[str]:
        blank = [i for i, p in enumerate(value) if not p.strip()]
        if blank:
            raise ValueError(f"prompts at positions {blank} are empty")
        return value


class DeltaKLProbe(Probe):
    """Mean next-token divergence base→fine-tune, judged against null adapters."""

    kind = "delta_kl"
    spec_cls = DeltaKLSpec
    category = "adherence"

    def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
        assert isinstance(spec, DeltaKLSpec)
        backend = ctx.require_backend
        top_k = spec.top_k or ctx.top_k
        with backend.as_base() as view:
            base = dists(view, spec.prompts, top_k)
        with backend.as_finetuned() as view:
            ft = dists(view, spec.prompts, top_k)
        per_prompt = [divergence(b, f, spec.divergence) for b, f in zip(base, ft, strict=True)]
        raw = float(np.mean(per_prompt))
        cal = calibrate(raw, ctx, spec)
        unit = "JS" if spec.divergence == "js" else "KL(ft‖base)"
        head = f"mean {unit} {raw:.4g} nats over {len(per_prompt)} prompt(s)"
        if cal.z is not None:
            passed = cal.z >= spec.assert_z_gte
            score = cal.score()
            ratio = (
                f", {cal.effect_ratio:.3g}× the null median" if cal.effect_ratio is not None else ""
            )
            verdict_text = "above noise" if passed else "indistinguishable from noise"
            msg = f"{verdict_text}: {head}; z={cal.z:+.2f}σ vs null{ratio}"
        else:
            passed = raw >= spec.assert_mean_gte
            scale = LN2 if spec.divergence == "js" else 1.0
            score = min(1.0, raw / scale)
            msg = f"{head} (threshold {spec.assert_mean_gte:g}) {no_calibration_note(self.kind)}"
        evidence: dict[str, Any] = {
            "divergence_kind": spec.divergence,
            "per_prompt": per_prompt,
            "max": float(np.max(per_prompt)),
            "num_prompts": len(per_prompt),
            "top_k": top_k,
            "weight": spec.weight,
        }
        if cal.z_by_rank:
            evidence["z_by_rank"] = cal.z_by_rank
        if cal.stats is not None:
            evidence["null"] = {"mean": cal.stats.mean, "std": cal.stats.std, "n": cal.stats.n}
        return safe_finalize(
            ProbeResult(
                name=spec.name,
                kind=self.kind,
                verdict=Verdict.PASS if passed else Verdict.FAIL,
                score=score,
                raw=raw,
                z_score=cal.z,
                effect_ratio=cal.effect_ratio,
                ci_95=bootstrap_ci(per_prompt, seed=ctx.seed),
                evidence=evidence,
                message=msg,
            )
        )

    @classmethod
    def calibrate_spec(cls, ctx: RunContext, target: ProbeSpec | None = None) -> ProbeSpec | None:
        if isinstance(target, DeltaKLSpec):
            return target
        return DeltaKLSpec(name="delta_kl_null", prompts=list(SENTINEL_PROMPTS))


__all__ = ["DeltaKLProbe", "DeltaKLSpec"]
