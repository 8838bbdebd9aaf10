"""``paraphrase_invariance``: did the adapter memorise prompts or learn the answers?

For each case (a prompt, its gold answer and rewordings of the prompt), the
*lift* of a prompt is how much the fine-tune raised the gold answer's
log-probability per answer token: ``[lp_ft(p, gold) − lp_base(p, gold)] / T``,
with ``T`` the real number of tokens the gold adds after ``p`` (upstream used
``len(gold)//4``). The verbatim lift is the lift on the training prompt; the
paraphrase lift is the mean lift over its rewordings; the generalisation ratio
is mean paraphrase lift ÷ mean verbatim lift.

``intent`` says which outcome is wanted: ``generalize`` passes when the lift
carries over to rewordings (ratio ≥ ``min_generalization_ratio``), ``memorize``
when it stays on the exact prompt (ratio ≤ ``max_generalization_ratio_if_memorize``).
Either way the verbatim lift must be real: ``raw`` is the mean verbatim lift,
calibrated against null adapters on the same cases, and must reach
``min_verbatim_lift``. The ratio itself is never z-scored: under a null both of
its terms are near zero and it has no stable distribution.

Without ``cases`` the probe derives them from the instruction sections of
``dlm_source``: each (prompt, gold) probe, with deterministic rewordings that
keep the prompt's ending (so the gold is tokenised at the same boundary in
every variant). Those templated rewordings still contain the prompt, so they
test robustness to framing more than true rewording; give real paraphrases in
``cases`` for a stronger test.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from dlm_sway.core.result import ProbeResult, Verdict
from dlm_sway.core.sections import Document
from dlm_sway.core.stats import bootstrap_ci, score_from_z
from dlm_sway.probes._fields import STRICT, Fraction, NonNegNats, ZBar
from dlm_sway.probes._logprob import Pair, logprobs, per_token, token_counts
from dlm_sway.probes._verdict import Calibration, calibrate, calibrated_result, no_calibration_note
from dlm_sway.probes.base import Probe, ProbeSpec, RunContext, document_context

#: Prefixes used to reword a section's prompt when the spec gives no cases.
PARAPHRASE_PREFIXES: tuple[str, ...] = (
    "Answer the following. ",
    "Here is a question for you: ",
)


class ParaphraseCase(BaseModel):
    """A training prompt, the answer the adapter should give, and rewordings of the prompt."""

    model_config = STRICT

    prompt: str
    gold: str
    paraphrases: list[str] = Field(min_length=1)

    @field_validator("prompt", "gold")
    @classmethod
    def _non_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("paraphrases")
    @classmethod
    def _non_blank_list(cls, value: list[str]) -> list[str]:
        blank = [i for i, p in enumerate(value) if not p.strip()]
        if blank:
            raise ValueError(f"paraphrases at positions {blank} are empty")
        return value


class ParaphraseInvarianceSpec(ProbeSpec):
    kind: Literal["paraphrase_invariance"] = "paraphrase_invariance"
    #: Empty: derive cases from the instruction sections of ``dlm_source``.
    cases: list[ParaphraseCase] = Field(default_factory=list)
    intent: Literal["generalize", "memorize"] = "generalize"
    #: Mean verbatim lift (nats per gold token) below which the adapter taught nothing.
    min_verbatim_lift: NonNegNats = 0.2
    #: Paraphrase lift ÷ verbatim lift, in [0, 1]: how much of the lift must carry over
    #: to rewordings (``intent: generalize``) ...
    min_generalization_ratio: Fraction = 0.5
    #: ... or may carry over at most (``intent: memorize``).
    max_generalization_ratio_if_memorize: Fraction = 0.5
    #: Most cases derived from sections (document order); explicit cases are all used.
    max_derived_cases: int = Field(default=16, ge=1, le=10_000)
    assert_z_gte: ZBar = 3.0


def derive_cases(ctx: RunContext, limit: int) -> list[ParaphraseCase]:
    """Cases from instruction sections' probes, with templated rewordings."""
    out: list[ParaphraseCase] = []
    for section in ctx.sections or ():
        if section.kind != "instruction":
            continue
        for probe in section.probes:
            if not probe.prompt.strip() or not probe.gold.strip():
                continue
            out.append(
                ParaphraseCase(
                    prompt=probe.prompt, gold=probe.gold, paraphrases=reword(probe.prompt)
                )
            )
            if len(out) >= limit:
                return out
    return out


def reword(prompt: str) -> list[str]:
    """Deterministic rewordings: two framing prefixes and, if it differs, the lower-cased prompt.

    None of them touches the prompt's closing punctuation or whitespace, so the
    gold answer is tokenised at the same boundary as after the original.
    """
    variants = [prefix + prompt for prefix in PARAPHRASE_PREFIXES]
    lowered = prompt.lower()
    if lowered != prompt:
        variants.append(lowered)
    return variants


def _cases(spec: ParaphraseInvarianceSpec, ctx: RunContext) -> tuple[list[ParaphraseCase], str]:
    if spec.cases:
        return list(spec.cases), "spec"
    return derive_cases(ctx, spec.max_derived_cases), "sections"


class ParaphraseInvarianceProbe(Probe):
    """Gold-answer lift on training prompts vs their rewordings: memorised or generalised."""

    kind = "paraphrase_invariance"
    spec_cls = ParaphraseInvarianceSpec
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
        """No cases in the entry and none derivable from ``dlm_source``."""
        assert isinstance(spec, ParaphraseInvarianceSpec)
        ctx = document_context(document)
        cases, _ = _cases(spec, ctx)
        return [] if cases else [f"cases: {_missing(ctx)}"]

    def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
        assert isinstance(spec, ParaphraseInvarianceSpec)
        cases, origin = _cases(spec, ctx)
        if not cases:
            return ProbeResult(
                name=spec.name,
                kind=self.kind,
                verdict=Verdict.SKIP,
                message=_missing(ctx),
                evidence={"weight": spec.weight},
            )
        backend = ctx.require_backend
        pairs: list[Pair] = []
        for case in cases:
            pairs.append((case.prompt, case.gold))
            pairs.extend((p, case.gold) for p in case.paraphrases)
        with backend.as_base() as view:
            counts = token_counts(view, pairs)
            base = per_token(logprobs(view, pairs), counts)
        with backend.as_finetuned() as view:
            ft = per_token(logprobs(view, pairs), counts)
        lifts = iter(f - b for b, f in zip(base, ft, strict=True))
        base_iter = iter(base)
        verb: list[float] = []
        par: list[float] = []
        base_verb: list[float] = []
        for case in cases:
            verb.append(next(lifts))
            par.append(float(np.mean([next(lifts) for _ in case.paraphrases])))
            base_verb.append(next(base_iter))
            for _ in case.paraphrases:
                next(base_iter)
        mean_verb = float(np.mean(verb))
        mean_par = float(np.mean(par))
        ratio = mean_par / mean_verb if mean_verb > 1e-9 else None
        raw = mean_verb
        cal = calibrate(raw, ctx, spec, sign=+1, log_scale=False)
        verdict, headline, detail, score = _judge(spec, cal, mean_verb, mean_par, ratio, self.kind)
        evidence: dict[str, Any] = {
            "headline": headline,
            "intent": spec.intent,
            "cases_from": origin,
            "num_cases": len(cases),
            "verbatim_lift_mean": mean_verb,
            "paraphrase_lift_mean": mean_par,
            "generalization_ratio": ratio,
            "per_case": [
                {
                    "prompt": c.prompt[:80],
                    "verbatim_lift": v,
                    "paraphrase_lift": p,
                    "num_paraphrases": len(c.paraphrases),
                }
                for c, v, p in list(zip(cases, verb, par, strict=True))[:8]
            ],
            "raw_statistic": "mean verbatim lift (nats per gold token)",
            "weight": spec.weight,
        }
        ft_verb = [b + v for b, v in zip(base_verb, verb, strict=True)]
        return calibrated_result(
            spec,
            cal,
            verdict=verdict,
            score=score,
            raw=raw,
            base_value=float(np.mean(base_verb)),
            ft_value=float(np.mean(ft_verb)),
            ci_95=bootstrap_ci(verb, seed=ctx.seed),
            evidence=evidence,
            message=f"{headline}: {detail}",
        )

    @classmethod
    def calibrate_spec(cls, ctx: RunContext, target: ProbeSpec | None = None) -> ProbeSpec | None:
        """The entry itself (same cases, same intent); opts out when it has no cases."""
        if not isinstance(target, ParaphraseInvarianceSpec):
            return None
        cases, _ = _cases(target, ctx)
        return target if cases else None


def _missing(ctx: RunContext) -> str:
    if ctx.sections is None:
        return (
            "no cases: add cases: [{prompt, gold, paraphrases}] or set dlm_source: to a "
            "document with instruction sections"
        )
    return (
        "no cases: the document has no instruction sections with probes; add cases: "
        "[{prompt, gold, paraphrases}] to the entry"
    )


def _clip(x: float) -> float:
    return max(0.0, min(1.0, x))


def _judge(
    spec: ParaphraseInvarianceSpec,
    cal: Calibration,
    verb: float,
    par: float,
    ratio: float | None,
    kind: str,
) -> tuple[Verdict, str, str, float | None]:
    """(verdict, headline, detail, score) under the intent-aware rule."""
    ratio_text = "n/a" if ratio is None else f"{ratio:.3g}"
    what = f"verbatim lift {verb:.3g}, paraphrase lift {par:.3g} nats/token, ratio {ratio_text}"
    r = 0.0 if ratio is None else ratio
    lifted = verb >= spec.min_verbatim_lift
    if spec.intent == "memorize":
        shape_ok = r <= spec.max_generalization_ratio_if_memorize
        shape = f"ratio ≤ {spec.max_generalization_ratio_if_memorize:g} (memorize)"
        fixed_score = _clip(verb / max(spec.min_verbatim_lift, 1e-9)) * (1.0 if shape_ok else 0.5)
    else:
        shape_ok = r >= spec.min_generalization_ratio
        shape = f"ratio ≥ {spec.min_generalization_ratio:g} (generalize)"
        fixed_score = 0.5 * _clip(r / max(spec.min_generalization_ratio, 1e-9)) + 0.5 * _clip(
            verb / max(spec.min_verbatim_lift, 1e-9)
        )
    if not math.isfinite(verb):
        return Verdict.ERROR, "non-finite", what, None
    small = f"verbatim lift below {spec.min_verbatim_lift:g} (min_verbatim_lift)"
    if cal.usable:
        assert cal.z is not None
        p = f", p={cal.p_value:.2g}" if cal.p_value is not None else ""
        stand = f"z={cal.z:+.2f}σ{p} {cal.versus()}"
        score = score_from_z(cal.z)
        low = min(score, 0.25)
        if cal.z < spec.assert_z_gte:
            return Verdict.FAIL, "indistinguishable from noise", f"{what}; {stand}", low
        if not lifted:
            return Verdict.FAIL, "real but negligible", f"{what}: {small}; {stand}", low
        if not shape_ok:
            return Verdict.FAIL, "wrong shape", f"{what}: needs {shape}; {stand}", low
        return Verdict.PASS, "above noise", f"{what}; {shape}; {stand}", score
    reason = f" — null unusable: {cal.degenerate}" if cal.degenerate else ""
    note = f"{no_calibration_note(kind)}{reason}"
    if not lifted:
        return Verdict.FAIL, "below threshold", f"{what}: {small} {note}", fixed_score
    if not shape_ok:
        return Verdict.FAIL, "wrong shape", f"{what}: needs {shape} {note}", fixed_score
    return Verdict.PASS, "above threshold", f"{what}; {shape} {note}", fixed_score


__all__ = [
    "PARAPHRASE_PREFIXES",
    "ParaphraseCase",
    "ParaphraseInvarianceProbe",
    "ParaphraseInvarianceSpec",
    "derive_cases",
    "reword",
]
