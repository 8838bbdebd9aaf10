"""Fetch next-token distributions for many prompts under one view, batched when possible."""

from __future__ import annotations

from collections.abc import Sequence

from dlm_sway.core.scoring import ScoringModel, TokenDist


def dists(view: ScoringModel, prompts: Sequence[str], top_k: int) -> list[TokenDist]:
    """One padded batch per view when the backend batches; the per-prompt path otherwise."""
    batch = getattr(view, "next_token_dist_batch", None)
    if callable(batch):
        out = batch(list(prompts), top_k=top_k)
        if len(out) != len(prompts):
            raise RuntimeError(f"backend returned {len(out)} dists for {len(prompts)} prompts")
        return list(out)
    return [view.next_token_dist(p, top_k=top_k) for p in prompts]


__all__ = ["dists"]
