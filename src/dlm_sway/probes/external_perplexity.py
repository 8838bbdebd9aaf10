"""``external_perplexity``: did the fine-tune make ordinary English harder to predict?

A broad, thin kind of forgetting: no single fact is lost, but every sentence of
everyday prose becomes a little less likely. The probe scores chunks of the
packaged general-English corpus (:func:`dlm_sway.data.load_general_corpus_chunks`,
chunks spread over its topics) with one rolling forward per chunk and view, and
per chunk takes

    δ = mean log p_ft(token) − mean log p_base(token)

over the chunk's scored positions (real tokens of the model's tokenizer), in
nats per token. ``raw`` is the mean δ over chunks: 0 means no change, negative
means the fine-tune is more perplexed (forgetting), positive means more fluent.
The CI resamples chunks.

The verdict is :func:`dlm_sway.core.judge.judge_harm`'s, as for
:mod:`dlm_sway.probes.calibration_drift`: FAIL only when the drop is both
significantly worse than random adapters of the same size (harm z ≥
``assert_z_gte``) and below ``assert_delta_gte``; a drop past the threshold that
random adapters match is a WARN; fixed threshold alone without a usable null.
Demanding that the adapter be *more* fluent than noise (the reference's z-path)
would fail any adapter that simply leaves prose alone. δ is signed, so the
message gives the distance in null SDs, never a ratio to the null median.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import Field

from dlm_sway.core.judge import judge_harm
from dlm_sway.core.result import Direction, ProbeResult, Verdict
from dlm_sway.core.scoring import BASE_AND_FT, shared_forwards
from dlm_sway.core.stats import bootstrap_ci
from dlm_sway.data import MIN_CHUNK_CHARS, load_general_corpus_chunks
from dlm_sway.probes._fields import Nats, ZBar
from dlm_sway.probes._logprob import rollings
from dlm_sway.probes._verdict import calibrate, judged_result
from dlm_sway.probes.base import Probe, ProbeSpec, RunContext, bare_result

#: Chunks scored when calibrating without a target entry.
NULL_CHUNKS = 4


class ExternalPerplexitySpec(ProbeSpec):
    kind: Literal["external_perplexity"] = "external_perplexity"
    #: Number of corpus chunks to score (round-robin over the corpus's topics).
    chunks: int = Field(default=8, ge=1, le=64)
    #: Upper bound on a chunk's length in characters; chunks end at sentence ends.
    chunk_chars: int = Field(default=600, ge=MIN_CHUNK_CHARS, le=16384)
    #: Lowest acceptable mean δ (ft − base log-prob per token, nats), in [-100, 100].
    assert_delta_gte: Nats = -0.1
    assert_z_gte: ZBar = 3.0


class ExternalPerplexityProbe(Probe):
    """Per-token log-prob change on general English prose, judged against null adapters."""

    kind = "external_perplexity"
    spec_cls = ExternalPerplexitySpec
    category = "calibration"
    calibrated = True

    def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
        assert isinstance(spec, ExternalPerplexitySpec)
        if ctx.backend is None:
            return bare_result(spec, Verdict.SKIP, "needs a model backend to score the corpus")
        texts = load_general_corpus_chunks(spec.chunks, spec.chunk_chars)
        if not texts:
            return self._error(spec, "the packaged corpus gave no chunks")
        with shared_forwards(ctx.backend, BASE_AND_FT):
            with ctx.backend.as_base() as view:
                base = rollings(view, texts)
            with ctx.backend.as_finetuned() as view:
                ft = rollings(view, texts)

        per_chunk: list[float] = []
        tokens: list[int] = []
        base_total = ft_total = 0.0
        skipped = 0
        for b, f in zip(base, ft, strict=True):
            n = int(b.logprobs.shape[0])
            if n == 0 or int(f.logprobs.shape[0]) != n:
                skipped += 1
                continue
            per_chunk.append(f.total_logprob / n - b.total_logprob / n)
            tokens.append(n)
            base_total += b.total_logprob
            ft_total += f.total_logprob
        if not per_chunk:
            return self._error(spec, "no chunk had a scored token")

        finite = all(math.isfinite(d) for d in per_chunk)
        raw = float(np.mean(per_chunk)) if finite else math.nan
        n_tokens = sum(tokens)
        base_mean = base_total / n_tokens
        ft_mean = ft_total / n_tokens
        # Harm direction: a lower δ (more perplexed) than the nulls' is the claim tested.
        harm = calibrate(raw, ctx, spec, sign=-1)
        practical_ok = raw >= spec.assert_delta_gte
        what = (
            f"mean Δ log-prob {raw:+.4f} nats/token over {len(per_chunk)} chunk(s) "
            f"({n_tokens} tokens; perplexity {math.exp(-base_mean):.3g} → {math.exp(-ft_mean):.3g})"
            if finite
            else f"non-finite log-probs over {len(per_chunk)} chunk(s)"
        )
        judgement = judge_harm(
            harm.comparison if harm.usable else None,
            what=what,
            versus=harm.versus(),
            practical_ok=practical_ok,
            limit_text=f"limit: Δ ≥ {spec.assert_delta_gte:g} (assert_delta_gte)",
            z_bar=spec.assert_z_gte,
            non_negative=False,  # δ is signed: no ratio to the null median
            uncalibrated_reason=harm.fallback_note(self.kind),
            calibration_failed=harm.failed,
            practical_score=_practical_score(raw, spec) if finite else None,
        )
        evidence: dict[str, Any] = {
            "corpus": "general_corpus",
            "chunk_chars": spec.chunk_chars,
            "num_chunks": len(per_chunk),
            "skipped_chunks": skipped,
            "per_chunk_delta": per_chunk,
            "per_chunk_tokens": tokens,
        }
        return judged_result(
            spec,
            harm,
            judgement,
            raw=raw,
            measured=what,
            evidence=evidence,
            direction=Direction.HARM,
            non_negative=False,
            base_value=base_mean,
            ft_value=ft_mean,
            ci_95=bootstrap_ci(per_chunk, seed=ctx.seed),
        )

    def _error(self, spec: ExternalPerplexitySpec, message: str) -> ProbeResult:
        return bare_result(spec, Verdict.ERROR, message)

    @classmethod
    def calibrate_spec(cls, ctx: RunContext, target: ProbeSpec | None = None) -> ProbeSpec | None:
        """The entry itself: nulls score exactly the chunks the real run scores.

        At the default 8 × 600 characters that is ~1k tokens per view, cheap enough
        to repeat per null; a subset would compare the adapter's mean over some texts
        with the nulls' mean over others.
        """
        if isinstance(target, ExternalPerplexitySpec):
            return target
        return ExternalPerplexitySpec(name="external_perplexity_null", chunks=NULL_CHUNKS)


def _practical_score(delta: float, spec: ExternalPerplexitySpec) -> float:
    """1 with no loss of fluency, falling linearly to 0 at ``assert_delta_gte``."""
    limit = spec.assert_delta_gte
    if limit < 0.0:
        return max(0.0, 1.0 - min(0.0, delta) / limit)
    return 1.0 if delta >= limit else 0.0


__all__ = ["NULL_CHUNKS", "ExternalPerplexityProbe", "ExternalPerplexitySpec"]
