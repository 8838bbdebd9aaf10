"""The on-disk base cache on the tiny HF model: a second run on the same base (another
adapter) does no base-view forwards, and its verdicts and values match an uncached run
within the measured noise floor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from spies import hf_entry, run_spied

from dlm_sway.backends.hf import HFDifferentialBackend

pytestmark = pytest.mark.hf

PROMPTS = ["The zebra", "The zebra astronaut sings", "Cats sleep in the", "Fresh bread and"]
PAIRS = [("The zebra", " astronaut"), ("Cats sleep", " in the sun")]


def _score_base(backend: HFDifferentialBackend) -> tuple[Any, ...]:
    with backend.as_base() as view:
        full = view.next_token_full_batch(PROMPTS)
        topk = view.next_token_dist(PROMPTS[0], top_k=8)
        lps = view.logprob_of_batch(PAIRS)
        roll = view.rolling_logprob_batch(PROMPTS)
    return full, topk, lps, roll


def test_second_backend_on_same_base_does_zero_base_forwards(tiny_assets: Any) -> None:
    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=3) as first:
        cold = _score_base(first)
        assert first.stats.forward_passes > 0
    with HFDifferentialBackend(
        str(tiny_assets.base), tiny_assets.zero_adapter, batch_size=3
    ) as second:
        warm = _score_base(second)
        assert second.stats.forward_passes == 0
        with second.as_finetuned() as view:  # only the base view is shared
            view.next_token_full_batch(PROMPTS)
        assert second.stats.forward_passes > 0
    for a, b in zip(cold[0], warm[0], strict=True):
        np.testing.assert_array_equal(a.logprobs, b.logprobs)
    np.testing.assert_array_equal(cold[1].token_ids, warm[1].token_ids)
    assert cold[2] == warm[2]
    for a, b in zip(cold[3], warm[3], strict=True):
        np.testing.assert_array_equal(a.logprobs, b.logprobs)


def test_disabled_cache_recomputes(tiny_assets: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWAY_DISABLE_BASE_CACHE", "1")
    for adapter in (tiny_assets.adapter, tiny_assets.zero_adapter):
        with HFDifferentialBackend(str(tiny_assets.base), adapter, batch_size=3) as backend:
            _score_base(backend)
            assert backend.stats.forward_passes > 0


def test_changed_base_weights_miss(tiny_assets: Any, tmp_path: Path) -> None:
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=3) as b:
        _score_base(b)
    other = Path(shutil.copytree(tiny_assets.base, tmp_path / "base"))
    weights = other / "model.safetensors"
    tensors = load_file(str(weights))
    name = next(k for k in tensors if k.endswith("lm_head.weight"))
    tensors[name] = tensors[name] + 0.01 * torch.randn_like(tensors[name])
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with HFDifferentialBackend(str(other), tiny_assets.adapter, batch_size=3) as changed:
        _score_base(changed)
        assert changed.stats.forward_passes > 0


def _suite(base: Path, adapter: Path, batch_size: int) -> Any:
    from dlm_sway.suite.loader import from_dict

    return from_dict(
        {
            "version": 1,
            "models": {"ft": hf_entry(base, adapter, batch_size)},
            "defaults": {"seed": 0, "top_k": 16},
            "suite": [
                {"name": "nulls", "kind": "null_adapter", "runs": 3},
                {"name": "shift", "kind": "delta_kl", "prompts": PROMPTS},
                {"name": "ablation", "kind": "adapter_ablation", "prompts": PROMPTS},
            ],
        },
        source="inline",
        base_dir=base.parent,
    )


def _run(base: Path, adapter: Path, batch_size: int) -> tuple[Any, int]:
    suite, seen = run_spied(_suite(base, adapter, batch_size), "_record")
    return suite, seen.count("base")


def test_cached_run_keeps_verdicts_and_values_within_the_noise_floor(
    tiny_assets: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWAY_DISABLE_NULL_CACHE", "1")
    monkeypatch.setenv("SWAY_DISABLE_BASE_CACHE", "1")
    reference, uncached_base = _run(tiny_assets.base, tiny_assets.adapter, 3)
    monkeypatch.delenv("SWAY_DISABLE_BASE_CACHE")
    # Another adapter, another batch layout, fills the cache; then the real run reads it.
    _run(tiny_assets.base, tiny_assets.zero_adapter, 2)
    cached, cached_base = _run(tiny_assets.base, tiny_assets.adapter, 3)
    # Only the preflight (1) and the noise floor's batched half still touch the base
    # weights: the floor's one-prompt forwards were stored by the batch-2 run, but its
    # batched dists depend on the batch, and that run's batches held 2 texts, not 3
    # ("The zebra" is a prefix of "The zebra astronaut sings": 3 texts, one forward).
    assert cached_base == 1 + 1
    assert uncached_base > cached_base
    floor = reference.noise_floor["logprob_max_abs_diff"]
    assert 0.0 < floor < 1e-3
    for ref, new in zip(reference.probes, cached.probes, strict=True):
        assert (ref.name, ref.verdict) == (new.name, new.verdict)
        if ref.raw is not None:
            assert new.raw is not None
            assert abs(new.raw - ref.raw) <= floor, (ref.name, ref.raw, new.raw)


def test_the_noise_floor_layouts_come_from_the_base_cache_on_a_second_run(
    tiny_assets: Any,
) -> None:
    """Both layouts are base-view results: a second backend on the same base reads them
    back (no forward, the same numbers); another batch size is another batch layout."""
    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=3) as first:
        cold = first.base_layout_pairs(PROMPTS, 8)
        assert first.stats.forward_passes > 0
    with HFDifferentialBackend(
        str(tiny_assets.base), tiny_assets.zero_adapter, batch_size=3
    ) as second:
        warm = second.base_layout_pairs(PROMPTS, 8)
        assert second.stats.forward_passes == 0
    for (a, b), (c, d) in zip(cold, warm, strict=True):
        np.testing.assert_array_equal(a.logprobs, c.logprobs)
        np.testing.assert_array_equal(b.logprobs, d.logprobs)
    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=4) as other:
        other.base_layout_pairs(PROMPTS, 8)
        assert other.stats.forward_passes == 1  # one batch of 4; the singles are stored
