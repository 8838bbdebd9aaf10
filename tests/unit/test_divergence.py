"""Divergences between top-k next-token distributions: direction, bounds, tail mass, guards."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dlm_sway.core.divergence import LN2, aligned_probs, divergence
from dlm_sway.core.errors import ProbeError
from dlm_sway.core.scoring import TokenDist


def dist(
    ids: list[int], probs: list[float], *, vocab: int | None = None, tail: float | None = None
) -> TokenDist:
    """A TokenDist from plain probabilities; ``tail`` is the mass outside the listed ids."""
    return TokenDist(
        token_ids=np.asarray(ids, dtype=np.int64),
        logprobs=np.log(np.asarray(probs, dtype=np.float64)).astype(np.float32),
        vocab_size=vocab if vocab is not None else len(ids),
        tail_logprob=None if tail is None else math.log(tail),
    )


def sharp(token: int, vocab: int = 8, eps: float = 1e-9) -> TokenDist:
    """Full-vocabulary dist with (almost) all mass on ``token``."""
    probs = [eps] * vocab
    probs[token] = 1.0 - eps * (vocab - 1)
    return dist(list(range(vocab)), probs)


P = dist([0, 1, 2], [0.7, 0.2, 0.1])
Q = dist([2, 1, 0], [0.6, 0.3, 0.1])  # ids in a different order: alignment must not care


class TestJensenShannon:
    def test_symmetric(self) -> None:
        assert divergence(P, Q, "js") == pytest.approx(divergence(Q, P, "js"), abs=1e-12)

    def test_zero_for_identical(self) -> None:
        assert divergence(P, P, "js") == pytest.approx(0.0, abs=1e-9)

    def test_ln2_for_disjoint_sharp_full_vocab(self) -> None:
        assert divergence(sharp(0), sharp(5), "js") == pytest.approx(LN2, abs=1e-6)

    def test_ln2_for_disjoint_sharp_top_k_slices(self) -> None:
        a = dist([0, 1], [1 - 2e-8, 1e-8], vocab=50, tail=1e-8)
        b = dist([7, 9], [1 - 2e-8, 1e-8], vocab=50, tail=1e-8)
        assert divergence(a, b, "js") == pytest.approx(LN2, abs=1e-5)

    def test_matches_hand_computation(self) -> None:
        p = np.array([0.7, 0.2, 0.1])
        q = np.array([0.1, 0.3, 0.6])  # Q re-indexed by token id
        m = (p + q) / 2
        expected = 0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m))
        assert divergence(P, Q, "js") == pytest.approx(float(expected), rel=1e-5)

    def test_grows_as_distributions_separate(self) -> None:
        near = dist([0, 1, 2], [0.6, 0.25, 0.15])
        far = dist([0, 1, 2], [0.2, 0.3, 0.5])
        assert 0.0 < divergence(P, near, "js") < divergence(P, far, "js") <= LN2


class TestKL:
    def test_direction_is_ft_given_base(self) -> None:
        base = np.array([0.7, 0.2, 0.1])
        ft = np.array([0.1, 0.3, 0.6])
        kl_ft_base = float(np.sum(ft * np.log(ft / base)))
        kl_base_ft = float(np.sum(base * np.log(base / ft)))
        assert abs(kl_ft_base - kl_base_ft) > 0.05  # the example really is asymmetric
        got = divergence(P, Q, "kl")  # P is base, Q is the fine-tune
        assert got == pytest.approx(kl_ft_base, rel=1e-5)
        assert got != pytest.approx(kl_base_ft, rel=1e-3)

    def test_zero_for_identical_and_nonnegative(self) -> None:
        assert divergence(Q, Q, "kl") == pytest.approx(0.0, abs=1e-9)
        assert divergence(Q, P, "kl") > 0.0

    def test_unknown_kind_rejected(self) -> None:
        with pytest.raises(ValueError, match="unknown divergence kind"):
            divergence(P, Q, "hellinger")  # type: ignore[arg-type]


class TestTailMass:
    def test_same_ids_different_tail_mass_is_a_difference(self) -> None:
        # Renormalised over the top-2 alone both are (2/3, 1/3): only the tail tells them apart.
        a = dist([3, 4], [0.6, 0.3], vocab=100, tail=0.1)
        b = dist([3, 4], [0.4, 0.2], vocab=100, tail=0.4)
        got = divergence(a, b, "js")
        p = np.array([0.6, 0.3, 0.1])
        q = np.array([0.4, 0.2, 0.4])
        m = (p + q) / 2
        expected = 0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m))
        assert got > 0.01
        assert got == pytest.approx(float(expected), rel=1e-5)

    def test_aligned_probs_conserve_mass_and_listed_probabilities(self) -> None:
        a = dist([0, 1], [0.6, 0.3], vocab=10, tail=0.1)
        b = dist([1, 2], [0.5, 0.3], vocab=10, tail=0.2)
        pa, pb = aligned_probs(a, b)
        assert pa.sum() == pytest.approx(1.0) and pb.sum() == pytest.approx(1.0)
        # union is [0, 1, 2] + tail bucket; each side keeps the mass it listed
        assert pa[:2] == pytest.approx([0.6, 0.3], rel=1e-6)
        assert pb[1:3] == pytest.approx([0.5, 0.3], rel=1e-6)
        # a token one side did not list gets a share of that side's tail, never more
        assert 0.0 < pa[2] < 0.1
        assert 0.0 < pb[0] < 0.2

    def test_disjoint_top_k_is_finite_and_bounded(self) -> None:
        a = dist([0, 1], [0.6, 0.3], vocab=10, tail=0.1)
        b = dist([5, 6], [0.6, 0.3], vocab=10, tail=0.1)
        js = divergence(a, b, "js")
        kl = divergence(a, b, "kl")
        assert 0.3 < js <= LN2
        assert math.isfinite(kl) and kl > js


class TestGuards:
    @pytest.mark.parametrize("bad", [float("nan"), float("inf")])
    def test_non_finite_logprobs_raise(self, bad: float) -> None:
        broken = TokenDist(
            token_ids=np.array([0, 1, 2], dtype=np.int64),
            logprobs=np.array([-0.5, bad, -2.0], dtype=np.float32),
            vocab_size=3,
        )
        with pytest.raises(ProbeError, match="non-finite"):
            divergence(P, broken, "js")
        with pytest.raises(ProbeError, match="non-finite"):
            divergence(broken, P, "kl")

    def test_minus_inf_logprob_is_a_masked_token_with_zero_probability(self) -> None:
        masked = TokenDist(
            token_ids=np.array([0, 1, 2], dtype=np.int64),
            logprobs=np.array([np.log(0.7), -np.inf, np.log(0.3)], dtype=np.float32),
            vocab_size=3,
        )
        same = TokenDist(
            token_ids=np.array([0, 2], dtype=np.int64),
            logprobs=np.log(np.array([0.7, 0.3], dtype=np.float32)),
            vocab_size=3,
            tail_logprob=None,
        )
        assert divergence(masked, same, "js") < 1e-6

    def test_nan_tail_raises(self) -> None:
        broken = TokenDist(
            token_ids=np.array([0, 1], dtype=np.int64),
            logprobs=np.log(np.array([0.6, 0.3], dtype=np.float32)),
            vocab_size=10,
            tail_logprob=float("nan"),
        )
        with pytest.raises(ProbeError, match="tail"):
            divergence(broken, broken, "js")

    def test_effectively_uniform_raises(self) -> None:
        flat = dist([0, 1, 2, 3], [0.25, 0.25, 0.25, 0.25])
        with pytest.raises(ProbeError, match="uniform"):
            divergence(flat, P, "js")

    def test_empty_raises(self) -> None:
        empty = TokenDist(
            token_ids=np.array([], dtype=np.int64),
            logprobs=np.array([], dtype=np.float32),
            vocab_size=10,
        )
        with pytest.raises(ProbeError, match="empty"):
            divergence(P, empty, "js")

    def test_mismatched_shapes_rejected_at_construction(self) -> None:
        with pytest.raises(ValueError, match="differ in shape"):
            TokenDist(
                token_ids=np.array([0, 1], dtype=np.int64),
                logprobs=np.array([-0.1], dtype=np.float32),
                vocab_size=2,
            )


# --- property tests -------------------------------------------------------------------------

try:
    from hypothesis import assume, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis belongs in the dev extra
    HAVE_HYPOTHESIS = False
else:
    HAVE_HYPOTHESIS = True

needs_hypothesis = pytest.mark.skipif(
    not HAVE_HYPOTHESIS, reason="hypothesis is not installed (pip install -e '.[dev]')"
)


def _topk(vocab: int, k: int, ids_seed: int, logits: list[float]) -> TokenDist:
    """Top-k slice of a softmax over ``vocab`` logits, with the measured tail."""
    full = np.asarray(logits[:vocab], dtype=np.float64)
    full = full - np.log(np.sum(np.exp(full - full.max()))) - full.max()
    order = np.random.default_rng(ids_seed).permutation(vocab)
    full = full[order]
    top = np.argsort(-full, kind="stable")[:k]
    rest = float(1.0 - np.exp(full[top]).sum())
    tail = None if k == vocab else (math.log(rest) if rest > 1e-12 else 0.0)
    return TokenDist(
        token_ids=top.astype(np.int64),
        logprobs=full[top].astype(np.float32),
        vocab_size=vocab,
        tail_logprob=tail,
    )


if HAVE_HYPOTHESIS:
    _logits = st.lists(
        st.floats(min_value=-20, max_value=20, allow_nan=False), min_size=64, max_size=64
    )

    @st.composite
    def _pair(draw: st.DrawFn) -> tuple[TokenDist, TokenDist]:
        vocab = draw(st.integers(min_value=2, max_value=64))
        k = draw(st.integers(min_value=1, max_value=vocab))
        a = _topk(vocab, k, draw(st.integers(0, 1000)), draw(_logits))
        b = _topk(vocab, k, draw(st.integers(0, 1000)), draw(_logits))
        for d in (a, b):
            lp = d.logprobs
            assume(lp.size < 2 or float(lp.max() - lp.min()) > 1e-6)
        return a, b

    @needs_hypothesis
    @settings(max_examples=150, deadline=None)
    @given(_pair())
    def test_js_bounded_and_symmetric(pair: tuple[TokenDist, TokenDist]) -> None:
        a, b = pair
        ab = divergence(a, b, "js")
        ba = divergence(b, a, "js")
        assert 0.0 <= ab <= LN2
        assert ab == pytest.approx(ba, abs=1e-12)

    @needs_hypothesis
    @settings(max_examples=100, deadline=None)
    @given(_pair())
    def test_self_divergence_is_zero_and_kl_nonnegative(pair: tuple[TokenDist, TokenDist]) -> None:
        a, b = pair
        assert divergence(a, a, "js") == pytest.approx(0.0, abs=1e-9)
        assert divergence(a, a, "kl") == pytest.approx(0.0, abs=1e-9)
        assert divergence(a, b, "kl") >= 0.0

else:  # pragma: no cover

    @needs_hypothesis
    def test_js_bounded_and_symmetric() -> None:
        raise AssertionError("unreachable")
