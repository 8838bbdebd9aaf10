"""The adapters the vllm backend writes hold exactly the weights the HF backend applies.

An HF null and a vLLM null of the same seed must be the same adapter, or the two
backends would calibrate against different noise. Checked on the tiny model
without a server: the tensors sway would write vs the live LoRA weights inside
the HF backend's null / scaled views.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from dlm_sway.backends import vllm_adapters as va
from dlm_sway.backends.hf_load import inspect_adapter
from dlm_sway.backends.hf_lora import iter_lora_slots, null_weights


def _live(backend: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {
        s.name: (s.a.detach().clone().float(), s.b.detach().clone().float())
        for s in iter_lora_slots(backend.peft_model)
    }


@pytest.mark.parametrize("construction", ["norm_matched", "init_scale", "permuted"])
@pytest.mark.parametrize(("seed", "rank_scale"), [(11, 1.0), (12345, 2.0)])
def test_vllm_null_tensors_equal_hf_null_view(
    hf_backend: Any, tiny_assets: Any, construction: str, seed: int, rank_scale: float
) -> None:
    info = inspect_adapter(tiny_assets.adapter)
    slots = va.read_slots(info, va.module_order(str(tiny_assets.base)))
    weights = null_weights(construction, init_scale=0.02, rank_scale=rank_scale)
    written = va.null_tensors(slots, seed, weights)
    with hf_backend.as_null_adapter(seed, rank_scale=rank_scale, construction=construction):
        live = _live(hf_backend)
    assert set(live) == {s.name for s in slots}
    for slot in slots:
        a, b = live[slot.name]
        assert torch.equal(written[slot.a_key], a), slot.name
        assert torch.equal(written[slot.b_key], b), slot.name
    # and the draw is not the trained adapter itself
    trained = _live(hf_backend)
    assert any(not torch.equal(written[s.a_key], trained[s.name][0]) for s in slots)


def test_file_scalings_equal_peft_scalings(hf_backend: Any, tiny_assets: Any) -> None:
    info = inspect_adapter(tiny_assets.adapter)
    slots = va.read_slots(info, va.module_order(str(tiny_assets.base)))
    peft_scaling = {s.name: s.scaling for s in iter_lora_slots(hf_backend.peft_model)}
    assert {s.name: s.scaling for s in slots} == peft_scaling
    norms = hf_backend.adapter_norms()
    from dlm_sway.backends.hf_lora import delta_norm

    for slot in slots:
        assert delta_norm(slot.a, slot.b, slot.scaling) == pytest.approx(norms[slot.name], rel=1e-9)


def test_written_scaled_adapter_scores_like_hf_scaled_view(
    hf_backend: Any, tiny_assets: Any, tmp_path: Path
) -> None:
    """B × λ on disk, loaded by peft, gives the HF backend's scaled-view log-probs."""
    from dlm_sway.backends.hf import HFDifferentialBackend

    info = inspect_adapter(tiny_assets.adapter)
    slots = va.read_slots(info, va.module_order(str(tiny_assets.base)))
    out = va.write_adapter(info, tmp_path / "scaled", va.scaled_tensors(slots, 0.5))
    text = "The zebra astronaut sings quietly"
    with hf_backend.as_scaled_adapter(0.5) as view:
        expected = view.rolling_logprob(text).total_logprob
    written = HFDifferentialBackend(str(tiny_assets.base), out, dtype="fp32")
    try:
        with written.as_finetuned() as view:
            got = view.rolling_logprob(text).total_logprob
    finally:
        written.close()
    assert got == pytest.approx(expected, abs=1e-4)


def test_natural_order_without_a_local_base_differs_only_in_order(tiny_assets: Any) -> None:
    info = inspect_adapter(tiny_assets.adapter)
    ordered = [s.name for s in va.read_slots(info, va.module_order(str(tiny_assets.base)))]
    natural = [s.name for s in va.read_slots(info, None)]
    assert sorted(ordered) == sorted(natural)
