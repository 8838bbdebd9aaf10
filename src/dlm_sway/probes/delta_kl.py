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
from pydantic import Field, field_validator, model_validator

from dlm_sway.core.divergence import LN2, DivergenceKind, divergence
from dlm_sway.core.result import ProbeResult
from dlm_sway.core.scoring import BASE_AND_FT, shared_forwards
from dlm_sway.core.stats import bootstrap_ci
from dlm_sway.probes._dists import dists, max_tail_bound
from dlm_sway.probes._fields import NonNegNats, TopK, ZBar, non_blank_items, reachable_mean_bar
from dlm_sway.probes._verdict import calibrate, judge, judged_result
from dlm_sway.probes.base import SENTINEL_PROMPTS, Probe, ProbeSpec, RunContext


class DeltaKLSpec(ProbeSpec):
    kind: Literal["delta_kl"] = "delta_kl"
    prompts: list[str] = Field(min_length=1)
    divergence: DivergenceKind = "js"
    top_k: TopK | None = None
    #: Mean divergence (nats) the effect must reach; JS never exceeds ln 2.
    assert_mean_gte: NonNegNats = 0.02
    assert_z_gte: ZBar = 3.0

    @field_validator("prompts")
    @classmethod
    def _non_blank(cls, value: list[str]) -> list[str]:
        return non_blank_items(value)

    @model_validator(mode="after")
    def _reachable(self) -> DeltaKLSpec:
        reachable_mean_bar(self.divergence, self.assert_mean_gte)
        return self


class DeltaKLProbe(Probe):
    """Mean next-token divergence base→fine-tune, judged against null adapters."""

    kind = "delta_kl"
    spec_cls = DeltaKLSpec
    category = "adherence"
    calibrated = True

    def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
        assert isinstance(spec, DeltaKLSpec)
        backend = ctx.require_backend
        top_k = spec.top_k or ctx.top_k
        with shared_forwards(backend, BASE_AND_FT):
            with backend.as_base() as view:
                base = dists(view, spec.prompts, top_k)
            with backend.as_finetuned() as view:
                ft = dists(view, spec.prompts, top_k)
        per_prompt = [divergence(b, f, spec.divergence) for b, f in zip(base, ft, strict=True)]
        raw = float(np.mean(per_prompt))
        cal = calibrate(raw, ctx, spec, log_scale=True)
        unit = "JS" if spec.divergence == "js" else "KL(ft‖base)"
        what = f"mean {unit} {raw:.4g} nats over {len(per_prompt)} prompt(s)"
        judgement = judge(
            raw,
            cal,
            spec,
            ctx,
            what=what,
            non_negative=True,  # a divergence: the ratio to the null median means something
            min_effect=spec.assert_mean_gte,
            fixed_score=min(1.0, raw / (LN2 if spec.divergence == "js" else 1.0)),
            noise_floor=True,
        )
        evidence: dict[str, Any] = {
            "divergence_kind": spec.divergence,
            "per_prompt": per_prompt,
            "max": float(np.max(per_prompt)),
            "num_prompts": len(per_prompt),
            "top_k": top_k,
            "max_tail_bound": max_tail_bound(base, ft, spec.divergence),  # 0.0: exact
        }
        return judged_result(
            spec,
            cal,
            judgement,
            raw=raw,
            measured=what,
            evidence=evidence,
            non_negative=True,
            log_scale=True,
            ci_95=None if ctx.calibrating else bootstrap_ci(per_prompt, seed=ctx.seed),
        )

    @classmethod
    def calibrate_spec(cls, ctx: RunContext, target: ProbeSpec | None = None) -> ProbeSpec | None:
        if isinstance(target, DeltaKLSpec):
            return target
        return DeltaKLSpec(name="delta_kl_null", prompts=list(SENTINEL_PROMPTS))


__all__ = ["DeltaKLProbe", "DeltaKLSpec"]
