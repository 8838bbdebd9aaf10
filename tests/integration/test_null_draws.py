"""Null LoRA factors are drawn once per run and reused, never reused across adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_many_adapters_hf import scaled_checkpoint

from dlm_sway.backends.hf import HFDifferentialBackend

pytestmark = pytest.mark.hf

PROMPT = "The zebra astronaut"


def _null_logprobs(backend: HFDifferentialBackend, seed: int) -> np.ndarray[Any, Any]:
    with backend.as_null_adapter(seed, construction="norm_matched") as view:
        return np.asarray(view.next_token_full(PROMPT).logprobs, dtype=np.float64)


def _fresh(base: Path, adapter: Path) -> HFDifferentialBackend:
    return HFDifferentialBackend(str(base), adapter, dtype="fp32", device="cpu")


def test_reopened_null_is_the_same_null_and_a_swap_redraws(
    tiny_assets: Any, tmp_path: Path
) -> None:
    doubled = scaled_checkpoint(tiny_assets.adapter, tmp_path / "doubled", 2.0)
    with _fresh(tiny_assets.base, tiny_assets.adapter) as backend:
        first = _null_logprobs(backend, 7)
        scorer = backend._live_scorer()
        for instr in (scorer.instr, scorer.full_instr):  # no cached result: force a forward
            instr.cache.drop_views(lambda ns: False)
        assert backend._draw_memo, "the draw was kept for the next open"
        np.testing.assert_array_equal(_null_logprobs(backend, 7), first)
        with backend.as_finetuned() as view:  # the trained weights are back after the null
            trained = np.asarray(view.next_token_full(PROMPT).logprobs)
        backend.swap_adapter(doubled)
        swapped = _null_logprobs(backend, 7)
    with _fresh(tiny_assets.base, doubled) as fresh:
        np.testing.assert_allclose(swapped, _null_logprobs(fresh, 7), atol=1e-6)
    # Norm-matched to an adapter twice the size: a stale draw would give `first` again.
    assert np.abs(swapped - first).max() > 1e-4
    with _fresh(tiny_assets.base, tiny_assets.adapter) as again, again.as_finetuned() as view:
        np.testing.assert_array_equal(np.asarray(view.next_token_full(PROMPT).logprobs), trained)
