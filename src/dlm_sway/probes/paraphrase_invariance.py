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

from dataclasses import replace
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from dlm_sway.core.judge import ALPHA, Check
from dlm_sway.core.result import OverfitSignal, ProbeResult, Verdict, verbatim_over_paraphrase
from dlm_sway.core.sections import Document
from dlm_sway.core.stats import bootstrap_ci
from dlm_sway.probes._fields import STRICT, Fraction, NonNegNats, ZBar
from dlm_sway.probes._logprob import Pair, logprobs, per_token, token_counts
from dlm_sway.probes._verdict import Calibration, calibrate, judge, judged_result
from dlm_sway.probes.base import Probe, ProbeSpec, RunContext, bare_result, document_context

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
            return bare_result(spec, Verdict.SKIP, _missing(ctx))
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
        cal = calibrate(mean_verb, ctx, spec, sign=+1, log_scale=False)
        ratio_text = "n/a" if ratio is None else f"{ratio:.3g}"
        what = (
            f"mean verbatim lift {mean_verb:+.3g} nats/token over {len(cases)} case(s) "
            f"(paraphrase lift {mean_par:+.3g}, ratio {ratio_text})"
        )
        judgement = judge(
            mean_verb,
            cal,
            spec,
            ctx,
            what=what,
            non_negative=False,  # a log-prob lift is signed: no ratio to the null median
            checks=(_shape_check(spec, ratio),),
            min_effect=spec.min_verbatim_lift,
            min_effect_name="min_verbatim_lift",
            fixed_score=_fixed_score(spec, mean_verb, ratio),
        )
        evidence: dict[str, Any] = {
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
        }
        ft_verb = [b + v for b, v in zip(base_verb, verb, strict=True)]
        result = judged_result(
            spec,
            cal,
            judgement,
            raw=mean_verb,
            measured=what,
            evidence=evidence,
            non_negative=False,
            base_value=float(np.mean(base_verb)),
            ft_value=float(np.mean(ft_verb)),
            ci_95=bootstrap_ci(verb, seed=ctx.seed),
        )
        return replace(result, overfit=_overfit(spec, cal, mean_verb, mean_par))

    @classmethod
    def calibrate_spec(cls, ctx: RunContext, target: ProbeSpec | None = None) -> ProbeSpec | None:
        """The entry itself (same cases, same intent); opts out when it has no cases."""
        if not isinstance(target, ParaphraseInvarianceSpec):
            return None
        cases, _ = _cases(target, ctx)
        return target if cases else None


def _overfit(
    spec: ParaphraseInvarianceSpec, cal: Calibration, verb: float, par: float
) -> OverfitSignal | None:
    """The memorisation signal that makes a run's band "suspicious" (never under
    ``intent: memorize``, whose goal it is). The verbatim lift is real when it beats
    its nulls (p < α), or, without a usable null, when it reaches min_verbatim_lift."""
    if spec.intent != "generalize":
        return None
    real = cal.p_value < ALPHA if cal.usable and cal.p_value is not None else True
    return verbatim_over_paraphrase(verb, par, min_lift=spec.min_verbatim_lift, real=real)


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


def _shape_check(spec: ParaphraseInvarianceSpec, ratio: float | None) -> Check:
    """The intent's bar on paraphrase lift ÷ verbatim lift (no lift: ratio 0)."""
    r = 0.0 if ratio is None else ratio
    shown = "n/a" if ratio is None else f"{ratio:.3g}"
    if spec.intent == "memorize":
        bar = spec.max_generalization_ratio_if_memorize
        ok = r <= bar
        return Check(
            ok,
            f"generalisation ratio {shown} {'≤' if ok else '>'} {bar:g} "
            "(max_generalization_ratio_if_memorize, intent memorize)",
        )
    bar = spec.min_generalization_ratio
    ok = r >= bar
    return Check(
        ok,
        f"generalisation ratio {shown} {'≥' if ok else '<'} {bar:g} "
        "(min_generalization_ratio, intent generalize)",
    )


def _fixed_score(spec: ParaphraseInvarianceSpec, verb: float, ratio: float | None) -> float:
    """Closeness to both fixed bars, in [0, 1] (used only without null calibration)."""
    r = 0.0 if ratio is None else ratio
    lift = _clip(verb / max(spec.min_verbatim_lift, 1e-9))
    if spec.intent == "memorize":
        return lift * (1.0 if r <= spec.max_generalization_ratio_if_memorize else 0.5)
    return 0.5 * _clip(r / max(spec.min_generalization_ratio, 1e-9)) + 0.5 * lift


__all__ = [
    "PARAPHRASE_PREFIXES",
    "ParaphraseCase",
    "ParaphraseInvarianceProbe",
    "ParaphraseInvarianceSpec",
    "derive_cases",
    "reword",
]
