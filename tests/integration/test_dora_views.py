"""DoRA adapters: every view is the weight it names, built exactly and restored bit-exactly."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from finetune_kinds import lora, train_adapter  # noqa: E402

from dlm_sway.backends import hf_adapter_weights, hf_weights  # noqa: E402
from dlm_sway.backends.hf import HFDifferentialBackend  # noqa: E402
from dlm_sway.core.errors import ViewError  # noqa: E402
from dlm_sway.core.scoring import ConstructedNullBackend, ScalableDifferentialBackend  # noqa: E402

PROMPTS = ["The zebra astronaut", "The quick brown fox", "Fresh bread and"]


@pytest.fixture(scope="module")
def dora_dir(tiny_assets: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dora") / "adapter"
    return train_adapter(tiny_assets.base, out, lora(use_dora=True))


@pytest.fixture(scope="module")
def dora(tiny_assets: Any, dora_dir: Path) -> Iterator[HFDifferentialBackend]:
    backend = HFDifferentialBackend(str(tiny_assets.base), dora_dir, dtype="fp32", device="cpu")
    yield backend
    backend.close()


def _full(view: Any) -> np.ndarray[Any, Any]:
    return np.stack([d.logprobs for d in view.next_token_full_batch(PROMPTS)])


def _state(backend: HFDifferentialBackend) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in backend.peft_model.state_dict().items()}


def _same_state(backend: HFDifferentialBackend, saved: dict[str, Any]) -> bool:
    now = backend.peft_model.state_dict()
    return set(now) == set(saved) and all(torch.equal(now[k], saved[k]) for k in saved)


def _clear_caches(backend: HFDifferentialBackend) -> None:
    backend.instrumentation.cache.clear()
    backend._live_scorer().full_instr.cache.clear()


def test_dora_has_scaled_and_null_views(dora: HFDifferentialBackend) -> None:
    assert isinstance(dora, ScalableDifferentialBackend)
    assert isinstance(dora, ConstructedNullBackend)
    assert dora.null_constructions == ("norm_matched", "permuted")
    assert dora.null_coverage() == []  # magnitudes are covered by weight-space nulls


def test_dora_weight_is_peft_merged_weight(tiny_assets: Any, dora_dir: Path, dora: Any) -> None:
    """W₀ + D equals the weight peft's own merge writes, for every DoRA module."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_assets.base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(plain, dora_dir).merge_and_unload()
    merged_params = dict(merged.named_parameters())
    slots = dora.weight_slots()
    assert len(slots) == 4  # q_proj and v_proj in both layers
    for slot in slots:
        ours = slot.base.detach() + slot.delta()
        theirs = merged_params[f"{slot.key}.weight"].detach()
        assert torch.allclose(ours, theirs, atol=2e-6), slot.key


def test_scaled_zero_is_base_and_one_is_ft(dora: HFDifferentialBackend) -> None:
    with dora.as_base() as v:
        base = _full(v)
    with dora.as_finetuned() as v:
        ft = _full(v)
    with dora.as_scaled_adapter(0.0) as v:
        np.testing.assert_array_equal(_full(v), base)
    with dora.as_scaled_adapter(1.0) as v:
        np.testing.assert_allclose(_full(v), ft, atol=1e-5)
    with dora.as_scaled_adapter(0.5) as v:
        half = _full(v)
    assert np.abs(half - base).max() > 1e-3 and np.abs(half - ft).max() > 1e-3


def test_null_is_base_plus_norm_matched_direction(dora: HFDifferentialBackend) -> None:
    """The null view's forward equals a model whose weights are W₀ + null_delta, and each
    null change has exactly the trained ‖W_DoRA − W₀‖_F."""
    norms = dora.adapter_norms()
    reference = copy.deepcopy(dora.peft_model)
    with torch.no_grad():
        for slot in dora.weight_slots():
            change = hf_weights.null_delta(slot, 5, "norm_matched", 1.0)
            assert hf_weights.frobenius(change) == pytest.approx(norms[slot.key], rel=1e-5)
            assert norms[slot.key] > 0
            layer = reference.get_submodule(f"base_model.model.{slot.key}.base_layer")
            layer.weight.add_(change)
    saved = _state(dora)
    with dora.as_null_adapter(5, construction="norm_matched") as v:
        got = _full(v)
    assert _same_state(dora, saved)
    tok = dora.tokenizer
    with torch.no_grad(), hf_adapter_weights.dora_off(reference):
        rows = []
        for p in PROMPTS:
            ids = tok(p, return_tensors="pt")["input_ids"]
            rows.append(reference(input_ids=ids).logits[0, -1].double().log_softmax(-1).numpy())
    np.testing.assert_allclose(got, np.stack(rows), atol=1e-4)


def test_nulls_are_deterministic_per_seed(dora: HFDifferentialBackend) -> None:
    with dora.as_null_adapter(11, construction="norm_matched") as v:
        a = _full(v)
    _clear_caches(dora)  # the next view recomputes instead of reading the memo
    with dora.as_null_adapter(11, construction="norm_matched") as v:
        b = _full(v)
    with dora.as_null_adapter(12, construction="norm_matched") as v:
        c = _full(v)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4


def test_permuted_null_keeps_the_norm(dora: HFDifferentialBackend) -> None:
    norms = dora.adapter_norms()
    for slot in dora.weight_slots():
        change = hf_weights.null_delta(slot, 3, "permuted", 1.0)
        assert hf_weights.frobenius(change) == pytest.approx(norms[slot.key], rel=1e-6)
        assert not torch.allclose(change, slot.delta().cpu())


def test_views_restore_bit_exactly_even_on_error(dora: HFDifferentialBackend) -> None:
    saved = _state(dora)
    for opener in (
        lambda: dora.as_scaled_adapter(0.5),
        lambda: dora.as_null_adapter(1, construction="permuted"),
    ):
        with pytest.raises(RuntimeError, match="boom"), opener() as v:
            v.next_token_dist("The quick brown fox")
            raise RuntimeError("boom")
        assert _same_state(dora, saved)
    # DoRA layers are switched back on: the fine-tuned view is the adapter again.
    layers = [m for m in dora.peft_model.modules() if hasattr(m, "lora_magnitude_vector")]
    assert layers and not any(getattr(m, "_disable_adapters", False) for m in layers)


def test_init_scale_null_is_refused_with_the_alternatives(dora: HFDifferentialBackend) -> None:
    with pytest.raises(ViewError, match="norm_matched or permuted"):
        dora.as_null_adapter(0)
