"""``paraphrase_invariance``: did the adapter memorise prompts or learn the answers?

For each case (a prompt, its gold answer and rewordings of the prompt), the
*lift* of a prompt is how much the fine-tune raised the gold answer's
log-probability per answer token: ``[lp_ft(p, gold) − lp_base(p, gold)] / T``,
with ``T`` the real number of tokens the gold adds after ``p`` (upstream used
``len(gold)//4``). ``raw`` is the mean verbatim lift (on the training prompts),
calibrated against null adapters on the same cases.

The **generalisation ratio** asks whether the *answer* carried over: the gain in
the gold's per-token probability ``exp(lp/T)`` on the rewordings, over the same
gain on the training prompts (summed over the cases that have a rewording). It
is a probability, not a log-lift, ratio because log-lifts saturate: on
SmolLM2 an adapter trained to answer only its training wording (and to say "I do
not know" otherwise) still lifts the gold by 79% as many nats on a held-out
rewording (−8.8 → −1.6 nats/token: more nats, still no answer), against 105%
for one trained on five wordings; in probability the two are 0.19 and 0.81. The
ratio is never z-scored (under a null both terms are ≈ 0). ``intent:
generalize`` passes when it reaches ``min_generalization_ratio``, ``memorize``
when it stays under ``max_generalization_ratio_if_memorize``.

Rewordings must really differ from the prompt. The earlier version derived
"Answer the following. <prompt>" and judged every adapter, including one that
had memorised its document, a generaliser: the memorised token sequence was
still there. Now each rewording's lexical overlap with its prompt is measured
(:mod:`dlm_sway.probes._rewordings`), rewordings above ``max_prompt_overlap``
are left out, and when fewer than ``min_reworded_share`` of the cases keep a
distinct rewording the ratio cannot be judged: the result is WARN
"inconclusive", never PASS. Derived cases take rewordings from the document
(questions that share an answer) and then from the base model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from dlm_sway.core.judge import ALPHA, Check, Judgement
from dlm_sway.core.result import MEMORISATION_RATIO, OverfitSignal, ProbeResult, Verdict
from dlm_sway.core.scoring import BASE_AND_FT, DifferentialBackend, shared_forwards
from dlm_sway.core.sections import Document
from dlm_sway.core.stats import bootstrap_ci
from dlm_sway.probes import _rewordings as rw
from dlm_sway.probes._fields import STRICT, Fraction, NonNegNats, ZBar
from dlm_sway.probes._logprob import Pair, logprobs, per_token, token_counts
from dlm_sway.probes._verdict import Calibration, calibrate, judge, judged_result
from dlm_sway.probes.base import Probe, ProbeSpec, RunContext, bare_result, document_context

#: Headline of a result whose rewordings were too close to the prompts to judge.
INCONCLUSIVE = "inconclusive"
_UNJUDGED_HEADLINES = frozenset(
    {"above noise, but a check could not be judged", "a fixed check could not be judged"}
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
    #: Rewording ÷ verbatim gain in per-token gold probability, in [0, 1]: how much must
    #: carry over to rewordings (``intent: generalize``) ...
    min_generalization_ratio: Fraction = 0.5
    #: ... or may carry over at most (``intent: memorize``).
    max_generalization_ratio_if_memorize: Fraction = 0.5
    #: Most cases derived from sections (document order); explicit cases are all used.
    max_derived_cases: int = Field(default=16, ge=1, le=10_000)
    #: Where derived cases get rewordings, tried in this order.
    rewordings_from: list[rw.DerivedSource] = Field(
        default_factory=lambda: list(rw.DERIVED_SOURCES)
    )
    #: Rewordings the base model is asked for per derived case without one from the document.
    rewordings_per_case: int = Field(default=2, ge=1, le=8)
    rewording_max_new_tokens: int = Field(default=48, ge=8, le=256)
    #: A rewording sharing more than this share of its prompt's word bigrams is too close.
    max_prompt_overlap: Fraction = 0.5
    #: Share of cases that must keep a distinct rewording for the ratio to be judged.
    min_reworded_share: Fraction = 0.5
    assert_z_gte: ZBar = 3.0

    @field_validator("rewordings_from")
    @classmethod
    def _distinct(cls, value: list[rw.DerivedSource]) -> list[rw.DerivedSource]:
        if len(set(value)) != len(value):
            raise ValueError(f"lists a source twice: {value}")
        return value


@dataclass(frozen=True, slots=True)
class Case:
    prompt: str
    gold: str
    rewordings: tuple[rw.Rewording, ...] = ()
    too_close: tuple[rw.Rewording, ...] = ()


def _base_cases(spec: ParaphraseInvarianceSpec, ctx: RunContext) -> tuple[list[Case], str]:
    if spec.cases:
        return [Case(c.prompt, c.gold) for c in spec.cases], "spec"
    out: list[Case] = []
    for section in ctx.sections or ():
        if section.kind != "instruction":
            continue
        for probe in section.probes:
            if probe.prompt.strip() and probe.gold.strip():
                out.append(Case(probe.prompt, probe.gold))
            if len(out) >= spec.max_derived_cases:
                return out, "sections"
    return out, "sections"


def find_rewordings(
    spec: ParaphraseInvarianceSpec, ctx: RunContext, backend: DifferentialBackend
) -> tuple[list[Case], str, list[str]]:
    """Cases with their screened rewordings, where the cases came from, and notes."""
    cases, origin = _base_cases(spec, ctx)
    search = rw.Search(
        sources=tuple(spec.rewordings_from),
        per_prompt=spec.rewordings_per_case,
        max_new_tokens=spec.rewording_max_new_tokens,
        max_overlap=spec.max_prompt_overlap,
        seed=ctx.seed,
    )
    given = [c.paraphrases for c in spec.cases] if origin == "spec" else None
    screened, notes = rw.gather(
        [c.prompt for c in cases],
        given,
        search,
        sections=ctx.sections or (),
        backend=backend,
        probe="paraphrase_invariance",
    )
    out = [
        replace(c, rewordings=tuple(keep), too_close=tuple(close))
        for c, (keep, close) in zip(cases, screened, strict=True)
    ]
    return out, origin, notes


class ParaphraseInvarianceProbe(Probe):
    """Gold-answer lift on training prompts vs real rewordings: memorised or generalised."""

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
        cases, _ = _base_cases(spec, ctx)
        return [] if cases else [f"cases: {_missing(ctx)}"]

    @classmethod
    def calibrate_spec(cls, ctx: RunContext, target: ProbeSpec | None = None) -> ProbeSpec | None:
        """The entry itself (same cases, same intent); opts out when it has no cases."""
        if not isinstance(target, ParaphraseInvarianceSpec):
            return None
        cases, _ = _base_cases(target, ctx)
        return target if cases else None

    def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
        assert isinstance(spec, ParaphraseInvarianceSpec)
        backend = ctx.require_backend
        if ctx.calibrating:  # a null samples the verbatim lift only: no rewordings needed
            cases, origin = _base_cases(spec, ctx)
            notes: list[str] = []
        else:
            cases, origin, notes = find_rewordings(spec, ctx, backend)
        if not cases:
            return bare_result(spec, Verdict.SKIP, _missing(ctx))
        pairs: list[Pair] = []
        for case in cases:
            pairs.append((case.prompt, case.gold))
            pairs.extend((r.text, case.gold) for r in case.rewordings)
        with shared_forwards(backend, BASE_AND_FT):
            with backend.as_base() as view:
                counts = token_counts(view, pairs)
                base = per_token(logprobs(view, pairs), counts)
            with backend.as_finetuned() as view:
                ft = per_token(logprobs(view, pairs), counts)
        m = _measure(cases, base, ft)
        return self._judge(spec, ctx, cases, origin, notes, m)

    def _judge(
        self,
        spec: ParaphraseInvarianceSpec,
        ctx: RunContext,
        cases: list[Case],
        origin: str,
        notes: list[str],
        m: Measured,
    ) -> ProbeResult:
        mean_verb = float(np.mean(m.verb))
        reworded = sorted(m.par)
        sub_verb = float(np.mean([m.verb[i] for i in reworded])) if reworded else math.nan
        mean_par = float(np.mean([m.par[i] for i in reworded])) if reworded else math.nan
        gain_verb = float(np.sum([m.verb_gain[i] for i in reworded]))
        gain_par = float(np.sum([m.par_gain[i] for i in reworded]))
        ratio = gain_par / gain_verb if reworded and gain_verb > 1e-12 else None
        need = max(1, math.ceil(spec.min_reworded_share * len(cases)))
        judgeable = len(reworded) >= need
        cal = calibrate(mean_verb, ctx, spec, sign=+1, log_scale=False)
        ratio_text = "n/a" if ratio is None else f"{ratio:.3g}"
        par_text = "n/a" if not reworded else f"{mean_par:+.3g}"
        what = (
            f"mean verbatim lift {mean_verb:+.3g} nats/token over {len(cases)} case(s) "
            f"(rewording lift {par_text} on {len(reworded)} reworded case(s), share of the "
            f"gold-probability gain kept by rewordings {ratio_text})"
        )
        shape = _shape_check(spec, ratio)
        if not judgeable:
            shape = Check(
                False,
                f"only {len(reworded)} of {len(cases)} case(s) have a rewording sharing at most "
                f"{spec.max_prompt_overlap:.0%} of the prompt's word bigrams (max_prompt_overlap), "
                f"need {need} (min_reworded_share): the rewordings are too close to the prompts "
                "to tell memorising from generalising; give real paraphrases in cases:",
                judged=False,
            )
        judgement = judge(
            mean_verb,
            cal,
            spec,
            ctx,
            what=what,
            non_negative=False,  # a log-prob lift is signed: no ratio to the null median
            checks=(shape,),
            min_effect=spec.min_verbatim_lift,
            min_effect_name="min_verbatim_lift",
            fixed_score=_fixed_score(spec, mean_verb, ratio),
        )
        if not judgeable:
            judgement = _inconclusive(judgement)
        evidence = _evidence(spec, cases, origin, notes, m, mean_verb, mean_par, ratio)
        ft_verb = [b + v for b, v in zip(m.base_verb, m.verb, strict=True)]
        result = judged_result(
            spec,
            cal,
            judgement,
            raw=mean_verb,
            measured=what,
            evidence=evidence,
            non_negative=False,
            base_value=float(np.mean(m.base_verb)),
            ft_value=float(np.mean(ft_verb)),
            ci_95=None if ctx.calibrating else bootstrap_ci(m.verb, seed=ctx.seed),
        )
        overfit = _overfit(spec, cal, sub_verb, ratio) if judgeable else None
        return replace(result, overfit=overfit)


@dataclass(frozen=True, slots=True)
class Measured:
    """Per case: verbatim lift (nats/token), base verbatim log-prob per token, the
    verbatim gain in per-token gold probability; per reworded case the same, averaged
    over its rewordings."""

    verb: list[float]
    base_verb: list[float]
    verb_gain: list[float]
    par: dict[int, float]
    par_gain: dict[int, float]


def _gain(base_pt: float, ft_pt: float) -> float:
    """Gain in the gold's per-token (geometric-mean) probability, exp(ft) − exp(base)."""
    return math.exp(min(ft_pt, 0.0)) - math.exp(min(base_pt, 0.0))


def _measure(cases: list[Case], base: list[float], ft: list[float]) -> Measured:
    pairs = iter(zip(base, ft, strict=True))
    m = Measured([], [], [], {}, {})
    for i, case in enumerate(cases):
        b, f = next(pairs)
        m.verb.append(f - b)
        m.base_verb.append(b)
        m.verb_gain.append(_gain(b, f))
        rows = [next(pairs) for _ in case.rewordings]
        if rows:
            m.par[i] = float(np.mean([f - b for b, f in rows]))
            m.par_gain[i] = float(np.mean([_gain(b, f) for b, f in rows]))
    return m


def _inconclusive(j: Judgement) -> Judgement:
    """The judge's "a check could not be judged" WARN, named for what it is here."""
    if j.headline in _UNJUDGED_HEADLINES:
        return replace(j, headline=INCONCLUSIVE)
    return j


def _evidence(
    spec: ParaphraseInvarianceSpec,
    cases: list[Case],
    origin: str,
    notes: list[str],
    m: Measured,
    mean_verb: float,
    mean_par: float,
    ratio: float | None,
) -> dict[str, Any]:
    overlaps = [r.overlap for c in cases for r in c.rewordings]
    verb, par = m.verb, m.par
    return {
        "intent": spec.intent,
        "cases_from": origin,
        "num_cases": len(cases),
        "reworded_cases": len(par),
        "verbatim_lift_mean": mean_verb,
        "paraphrase_lift_mean": mean_par if par else None,
        "generalization_ratio": ratio,
        "mean_rewording_overlap": float(np.mean(overlaps)) if overlaps else None,
        "rewordings_too_close": sum(len(c.too_close) for c in cases),
        "notes": notes,
        "per_case": [
            {
                "prompt": c.prompt[:80],
                "verbatim_lift": verb[i],
                "paraphrase_lift": par.get(i),
                "verbatim_prob_gain": m.verb_gain[i],
                "paraphrase_prob_gain": m.par_gain.get(i),
                "num_paraphrases": len(c.rewordings),
                "rewordings": [
                    {"text": r.text[:80], "overlap": r.overlap, "source": r.source}
                    for r in c.rewordings[:3]
                ],
                "too_close": [{"text": r.text[:80], "overlap": r.overlap} for r in c.too_close[:2]],
            }
            for i, c in enumerate(cases[:8])
        ],
    }


def _overfit(
    spec: ParaphraseInvarianceSpec, cal: Calibration, verb: float, ratio: float | None
) -> OverfitSignal | None:
    """The memorisation signal that makes a run's band "suspicious" (never under
    ``intent: memorize``, whose goal it is): a real verbatim lift (above its nulls, p < α,
    or without a usable null at least min_verbatim_lift) of which the rewordings keep
    under :data:`MEMORISATION_RATIO` of the gold-probability gain."""
    if spec.intent != "generalize" or ratio is None or not math.isfinite(verb):
        return None
    real = cal.p_value < ALPHA if cal.usable and cal.p_value is not None else True
    if not real or verb < max(spec.min_verbatim_lift, 1e-9) or ratio >= MEMORISATION_RATIO:
        return None
    return OverfitSignal(
        "verbatim_over_paraphrase",
        f"verbatim lift {verb:.3g} nats/token, but rewordings keep {max(ratio, 0.0):.0%} of "
        f"the gold-probability gain (under {MEMORISATION_RATIO:.0%}): the answer is memorised "
        "on the training wording",
    )


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
    """The intent's bar on the generalisation ratio (no verbatim gain: ratio 0)."""
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
    "INCONCLUSIVE",
    "Case",
    "ParaphraseCase",
    "ParaphraseInvarianceProbe",
    "ParaphraseInvarianceSpec",
    "find_rewordings",
]
