"""Divergences between two next-token distributions: exact or top-k + tail.

When both sides list the whole vocabulary in the same order (backends that
hold full logits, see :class:`~dlm_sway.core.scoring.FullDistributions`), the
divergence is computed directly on the aligned log-prob vectors: exact, and
with no id alignment. Otherwise two top-k slices rarely list the same tokens,
so we align them on the union of their ids plus one explicit *tail bucket*
holding the mass neither slice lists. Unlike the reference (which recomputed
the residual and discarded it when both slices listed the same ids), the tail
mass is kept, using ``tail_logprob`` when the backend measured it, so a
fine-tune that moves mass out of the top-k is seen rather than renormalised
away. :func:`tail_error_bound` says how far that approximation can be off.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from dlm_sway.core.errors import ProbeError
from dlm_sway.core.scoring import TokenDist

DivergenceKind = Literal["js", "kl"]
LN2 = math.log(2.0)
_EPS = 1e-12
_LOG_EPS = math.log(_EPS)
#: Full vectors are walked in blocks: float64 temporaries of 32 KiB stay in malloc's
#: free lists, while whole-vocabulary ones (384 KiB for 49k tokens) are mapped and
#: faulted in afresh on every call — measured 20–30× slower.
_BLOCK = 4096


def _check(dist: TokenDist, side: str) -> None:
    lp = np.asarray(dist.logprobs)  # no float64 copy: this runs on whole-vocabulary vectors
    if lp.size == 0:
        raise ProbeError("divergence", f"{side} distribution is empty")
    if np.isnan(lp).any() or (lp == np.inf).any():
        raise ProbeError("divergence", f"{side} distribution has non-finite (NaN/+inf) log-probs")
    finite = np.isfinite(lp)
    if not finite.any():
        raise ProbeError("divergence", f"{side} distribution has no finite log-prob")
    if dist.tail_logprob is not None and not math.isfinite(dist.tail_logprob):
        raise ProbeError("divergence", f"{side} distribution has a non-finite tail_logprob")
    if lp.size >= 2 and finite.all() and float(lp.max()) - float(lp.min()) < 1e-9:
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
    p_base, p_ft, _ = _aligned(base, ft)
    return p_base, p_ft


def _aligned(
    base: TokenDist, ft: TokenDist
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    """:func:`aligned_probs` plus a mask of the entries both sides list (exact on both)."""
    _check(base, "base")
    _check(ft, "ft")
    union = np.union1d(base.token_ids, ft.token_ids)
    vocab = max(base.vocab_size, ft.vocab_size, int(union.size))
    out = []
    listed = np.ones(union.size + 1, dtype=bool)
    listed[-1] = False
    for dist in (base, ft):
        p_known = np.exp(np.asarray(dist.logprobs, dtype=np.float64))
        tail = _tail_mass(dist, p_known)
        unlisted = vocab - dist.k
        per_token = tail / unlisted if unlisted > 0 else 0.0
        vec = np.full(union.size + 1, per_token, dtype=np.float64)
        where = np.searchsorted(union, dist.token_ids)
        vec[where] = p_known
        mine = np.zeros(union.size + 1, dtype=bool)
        mine[where] = True
        listed &= mine
        missing_in_union = union.size - dist.k
        vec[-1] = max(0.0, tail - per_token * missing_in_union)
        total = float(vec.sum())
        if not math.isfinite(total) or total <= 0.0:
            raise ProbeError("divergence", "distribution has no probability mass")
        out.append(vec / total)
    return out[0], out[1], listed


def _full(dist: TokenDist) -> bool:
    """The dist lists every vocabulary token and has no tail: nothing is approximated."""
    return dist.tail_logprob is None and dist.k == dist.vocab_size


def _positionally_aligned(base: TokenDist, ft: TokenDist) -> bool:
    """Both full, over the same ids in the same order: entry i is the same token on both."""
    return (
        _full(base)
        and _full(ft)
        and base.vocab_size == ft.vocab_size
        and (base.token_ids is ft.token_ids or np.array_equal(base.token_ids, ft.token_ids))
    )


def _logsumexp(x: NDArray[np.floating[Any]]) -> float:
    """log Σ exp(x) in float64 (float32 log-softmax leaves Σp ≠ 1 by ~1e-7)."""
    top = float(x.max())  # finite: _check refuses +inf/NaN and all -inf
    total = 0.0
    for i in range(0, x.shape[0], _BLOCK):
        block = x[i : i + _BLOCK].astype(np.float64)
        block -= top
        total += float(np.exp(block).sum())
    return top + math.log(total)


def _exact(base: TokenDist, ft: TokenDist, kind: DivergenceKind) -> float:
    """Divergence over the whole vocabulary, straight on the aligned vectors, blockwise."""
    xb, xf = np.asarray(base.logprobs), np.asarray(ft.logprobs)
    zb, zf = _logsumexp(xb), _logsumexp(xf)
    total = 0.0
    with np.errstate(divide="ignore", invalid="ignore"):  # 0·∞ terms are redone masked
        for i in range(0, xb.shape[0], _BLOCK):
            a = xb[i : i + _BLOCK].astype(np.float64)
            a -= zb
            c = xf[i : i + _BLOCK].astype(np.float64)
            c -= zf
            total += _kl_block(c, a) if kind == "kl" else _js_block(a, c)
    if not math.isfinite(total):
        raise ProbeError("divergence", f"{kind.upper()} is not finite")
    return max(0.0, total) if kind == "kl" else _js_in_range(total)


def _kl_block(lp: NDArray[np.float64], lq: NDArray[np.float64]) -> float:
    """Σ p (ln p − ln q); p = 0 adds nothing, ln q = −inf under p > 0 is floored at ln 1e-12."""
    p = np.exp(lp)
    val = float(np.dot(p, lp - lq))
    if math.isfinite(val):
        return val
    live = p > 0  # a zero p met an infinite log ratio (0·∞), or q was exactly 0
    floored = np.where(lq[live] == -np.inf, _LOG_EPS, lq[live])
    return float(np.dot(p[live], lp[live] - floored))


def _js_block(a: NDArray[np.float64], c: NDArray[np.float64]) -> float:
    """½ Σ [p ln(p/m) + q ln(q/m)], m = (p + q)/2, from log-probs a = ln p, c = ln q."""
    p, q = np.exp(a), np.exp(c)
    lm = np.log(p + q)
    lm -= LN2
    val = float(np.dot(p, a - lm)) + float(np.dot(q, c - lm))
    if math.isnan(val):  # 0·∞ where a probability is exactly zero: those terms are 0
        val = 0.0
        for x, lx in ((p, a), (q, c)):
            live = x > 0
            val += float(np.dot(x[live], lx[live] - lm[live]))
    return 0.5 * val


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
    return _js_in_range(0.5 * kl(p, m) + 0.5 * kl(q, m))


def _js_in_range(val: float) -> float:
    if val > LN2 + 1e-9:
        raise ProbeError("divergence", f"JS {val:.4f} exceeds ln 2: inputs are not distributions")
    return min(max(val, 0.0), LN2)


def divergence(base: TokenDist, ft: TokenDist, kind: DivergenceKind = "js") -> float:
    """``js`` (symmetric) or ``kl`` = KL(ft‖base): how far the fine-tune moved from base.

    Exact when both dists cover the vocabulary in the same order; top-k + tail
    otherwise (see :func:`tail_error_bound` for how far off that can be).
    """
    _check_kind(kind)
    if _positionally_aligned(base, ft):
        _check(base, "base")
        _check(ft, "ft")
        return _exact(base, ft, kind)
    p_base, p_ft = aligned_probs(base, ft)
    return js(p_base, p_ft) if kind == "js" else kl(p_ft, p_base)


def tail_error_bound(base: TokenDist, ft: TokenDist, kind: DivergenceKind = "js") -> float:
    """Upper bound on |exact − :func:`divergence`| given what the two dists list.

    JS: write JS = Σ_i f(p_i, q_i) with 0 ≤ f(p, q) ≤ ln2·(p + q)/2. On tokens
    both sides list, f is computed from exact values; the rest R (tokens listed
    by one side only, plus the tail) gets the same *mass* on each side in the
    exact and in the approximated vectors (listed values are exact, the tail
    mass is kept), so both R-contributions lie in [0, U], U = ln2·(P(R) + Q(R))/2,
    and the error is at most max(c̃, U − c̃) ≤ U, c̃ the approximated
    R-contribution. ``tail_logprob == 0.0`` (an underflowed tail) counts 1e-12.

    KL(ft‖base): unbounded (``inf``) as soon as the fine-tune puts mass where
    base's probabilities are unknown — they may be arbitrarily small; 0 when
    the fine-tune has no mass there. Both dists full: 0 for either kind.
    """
    _check_kind(kind)
    if _full(base) and _full(ft):
        return 0.0
    _check(base, "base")
    _check(ft, "ft")
    p_base, p_ft, listed = _aligned(base, ft)
    rest = ~listed
    unseen = {side: _EPS if d.tail_logprob == 0.0 else 0.0 for side, d in (("b", base), ("f", ft))}
    ft_rest = float(p_ft[rest].sum()) + unseen["f"]
    if kind == "kl":
        return 0.0 if ft_rest <= 0.0 else math.inf
    approx = float(_js_terms(p_base[rest], p_ft[rest]).sum())
    cap = 0.5 * LN2 * (float(p_base[rest].sum()) + unseen["b"] + ft_rest)
    return min(LN2, max(approx, cap - approx))


def _js_terms(p: NDArray[np.float64], q: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per-entry JS contributions ½[p ln(p/m) + q ln(q/m)], m = (p + q)/2."""
    m = 0.5 * (p + q)
    out = np.zeros_like(m)
    for x in (p, q):
        live = x > 0
        out[live] += 0.5 * x[live] * np.log(x[live] / m[live])
    return out


def _check_kind(kind: str) -> None:
    if kind not in ("js", "kl"):
        raise ValueError(f"unknown divergence kind {kind!r} (use 'js' or 'kl')")


__all__ = [
    "LN2",
    "DivergenceKind",
    "aligned_probs",
    "divergence",
    "js",
    "kl",
    "tail_error_bound",
]
