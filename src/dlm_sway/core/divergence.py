"""Divergences between two top-k next-token distributions.

Two top-k slices rarely list the same tokens. We align them on the union of
their ids plus one explicit *tail bucket* holding the mass neither slice
lists. Unlike the reference (which recomputed the residual and discarded it
when both slices listed the same ids), the tail mass is kept, using
``tail_logprob`` when the backend measured it, so a fine-tune that moves mass
out of the top-k is seen rather than renormalised away.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from dlm_sway.core.errors import ProbeError
from dlm_sway.core.scoring import TokenDist

DivergenceKind = Literal["js", "kl"]
LN2 = math.log(2.0)
_EPS = 1e-12


def _check(dist: TokenDist, side: str) -> None:
    lp = np.asarray(dist.logprobs, dtype=np.float64)
    if lp.size == 0:
        raise ProbeError("divergence", f"{side} distribution is empty")
    if np.any(np.isnan(lp)) or np.any(lp == np.inf):
        raise ProbeError("divergence", f"{side} distribution has non-finite (NaN/+inf) log-probs")
    finite = lp[np.isfinite(lp)]
    if finite.size == 0:
        raise ProbeError("divergence", f"{side} distribution has no finite log-prob")
    if dist.tail_logprob is not None and not math.isfinite(dist.tail_logprob):
        raise ProbeError("divergence", f"{side} distribution has a non-finite tail_logprob")
    if lp.size >= 2 and finite.size == lp.size and float(lp.max() - lp.min()) < 1e-9:
        raise ProbeError(
            "divergence",
            f"{side} distribution is effectively uniform (broken lm_head or zeroed logits?)",
        )


def _tail_mass(dist: TokenDist, probs: NDArray[np.float64]) -> float:
    if dist.tail_logprob is None:
        return 0.0
    if dist.tail_logprob < 0.0:
        return float(math.exp(dist.tail_logprob))
    return max(0.0, 1.0 - float(probs.sum()))


def aligned_probs(
    base: TokenDist, ft: TokenDist
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Both distributions on the union support plus one tail bucket, each summing to 1.

    A token listed by one side only receives, on the other side, an equal share
    of that side's tail mass spread over all unlisted vocabulary tokens.
    """
    _check(base, "base")
    _check(ft, "ft")
    union = np.union1d(base.token_ids, ft.token_ids)
    vocab = max(base.vocab_size, ft.vocab_size, int(union.size))
    out = []
    for dist in (base, ft):
        p_known = np.exp(np.asarray(dist.logprobs, dtype=np.float64))
        tail = _tail_mass(dist, p_known)
        unlisted = vocab - dist.k
        per_token = tail / unlisted if unlisted > 0 else 0.0
        vec = np.full(union.size + 1, per_token, dtype=np.float64)
        vec[np.searchsorted(union, dist.token_ids)] = p_known
        missing_in_union = union.size - dist.k
        vec[-1] = max(0.0, tail - per_token * missing_in_union)
        total = float(vec.sum())
        if not math.isfinite(total) or total <= 0.0:
            raise ProbeError("divergence", "distribution has no probability mass")
        out.append(vec / total)
    return out[0], out[1]


def kl(p: NDArray[np.float64], q: NDArray[np.float64]) -> float:
    """KL(p‖q) in nats; zero entries of q are floored at 1e-12."""
    mask = p > 0
    val = float(np.sum(p[mask] * (np.log(p[mask]) - np.log(np.maximum(q[mask], _EPS)))))
    if not math.isfinite(val):
        raise ProbeError("divergence", "KL is not finite")
    return max(0.0, val)


def js(p: NDArray[np.float64], q: NDArray[np.float64]) -> float:
    """Jensen–Shannon divergence in nats, in [0, ln 2]."""
    m = 0.5 * (p + q)
    val = 0.5 * kl(p, m) + 0.5 * kl(q, m)
    if val > LN2 + 1e-9:
        raise ProbeError("divergence", f"JS {val:.4f} exceeds ln 2: inputs are not distributions")
    return min(max(val, 0.0), LN2)


def divergence(base: TokenDist, ft: TokenDist, kind: DivergenceKind = "js") -> float:
    """``js`` (symmetric) or ``kl`` = KL(ft‖base): how far the fine-tune moved from base."""
    p_base, p_ft = aligned_probs(base, ft)
    if kind == "js":
        return js(p_base, p_ft)
    if kind == "kl":
        return kl(p_ft, p_base)
    raise ValueError(f"unknown divergence kind {kind!r} (use 'js' or 'kl')")


__all__ = ["LN2", "DivergenceKind", "aligned_probs", "divergence", "js", "kl"]
