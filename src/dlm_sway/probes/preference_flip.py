"""``preference_flip``: did preference training (DPO/ORPO) turn the base's wrong preferences?

For each (prompt, chosen, rejected) triple the *margin* of a view is
``lp(prompt, chosen) − lp(prompt, rejected)``: summed log-probs, not length
normalised, because that is the quantity DPO-style objectives optimise. The
fine-tune's *margin shift* on a triple is ``margin_ft − margin_base``, which is
DPO's implicit reward margin divided by β.

Statistic. ``raw`` is the mean margin shift over the triples, on every branch.
The reference z-scored the flip rate when enough triples had a wrong base
preference and a mean margin shift otherwise, so a null sample could mix the
two (pitfall §12.1); the flip rate is also a coarse, often all-zero statistic
under nulls, which leaves no spread to calibrate against. The mean shift is
continuous, defined for any set of triples, and is what the objective moves.

Verdict. The flip rate is the practical bar: among triples whose base margin is
negative ("base-wrong"), the share the fine-tune turns positive must reach
``assert_flip_rate_gte``: a fixed check of the one judge (:mod:`dlm_sway.core.judge`).
With null calibration a PASS also needs the shift to stand beyond random adapters
(z ≥ ``assert_z_gte``); a shift indistinguishable from theirs (p ≥ 0.05) FAILs
whatever the flips. With fewer than ``min_triples_for_decision`` base-wrong
triples the flip rate cannot be judged: the check is unjudged, so the verdict is
at best WARN.

Triples come from the spec, or from the preference sections of ``dlm_source``
when the spec lists none. A triple that cannot be scored (e.g. a completion
that adds no tokens) is dropped and reported; if all are dropped, ERROR.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator, model_validator

from dlm_sway.core.judge import Check
from dlm_sway.core.result import ProbeResult, Verdict
from dlm_sway.core.scoring import BASE_AND_FT, shared_forwards
from dlm_sway.core.sections import Document
from dlm_sway.core.stats import bootstrap_ci
from dlm_sway.probes._fields import STRICT, Fraction, ZBar
from dlm_sway.probes._logprob import Pair, try_logprobs
from dlm_sway.probes._verdict import calibrate, judge, judged_result
from dlm_sway.probes.base import Probe, ProbeSpec, RunContext, bare_result, document_context


class PreferenceTriple(BaseModel):
    """A prompt with the preferred and the dispreferred completion."""

    model_config = STRICT

    prompt: str
    chosen: str
    rejected: str

    @field_validator("chosen", "rejected")
    @classmethod
    def _non_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> PreferenceTriple:
        if self.chosen == self.rejected:
            raise ValueError("chosen and rejected are identical; their margin is always 0")
        return self


class PreferenceFlipSpec(ProbeSpec):
    kind: Literal["preference_flip"] = "preference_flip"
    #: Empty: use every triple of the preference sections of ``dlm_source``.
    triples: list[PreferenceTriple] = Field(default_factory=list)
    assert_flip_rate_gte: Fraction = 0.7
    assert_z_gte: ZBar = 3.0
    #: Base-wrong triples needed before the flip rate is judged (fewer: WARN). A suite
    #: with fewer triples than this in all could never judge flips: a load error.
    min_triples_for_decision: int = Field(default=3, ge=1, le=10_000)


def _triples(spec: PreferenceFlipSpec, ctx: RunContext) -> tuple[list[PreferenceTriple], str]:
    if spec.triples:
        return list(spec.triples), "spec"
    out = [
        PreferenceTriple(prompt=t.prompt, chosen=t.chosen, rejected=t.rejected)
        for s in ctx.sections or ()
        if s.kind == "preference"
        for t in s.preferences
        if t.chosen.strip() and t.rejected.strip() and t.chosen != t.rejected
    ]
    return out, "sections"


class PreferenceFlipProbe(Probe):
    """Mean chosen-vs-rejected margin shift and the share of wrong base preferences flipped."""

    kind = "preference_flip"
    spec_cls = PreferenceFlipSpec
    category = "attribution"
    calibrated = True

    @classmethod
    def load_problems(
        cls,
        spec: ProbeSpec,
        *,
        document: Document | None,
        downstream: tuple[tuple[Probe, ProbeSpec], ...] = (),
    ) -> list[str]:
        """No triples at all, or fewer than could ever reach a flip decision."""
        assert isinstance(spec, PreferenceFlipSpec)
        triples, origin = _triples(spec, document_context(document))
        if not triples:
            where = (
                "set dlm_source: to a document with preference sections"
                if document is None
                else "the document has no preference sections with triples"
            )
            return [
                f"triples: none to score: add triples: [{{prompt, chosen, rejected}}] or {where}"
            ]
        if len(triples) < spec.min_triples_for_decision:
            src = "the entry has" if origin == "spec" else "the document gives"
            return [
                f"min_triples_for_decision: {src} {len(triples)} triple(s), fewer than "
                f"min_triples_for_decision {spec.min_triples_for_decision}, so flips could "
                "never be judged; add triples or lower min_triples_for_decision"
            ]
        return []

    def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
        assert isinstance(spec, PreferenceFlipSpec)
        triples, origin = _triples(spec, ctx)
        if not triples:
            where = (
                "set dlm_source: to a document with preference sections"
                if ctx.sections is None
                else "the document has no preference sections with triples"
            )
            return bare_result(
                spec,
                Verdict.SKIP,
                f"no preference triples: add triples: [{{prompt, chosen, rejected}}] or {where}",
            )
        backend = ctx.require_backend
        pairs: list[Pair] = [
            pair for t in triples for pair in ((t.prompt, t.chosen), (t.prompt, t.rejected))
        ]
        with shared_forwards(backend, BASE_AND_FT):
            with backend.as_base() as view:
                base, why_b = try_logprobs(view, pairs)
            with backend.as_finetuned() as view:
                ft, why_f = try_logprobs(view, pairs)
        reasons = list(dict.fromkeys(why_b + why_f))
        mb: list[float] = []
        mf: list[float] = []
        kept = 0
        for i in range(len(triples)):
            cb, rb, cf, rf = base[2 * i], base[2 * i + 1], ft[2 * i], ft[2 * i + 1]
            if cb is None or rb is None or cf is None or rf is None:
                continue
            kept += 1
            mb.append(cb - rb)
            mf.append(cf - rf)
        dropped = len(triples) - kept
        if not kept:
            return bare_result(
                spec,
                Verdict.ERROR,
                f"every one of {len(triples)} triple(s) was unscorable: {reasons[0]}",
            )
        shift = [f - b for b, f in zip(mb, mf, strict=True)]
        raw = float(np.mean(shift))
        base_wrong = [i for i, m in enumerate(mb) if m < 0.0]
        flipped = [i for i in base_wrong if mf[i] > 0.0]
        flip_rate = len(flipped) / len(base_wrong) if base_wrong else None
        cal = calibrate(raw, ctx, spec, sign=+1, log_scale=False)
        what = f"mean margin shift {raw:+.3g} nats over {kept} triple(s)"
        flips = _flip_check(spec, len(flipped), len(base_wrong))
        judgement = judge(
            raw,
            cal,
            spec,
            ctx,
            what=what,
            non_negative=False,  # a margin shift is signed: no ratio to the null median
            checks=(flips,),
            fixed_score=_fixed_score(spec, raw, flip_rate, len(base_wrong)),
        )
        evidence: dict[str, Any] = {
            "triples_from": origin,
            "flip_rate": flip_rate,
            "flipped": len(flipped),
            "base_wrong": len(base_wrong),
            "total": kept,
            "mean_margin_shift": raw,
            "implicit_reward_accuracy": float(np.mean([d > 0.0 for d in shift])),
            "dropped_triples": dropped,
            "dropped_reasons": reasons[:5],
        }
        return judged_result(
            spec,
            cal,
            judgement,
            raw=raw,
            measured=f"{what}; {flips.text}",
            evidence=evidence,
            non_negative=False,
            base_value=float(np.mean(mb)),
            ft_value=float(np.mean(mf)),
            ci_95=bootstrap_ci(shift, seed=ctx.seed),
        )

    @classmethod
    def calibrate_spec(cls, ctx: RunContext, target: ProbeSpec | None = None) -> ProbeSpec | None:
        """The entry itself: the same triples, so the base-wrong set is the same too."""
        if not isinstance(target, PreferenceFlipSpec):
            return None
        triples, _ = _triples(target, ctx)
        return target if triples else None


def _flip_check(spec: PreferenceFlipSpec, n_flipped: int, n_wrong: int) -> Check:
    """Flip rate ≥ ``assert_flip_rate_gte``; unjudged with too few base-wrong triples."""
    bar = spec.assert_flip_rate_gte
    if n_wrong < spec.min_triples_for_decision:
        return Check(
            False,
            f"flip rate: only {n_wrong} triple(s) have a wrong base preference, fewer than "
            f"min_triples_for_decision {spec.min_triples_for_decision}; add triples the base "
            "model gets wrong",
            judged=False,
        )
    rate = n_flipped / n_wrong
    ok = rate >= bar
    return Check(
        ok,
        f"flip rate {n_flipped}/{n_wrong} = {rate:.3g} {'≥' if ok else '<'} {bar:g} "
        "(assert_flip_rate_gte)",
    )


def _fixed_score(
    spec: PreferenceFlipSpec, raw: float, flip_rate: float | None, n_wrong: int
) -> float:
    """Closeness to the flip bar, in [0, 1] (used only without null calibration)."""
    if flip_rate is None or n_wrong < spec.min_triples_for_decision:
        return max(0.0, min(1.0, 0.5 + raw / 4.0))
    return min(1.0, flip_rate / max(spec.assert_flip_rate_gte, 1e-9))


__all__ = ["PreferenceFlipProbe", "PreferenceFlipSpec", "PreferenceTriple"]
