"""fp32 linears over a few rows (decode steps) take ``W @ xᵀ`` and keep their numbers."""

from __future__ import annotations

import copy
import io
from typing import TYPE_CHECKING, Any

import pytest
import torch

from dlm_sway.backends import hf_few_rows
from dlm_sway.backends.hf import HFDifferentialBackend
from dlm_sway.core.scoring import GenerationSettings

if TYPE_CHECKING:
    from tiny_model import TinyAssets

pytestmark = pytest.mark.hf

SHAPES = [(96, 32), (32, 96), (512, 64)]  # MLP up, MLP down, a "head" 8x wider than deep


def _linear(out_f: int, in_f: int, *, bias: bool, dtype: torch.dtype = torch.float32) -> Any:
    torch.manual_seed(out_f + in_f)
    return torch.nn.Linear(in_f, out_f, bias=bias, dtype=dtype)


@pytest.mark.parametrize(("out_f", "in_f"), SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_every_row_count_and_layout_matches_the_plain_linear(
    monkeypatch: pytest.MonkeyPatch, out_f: int, in_f: int, bias: bool
) -> None:
    monkeypatch.setattr(hf_few_rows, "MIN_WEIGHT_ELEMENTS", 0)
    layer = _linear(out_f, in_f, bias=bias)
    assert hf_few_rows.speed_up_few_rows(layer) == 1
    assert isinstance(layer, torch.nn.Linear)  # class untouched: PEFT still recognises it
    for rows in range(1, 13):
        x = torch.randn(rows, 3, in_f)[:, 1:2, :]  # strided [rows, 1, in], as logits_to_keep gives
        want = torch.nn.functional.linear(x, layer.weight, layer.bias)
        got = layer(x)
        assert got.shape == want.shape
        assert got.is_contiguous()  # attention code calls .view() on projections
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert torch.equal(layer(x.clone()), got)  # same rows, same path, same bits


def test_small_low_precision_and_repeated_calls_are_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tiny = _linear(8, 4, bias=False)  # LoRA-sized: below MIN_WEIGHT_ELEMENTS
    half = _linear(1024, 128, bias=False, dtype=torch.bfloat16)
    assert hf_few_rows.speed_up_few_rows(torch.nn.Sequential(tiny, half)) == 0
    monkeypatch.setattr(hf_few_rows, "MIN_WEIGHT_ELEMENTS", 0)
    layer = _linear(64, 16, bias=False)
    assert hf_few_rows.speed_up_few_rows(layer) == 1
    assert hf_few_rows.speed_up_few_rows(layer) == 0  # a second scorer on the model adds nothing


def test_a_copied_or_saved_layer_computes_with_its_own_weight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PEFT deep-copies heads for modules_to_save, and a plugin may torch.save a model:
    the copy keeps the path and must not read the original's weight."""
    monkeypatch.setattr(hf_few_rows, "MIN_WEIGHT_ELEMENTS", 0)
    layer = _linear(64, 16, bias=False)
    hf_few_rows.speed_up_few_rows(layer)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    for twin in (copy.deepcopy(layer), torch.load(buffer, weights_only=False)):
        assert hf_few_rows.is_patched(twin)
        assert hf_few_rows.speed_up_few_rows(twin) == 0
        with torch.no_grad():
            twin.weight.mul_(2.0)
        x = torch.randn(2, 16)
        torch.testing.assert_close(twin(x), 2.0 * layer(x))


def test_generation_and_scores_unchanged_on_a_model_that_takes_the_path(
    tiny_assets: TinyAssets, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny model's layers are all patched here; texts and log-probs stay the same."""
    prompts = ["The zebra astronaut", "Cats", "She opened the door and walked into the"]
    pairs = [("The zebra", " astronaut rides"), ("Fresh bread and", " butter")]
    settings = GenerationSettings(max_new_tokens=12, temperature=0.0, seed=0, chat=False)

    def run(min_elements: int) -> tuple[list[str], list[float], int]:
        monkeypatch.setattr(hf_few_rows, "MIN_WEIGHT_ELEMENTS", min_elements)
        with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter) as backend:
            patched = sum(hf_few_rows.is_patched(m) for m in backend._live_scorer().model.modules())
            with backend.as_finetuned() as view:
                texts = [g.text for g in view.generate_batch(prompts, settings)]
                texts += [view.generate_batch([p], settings)[0].text for p in prompts]
                scores = [view.logprob_of(p, c) for p, c in pairs]
        return texts, scores, patched

    plain_texts, plain_scores, none_patched = run(1 << 40)
    fast_texts, fast_scores, patched = run(0)
    assert none_patched == 0 and patched > 0
    assert fast_texts == plain_texts
    assert fast_scores == pytest.approx(plain_scores, abs=1e-5)


def test_generation_forwards_run_a_wide_layer_on_onednn_and_nothing_else_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Inside ``decoding()`` a head-shaped layer past MAX_ROWS rows takes oneDNN and a
    narrow one ``W @ xᵀ`` up to MAX_ROWS_DECODING rows (float rounding apart, the same
    numbers, the same bits every time); scoring forwards, narrow layers past that and
    forwards that track gradients keep torch's own linear, bit for bit."""
    monkeypatch.setattr(hf_few_rows, "MIN_WEIGHT_ELEMENTS", 0)
    calls: list[int] = []
    real = hf_few_rows.onednn_linear

    def spy(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        calls.append(x.shape[0])
        return real(x, weight, bias)

    monkeypatch.setattr(hf_few_rows, "onednn_linear", spy)
    wide, narrow = _linear(512, 64, bias=True), _linear(96, 32, bias=False)
    hf_few_rows.speed_up_few_rows(torch.nn.Sequential(wide, narrow))
    for layer in (wide, narrow):
        for rows in (5, 9, 36):
            x = torch.randn(rows, 2, layer.in_features)[:, 1:, :]
            with torch.inference_mode():
                plain = layer(x)  # outside generation
                if rows > hf_few_rows.MAX_ROWS_WIDE:  # past both few-row limits: torch's own
                    assert torch.equal(
                        plain, torch.nn.functional.linear(x, layer.weight, layer.bias)
                    )
                with hf_few_rows.decoding():
                    got = layer(x)
                    assert torch.equal(layer(x.clone()), got)
            with hf_few_rows.decoding():
                assert torch.equal(layer(x), plain)  # gradients on: no oneDNN (it has no backward)
            if layer is narrow and rows <= 8:  # a decode step of up to 8 rows: W @ xᵀ
                flat = x.reshape(rows, -1)
                assert torch.equal(got, (layer.weight @ flat.T).T.reshape(got.shape))
            elif layer is narrow:
                assert torch.equal(got, plain)
            torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-5)
            assert got.shape == plain.shape and got.is_contiguous()
    assert calls == [5, 5, 9, 9, 36, 36]  # the wide layer only, inside decoding only
    with torch.inference_mode(), hf_few_rows.decoding():
        x = torch.randn(4, 64)
        torch.testing.assert_close(wide(x), (wide.weight @ x.T).T + wide.bias)  # few: W @ xᵀ
    assert calls == [5, 5, 9, 9, 36, 36]
