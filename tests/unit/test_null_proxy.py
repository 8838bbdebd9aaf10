"""The null-calibration proxy: real base, one fixed null as "fine-tune", nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core.errors import ViewError
from dlm_sway.core.scoring import (
    DifferentialBackend,
    NullCalibratedBackend,
    ScalableDifferentialBackend,
)
from dlm_sway.probes._null_proxy import NullCalibrationBackendProxy

PROMPTS = ["The quick brown fox", "Once upon a time"]


def logprobs(view_cm: object) -> list[np.ndarray]:
    with view_cm as view:  # type: ignore[attr-defined]
        return [d.logprobs for d in view.next_token_dist_batch(PROMPTS, top_k=32)]


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture
def inner() -> DummyDifferentialBackend:
    return DummyDifferentialBackend()


def test_as_base_is_the_real_base(inner: DummyDifferentialBackend) -> None:
    proxy = NullCalibrationBackendProxy(inner, seed=1000)
    with proxy.as_base() as view:
        assert view.id == "base"
    assert same(logprobs(proxy.as_base()), logprobs(inner.as_base()))


def test_as_finetuned_is_the_null_view_at_the_fixed_seed(inner: DummyDifferentialBackend) -> None:
    proxy = NullCalibrationBackendProxy(inner, seed=1000, init_scale=0.02, rank_scale=2.0)
    first = logprobs(proxy.as_finetuned())
    again = logprobs(proxy.as_finetuned())
    assert same(first, again)  # re-entry yields the same null
    assert same(first, logprobs(inner.as_null_adapter(1000, init_scale=0.02, rank_scale=2.0)))
    assert not same(first, logprobs(inner.as_finetuned()))
    assert not same(first, logprobs(inner.as_null_adapter(1001, rank_scale=2.0)))
    assert proxy.seed == 1000


def test_forwards_init_scale_and_rank_scale(inner: DummyDifferentialBackend) -> None:
    a = logprobs(NullCalibrationBackendProxy(inner, seed=3, rank_scale=1.0).as_finetuned())
    b = logprobs(NullCalibrationBackendProxy(inner, seed=3, rank_scale=4.0).as_finetuned())
    c = logprobs(NullCalibrationBackendProxy(inner, seed=3, init_scale=0.05).as_finetuned())
    assert not same(a, b)
    assert not same(a, c)


def test_exposes_only_the_two_differential_views(inner: DummyDifferentialBackend) -> None:
    proxy = NullCalibrationBackendProxy(inner, seed=1)
    assert isinstance(proxy, DifferentialBackend)
    assert not isinstance(proxy, ScalableDifferentialBackend)
    assert not isinstance(proxy, NullCalibratedBackend)
    for attr in ("as_scaled_adapter", "as_null_adapter", "cache_identity"):
        assert not hasattr(proxy, attr), attr


def test_inner_view_exclusivity_still_applies(inner: DummyDifferentialBackend) -> None:
    proxy = NullCalibrationBackendProxy(inner, seed=1)
    with proxy.as_base(), pytest.raises(ViewError), proxy.as_finetuned():
        pass
    with proxy.as_finetuned():  # the failed open left nothing behind
        pass
