"""``section_internalization``: which sections of the training document moved the model?

For every section of the document (from ``dlm_source``) the probe measures a
per-token negative log-likelihood (NLL) under the base and the fine-tuned
view, on the section's own material:

* prose: the rolling NLL of ``content[:max_prose_chars]``;
* instruction: the mean per-token NLL of each gold answer given its prompt;
* preference: the same on each chosen completion given its prompt.

Instruction and preference sections without probes/triples fall back to their
content. Token counts are real tokenizer counts (not chars/4 as upstream).

Per section ``s``, with the relative lift ``rel(b, f) = (b − f)/b`` (``b − f``
when ``b ≤ 0``):

* ``own_s`` = rel(base NLL, ft NLL): how much the fine-tune lowered loss on it;
* ``leak_s`` = the mean ``own`` of the *other* sections: the document-wide lift;
* ``effective_s`` = ``own_s − leak_s``: the part specific to this section;
* ``internalization_s`` = ``min(own_s, effective_s)``; the section is
  internalised when it reaches ``per_section_threshold``.

Two departures from the reference, both deliberate:

* The reference scored a section on ``effective_s`` alone, so a section whose
  loss did not drop at all "passed" whenever the *other* sections got worse.
  Taking the minimum with ``own_s`` requires both a real lift and a
  section-specific one; when the other sections did not get worse the two
  rules agree.
* The reference's ``raw`` was the mean effective lift, which is identically
  zero (each section's lift is subtracted from the others' mean, so the terms
  cancel), and z-scoring it compares zero with zero. Our ``raw`` is the
  internalisation of the k-th best section, ``k = ⌈assert_passing_section_frac
  · n⌉``: ``raw ≥ per_section_threshold`` holds exactly when the required
  fraction of sections is internalised, so one statistic carries both the
  fixed-threshold verdict and the null calibration ("does the k-th best
  section beat what a random adapter of the same size does to these same
  sections?"). Being an order statistic over a handful of sections, it gets no
  bootstrap interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from dlm_sway.core.judge import Check
from dlm_sway.core.result import ProbeResult, TokenTrace, Verdict
from dlm_sway.core.scoring import (
    BASE_AND_FT,
    RollingLogprob,
    ScoringModel,
    TokenPieces,
    shared_forwards,
)
from dlm_sway.core.sections import Document, Section, SectionKind
from dlm_sway.probes._fields import Fraction, ZBar
from dlm_sway.probes._logprob import Pair, logprobs, per_token, rollings, token_counts
from dlm_sway.probes._verdict import calibrate, judge, judged_result
from dlm_sway.probes.base import Probe, ProbeSpec, RunContext, bare_result, document_context

_ALL_KINDS: list[SectionKind] = ["prose", "instruction", "preference"]


class SectionInternalizationSpec(ProbeSpec):
    kind: Literal["section_internalization"] = "section_internalization"
    include_kinds: list[SectionKind] = Field(default_factory=lambda: list(_ALL_KINDS))
    #: Minimum ``min(own, effective)`` relative NLL lift for a section to count as
    #: internalised, in [0, 1] (a relative lift never exceeds 1).
    per_section_threshold: Fraction = 0.05
    #: Fraction of eligible sections that must be internalised for a PASS.
    assert_passing_section_frac: float = Field(default=0.5, gt=0.0, le=1.0)
    max_prose_chars: int = Field(default=2000, ge=16, le=1_000_000)
    assert_z_gte: ZBar = 3.0

    @field_validator("include_kinds")
    @classmethod
    def _kinds(cls, value: list[SectionKind]) -> list[SectionKind]:
        if not value:
            raise ValueError("is empty; list at least one of prose, instruction, preference")
        return list(dict.fromkeys(value))


@dataclass(frozen=True, slots=True)
class _Plan:
    """What to score for one section: its (truncated) content, or its (prompt, answer) pairs."""

    section: Section
    text: str | None
    pairs: tuple[Pair, ...]
    measured_on: str  # "content" | "probes" | "preferences"


def _plan(section: Section, max_chars: int) -> _Plan | None:
    pairs: tuple[Pair, ...] = ()
    if section.kind == "instruction":
        pairs = tuple((p.prompt, p.gold) for p in section.probes if p.gold.strip())
        source = "probes"
    elif section.kind == "preference":
        pairs = tuple((t.prompt, t.chosen) for t in section.preferences if t.chosen.strip())
        source = "preferences"
    if pairs:
        return _Plan(section, None, pairs, source)
    text = section.content[:max_chars]
    if not text.strip():
        return None
    return _Plan(section, text, (), "content")


def _nlls(
    view: ScoringModel, plans: list[_Plan], counts: list[int]
) -> tuple[list[float | None], dict[int, RollingLogprob]]:
    """Per-token NLL of every planned section under one view (None: nothing scorable),
    and the rolling log-probs of the prose sections by plan index (for token traces)."""
    texts = [i for i, p in enumerate(plans) if p.text is not None]
    rolled = dict(zip(texts, rollings(view, [plans[i].text or "" for i in texts]), strict=True))
    pairs = [pair for p in plans for pair in p.pairs]
    per_pair = iter(per_token(logprobs(view, pairs), counts))
    out: list[float | None] = []
    for i, plan in enumerate(plans):
        if plan.text is not None:
            roll = rolled[i]
            out.append(-roll.mean_logprob if roll.logprobs.shape[0] else None)
        else:
            out.append(-float(np.mean([next(per_pair) for _ in plan.pairs])))
    return out, rolled


def _traces(
    plans: list[_Plan],
    base: dict[int, RollingLogprob],
    ft: dict[int, RollingLogprob],
    pieces: dict[int, list[str]],
) -> tuple[TokenTrace, ...]:
    """Per-token log-prob lift (ft − base) over each prose section, from the rolling
    log-probs already computed: no extra forward."""
    out: list[TokenTrace] = []
    for i, words in pieces.items():
        b, f = base[i], ft[i]
        n = b.logprobs.shape[0]
        if len(words) != b.num_tokens or f.logprobs.shape[0] != n or n != b.num_tokens - 1:
            continue  # the view's pieces do not line up with its token ids: show nothing
        lift = (f.logprobs.astype(np.float64) - b.logprobs.astype(np.float64)).tolist()
        values = (None, *(round(v, 4) if math.isfinite(v) else None for v in lift))
        section = plans[i].section
        label = f"{section.title} ({section.kind})" if section.title else f"section {section.id}"
        out.append(TokenTrace(label=label, pieces=tuple(words), values=values))
    return tuple(out)


def relative_lift(base: float, ft: float) -> float:
    """(base − ft)/base for a positive base NLL, else the absolute drop."""
    return (base - ft) / base if base > 0.0 else base - ft


@dataclass(frozen=True, slots=True)
class SectionScores:
    own: list[float]
    leak: list[float]
    effective: list[float]
    internalization: list[float]


def section_scores(base: list[float], ft: list[float]) -> SectionScores:
    """Own, leak, effective lift and internalisation per section (needs ≥ 2 sections)."""
    own = [relative_lift(b, f) for b, f in zip(base, ft, strict=True)]
    n = len(own)
    total = float(sum(own))
    leak = [(total - o) / (n - 1) for o in own]
    effective = [o - lk for o, lk in zip(own, leak, strict=True)]
    inter = [min(o, e) for o, e in zip(own, effective, strict=True)]
    return SectionScores(own, leak, effective, inter)


def decisive_rank(n: int, frac: float) -> int:
    """How many sections must be internalised: ⌈frac·n⌉, at least 1 (float-safe)."""
    return max(1, min(n, math.ceil(frac * n - 1e-9)))


class SectionInternalizationProbe(Probe):
    """Per-section loss drop on each section's own content, beyond the document-wide lift."""

    kind = "section_internalization"
    spec_cls = SectionInternalizationSpec
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
        """No document, or fewer than two scorable sections of the included kinds."""
        assert isinstance(spec, SectionInternalizationSpec)
        reason = _skip_reason(spec, document_context(document))
        return [] if reason is None else [reason]

    def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
        assert isinstance(spec, SectionInternalizationSpec)
        skip = _skip_reason(spec, ctx)
        if skip is not None:
            return self._skip(spec, skip)
        assert ctx.sections is not None
        plans = [p for p in (_plan(s, spec.max_prose_chars) for s in _eligible(spec, ctx)) if p]
        backend = ctx.require_backend
        pairs = [pair for p in plans for pair in p.pairs]
        with shared_forwards(backend, BASE_AND_FT):
            with backend.as_base() as view:
                counts = token_counts(view, pairs)
                base_all, base_rolls = _nlls(view, plans, counts)
                pieces = (
                    {i: view.token_pieces(plans[i].text or "") for i in base_rolls}
                    if isinstance(view, TokenPieces)
                    else {}
                )
            with backend.as_finetuned() as view:
                ft_all, ft_rolls = _nlls(view, plans, counts)
        traces = _traces(plans, base_rolls, ft_rolls, pieces)
        kept = [i for i, b in enumerate(base_all) if b is not None]
        unscored = [plans[i].section.id for i, b in enumerate(base_all) if b is None]
        if len(kept) < 2:
            return self._skip(
                spec,
                f"only {len(kept)} section(s) have at least two tokens to score "
                f"(unscorable: {unscored}); add longer sections",
            )
        plans = [plans[i] for i in kept]
        base = [float(base_all[i] or 0.0) for i in kept]
        ft = [math.nan if ft_all[i] is None else float(ft_all[i] or 0.0) for i in kept]
        sc = section_scores(base, ft)
        n = len(plans)
        k = decisive_rank(n, spec.assert_passing_section_frac)
        finite = all(math.isfinite(x) for x in sc.internalization)
        raw = sorted(sc.internalization, reverse=True)[k - 1] if finite else math.nan
        passed = [x >= spec.per_section_threshold for x in sc.internalization]
        n_pass = sum(passed)
        cal = calibrate(raw, ctx, spec, sign=+1, log_scale=False)
        what = f"internalisation {raw:.3g} of the #{k} best of {n} sections (relative NLL lift)"
        enough = Check(
            n_pass >= k,
            f"{n_pass}/{n} section(s) internalised (lift ≥ {spec.per_section_threshold:g}, "
            f"per_section_threshold), need {k} (assert_passing_section_frac "
            f"{spec.assert_passing_section_frac:g})",
        )
        judgement = judge(
            raw,
            cal,
            spec,
            ctx,
            what=what,
            non_negative=False,  # a lift is signed: no ratio to the null median
            checks=(enough,),
            fixed_score=n_pass / n,
        )
        per_section = [
            {
                "section_id": p.section.id,
                "kind": p.section.kind,
                "tag": p.section.tag,
                "title": p.section.title,
                "measured_on": p.measured_on,
                "base_nll": base[i],
                "ft_nll": ft[i],
                "own_lift": sc.own[i],
                "leak_lift": sc.leak[i],
                "effective_sis": sc.effective[i],
                "internalization": sc.internalization[i],
                "passed": passed[i],
            }
            for i, p in enumerate(plans)
        ]
        evidence: dict[str, Any] = {
            "per_section": per_section,
            "passing_sections": [p.section.id for p, ok in zip(plans, passed, strict=True) if ok],
            "num_sections": n,
            "passing_frac": n_pass / n,
            "decisive_rank": k,
            "per_section_threshold": spec.per_section_threshold,
            "assert_passing_section_frac": spec.assert_passing_section_frac,
            "unscored_sections": unscored,
        }
        result = judged_result(
            spec,
            cal,
            judgement,
            raw=raw,
            measured=f"{what}; {enough.text}",
            evidence=evidence,
            non_negative=False,
            base_value=float(np.mean(base)),
            ft_value=float(np.mean(ft)),
        )
        return replace(result, tokens=traces)

    def _skip(self, spec: SectionInternalizationSpec, message: str) -> ProbeResult:
        return bare_result(spec, Verdict.SKIP, message)

    @classmethod
    def calibrate_spec(cls, ctx: RunContext, target: ProbeSpec | None = None) -> ProbeSpec | None:
        """The entry itself, on the document's own sections; opts out when it would SKIP."""
        if not isinstance(target, SectionInternalizationSpec):
            return None
        return None if _skip_reason(target, ctx) is not None else target


def _eligible(spec: SectionInternalizationSpec, ctx: RunContext) -> list[Section]:
    kinds = set(spec.include_kinds)
    return [s for s in ctx.sections or () if s.kind in kinds]


def _skip_reason(spec: SectionInternalizationSpec, ctx: RunContext) -> str | None:
    if ctx.sections is None:
        return "no sections: set dlm_source: in the spec to the training document"
    if not ctx.sections:
        return "the document named by dlm_source has no sections; add at least two"
    plans = [p for p in (_plan(s, spec.max_prose_chars) for s in _eligible(spec, ctx)) if p]
    if len(plans) < 2:
        kinds = ", ".join(spec.include_kinds)
        return (
            f"needs at least 2 non-empty sections of kind(s) {kinds} to compare, found "
            f"{len(plans)}: add sections to the document or widen include_kinds"
        )
    return None


__all__ = [
    "SectionInternalizationProbe",
    "SectionInternalizationSpec",
    "SectionScores",
    "decisive_rank",
    "relative_lift",
    "section_scores",
]
