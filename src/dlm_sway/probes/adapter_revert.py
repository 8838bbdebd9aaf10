"""``adapter_revert``: does the fine-tune fall back to the base model's answer when reworded?

For each rewording ``p`` of a case, base and fine-tune answer greedily; with
MiniLM embeddings (cosines of unit vectors) and the case's *target* ``g`` (its
gold answer, or, without one, the fine-tune's own answer to the original
wording):

* a pair whose base answer already matches the target
  (``cos(base(p), g) ≥ base_target_similarity_cap``) cannot tell reverting from
  holding and is dropped;
* the *hold margin* is ``cos(ft(p), g) − cos(ft(p), base(p))``; a pair
  **reverts** when it is negative (the fine-tune's answer sits closer to the base
  model's than to the target).

``raw`` is the mean hold margin (signed, higher = holds); the revert rate must
stay under ``assert_revert_rate_lt``.

Calibration. The reference opted out ("the proxy cannot run the embedder").
It can: the embedder never touches the model. A null adapter is an adapter
that learned nothing, so its answers are the base model's up to weight noise,
and its hold margin (≈ ``cos(base(p), g) − 1``) is what "falls back to base"
looks like on these very cases; the trained margin must beat it. When nulls do
not change greedy text at all the null has no spread; the judge then says so
(null unusable) and falls back to the fixed revert-rate bar.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from dlm_sway.core.judge import Check
from dlm_sway.core.result import GeneratedSample, ProbeResult, Verdict
from dlm_sway.core.scoring import BASE_AND_FT, GenerationSettings, shared_forwards
from dlm_sway.core.sections import Document
from dlm_sway.core.stats import bootstrap_ci
from dlm_sway.probes import _embed
from dlm_sway.probes import _rewordings as rw
from dlm_sway.probes._fields import STRICT, Fraction, ZBar
from dlm_sway.probes._textgen import CannotGenerateError, write
from dlm_sway.probes._verdict import calibrate, judge, judged_result
from dlm_sway.probes.base import Probe, ProbeSpec, RunContext, bare_result, document_context


class RevertCase(BaseModel):
    """A request, rewordings of it, and optionally the answer the adapter was taught."""

    model_config = STRICT

    prompt: str
    paraphrases: list[str] = Field(min_length=1)
    #: Empty: the target is the fine-tune's own answer to ``prompt``.
    gold: str = ""

    @field_validator("prompt")
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


class AdapterRevertSpec(ProbeSpec):
    kind: Literal["adapter_revert"] = "adapter_revert"
    #: Empty: instruction pairs of ``dlm_source``, reworded like paraphrase_invariance.
    cases: list[RevertCase] = Field(default_factory=list)
    max_new_tokens: int = Field(default=64, ge=4, le=1024)
    embedding_model: str = _embed.DEFAULT_MODEL
    #: Pairs whose base answer is already this close to the target are dropped.
    base_target_similarity_cap: Fraction = 0.75
    #: Share of counted pairs allowed to revert (strictly less passes).
    assert_revert_rate_lt: float = Field(default=0.25, gt=0.0, le=1.0)
    max_derived_cases: int = Field(default=16, ge=1, le=10_000)
    rewordings_from: list[rw.DerivedSource] = Field(
        default_factory=lambda: list(rw.DERIVED_SOURCES)
    )
    rewordings_per_case: int = Field(default=2, ge=1, le=8)
    #: Rewordings sharing more than this share of the prompt's word bigrams are left out.
    max_prompt_overlap: Fraction = 0.5
    assert_z_gte: ZBar = 3.0

    @field_validator("embedding_model")
    @classmethod
    def _local_model(cls, value: str) -> str:
        if _embed.is_bundled(value) or (Path(value).expanduser() / "modules.json").is_file():
            return value
        raise ValueError(
            f"{value!r} is neither {_embed.DEFAULT_MODEL!r} (bundled) nor a local "
            "sentence-transformers folder (one with modules.json); sway never downloads models"
        )


_Case = tuple[str, str, list[str]]  # (prompt, gold or "", distinct rewordings)


def _base_cases(spec: AdapterRevertSpec, ctx: RunContext) -> list[tuple[str, str]]:
    if spec.cases:
        return [(c.prompt, c.gold) for c in spec.cases]
    out = []
    for section in ctx.sections or ():
        if section.kind == "instruction":
            out += [(p.prompt, p.gold) for p in section.probes if p.prompt.strip()]
    return out[: spec.max_derived_cases]


def _missing(ctx: RunContext) -> str:
    where = (
        "set dlm_source: to a document with instruction sections"
        if ctx.sections is None
        else "the document has no instruction (Q/A) sections"
    )
    return f"cases: none given and none derivable ({where}); add cases: [{{prompt, paraphrases}}]"


class AdapterRevertProbe(Probe):
    """Do fine-tuned answers to reworded requests fall back to the base model's?"""

    kind = "adapter_revert"
    spec_cls = AdapterRevertSpec
    category = "adherence"
    calibrated = True

    @classmethod
    def load_problems(
        cls,
        spec: ProbeSpec,
        *,
        document: Document | None,
        downstream: tuple[tuple[Probe, ProbeSpec], ...] = (),
    ) -> list[str]:
        assert isinstance(spec, AdapterRevertSpec)
        ctx = document_context(document)
        out = [] if _base_cases(spec, ctx) else [_missing(ctx)]
        missing = _embed.missing_dependencies(spec.embedding_model, need_kmeans=False)
        if missing:
            out.append(f"adapter_revert {_embed.unavailable_message(missing)}")
        return out

    @classmethod
    def calibrate_spec(cls, ctx: RunContext, target: ProbeSpec | None = None) -> ProbeSpec | None:
        """The entry itself: a null's hold margin on the same rewordings is what
        "answers like the base model" scores here (see the module docstring)."""
        if not isinstance(target, AdapterRevertSpec) or not _base_cases(target, ctx):
            return None
        return target

    def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
        assert isinstance(spec, AdapterRevertSpec)
        if not _base_cases(spec, ctx):
            return bare_result(spec, Verdict.SKIP, _missing(ctx))
        missing = _embed.missing_dependencies(spec.embedding_model, need_kmeans=False)
        if missing:
            return bare_result(
                spec, Verdict.SKIP, f"adapter_revert {_embed.unavailable_message(missing)}"
            )
        backend = ctx.require_backend
        base_cases = _base_cases(spec, ctx)
        search = rw.Search(
            sources=tuple(spec.rewordings_from),
            per_prompt=spec.rewordings_per_case,
            max_overlap=spec.max_prompt_overlap,
            seed=ctx.seed,
        )
        given = [c.paraphrases for c in spec.cases] if spec.cases else None
        settings = GenerationSettings(max_new_tokens=spec.max_new_tokens, seed=ctx.seed)
        try:
            screened, notes = rw.gather(
                [p for p, _ in base_cases],
                given,
                search,
                sections=ctx.sections or (),
                backend=backend,
                probe=self.kind,
            )
            cases: list[_Case] = [
                (p, g, [r.text for r in keep])
                for (p, g), (keep, _) in zip(base_cases, screened, strict=True)
                if keep
            ]
            asks = [r for _, _, rs in cases for r in rs]
            own = [p for p, g, _ in cases if not g.strip()]  # targets the fine-tune writes
            with shared_forwards(backend, BASE_AND_FT):
                with backend.as_base() as view:
                    base_out = write(view, asks, settings, probe=self.kind)
                with backend.as_finetuned() as view:
                    ft_out = write(view, asks + own, settings, probe=self.kind)
        except CannotGenerateError as exc:
            return bare_result(spec, Verdict.SKIP, str(exc))
        except _embed.EmbedderUnavailableError as exc:
            return bare_result(spec, Verdict.SKIP, f"adapter_revert: {exc}")
        too_close = sum(len(close) for _, close in screened)
        try:
            return self._judge(spec, ctx, cases, base_out, ft_out, notes, too_close)
        except _embed.EmbedderUnavailableError as exc:
            return bare_result(spec, Verdict.SKIP, f"adapter_revert: {exc}")

    def _judge(
        self,
        spec: AdapterRevertSpec,
        ctx: RunContext,
        cases: list[_Case],
        base_out: list[str],
        ft_out: list[str],
        notes: list[str],
        too_close: int,
    ) -> ProbeResult:
        n_asks = len(base_out)
        own_answers = iter(ft_out[n_asks:])
        targets = [g if g.strip() else next(own_answers) for _, g, _ in cases]
        if not cases:
            what = "no case kept a rewording distinct from its prompt"
            check = Check(
                False,
                f"no rewording shares at most {spec.max_prompt_overlap:.0%} of its prompt's "
                "word bigrams (max_prompt_overlap): give real paraphrases in cases:",
                judged=False,
            )
            return _unjudged(spec, ctx, what, check, notes)
        emb = _embed.embed(targets + base_out + ft_out[:n_asks], spec.embedding_model)
        n_t = len(targets)
        t_emb, b_emb, f_emb = emb[:n_t], emb[n_t : n_t + n_asks], emb[n_t + n_asks :]
        asked = [(i, r) for i, (_, _, rs) in enumerate(cases) for r in rs]
        rows: list[dict[str, Any]] = []
        margins: list[float] = []
        dropped = 0
        for k, (i, rewording) in enumerate(asked):
            sim_bg = float(b_emb[k] @ t_emb[i])
            sim_fg = float(f_emb[k] @ t_emb[i])
            sim_fb = float(f_emb[k] @ b_emb[k])
            trivial = sim_bg >= spec.base_target_similarity_cap
            if trivial:
                dropped += 1
            else:
                margins.append(sim_fg - sim_fb)
            if len(rows) < 8:
                rows.append(
                    {
                        "rewording": rewording[:80],
                        "cos_ft_target": sim_fg,
                        "cos_ft_base": sim_fb,
                        "cos_base_target": sim_bg,
                        "dropped": trivial,
                        "reverted": (not trivial) and sim_fg - sim_fb < 0.0,
                    }
                )
        evidence: dict[str, Any] = {
            "pairs": n_asks,
            "dropped_trivial": dropped,
            "rewordings_too_close": too_close,
            "target": "gold" if all(g.strip() for _, g, _ in cases) else "ft on the original",
            "per_pair": rows,
            "notes": notes,
        }
        if not margins:
            what = f"all {n_asks} pair(s) dropped: the base model already gives the target"
            check = Check(
                False,
                f"every base answer is within cos {spec.base_target_similarity_cap:g} of its "
                "target (base_target_similarity_cap): no pair can show a revert",
                judged=False,
            )
            return _unjudged(spec, ctx, what, check, notes, evidence)
        raw = float(np.mean(margins))
        reverts = sum(1 for m in margins if m < 0.0)
        rate = reverts / len(margins)
        cal = calibrate(raw, ctx, spec, sign=+1, log_scale=False)
        what = (
            f"mean hold margin {raw:+.3g} (cos to target − cos to base), {reverts} of "
            f"{len(margins)} reworded answer(s) revert to base ({rate:.0%})"
        )
        bar = spec.assert_revert_rate_lt
        j = judge(
            raw,
            cal,
            spec,
            ctx,
            what=what,
            non_negative=False,
            checks=(
                Check(rate < bar, f"revert rate {rate:.0%} ≥ {bar:.0%} (assert_revert_rate_lt)"),
            ),
            fixed_score=max(0.0, min(1.0, 1.0 - rate / bar)),
        )
        evidence.update(revert_rate=rate, reverts=reverts, counted=len(margins))
        result = judged_result(
            spec,
            cal,
            j,
            raw=raw,
            measured=what,
            evidence=evidence,
            non_negative=False,
            ci_95=None if ctx.calibrating else bootstrap_ci(margins, seed=ctx.seed),
        )
        if ctx.calibrating:
            return result
        shown = [
            GeneratedSample(r, b, f)
            for (_, r), b, f in zip(asked, base_out, ft_out[:n_asks], strict=True)
        ]
        return replace(result, generations=tuple(shown[:8]))


def _unjudged(
    spec: AdapterRevertSpec,
    ctx: RunContext,
    what: str,
    check: Check,
    notes: list[str],
    evidence: dict[str, Any] | None = None,
) -> ProbeResult:
    """No pair could be judged: WARN through the judge (raw None: nothing for nulls)."""
    cal = calibrate(None, ctx, spec)
    j = judge(0.0, cal, spec, ctx, what=what, non_negative=False, checks=(check,))
    ev = dict(evidence or {})
    ev["notes"] = notes
    return judged_result(spec, cal, j, raw=None, measured=what, evidence=ev, non_negative=False)


__all__ = ["AdapterRevertProbe", "AdapterRevertSpec", "RevertCase"]
