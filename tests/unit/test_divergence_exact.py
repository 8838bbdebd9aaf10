"""Exact full-vocabulary divergences, the top-k tail's error bound, and how probes get dists.

A backend that holds full logits hands probes the whole distribution, and the
divergence over two such vectors must equal a direct computation; a top-k
backend's estimate must stay within :func:`tail_error_bound` of the exact value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm_sway.core import divergence as div_module
from dlm_sway.core.divergence import LN2, divergence, tail_error_bound
from dlm_sway.core.scoring import FullDistributions, TokenDist
from dlm_sway.probes._dists import dists, max_tail_bound, tail_bounds

SMOLLM2_VOCAB = 49_152


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    top = logits.max()
    return logits - (top + np.log(np.exp(logits - top).sum()))


def _full(lp: np.ndarray, ids: np.ndarray | None = None) -> TokenDist:
    ids = np.arange(lp.size, dtype=np.int64) if ids is None else ids
    return TokenDist(ids, lp[ids].astype(np.float32), lp.size, None)


def _truncate(lp: np.ndarray, k: int) -> TokenDist:
    """Top-k of an exact float64 log-prob vector, with the exact tail (log of its mass)."""
    order = np.argsort(-lp, kind="stable")
    top, rest = order[:k], order[k:]
    tail: float | None = None
    if rest.size:
        tail_lp = float(np.logaddexp.reduce(lp[rest]))
        tail = tail_lp if math.exp(tail_lp) > 1e-12 else 0.0
    return TokenDist(top.astype(np.int64), lp[top].astype(np.float32), lp.size, tail)


def _direct(base: np.ndarray, ft: np.ndarray, kind: str) -> float:
    """Reference JS / KL(ft‖base) in float64, straight from the definition (0·log 0 = 0)."""
    base, ft = _log_softmax(base), _log_softmax(ft)
    p, q = np.exp(base), np.exp(ft)
    if kind == "kl":
        return float(np.sum(q[q > 0] * (ft - base)[q > 0]))
    m = 0.5 * (p + q)
    return sum(0.5 * float(np.sum(x[x > 0] * np.log(x[x > 0] / m[x > 0]))) for x in (p, q))


def _pair(seed: int, vocab: int, *, scale: float = 3.0, shift: float = 1.0) -> tuple:
    """Two log-prob vectors, exactly representable in float32 (what dists carry)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(vocab) * scale
    ft = base + rng.standard_normal(vocab) * shift
    return (
        _log_softmax(base).astype(np.float32).astype(np.float64),
        _log_softmax(ft).astype(np.float32).astype(np.float64),
    )


# ------------------------------------------------------------------ exact path


@pytest.mark.parametrize("kind", ["js", "kl"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_vocabulary_divergence_matches_direct_computation(kind: str, seed: int) -> None:
    base, ft = _pair(seed, SMOLLM2_VOCAB)
    got = divergence(_full(base), _full(ft), kind)
    assert got == pytest.approx(_direct(base, ft, kind), rel=1e-9, abs=1e-12)


def test_aligned_full_vectors_skip_the_id_union(monkeypatch: pytest.MonkeyPatch) -> None:
    base, ft = _pair(3, SMOLLM2_VOCAB)
    a, b = _full(base), _full(ft)

    def no_union(*_: object) -> None:
        raise AssertionError("aligned full vectors must not be re-aligned through union1d")

    monkeypatch.setattr(div_module.np, "union1d", no_union)
    assert divergence(a, b, "js") > 0.0
    assert divergence(a, b, "kl") > 0.0
    assert tail_error_bound(a, b, "js") == 0.0 == tail_error_bound(a, b, "kl")


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    vocab=st.integers(2, 400),
    scale=st.floats(0.05, 12.0),
    shift=st.floats(0.0, 6.0),
    kind=st.sampled_from(["js", "kl"]),
)
def test_exact_path_equals_the_union_path_on_full_dists(
    seed: int, vocab: int, scale: float, shift: float, kind: str
) -> None:
    """Shuffled ids force the general (union) path; both are exact on full dists
    (the union path up to its 1e-12 floor on KL's q)."""
    base, ft = _pair(seed, vocab, scale=scale, shift=shift)
    if np.ptp(base) < 1e-6 or np.ptp(ft) < 1e-6:
        return  # effectively uniform: refused by both paths (tested elsewhere)
    shuffled = np.random.default_rng(seed).permutation(vocab).astype(np.int64)
    fast = divergence(_full(base), _full(ft), kind)
    general = divergence(_full(base), _full(ft, shuffled), kind)
    reference = _direct(base, ft, kind)
    assert fast == pytest.approx(reference, rel=1e-9, abs=1e-12)
    if kind == "js" or np.exp(base).min() > 1e-12:  # the union path floors q at 1e-12
        assert general == pytest.approx(reference, rel=1e-6, abs=1e-9)


def test_zero_probability_tokens_are_handled_exactly() -> None:
    """-inf log-probs (masked tokens) contribute 0·∞ = 0, never NaN."""
    base, ft = _pair(4, 1000)
    base[:10] = -np.inf  # base never emits these; the fine-tune does
    ft[10:20] = -np.inf
    js = divergence(_full(base), _full(ft), "js")
    assert js == pytest.approx(_direct(base, ft, "js"), rel=1e-9)
    # KL(ft‖base) over a token base rules out is infinite; it is floored at ln 1e-12 as
    # on the top-k path rather than reported as inf.
    kl = divergence(_full(base), _full(ft), "kl")
    lp, lq = _log_softmax(ft), _log_softmax(base)
    live = lp > -np.inf
    floored = np.where(lq == -np.inf, math.log(1e-12), lq)
    assert kl == pytest.approx(float(np.sum(np.exp(lp[live]) * (lp - floored)[live])), rel=1e-9)


def test_identical_full_dists_have_zero_divergence() -> None:
    base, _ = _pair(5, SMOLLM2_VOCAB)
    d = _full(base)
    assert divergence(d, d, "js") == pytest.approx(0.0, abs=1e-12)
    assert divergence(d, d, "kl") == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------ tail bound


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    vocab=st.integers(3, 300),
    scale=st.floats(0.05, 10.0),
    shift=st.floats(0.0, 6.0),
    k_frac=st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)),
)
def test_tail_bound_holds_on_random_truncated_distributions(
    seed: int, vocab: int, scale: float, shift: float, k_frac: tuple[float, float]
) -> None:
    base, ft = _pair(seed, vocab, scale=scale, shift=shift)
    if np.ptp(base) < 1e-6 or np.ptp(ft) < 1e-6:
        return
    k_base, k_ft = (max(1, min(vocab, round(f * vocab))) for f in k_frac)
    a, b = _truncate(base, k_base), _truncate(ft, k_ft)
    exact = _direct(base, ft, "js")
    estimate = divergence(a, b, "js")
    bound = tail_error_bound(a, b, "js")
    # 1e-6: the listed log-probs are float32, the bound is about exact arithmetic.
    assert abs(estimate - exact) <= bound + 1e-6
    # Never looser than the mass-only bound: ln2·(P(R) + Q(R))/2, R = not listed by both.
    common = np.intersect1d(a.token_ids, b.token_ids)
    p_r = 1.0 - float(np.exp(_log_softmax(base)[common]).sum())
    q_r = 1.0 - float(np.exp(_log_softmax(ft)[common]).sum())
    assert 0.0 <= bound <= 0.5 * LN2 * (p_r + q_r) + 1e-6
    # KL(ft‖base): the fine-tune has mass (all its probabilities are > 0) where base's
    # are unknown and may be arbitrarily small, so its error is unbounded.
    full_both = k_base == vocab and k_ft == vocab
    assert tail_error_bound(a, b, "kl") == (0.0 if full_both else math.inf)


def test_tail_bound_is_attained_by_disjoint_tails() -> None:
    """Same listed token, tails on different unlisted tokens: the bound is the true error."""
    vocab = 4
    base = np.log(np.array([0.5, 0.5, 1e-300, 1e-300]))
    ft = np.log(np.array([0.5, 1e-300, 0.5, 1e-300]))
    a, b = _truncate(base, 1), _truncate(ft, 1)
    exact = 0.5 * LN2  # half of each side's mass sits where the other has none
    assert divergence(a, b, "js") == pytest.approx(0.0, abs=1e-9)  # tails spread alike
    assert tail_error_bound(a, b, "js") == pytest.approx(exact, abs=1e-9)
    assert vocab == a.vocab_size


def test_tail_bound_is_zero_when_both_dists_are_full_and_rejects_bad_kind() -> None:
    base, ft = _pair(6, 50)
    assert tail_error_bound(_full(base), _full(ft), "js") == 0.0
    with pytest.raises(ValueError, match="unknown divergence kind"):
        tail_error_bound(_full(base), _full(ft), "tv")  # type: ignore[arg-type]


# ------------------------------------------------------------------ probes/_dists


class _TopKView:
    """A view that only returns top-k (e.g. a server backend)."""

    id = "topk"

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table
        self.asked_top_k: list[int] = []

    def next_token_dist(self, prompt: str, top_k: int = 256) -> TokenDist:
        return _truncate(self.table[prompt], top_k)

    def next_token_dist_batch(self, prompts: Sequence[str], top_k: int = 256) -> list[TokenDist]:
        self.asked_top_k.append(top_k)
        return [self.next_token_dist(p, top_k) for p in prompts]


class _FullView(_TopKView):
    """A view holding full logits."""

    id = "full"

    def next_token_full(self, prompt: str) -> TokenDist:
        return _full(self.table[prompt])

    def next_token_full_batch(self, prompts: Sequence[str]) -> list[TokenDist]:
        return [self.next_token_full(p) for p in prompts]


PROMPTS = ["a", "b", "c"]


def _tables() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    pairs = [_pair(10 + i, 500, scale=1.0, shift=1.5) for i in range(len(PROMPTS))]
    return dict(zip(PROMPTS, [b for b, _ in pairs], strict=True)), dict(
        zip(PROMPTS, [f for _, f in pairs], strict=True)
    )


def test_dists_takes_the_full_distribution_when_the_view_declares_it() -> None:
    base_t, ft_t = _tables()
    base_view, ft_view = _FullView(base_t), _FullView(ft_t)
    assert isinstance(base_view, FullDistributions)
    base, ft = dists(base_view, PROMPTS, 8), dists(ft_view, PROMPTS, 8)
    assert base_view.asked_top_k == []  # top_k is moot: nothing was truncated
    assert all(d.k == d.vocab_size == 500 and d.tail_logprob is None for d in base + ft)
    got = [divergence(b, f, "js") for b, f in zip(base, ft, strict=True)]
    want = [_direct(base_t[p], ft_t[p], "js") for p in PROMPTS]
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert tail_bounds(base, ft, "js") == [0.0, 0.0, 0.0]
    assert max_tail_bound(base, ft, "kl") == 0.0


def test_dists_keeps_top_k_for_views_without_full_logits_and_bounds_the_error() -> None:
    base_t, ft_t = _tables()
    base_view, ft_view = _TopKView(base_t), _TopKView(ft_t)
    assert not isinstance(base_view, FullDistributions)
    base, ft = dists(base_view, PROMPTS, 8), dists(ft_view, PROMPTS, 8)
    assert base_view.asked_top_k == [8] and all(d.k == 8 for d in base)
    bounds = tail_bounds(base, ft, "js")
    for b, f, p, bound in zip(base, ft, PROMPTS, bounds, strict=True):
        assert 0.0 < bound <= LN2
        assert abs(divergence(b, f, "js") - _direct(base_t[p], ft_t[p], "js")) <= bound + 1e-6
    assert max_tail_bound(base, ft, "js") == max(bounds)
    assert max_tail_bound(base, ft, "kl") == math.inf


def test_dists_refuses_a_backend_that_drops_prompts() -> None:
    class _Short(_FullView):
        def next_token_full_batch(self, prompts: Sequence[str]) -> list[TokenDist]:
            return super().next_token_full_batch(prompts)[:-1]

    base_t, _ = _tables()
    with pytest.raises(RuntimeError, match="returned 2 dists for 3 prompts"):
        dists(_Short(base_t), PROMPTS, 8)


def test_delta_kl_evidence_reports_the_tail_bound(prompts: list[str]) -> None:
    from dlm_sway.backends.dummy import DummyDifferentialBackend
    from dlm_sway.probes.base import RunContext
    from dlm_sway.probes.delta_kl import DeltaKLProbe, DeltaKLSpec

    backend = DummyDifferentialBackend()
    for top_k, positive in ((8, True), (256, False)):  # the dummy's vocabulary is 256
        spec = DeltaKLSpec(name="d", prompts=prompts, top_k=top_k)
        result = DeltaKLProbe().run(spec, RunContext(backend=backend, calibrating=True))
        bound = result.evidence["max_tail_bound"]
        assert (bound > 0.0) is positive
        assert bound <= LN2
