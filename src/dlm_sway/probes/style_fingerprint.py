"""``style_fingerprint``: does the fine-tune's prose read like its training document?

Base and fine-tune write from the same prompts; each generation, and each
piece of the document cut to the generations' length, becomes a stylometric
feature vector (:mod:`dlm_sway.probes._stylometry`: sentence shape, MATTR
vocabulary richness, punctuation rates, function-word profile). Distances are
Burrows-Delta-like: mean |z|-difference of mean feature vectors, per feature
group, averaged over groups. The yardstick SDs come from the document pieces
and the *base* generations only, so the same ruler measures the fine-tune and
every null adapter.

``raw`` is the share of the base→document style distance the fine-tune closed:
``shift = 1 − d(ft, doc) / d(base, doc)``: 0 no change, 1 writes like the
document, < 0 moved away. Against the reference (a 6-number fingerprint of one
joined sample, projected on ``doc − base``, calibrated on sentinel prompts and
a sentinel document), this compares like with like: length-robust features,
the document measured at the generations' length, and nulls measured on this
entry's own prompts and document (``calibrate_spec`` is the entry itself).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, field_validator, model_validator

from dlm_sway.core.judge import Check
from dlm_sway.core.result import GeneratedSample, ProbeResult, Verdict
from dlm_sway.core.scoring import BASE_AND_FT, GenerationSettings, shared_forwards
from dlm_sway.core.sections import Document
from dlm_sway.probes import _stylometry as sty
from dlm_sway.probes._fields import Fraction, ZBar
from dlm_sway.probes._textgen import CannotGenerateError, write_batches
from dlm_sway.probes._verdict import calibrate, judge, judged_result
from dlm_sway.probes.base import Probe, ProbeSpec, RunContext, bare_result, document_context

#: Prompt used for each section title when the entry gives no prompts.
DERIVED_PROMPT = "Write a short passage about {topic}."
#: Below this base→document distance (Delta units) the base already writes like the
#: document and the share closed is a ratio of two small numbers.
MIN_BASE_DISTANCE = 0.05
_N_BOOTSTRAP = 500


class StyleFingerprintSpec(ProbeSpec):
    kind: Literal["style_fingerprint"] = "style_fingerprint"
    #: Empty: one prompt per titled prose section of ``dlm_source`` (DERIVED_PROMPT).
    prompts: list[str] = Field(default_factory=list)
    #: Text whose style is the target; empty: the prose sections of ``dlm_source``.
    doc_reference: str = ""
    max_new_tokens: int = Field(default=128, ge=16, le=1024)
    #: >1 needs temperature > 0 (greedy writes the same text every time).
    samples_per_prompt: int = Field(default=1, ge=1, le=16)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_derived_prompts: int = Field(default=8, ge=1, le=64)
    #: Fewer generated words per side than this: the fingerprint is not judged.
    min_words: int = Field(default=150, ge=1, le=100_000)
    #: Share of the base→document style distance the fine-tune must close.
    assert_shift_gte: Fraction = 0.25
    assert_z_gte: ZBar = 3.0

    @field_validator("prompts")
    @classmethod
    def _non_blank(cls, value: list[str]) -> list[str]:
        blank = [i for i, p in enumerate(value) if not p.strip()]
        if blank:
            raise ValueError(f"prompts at positions {blank} are empty")
        return value

    @model_validator(mode="after")
    def _sampling(self) -> StyleFingerprintSpec:
        if self.samples_per_prompt > 1 and self.temperature == 0.0:
            raise ValueError(
                f"samples_per_prompt is {self.samples_per_prompt} but temperature is 0: greedy "
                "decoding writes the same text each time; set temperature > 0 (e.g. 0.7) "
                "or samples_per_prompt: 1"
            )
        return self


def _prompts(spec: StyleFingerprintSpec, ctx: RunContext) -> list[str]:
    if spec.prompts:
        return list(spec.prompts)
    titles = [s.title.strip() for s in ctx.sections or () if s.kind == "prose" and s.title.strip()]
    unique = list(dict.fromkeys(titles))[: spec.max_derived_prompts]
    return [DERIVED_PROMPT.format(topic=t) for t in unique]


def _reference(spec: StyleFingerprintSpec, ctx: RunContext) -> str:
    if spec.doc_reference.strip():
        return spec.doc_reference
    prose = [s.content for s in ctx.sections or () if s.kind == "prose" and s.content.strip()]
    return "\n\n".join(prose) if prose else (ctx.doc_text or "")


def _problems(spec: StyleFingerprintSpec, ctx: RunContext) -> list[str]:
    out = []
    if not _prompts(spec, ctx):
        out.append(
            "prompts: none given and none derivable (derived prompts need prose sections "
            "with titles in dlm_source); add prompts: [...] to the entry"
        )
    if not sty.words(_reference(spec, ctx)):
        out.append(
            "doc_reference: no reference text; set dlm_source: to the training document "
            "or give doc_reference: <text>"
        )
    return out


class StyleFingerprintProbe(Probe):
    """Share of the base→document stylometric distance the fine-tune's prose closes."""

    kind = "style_fingerprint"
    spec_cls = StyleFingerprintSpec
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
        assert isinstance(spec, StyleFingerprintSpec)
        return _problems(spec, document_context(document))

    @classmethod
    def calibrate_spec(cls, ctx: RunContext, target: ProbeSpec | None = None) -> ProbeSpec | None:
        """The entry itself: nulls write from the same prompts, measured on the same ruler."""
        if not isinstance(target, StyleFingerprintSpec) or _problems(target, ctx):
            return None
        return target

    def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
        assert isinstance(spec, StyleFingerprintSpec)
        problems = _problems(spec, ctx)
        if problems:
            return bare_result(spec, Verdict.SKIP, "; ".join(problems))
        prompts = _prompts(spec, ctx)
        settings = [
            GenerationSettings(
                max_new_tokens=spec.max_new_tokens, temperature=spec.temperature, seed=ctx.seed + i
            )
            for i in range(spec.samples_per_prompt)
        ]
        backend = ctx.require_backend
        try:
            with shared_forwards(backend, BASE_AND_FT):
                batches = [(prompts, s) for s in settings]
                with backend.as_base() as view:
                    base = [t for ts in write_batches(view, batches, probe=self.kind) for t in ts]
                with backend.as_finetuned() as view:
                    ft = [t for ts in write_batches(view, batches, probe=self.kind) for t in ts]
        except CannotGenerateError as exc:
            return bare_result(spec, Verdict.SKIP, str(exc))
        return self._judge(spec, ctx, prompts, base, ft, _reference(spec, ctx))

    def _judge(
        self,
        spec: StyleFingerprintSpec,
        ctx: RunContext,
        prompts: list[str],
        base: list[str],
        ft: list[str],
        reference: str,
    ) -> ProbeResult:
        base_rows, ft_rows = sty.matrix(base), sty.matrix(ft)
        if ft_rows.shape[0] == 0 or base_rows.shape[0] == 0:
            side = "fine-tune" if ft_rows.shape[0] == 0 else "base"
            return bare_result(
                spec,
                Verdict.ERROR,
                f"the {side} wrote no words for any of the {len(prompts)} prompt(s): there is "
                "no prose to fingerprint (check the adapter, or raise max_new_tokens)",
            )
        gen_words = [len(sty.words(t)) for t in base + ft]
        chunk = max(30, int(np.median(gen_words)))
        doc_rows = sty.matrix(sty.chunks(reference, chunk))
        yard = sty.Yardstick.from_samples(np.vstack([doc_rows, base_rows]))
        doc_mean = doc_rows.mean(axis=0)
        d_base = sty.delta(base_rows.mean(axis=0), doc_mean, yard)
        d_ft = sty.delta(ft_rows.mean(axis=0), doc_mean, yard)
        shift = 1.0 - d_ft / d_base if d_base > 0.0 else 0.0
        cal = calibrate(shift, ctx, spec, sign=+1, log_scale=False)
        n_base, n_ft = sum(len(sty.words(t)) for t in base), sum(len(sty.words(t)) for t in ft)
        what = (
            f"style shift {shift:+.3g} (distance to the document {d_base:.3g} → {d_ft:.3g} "
            f"Delta units, base → fine-tune) over {len(prompts)} prompt(s)"
        )
        # Unjudged checks are listed only when they fail: the judge reads any as "not judged".
        checks = tuple(
            Check(False, text, judged=False)
            for bad, text in (
                (
                    min(n_base, n_ft) < spec.min_words,
                    f"only {min(n_base, n_ft)} generated words on one side, need "
                    f"{spec.min_words} (min_words) for a stable fingerprint",
                ),
                (
                    d_base < MIN_BASE_DISTANCE,
                    f"the base already writes like the document (distance {d_base:.3g} < "
                    f"{MIN_BASE_DISTANCE:g}): no style gap to close",
                ),
            )
            if bad
        )
        j = judge(
            shift,
            cal,
            spec,
            ctx,
            what=what,
            non_negative=False,
            checks=checks,
            min_effect=spec.assert_shift_gte,
            min_effect_name="assert_shift_gte",
            fixed_score=max(0.0, min(1.0, shift)),
        )
        evidence: dict[str, Any] = {
            "distance_base_to_doc": d_base,
            "distance_ft_to_doc": d_ft,
            "features_used": yard.used,
            "doc_pieces": int(doc_rows.shape[0]),
            "piece_words": chunk,
            "generated_words": {"base": n_base, "ft": n_ft},
            "moved_features": _movers(base_rows, ft_rows, doc_mean, yard),
            "ft_samples": [t[:200] for t in ft[:3]],
            "base_samples": [t[:200] for t in base[:3]],
        }
        ci = None if ctx.calibrating else _bootstrap(base_rows, ft_rows, doc_mean, yard, ctx.seed)
        result = judged_result(
            spec,
            cal,
            j,
            raw=shift,
            measured=what,
            evidence=evidence,
            non_negative=False,
            base_value=d_base,
            ft_value=d_ft,
            ci_95=ci,
        )
        if ctx.calibrating:
            return result
        shown = [GeneratedSample(p, b, f) for p, b, f in zip(prompts, base, ft, strict=False)]
        return replace(result, generations=tuple(shown[:8]))


def _movers(
    base: NDArray[np.float64],
    ft: NDArray[np.float64],
    doc: NDArray[np.float64],
    yard: sty.Yardstick,
    top: int = 8,
) -> list[dict[str, Any]]:
    """Features whose distance to the document changed most (negative: moved closer)."""
    gap_base = np.abs(base.mean(axis=0) - doc) / yard.sd
    gap_ft = np.abs(ft.mean(axis=0) - doc) / yard.sd
    change = gap_ft - gap_base
    order = [i for i in np.argsort(-np.abs(np.nan_to_num(change))) if math.isfinite(change[i])]
    names = sty.feature_names()
    return [
        {
            "feature": names[i][1],
            "doc": float(doc[i]),
            "base": float(base[:, i].mean()),
            "ft": float(ft[:, i].mean()),
            "z_gap_change": float(change[i]),
        }
        for i in order[:top]
    ]


def _bootstrap(
    base: NDArray[np.float64],
    ft: NDArray[np.float64],
    doc: NDArray[np.float64],
    yard: sty.Yardstick,
    seed: int,
) -> tuple[float, float] | None:
    """95% percentile CI of the shift, resampling generations (yardstick held fixed)."""
    if base.shape[0] < 2 or ft.shape[0] < 2:
        return None
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(_N_BOOTSTRAP):
        b = base[rng.integers(0, base.shape[0], base.shape[0])].mean(axis=0)
        f = ft[rng.integers(0, ft.shape[0], ft.shape[0])].mean(axis=0)
        d_b = sty.delta(b, doc, yard)
        if d_b > 0.0:
            out.append(1.0 - sty.delta(f, doc, yard) / d_b)
    if not out:
        return None
    lo, hi = np.quantile(out, [0.025, 0.975])
    return (float(lo), float(hi))


__all__ = ["DERIVED_PROMPT", "StyleFingerprintProbe", "StyleFingerprintSpec"]
