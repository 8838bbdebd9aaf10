"""Score many (prompt, completion) pairs or texts under one view, batched when possible.

Attribution probes open one view, score everything they need in one go, and
close it. HF views expose ``logprob_of_batch`` / ``rolling_logprob_batch``
(padded batches, memoised); other views fall back to one call per item.

Length normalisation uses **real token counts** from the view's tokenizer
(:func:`dlm_sway.core.scoring.completion_tokens`: the tokens a completion adds
after its prompt, tokenised in context as it is scored). The reference divided
by ``len(text) // 4``, which biases per-token values by tokenizer and script;
our values are therefore not numerically comparable with upstream's.
"""

from __future__ import annotations

from collections.abc import Sequence

from dlm_sway.core.errors import ProbeError
from dlm_sway.core.scoring import (
    BatchedLogprobs,
    BatchedRollings,
    RollingLogprob,
    ScoringModel,
    completion_tokens,
)

Pair = tuple[str, str]


def logprobs(view: ScoringModel, pairs: Sequence[Pair]) -> list[float]:
    """Summed log-prob of each completion given its prompt (natural log)."""
    items = list(pairs)
    if not items:
        return []
    if isinstance(view, BatchedLogprobs):
        out = [float(x) for x in view.logprob_of_batch(items)]
        if len(out) != len(items):
            raise RuntimeError(f"backend returned {len(out)} log-probs for {len(items)} pairs")
        return out
    return [float(view.logprob_of(p, c)) for p, c in items]


def try_logprobs(view: ScoringModel, pairs: Sequence[Pair]) -> tuple[list[float | None], list[str]]:
    """Like :func:`logprobs`, but a pair that cannot be scored gives None, not an error.

    One unscorable pair (a completion that adds no tokens) would otherwise sink
    the whole batch; the batch is tried first and, if it raises, each pair alone.
    Returns the values and one reason per unscorable pair.
    """
    items = list(pairs)
    try:
        return list(logprobs(view, items)), []
    except ProbeError:
        pass
    values: list[float | None] = []
    reasons: list[str] = []
    for prompt, completion in items:
        try:
            values.append(float(view.logprob_of(prompt, completion)))
        except ProbeError as exc:
            values.append(None)
            reasons.append(str(exc))
    return values, reasons


def rollings(view: ScoringModel, texts: Sequence[str]) -> list[RollingLogprob]:
    """Per-token log-probs over each text (one forward per text, batched when possible)."""
    items = list(texts)
    if not items:
        return []
    if isinstance(view, BatchedRollings):
        out = list(view.rolling_logprob_batch(items))
        if len(out) != len(items):
            raise RuntimeError(f"backend returned {len(out)} rollings for {len(items)} texts")
        return out
    return [view.rolling_logprob(t) for t in items]


def token_counts(view: ScoringModel, pairs: Sequence[Pair]) -> list[int]:
    """Real number of tokens each completion adds after its prompt (at least 1)."""
    return [completion_tokens(view, p, c) for p, c in pairs]


def per_token(values: Sequence[float], counts: Sequence[int]) -> list[float]:
    """Summed log-probs divided by their completions' token counts."""
    return [v / max(1, n) for v, n in zip(values, counts, strict=True)]


__all__ = ["Pair", "logprobs", "per_token", "rollings", "token_counts", "try_logprobs"]
