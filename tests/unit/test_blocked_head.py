"""Target log-probs through the head block by block equal the vocabulary-wide softmax."""

from __future__ import annotations

import math

import pytest
import torch

from dlm_sway.backends import hf_positions
from dlm_sway.backends.hf_positions import slice_logprobs

VOCAB, HIDDEN = 50, 8


def _head(*, bias: bool, seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    head = torch.nn.Linear(HIDDEN, VOCAB, bias=bias)
    head.requires_grad_(False)
    return head


def _reference(head: torch.nn.Module, h: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        full = head(h).double().log_softmax(-1)
    return full.gather(-1, wanted[:, None]).squeeze(-1)


@pytest.mark.parametrize("block", [1, 7, 16, 49, 50, 10_000])
@pytest.mark.parametrize("bias", [False, True])
def test_any_block_size_gives_the_full_softmax(
    monkeypatch: pytest.MonkeyPatch, block: int, bias: bool
) -> None:
    """Blocks may cut the vocabulary anywhere (one entry, uneven last block, one block
    for all); targets in the first, last and every middle block are all picked."""
    monkeypatch.setattr(hf_positions, "VOCAB_BLOCK", block)
    head = _head(bias=bias)
    wanted = torch.tensor([0, VOCAB - 1, *range(0, VOCAB, 3)])
    h = torch.randn(len(wanted), HIDDEN) * 3
    with torch.inference_mode():
        got = slice_logprobs(head, h, wanted)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _reference(head, h, wanted), atol=2e-6, rtol=0)


def test_rows_whose_maximum_moves_late_are_rescaled(monkeypatch: pytest.MonkeyPatch) -> None:
    """A row whose largest logit sits in the last block, far above the rest, must have
    its earlier sums rescaled, not overflow or lose them."""
    monkeypatch.setattr(hf_positions, "VOCAB_BLOCK", 8)
    head = _head(bias=True)
    head.bias[-1] = 200.0  # the last entry dominates every row
    head.bias[0] = -200.0
    h = torch.randn(5, HIDDEN)
    wanted = torch.tensor([VOCAB - 1, 0, 3, 30, VOCAB - 2])
    with torch.inference_mode():
        got = slice_logprobs(head, h, wanted)
    torch.testing.assert_close(got.double(), _reference(head, h, wanted), atol=1e-5, rtol=0)


def test_non_finite_logits_match_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """-inf entries (a masked vocabulary), an +inf one and a NaN one give what the
    vocabulary-wide log-softmax gives: the verdict layer must see the same non-finite
    numbers, never a finite number made up by the blocking."""
    monkeypatch.setattr(hf_positions, "VOCAB_BLOCK", 8)
    head = _head(bias=True)
    head.bias[:20] = -math.inf  # the first blocks are all -inf
    h = torch.randn(4, HIDDEN)
    wanted = torch.tensor([3, 25, 40, 49])
    with torch.inference_mode():
        got = slice_logprobs(head, h, wanted)
    torch.testing.assert_close(got.double(), _reference(head, h, wanted), atol=2e-6, rtol=0)
    assert got[0] == -math.inf

    head.bias[:20] = 0.0
    head.bias[30] = math.inf
    head.weight[31, 0] = math.nan
    with torch.inference_mode():
        got = slice_logprobs(head, h, wanted)
        want = _reference(head, h, wanted)
    assert torch.equal(got.isnan(), want.isnan())
    assert got.isnan().all()  # every row saw the NaN entry, as in the whole softmax


def test_a_head_that_is_not_a_plain_linear_runs_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """A subclass (a quantised layer) or a hooked head runs through its own forward, in
    bounded rows, with the same numbers."""

    class Scaled(torch.nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 0.5

    monkeypatch.setattr(hf_positions, "WHOLE_HEAD_ROWS", 4)
    monkeypatch.setattr(hf_positions, "LSE_ROWS", 3)
    torch.manual_seed(1)
    head = Scaled(HIDDEN, VOCAB)
    head.requires_grad_(False)
    calls: list[int] = []
    head.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    h = torch.randn(10, HIDDEN)
    wanted = torch.arange(10) * 5
    with torch.inference_mode():
        got = slice_logprobs(head, h, wanted)
    assert calls == [4, 4, 2]
    torch.testing.assert_close(got.double(), _reference(head, h, wanted), atol=2e-6, rtol=0)


def test_bf16_head_keeps_float32_log_probs() -> None:
    """A half-precision head's logits are widened before the softmax, as on the whole
    path: the same numbers as the unblocked bf16 head."""
    head = _head(bias=False).to(torch.bfloat16)
    h = torch.randn(6, HIDDEN, dtype=torch.bfloat16)
    wanted = torch.tensor([1, 2, 3, 47, 48, 49])
    with torch.inference_mode():
        got = slice_logprobs(head, h, wanted)
        want = head(h).float().log_softmax(-1).gather(-1, wanted[:, None]).squeeze(-1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("bad", [VOCAB, -1])
def test_a_target_outside_the_vocabulary_is_an_error_not_a_number(bad: int) -> None:
    """A target no block holds (a tokenizer with more ids than the head has outputs) must
    fail as the vocabulary-wide gather did, never come back as a log-prob."""
    head = _head(bias=False)
    with torch.inference_mode(), pytest.raises(IndexError, match="outside the model's 50"):
        slice_logprobs(head, torch.randn(2, HIDDEN), torch.tensor([3, bad]))
