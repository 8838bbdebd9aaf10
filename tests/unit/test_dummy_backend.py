"""The torch-free dummy backend honours the view contract every probe relies on."""

from __future__ import annotations

import numpy as np
import pytest

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core.errors import ViewError
from dlm_sway.core.scoring import (
    DifferentialBackend,
    NullCalibratedBackend,
    PreflightCheckable,
    ScalableDifferentialBackend,
    TokenDist,
)

PROMPT = "The quick brown fox"


def full(view_cm: object, prompt: str = PROMPT) -> np.ndarray:
    """Full-vocabulary log-probs of ``prompt`` under a view, ordered by token id."""
    with view_cm as view:  # type: ignore[attr-defined]
        d: TokenDist = view.next_token_dist(prompt, top_k=10_000)
    out = np.empty(d.vocab_size)
    out[d.token_ids] = d.logprobs
    return out


def test_implements_every_protocol() -> None:
    b = DummyDifferentialBackend()
    for proto in (
        DifferentialBackend,
        ScalableDifferentialBackend,
        NullCalibratedBackend,
        PreflightCheckable,
    ):
        assert isinstance(b, proto), proto.__name__


class TestViewExclusivity:
    def test_nested_views_raise(self) -> None:
        b = DummyDifferentialBackend()
        with b.as_base(), pytest.raises(ViewError, match="still open"), b.as_finetuned():
            pass
        with b.as_finetuned(), pytest.raises(ViewError), b.as_null_adapter(1):
            pass
        with b.as_scaled_adapter(0.5), pytest.raises(ViewError), b.as_base():
            pass

    def test_usable_after_an_exception_inside_a_view(self) -> None:
        b = DummyDifferentialBackend()
        with pytest.raises(RuntimeError, match="boom"), b.as_finetuned():
            raise RuntimeError("boom")
        with b.as_base() as view:  # no ViewError: the failed view was closed
            assert view.id == "base"

    def test_sequential_views_are_fine(self) -> None:
        b = DummyDifferentialBackend()
        for _ in range(2):
            with b.as_base():
                pass
            with b.as_finetuned():
                pass


class TestScaling:
    def test_scaled_zero_is_base_and_scaled_one_is_finetuned(self) -> None:
        b = DummyDifferentialBackend(strength=1.0)
        np.testing.assert_allclose(full(b.as_scaled_adapter(0.0)), full(b.as_base()), atol=1e-6)
        np.testing.assert_allclose(
            full(b.as_scaled_adapter(1.0)), full(b.as_finetuned()), atol=1e-6
        )

    def test_finetune_differs_from_base_and_strength_zero_does_not(self) -> None:
        assert not np.allclose(
            full(DummyDifferentialBackend().as_finetuned()),
            full(DummyDifferentialBackend().as_base()),
            atol=1e-3,
        )
        noop = DummyDifferentialBackend(strength=0.0)
        np.testing.assert_allclose(full(noop.as_finetuned()), full(noop.as_base()), atol=1e-6)

    def test_effect_grows_with_lambda(self) -> None:
        b = DummyDifferentialBackend()
        base = full(b.as_base())
        gaps = [float(np.abs(full(b.as_scaled_adapter(lam)) - base).sum()) for lam in (0.5, 1, 2)]
        assert gaps == sorted(gaps) and gaps[0] > 0


class TestNullViews:
    def test_deterministic_per_seed(self) -> None:
        a = full(DummyDifferentialBackend().as_null_adapter(1001))
        b = full(DummyDifferentialBackend().as_null_adapter(1001))
        np.testing.assert_array_equal(a, b)

    def test_different_across_seeds_and_from_finetune(self) -> None:
        be = DummyDifferentialBackend()
        n1 = full(be.as_null_adapter(1))
        n2 = full(be.as_null_adapter(2))
        assert not np.allclose(n1, n2, atol=1e-4)
        assert not np.allclose(n1, full(be.as_finetuned()), atol=1e-4)
        assert not np.allclose(n1, full(be.as_base()), atol=1e-4)

    def test_larger_rank_scale_moves_further_from_base(self) -> None:
        be = DummyDifferentialBackend()
        base = full(be.as_base())
        small = np.abs(full(be.as_null_adapter(5, rank_scale=0.5)) - base).sum()
        big = np.abs(full(be.as_null_adapter(5, rank_scale=2.0)) - base).sum()
        assert big > small > 0

    @pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
    def test_non_positive_rank_scale_rejected(self, bad: float) -> None:
        with pytest.raises(ValueError, match="rank_scale"):
            DummyDifferentialBackend().as_null_adapter(1, rank_scale=bad)


def test_batch_equals_per_prompt() -> None:
    prompts = ["a b c", "The quick brown fox", "Hello", "a b c"]
    b = DummyDifferentialBackend()
    with b.as_finetuned() as view:
        batch = view.next_token_dist_batch(prompts, top_k=16)
        single = [view.next_token_dist(p, top_k=16) for p in prompts]
    assert len(batch) == len(prompts)
    for x, y in zip(batch, single, strict=True):
        np.testing.assert_array_equal(x.token_ids, y.token_ids)
        np.testing.assert_allclose(x.logprobs, y.logprobs, atol=1e-6)
        assert x.tail_logprob == pytest.approx(y.tail_logprob)


def test_top_k_slice_reports_its_tail() -> None:
    with DummyDifferentialBackend().as_base() as view:
        d = view.next_token_dist(PROMPT, top_k=8)
        whole = view.next_token_dist(PROMPT, top_k=10_000)
    assert d.k == 8 and d.tail_logprob is not None and d.tail_logprob < 0
    mass = float(np.exp(d.logprobs.astype(np.float64)).sum() + np.exp(d.tail_logprob))
    assert mass == pytest.approx(1.0, abs=1e-5)
    assert whole.tail_logprob is None and whole.k == whole.vocab_size


def test_counts_forward_passes() -> None:
    b = DummyDifferentialBackend()
    with b.as_base() as view:
        view.next_token_dist_batch(["a", "b", "c"])
    assert b.stats.to_dict()["forward_passes"] == 3


class TestPreflight:
    def test_passes_on_finite_backend(self) -> None:
        assert DummyDifferentialBackend().preflight_finite_check() == (True, "")

    def test_fails_with_nan_logits(self) -> None:
        ok, reason = DummyDifferentialBackend(nan=True).preflight_finite_check()
        assert not ok
        assert "non-finite" in reason and "ft" in reason


def test_non_finite_construction_rejected() -> None:
    with pytest.raises(ValueError):
        DummyDifferentialBackend(strength=float("nan"))
