"""``sway diff``: how far apart two adapters on one base are, judged against null pairs.

The base loads once with adapter A; B is swapped in (``AdapterSwappable``). Per
prompt: JS(A‖B) between their next-token distributions (the divergence
``delta_kl`` uses) and each adapter's JS from the base, which says which of the
two moves that prompt more. The claim "A and B differ" is judged like every
effect (:func:`dlm_sway.core.judge.judge_effect`): the observed mean JS(A‖B)
against K pairs of null adapters, null *i* of the pair norm-matched to A and
its partner norm-matched to B (two independent seed families of the run seed),
i.e. how far two random adapters of these sizes land from each other.

A and B that give bit-identical distributions on every prompt are reported as
**identical**, never as "indistinguishable from noise": there is no difference
to judge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlm_sway.core.calibration import compare_to_null
from dlm_sway.core.divergence import divergence
from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.judge import Bar, Judgement, judge_effect, versus
from dlm_sway.core.result import Verdict
from dlm_sway.core.scoring import (
    AdapterSwappable,
    ConstructedNullBackend,
    DifferentialBackend,
    TokenDist,
)

#: Seed families: A-side nulls use the run seed's default family, B-side the next one.
B_SEED_BASE = 1
#: Mean JS(A‖B) that matters (the delta_kl default: 0.02 nats).
MIN_EFFECT = 0.02
Z_BAR = 3.0


@dataclass(frozen=True, slots=True)
class PromptDiff:
    prompt: str
    js_ab: float  # JS between A's and B's next-token distributions
    js_a: float  # JS(base, A)
    js_b: float  # JS(base, B)

    @property
    def mover(self) -> str:
        """Which adapter moves this prompt further from the base: "A", "B" or "=" (tie)."""
        return "A" if self.js_a > self.js_b else "B" if self.js_b > self.js_a else "="


@dataclass(frozen=True, slots=True)
class AdapterDiff:
    a: str
    b: str
    prompts: tuple[PromptDiff, ...]
    mean_js: float
    null_values: tuple[float, ...]  # mean JS between each null pair
    identical: bool
    verdict: Verdict
    headline: str
    message: str
    z_score: float | None
    p_value: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "sway-diff/1",
            "a": self.a,
            "b": self.b,
            "mean_js": self.mean_js,
            "identical": self.identical,
            "verdict": "identical" if self.identical else self.verdict.value,
            "headline": self.headline,
            "message": self.message,
            "z_score": self.z_score,
            "p_value": self.p_value,
            "null_pair_means": list(self.null_values),
            "a_moves_more": sum(p.mover == "A" for p in self.prompts),
            "b_moves_more": sum(p.mover == "B" for p in self.prompts),
            "prompts": [
                {
                    "prompt": p.prompt,
                    "js_ab": p.js_ab,
                    "js_a_vs_base": p.js_a,
                    "js_b_vs_base": p.js_b,
                    "moves_more": p.mover,
                }
                for p in self.prompts
            ],
        }


def _dists(opener: Any, prompts: Sequence[str], top_k: int) -> list[TokenDist]:
    from dlm_sway.probes._dists import dists

    with opener() as view:
        return dists(view, prompts, top_k)


def _nulls(
    backend: ConstructedNullBackend, seeds: Sequence[int], prompts: Sequence[str], top_k: int
) -> list[list[TokenDist]]:
    return [
        _dists(lambda s=s: backend.as_null_adapter(s, construction="norm_matched"), prompts, top_k)
        for s in seeds
    ]


def _mean_js(x: Sequence[TokenDist], y: Sequence[TokenDist]) -> float:
    return float(np.mean([divergence(a, b, "js") for a, b in zip(x, y, strict=True)]))


def diff_adapters(
    backend: DifferentialBackend,
    a: str,
    b: str,
    prompts: Sequence[str],
    *,
    runs: int = 10,
    seed: int = 0,
    top_k: int = 256,
) -> AdapterDiff:
    """Measure and judge A vs B; ``backend`` must hold adapter ``a`` (it ends holding ``b``)."""
    from dlm_sway.probes.null_adapter import null_seeds

    if not isinstance(backend, AdapterSwappable):
        raise SpecValidationError(
            f"sway diff loads the base once and swaps adapters; the {type(backend).__name__} "
            "backend cannot swap adapters (use kind: hf)"
        )
    if not isinstance(backend, ConstructedNullBackend) or (
        "norm_matched" not in backend.null_constructions
    ):
        raise SpecValidationError(
            "sway diff judges against norm-matched null adapters, which this backend cannot build"
        )
    if not prompts:
        raise SpecValidationError("sway diff needs at least one prompt")
    base = _dists(backend.as_base, prompts, top_k)
    dist_a = _dists(backend.as_finetuned, prompts, top_k)
    nulls_a = _nulls(backend, null_seeds(seed, runs), prompts, top_k)
    backend.swap_adapter(b)
    dist_b = _dists(backend.as_finetuned, prompts, top_k)
    nulls_b = _nulls(backend, null_seeds(seed, runs, B_SEED_BASE), prompts, top_k)

    rows = tuple(
        PromptDiff(p, divergence(x, y, "js"), divergence(o, x, "js"), divergence(o, y, "js"))
        for p, o, x, y in zip(prompts, base, dist_a, dist_b, strict=True)
    )
    mean = float(np.mean([r.js_ab for r in rows]))
    null_values = tuple(_mean_js(x, y) for x, y in zip(nulls_a, nulls_b, strict=True))
    identical = all(
        np.array_equal(x.token_ids, y.token_ids) and np.array_equal(x.logprobs, y.logprobs)
        for x, y in zip(dist_a, dist_b, strict=True)
    )
    if identical:
        judgement = Judgement(
            Verdict.SKIP,
            "identical",
            f"A and B give bit-identical next-token distributions on all {len(rows)} "
            "prompt(s): there is no difference to judge",
            None,
        )
        z = p_value = None
    else:
        comparison = compare_to_null(mean, null_values, log_scale=True)
        judgement = judge_effect(
            mean,
            comparison,
            Bar(z=Z_BAR, min_effect=MIN_EFFECT),
            what=f"mean JS(A‖B) {mean:.4g} nats over {len(rows)} prompt(s)",
            versus=versus("norm_matched", len(null_values)) + " pairs",
            non_negative=True,
        )
        z, p_value = comparison.z, comparison.p_value
    headline = {
        Verdict.PASS: "A and B differ beyond noise",
        Verdict.WARN: "A and B differ, but below the bar",
    }.get(judgement.verdict, judgement.headline)
    if judgement.verdict is Verdict.FAIL and not identical:
        headline = f"A vs B: {judgement.headline}"
    return AdapterDiff(
        a=a,
        b=b,
        prompts=rows,
        mean_js=mean,
        null_values=null_values,
        identical=identical,
        verdict=judgement.verdict,
        headline=headline,
        message=judgement.message,
        z_score=z,
        p_value=p_value,
    )


__all__ = ["AdapterDiff", "PromptDiff", "diff_adapters"]
