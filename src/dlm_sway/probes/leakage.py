"""``leakage``: can the fine-tune recite its training document?

Windows are cut from the document's sections: a prefix of ``prefix_chars``
(ending at a word boundary) and the ``continuation_chars`` that follow it, held
out. The base and the fine-tuned view continue each prefix greedily (plain
text, no chat template: the adapter trained on raw text), and each continuation
is compared with the held-out one after case-folding and collapsing whitespace:

* **verbatim run**: the longest common substring, in characters, as a fraction of
  the held-out continuation (1.0: the whole continuation recited);
* **n-gram recall**: the share of the held-out continuation's word ``ngram``-grams
  (with multiplicity) that the generation contains.

``raw`` is the fine-tune's mean verbatim run. Calibrated on the same windows:
under a null adapter of the same size, the generation's overlap is what chance
and the base model's own knowledge of the text give. The claim follows
``intent``. Under ``generalize`` (the default) it is a *harm* claim, judged like
forgetting: PASS means no recital past ``assert_lcs_gte`` beyond random adapters,
FAIL a real, sizeable recital (which also raises the over-fit signal
``verbatim_recital`` and makes the run's band "suspicious"). Under ``memorize``
recital is the goal and the claim an *effect*: PASS means the fine-tune recites
its document beyond random adapters.

Departures from the reference: the reference scored only the fine-tune with a
Ratcliff/Obershelp ratio (not a substring measure), one window per section, and
negated z so that its PASS meant "recites less than random adapters", which no
non-leaking adapter can show. Here the base is measured too (for the report),
sections give several windows, and the direction is the memorisation claim.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from pydantic import Field

from dlm_sway.core.judge import ALPHA, RECITAL, Judgement, judge_harm
from dlm_sway.core.result import (
    Direction,
    GeneratedSample,
    OverfitSignal,
    ProbeResult,
    Verdict,
)
from dlm_sway.core.scoring import BASE_AND_FT, GenerationSettings, shared_forwards
from dlm_sway.core.sections import Document, SectionKind
from dlm_sway.core.stats import bootstrap_ci
from dlm_sway.probes._fields import Fraction, ZBar
from dlm_sway.probes._textgen import CannotGenerateError, write
from dlm_sway.probes._verdict import Calibration, calibrate, judge, judged_result
from dlm_sway.probes.base import Probe, ProbeSpec, RunContext, bare_result, document_context

#: A held-out continuation shorter than this (non-blank characters) says too little.
MIN_CONTINUATION_CHARS = 32
#: Windows whose generations the reports show side by side.
SHOWN = 8
_WORD = re.compile(r"\w+")
_SPACE = re.compile(r"\s+")


def _prose_only() -> list[SectionKind]:
    return ["prose"]


class LeakageSpec(ProbeSpec):
    kind: Literal["leakage"] = "leakage"
    include_kinds: list[SectionKind] = Field(default_factory=_prose_only, min_length=1)
    #: Characters of document given as the prompt (cut back to a word boundary). Recall
    #: needs context: on the demo adapter 384 characters bring back ~3× what 128 do.
    prefix_chars: int = Field(default=384, ge=16, le=4096)
    #: Held-out characters the continuation is compared with.
    continuation_chars: int = Field(default=192, ge=MIN_CONTINUATION_CHARS, le=4096)
    #: Tokens each view writes per window (greedy); ~4 characters per token in English.
    max_new_tokens: int = Field(default=64, ge=1, le=1024)
    #: Most windows (round-robin over sections, several per long section).
    max_windows: int = Field(default=8, ge=1, le=256)
    #: Word n-gram length for n-gram recall.
    ngram: int = Field(default=4, ge=1, le=16)
    #: Smallest mean verbatim run (fraction of the continuation) that counts as recital.
    assert_lcs_gte: Fraction = 0.1
    #: ``memorize``: recital is the goal, never an over-fit signal.
    intent: Literal["generalize", "memorize"] = "generalize"
    assert_z_gte: ZBar = 3.0


@dataclass(frozen=True, slots=True)
class Window:
    section_id: str
    prefix: str
    continuation: str


@dataclass(frozen=True, slots=True)
class Overlap:
    lcs_chars: int
    lcs_frac: float
    ngram_recall: float


def normalise(text: str) -> str:
    """Case-folded, whitespace collapsed: a line break in the document is not a miss."""
    return _SPACE.sub(" ", text.casefold()).strip()


def overlap(generated: str, held_out: str, *, n: int) -> Overlap:
    """Verbatim run and n-gram recall of ``generated`` against ``held_out``."""
    gen, ref = normalise(generated), normalise(held_out)
    if not gen or not ref:
        return Overlap(0, 0.0, 0.0)
    match = difflib.SequenceMatcher(None, gen, ref, autojunk=False).find_longest_match(
        0, len(gen), 0, len(ref)
    )
    ref_grams = _grams(ref, n)
    hit = sum((ref_grams & _grams(gen, n)).values())
    recall = hit / sum(ref_grams.values()) if ref_grams else 0.0
    return Overlap(match.size, match.size / len(ref), recall)


def _grams(text: str, n: int) -> Counter[tuple[str, ...]]:
    words = _WORD.findall(text)
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def windows(spec: LeakageSpec, ctx: RunContext) -> list[Window]:
    """Round-robin over sections: each section's first window, then its second, ..."""
    per_section = [
        _section_windows(s.id, s.content, spec)
        for s in ctx.sections or ()
        if s.kind in spec.include_kinds
    ]
    out: list[Window] = []
    depth = 0
    while len(out) < spec.max_windows and any(depth < len(w) for w in per_section):
        out.extend(w[depth] for w in per_section if depth < len(w))
        depth += 1
    return out[: spec.max_windows]


def _section_windows(section_id: str, content: str, spec: LeakageSpec) -> list[Window]:
    found: list[Window] = []
    start = 0
    while start < len(content):
        end = min(len(content), start + spec.prefix_chars)
        cut = content.rfind(" ", start + spec.prefix_chars // 2, end + 1)
        if end < len(content) and cut > start:
            end = cut
        prefix = content[start:end]
        continuation = content[end : end + spec.continuation_chars]
        if len(continuation.strip()) < MIN_CONTINUATION_CHARS or not prefix.strip():
            break
        found.append(Window(section_id, prefix, continuation))
        start = end + len(continuation)
    return found


class LeakageProbe(Probe):
    """Greedy continuations of document prefixes: how much of the held-out text comes back verbatim."""

    kind = "leakage"
    spec_cls = LeakageSpec
    category = "calibration"
    calibrated = True

    @classmethod
    def load_problems(
        cls,
        spec: ProbeSpec,
        *,
        document: Document | None,
        downstream: tuple[tuple[Probe, ProbeSpec], ...] = (),
    ) -> list[str]:
        assert isinstance(spec, LeakageSpec)
        reason = _skip_reason(spec, document_context(document))
        return [] if reason is None else [reason]

    def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
        assert isinstance(spec, LeakageSpec)
        skip = _skip_reason(spec, ctx)
        if skip is not None:
            return bare_result(spec, Verdict.SKIP, skip)
        wins = windows(spec, ctx)
        prompts = [w.prefix for w in wins]
        settings = GenerationSettings(max_new_tokens=spec.max_new_tokens, chat=False)
        backend = ctx.require_backend
        try:
            with shared_forwards(backend, BASE_AND_FT):
                with backend.as_base() as view:
                    base_text = write(view, prompts, settings, probe=self.kind)
                with backend.as_finetuned() as view:
                    ft_text = write(view, prompts, settings, probe=self.kind)
        except CannotGenerateError as exc:
            return bare_result(spec, Verdict.SKIP, str(exc))
        base = [
            overlap(t, w.continuation, n=spec.ngram) for t, w in zip(base_text, wins, strict=True)
        ]
        ft = [overlap(t, w.continuation, n=spec.ngram) for t, w in zip(ft_text, wins, strict=True)]
        raw = float(np.mean([o.lcs_frac for o in ft]))
        base_mean = float(np.mean([o.lcs_frac for o in base]))
        ft_recall = float(np.mean([o.ngram_recall for o in ft]))
        base_recall = float(np.mean([o.ngram_recall for o in base]))
        cal = calibrate(raw, ctx, spec, sign=+1, log_scale=False)
        longest = max(o.lcs_chars for o in ft)
        what = (
            f"fine-tune recites {raw:.1%} of the held-out text verbatim on average "
            f"(base {base_mean:.1%}; longest run {longest} chars; {spec.ngram}-gram recall "
            f"{ft_recall:.1%}, base {base_recall:.1%}) over {len(wins)} window(s)"
        )
        judgement, direction = _judgement(spec, cal, ctx, raw, what, self.kind)
        evidence: dict[str, Any] = {
            "num_windows": len(wins),
            "intent": spec.intent,
            "mean_lcs_frac_base": base_mean,
            "mean_lcs_frac_ft": raw,
            "mean_ngram_recall_base": base_recall,
            "mean_ngram_recall_ft": ft_recall,
            "ngram": spec.ngram,
            "per_window": [
                {
                    "section_id": w.section_id,
                    "prefix_tail": w.prefix[-60:],
                    "held_out": w.continuation[:120],
                    "ft_text": f_text[:120],
                    "base_text": b_text[:120],
                    "ft_lcs_chars": f.lcs_chars,
                    "base_lcs_chars": b.lcs_chars,
                    "ft_ngram_recall": f.ngram_recall,
                    "base_ngram_recall": b.ngram_recall,
                }
                for w, f, b, f_text, b_text in list(
                    zip(wins, ft, base, ft_text, base_text, strict=True)
                )[:10]
            ],
        }
        ci = None if ctx.calibrating else bootstrap_ci([o.lcs_frac for o in ft], seed=ctx.seed)
        result = judged_result(
            spec,
            cal,
            judgement,
            raw=raw,
            measured=what,
            evidence=evidence,
            ci_95=ci,
            base_value=base_mean,
            ft_value=raw,
            direction=direction,
        )
        shown = tuple(
            GeneratedSample(w.prefix, b, f)
            for w, b, f in list(zip(wins, base_text, ft_text, strict=True))[:SHOWN]
        )
        return replace(
            result,
            overfit=recital_signal(spec, cal, raw, base_mean, longest),
            generations=shown,
        )

    @classmethod
    def calibrate_spec(cls, ctx: RunContext, target: ProbeSpec | None = None) -> ProbeSpec | None:
        """The entry itself: nulls continue exactly the windows the fine-tune continues."""
        if not isinstance(target, LeakageSpec):
            return None
        return None if _skip_reason(target, ctx) is not None else target


def _judgement(
    spec: LeakageSpec, cal: Calibration, ctx: RunContext, raw: float, what: str, kind: str
) -> tuple[Judgement, Direction]:
    """``memorize``: an effect claim (PASS = recites beyond random adapters).
    ``generalize``: a harm claim, like forgetting (PASS = no recital past the limit
    beyond random adapters), so an adapter that learned without reciting passes."""
    if spec.intent == "memorize":
        return (
            judge(
                raw,
                cal,
                spec,
                ctx,
                what=what,
                min_effect=spec.assert_lcs_gte,
                min_effect_name="assert_lcs_gte",
                fixed_score=min(1.0, raw / max(spec.assert_lcs_gte, 1e-9)),
            ),
            Direction.EFFECT,
        )
    limit = max(spec.assert_lcs_gte, 1e-9)
    judgement = judge_harm(
        cal.comparison if cal.usable else None,
        what=what,
        versus=cal.versus(),
        practical_ok=raw < spec.assert_lcs_gte,
        limit_text=f"limit: mean verbatim run < {spec.assert_lcs_gte:g} (assert_lcs_gte)",
        z_bar=spec.assert_z_gte,
        non_negative=True,
        uncalibrated_reason=cal.fallback_note(kind),
        calibration_failed=cal.failed,
        practical_score=max(0.0, 1.0 - raw / limit) if math.isfinite(raw) else None,
        words=RECITAL,
    )
    return judgement, Direction.HARM


def recital_signal(
    spec: LeakageSpec, cal: Calibration, raw: float, base: float, longest: int
) -> OverfitSignal | None:
    """The memorisation signal: a real (beats its nulls, p < α; without a usable null,
    the fixed bar alone) recital of at least ``assert_lcs_gte``, beyond the base's own."""
    if spec.intent != "generalize" or not math.isfinite(raw):
        return None
    real = cal.p_value < ALPHA if cal.usable and cal.p_value is not None else True
    if not real or raw < max(spec.assert_lcs_gte, 1e-9) or raw <= base:
        return None
    return OverfitSignal(
        "verbatim_recital",
        f"given a prefix of its training document, the fine-tune continues with {raw:.0%} "
        f"of the held-out text verbatim on average (base {base:.0%}, longest run {longest} "
        "chars): it memorised the wording",
    )


def _skip_reason(spec: LeakageSpec, ctx: RunContext) -> str | None:
    if ctx.sections is None:
        return "no document: set dlm_source: in the spec to the training document"
    if not windows(spec, ctx):
        kinds = ", ".join(spec.include_kinds)
        return (
            f"no section of kind(s) {kinds} is long enough for one window ({spec.prefix_chars} "
            f"prefix chars plus at least {MIN_CONTINUATION_CHARS} held-out chars): lower "
            "prefix_chars or widen include_kinds"
        )
    return None


__all__ = [
    "LeakageProbe",
    "LeakageSpec",
    "Overlap",
    "Window",
    "normalise",
    "overlap",
    "recital_signal",
    "windows",
]
