"""modules_to_save, rank_pattern/alpha_pattern and rsLoRA: nulls and scaling honour them."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from finetune_kinds import lora, train_adapter  # noqa: E402

from dlm_sway.backends import hf_lora, hf_weights  # noqa: E402
from dlm_sway.backends.hf import HFDifferentialBackend  # noqa: E402

PROMPTS = ["The zebra astronaut", "The quick brown fox", "Fresh bread and"]


def _backend(tiny_assets: Any, adapter: Path) -> HFDifferentialBackend:
    return HFDifferentialBackend(str(tiny_assets.base), adapter, dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def mts(tiny_assets: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    out = tmp_path_factory.mktemp("mts") / "adapter"
    backend = _backend(
        tiny_assets, train_adapter(tiny_assets.base, out, lora(modules_to_save=["lm_head"]))
    )
    yield backend
    backend.close()


def _full(view: Any) -> np.ndarray[Any, Any]:
    return np.stack([d.logprobs for d in view.next_token_full_batch(PROMPTS)])


def _state(backend: HFDifferentialBackend) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in backend.peft_model.state_dict().items()}


def _lm_head_seen(backend: HFDifferentialBackend) -> list[Any]:
    """Capture the lm_head weight the forward actually multiplies by."""
    seen: list[Any] = []
    trained = backend.peft_model.get_submodule("base_model.model.lm_head").modules_to_save[
        "default"
    ]
    handle = trained.register_forward_pre_hook(lambda m, a: seen.append(m.weight.detach().clone()))
    return [seen, handle]


def test_scaled_interpolates_the_saved_module(mts: HFDifferentialBackend) -> None:
    with mts.as_base() as v:
        base = _full(v)
    with mts.as_finetuned() as v:
        ft = _full(v)
    with mts.as_scaled_adapter(0.0) as v:
        np.testing.assert_array_equal(_full(v), base)
    with mts.as_scaled_adapter(1.0) as v:
        np.testing.assert_allclose(_full(v), ft, atol=1e-5)
    (slot,) = [s for s in mts.weight_slots() if s.key == "lm_head.weight"]
    with mts.as_scaled_adapter(0.25) as v:
        seen, handle = _lm_head_seen(mts)
        try:
            v.next_token_dist("Cats sleep in the sun")
        finally:
            handle.remove()
    expected = slot.base.detach() + 0.25 * slot.delta()
    assert torch.allclose(seen[0], expected, atol=1e-6)


def test_null_replaces_the_saved_module_by_base_plus_same_norm(mts: HFDifferentialBackend) -> None:
    """The trained lm_head is not kept in the null: W₀ + a random change of ‖trained − base‖."""
    norms = mts.adapter_norms()
    (slot,) = [s for s in mts.weight_slots() if s.key == "lm_head.weight"]
    trained_norm = hf_weights.frobenius(slot.delta())
    assert norms["lm_head.weight"] == pytest.approx(trained_norm) and trained_norm > 0
    saved = _state(mts)
    with mts.as_null_adapter(4, construction="norm_matched") as v:
        seen, handle = _lm_head_seen(mts)
        try:
            v.next_token_dist("Cats sleep in the sun")
        finally:
            handle.remove()
    change = seen[0] - slot.base.detach()
    assert hf_weights.frobenius(change) == pytest.approx(trained_norm, rel=1e-5)
    assert torch.allclose(change, hf_weights.null_delta(slot, 4, "norm_matched", 1.0), atol=1e-6)
    assert not torch.allclose(change, slot.delta(), atol=1e-3)
    now = mts.peft_model.state_dict()
    assert all(torch.equal(now[k], saved[k]) for k in saved)


def test_nulls_are_deterministic_per_seed(mts: HFDifferentialBackend) -> None:
    (slot,) = [s for s in mts.weight_slots() if s.key == "lm_head.weight"]
    a = hf_weights.null_delta(slot, 9, "norm_matched", 1.0)
    b = hf_weights.null_delta(slot, 9, "norm_matched", 1.0)
    c = hf_weights.null_delta(slot, 10, "norm_matched", 1.0)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_no_null_coverage_warning(mts: HFDifferentialBackend) -> None:
    from dlm_sway.suite.evidence import health_checks

    assert mts.null_coverage() == []
    checks = health_checks([], [], mts)
    assert "null_structure_mismatch" not in {c.code for c in checks}


def test_rank_and_alpha_patterns_are_honoured(
    tiny_assets: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Per-module rank and alpha set each module's null shape, norm and scaled strength."""
    out = tmp_path_factory.mktemp("patterns") / "adapter"
    config = lora(rank_pattern={"v_proj": 2}, alpha_pattern={"v_proj": 32})
    backend = _backend(tiny_assets, train_adapter(tiny_assets.base, out, config, steps=5))
    try:
        slots = {s.name: s for s in hf_lora.iter_lora_slots(backend.peft_model)}
        q, v = slots["model.layers.0.self_attn.q_proj"], slots["model.layers.0.self_attn.v_proj"]
        assert (q.a.shape[0], q.scaling) == (4, 2.0)
        assert (v.a.shape[0], v.scaling) == (2, 16.0)
        norms = backend.adapter_norms()
        gen = torch.Generator().manual_seed(0)
        for slot in (q, v):
            a, b = hf_lora.norm_matched_weights(slot, gen, rank_scale=1.0)
            assert a.shape == slot.a.shape
            null_norm = hf_lora.delta_norm(a, b, slot.scaling)
            assert null_norm == pytest.approx(norms[slot.name], rel=1e-5)
        with backend.as_scaled_adapter(0.5):
            assert (q.scaling, v.scaling) == (1.0, 8.0)
        assert (q.scaling, v.scaling) == (2.0, 16.0)
    finally:
        backend.close()


def test_rslora_scaling_is_alpha_over_sqrt_rank(
    tiny_assets: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    out = tmp_path_factory.mktemp("rslora") / "adapter"
    backend = _backend(
        tiny_assets, train_adapter(tiny_assets.base, out, lora(use_rslora=True), steps=5)
    )
    try:
        name = "model.layers.1.self_attn.q_proj"
        (slot,) = [s for s in hf_lora.iter_lora_slots(backend.peft_model) if s.name == name]
        assert slot.scaling == pytest.approx(8 / math.sqrt(4))
        by_hand = float((slot.scaling * slot.b.double() @ slot.a.double()).norm())
        assert backend.adapter_norms()[name] == pytest.approx(by_hand, rel=1e-9)
        assert backend.null_constructions == ("norm_matched", "init_scale", "permuted")
    finally:
        backend.close()
