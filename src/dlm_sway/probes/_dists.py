"""Fetch next-token distributions for many prompts under one view, batched when possible.

A view that holds full logits (:class:`~dlm_sway.core.scoring.FullDistributions`)
returns the whole vocabulary, so every divergence computed from these dists is
exact and ``top_k`` is moot; other views return top-k + tail, whose error
:func:`max_tail_bound` bounds.
"""

from __future__ import annotations

from collections.abc import Sequence

from dlm_sway.core.divergence import DivergenceKind, tail_error_bound
from dlm_sway.core.scoring import BatchedDists, FullDistributions, ScoringModel, TokenDist


def dists(view: ScoringModel, prompts: Sequence[str], top_k: int) -> list[TokenDist]:
    """One padded batch per view when the backend batches; the per-prompt path otherwise."""
    if isinstance(view, FullDistributions):
        out = view.next_token_full_batch(list(prompts))
    elif isinstance(view, BatchedDists):
        out = view.next_token_dist_batch(list(prompts), top_k=top_k)
    else:
        return [view.next_token_dist(p, top_k=top_k) for p in prompts]
    if len(out) != len(prompts):
        raise RuntimeError(f"backend returned {len(out)} dists for {len(prompts)} prompts")
    return list(out)


def tail_bounds(
    base: Sequence[TokenDist], ft: Sequence[TokenDist], kind: DivergenceKind
) -> list[float]:
    """Per prompt, the most the top-k + tail divergence can be off (0 when exact)."""
    return [tail_error_bound(b, f, kind) for b, f in zip(base, ft, strict=True)]


def max_tail_bound(
    base: Sequence[TokenDist], ft: Sequence[TokenDist], kind: DivergenceKind
) -> float:
    """Largest per-prompt :func:`tail_bounds` (``inf`` for KL over an unseen tail)."""
    return max(tail_bounds(base, ft, kind), default=0.0)


__all__ = ["dists", "max_tail_bound", "tail_bounds"]
