"""Scoring with the head only at wanted positions gives the full forward's numbers."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dlm_sway.backends.hf import HFDifferentialBackend
from dlm_sway.backends.hf_positions import PositionHead, row_major_strides

pytestmark = pytest.mark.hf

PAIRS = [
    ("The zebra", " astronaut rides"),
    ("Fresh bread and", " butter"),
    ("A", " long completion that spans several tokens of the tiny vocabulary"),
]
TEXTS = ["The quick brown fox jumps", "Short", "A much longer text " * 6]


def _scores(backend: HFDifferentialBackend, *, split: bool) -> tuple[list[float], list[Any]]:
    scorer = backend._live_scorer()
    scorer._head._usable = None if split else False
    out = scorer.logprobs_of(PAIRS, batched=True), scorer.rollings(TEXTS, batched=True)
    assert scorer._head._usable is split
    return out


def test_split_head_equals_full_forward_in_every_view(tiny_assets: Any) -> None:
    with HFDifferentialBackend(
        str(tiny_assets.base), tiny_assets.adapter, dtype="fp32", device="cpu"
    ) as backend:
        for opener in (backend.as_base, backend.as_finetuned):
            with opener():
                fast_lp, fast_roll = _scores(backend, split=True)
                full_lp, full_roll = _scores(backend, split=False)
            assert fast_lp == pytest.approx(full_lp, abs=1e-5)
            for a, b in zip(fast_roll, full_roll, strict=True):
                assert a.token_ids.tolist() == b.token_ids.tolist()
                assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


@pytest.mark.parametrize(("positions", "vocab_block"), [(3, 2), (4, 10**6), (256, 5), (7, 7)])
def test_target_logprobs_equal_the_full_softmax_at_any_slicing(
    tiny_assets: Any, monkeypatch: pytest.MonkeyPatch, positions: int, vocab_block: int
) -> None:
    """The head's slices of positions and its blocks of vocabulary may end anywhere (a
    slice of a few positions, a block of two entries, one block for all): every
    position still gets logit − logsumexp of its own row."""
    from dlm_sway.backends import hf_positions

    with (
        HFDifferentialBackend(
            str(tiny_assets.base), tiny_assets.adapter, dtype="fp32", device="cpu"
        ) as backend,
        backend.as_finetuned(),
    ):
        full_lp, full_roll = _scores(backend, split=False)
        monkeypatch.setattr(hf_positions, "TARGET_SLICE", positions)
        monkeypatch.setattr(hf_positions, "VOCAB_BLOCK", vocab_block)
        fast_lp, fast_roll = _scores(backend, split=True)
    assert fast_lp == pytest.approx(full_lp, abs=1e-5)
    for a, b in zip(fast_roll, full_roll, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_model_that_changes_logits_after_the_head_falls_back(tiny_assets: Any) -> None:
    """A soft-capping model (Gemma-2 style) is not head(body(x)): the split must refuse."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_assets.base))
    plain = type(model).forward

    def capped(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = plain(self, *args, **kwargs)
        out.logits = 3.0 * torch.tanh(out.logits / 3.0)
        return out

    ids = torch.tensor([[1, 5, 7, 9], [1, 4, 4, 2]])
    kwargs = {"attention_mask": torch.ones_like(ids)}
    assert PositionHead(model).usable(kwargs, ids)
    type(model).forward = capped  # type: ignore[method-assign]
    try:
        assert not PositionHead(model).usable(kwargs, ids)
    finally:
        type(model).forward = plain  # type: ignore[method-assign]


def test_head_runs_one_matmul_on_the_last_positions(tiny_assets: Any) -> None:
    """``logits_to_keep`` slices the last position as a strided [B, 1, H] view; with frozen
    weights torch would then expand the head's weight B times (a copy of the vocabulary
    matrix per row in bf16). The head must receive one contiguous block, same numbers."""
    with HFDifferentialBackend(
        str(tiny_assets.base), tiny_assets.adapter, dtype="fp32", device="cpu"
    ) as backend:
        head = backend.peft_model.get_base_model().get_output_embeddings()
        assert not head.weight.requires_grad  # the case where torch refuses to fold
        seen: list[bool] = []
        probe = head.register_forward_pre_hook(
            lambda _m, args: seen.append(args[0].stride() == row_major_strides(args[0].shape))
        )
        prompts = ["The zebra", "Fresh bread and butter on a plate", "A"]
        try:
            with backend.as_base() as view:
                batched = view.next_token_full_batch(prompts)
                view.next_token_full("A prompt scored alone (one row)")
        finally:
            probe.remove()
        assert len(seen) == 2 and all(seen)
        scorer = backend._live_scorer()
        with backend.as_base():
            for prompt, dist in zip(prompts, batched, strict=True):
                (ids,) = scorer.tokenizer([prompt], return_tensors="pt")["input_ids"]
                with torch.inference_mode():
                    full = backend.peft_model(input_ids=ids[None]).logits[0, -1]
                expected = full.double().log_softmax(-1).float().numpy()
                assert abs(dist.logprobs - expected).max() < 1e-4
