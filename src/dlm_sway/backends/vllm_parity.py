"""Checks a vLLM server must pass before the ``vllm`` backend trusts its numbers.

Engines have shipped LoRA bugs that return plausible but wrong log-probs (a LoRA
silently missing from prompt log-probs, adapters mapped to the wrong requests in
a batch). So, on a few fixed texts:

1. self-consistency: each text scored alone equals it scored among others;
2. the fine-tuned view differs from the base when the adapter is non-zero;
3. when the base is loadable here, the HF backend gives the same log-probs.

Any failure is a :class:`BackendLoadError` naming the view, text and numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dlm_sway.core.errors import BackendLoadError

if TYPE_CHECKING:
    from dlm_sway.backends.vllm import VLLMDifferentialBackend

PARITY_TEXTS = (
    "The capital of France is Paris, a city on the river Seine.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "She opened the old book and began to read it aloud to the class.",
)
#: Below this, "base and fine-tuned differ" is numerics, not an adapter effect.
MIN_EFFECT = 1e-5
_SKIP = "(models.ft.options.parity: false skips these checks at your own risk)"


@dataclass(frozen=True)
class ParityReport:
    """What the checks measured, in nats per token (kept on the backend for reports)."""

    alone_vs_together: float
    ft_vs_base: float
    local_max_abs: float | None


def _fail(message: str) -> BackendLoadError:
    return BackendLoadError(f"vLLM parity check failed: {message}. {_SKIP}")


def check_parity(backend: VLLMDifferentialBackend) -> ParityReport:
    opts = backend.options
    scorer = backend.scorer
    texts = list(PARITY_TEXTS)
    seqs = scorer.encode(texts)
    server: dict[str, list[np.ndarray[Any, Any]]] = {}
    worst_alone = 0.0
    for label, opener in (("base", backend.as_base), ("fine-tuned", backend.as_finetuned)):
        with opener() as view:
            model = view.model_name()  # type: ignore[attr-defined]
            together = scorer.token_logprobs(model, seqs)
            alone = [scorer.token_logprobs(model, [s])[0] for s in seqs]
            dist_together = scorer.next_token_dists(model, texts, 1)
            dist_alone = [scorer.next_token_dists(model, [t], 1, in_flight=1)[0] for t in texts]
        for i, (a, b) in enumerate(zip(together, alone, strict=True)):
            gap = float(np.max(np.abs(a - b))) if a.size else 0.0
            worst_alone = max(worst_alone, gap)
            if gap > opts.parity_tolerance:
                raise _fail(
                    f"{label} view, text {i}: its prompt log-probs change by {gap:.4g} nats when "
                    f"scored among others (tolerance {opts.parity_tolerance:g}); the server "
                    "mixes requests up (a known LoRA batching bug class)"
                )
        for i, (d1, d2) in enumerate(zip(dist_together, dist_alone, strict=True)):
            gap = abs(float(d1.logprobs[0]) - float(d2.logprobs[0]))
            worst_alone = max(worst_alone, gap)
            if gap > opts.parity_tolerance:
                raise _fail(
                    f"{label} view, text {i}: its next-token log-prob changes by {gap:.4g} "
                    "nats when sent among others"
                )
        server[label] = alone
    effect = max(
        float(np.max(np.abs(f - b))) if f.size else 0.0
        for f, b in zip(server["fine-tuned"], server["base"], strict=True)
    )
    if max(backend.adapter_norms().values(), default=0.0) > 0.0 and effect < MIN_EFFECT:
        raise _fail(
            f"the fine-tuned view's log-probs equal the base's (max |Δ| {effect:.2g}) although "
            f"the adapter {backend.adapter_path} is non-zero: the server ignores the LoRA "
            "(e.g. it targets modules vLLM does not adapt, or LoRA is dropped from prompt "
            "log-probs by the engine)"
        )
    local = None
    want_local = opts.parity_local if opts.parity_local is not None else bool(backend.local_base)
    if want_local:
        local = _check_local(backend, texts, server)
    return ParityReport(worst_alone, effect, local)


def _check_local(
    backend: VLLMDifferentialBackend,
    texts: list[str],
    server: dict[str, list[np.ndarray[Any, Any]]],
) -> float:
    from dlm_sway.backends.hf import HFDifferentialBackend

    if backend.local_base is None:
        raise BackendLoadError(
            "models.ft.options.parity_local is true but there is no local base: set "
            "options.local_base to a local copy of the served model"
        )
    worst = 0.0
    hf = HFDifferentialBackend(backend.local_base, backend.adapter_path, dtype="fp32")
    try:
        for label, opener in (("base", hf.as_base), ("fine-tuned", hf.as_finetuned)):
            with opener() as view:
                rolls = [view.rolling_logprob(t) for t in texts]
            for i, (roll, theirs) in enumerate(zip(rolls, server[label], strict=True)):
                mine = np.asarray(roll.logprobs, dtype=np.float64)
                if mine.shape != theirs.shape:
                    raise _fail(
                        f"text {i} is {mine.size + 1} tokens locally but {theirs.size + 1} on "
                        "the server: the server's tokenizer is not the local model's"
                    )
                gap = float(np.max(np.abs(mine - theirs))) if mine.size else 0.0
                worst = max(worst, gap)
                if gap > backend.options.parity_tolerance:
                    raise _fail(
                        f"{label} view, text {i}: server and local HF log-probs differ by up to "
                        f"{gap:.4g} nats per token (tolerance "
                        f"{backend.options.parity_tolerance:g}); the server is not computing "
                        f"this model{' with this adapter' if label != 'base' else ''}"
                    )
    finally:
        hf.close()
    return worst


__all__ = ["PARITY_TEXTS", "ParityReport", "check_parity"]
