"""fp32 linear layers over a few rows run as ``W @ xᵀ``, not ``x @ Wᵀ``.

Generation's decode steps (and one-prompt forwards) push only a handful of rows
through every linear layer. On CPU, torch's fp32 ``x @ Wᵀ`` at 1–8 rows falls
on a slow GEMM path: measured on SmolLM2's 1536×576 MLP weights, out of cache,
393–578 µs at 2–4 rows against 117–136 µs for ``W @ xᵀ`` (the weight read once
at memory speed), and its 49152-wide head took 33 ms per 3-row step instead of
4 ms. A single row is a GEMV that uses one core (320 µs), so it is padded to two
rows. bf16 (oneDNN) has no such gap and is left alone.

Inside :func:`decoding` (generation's forwards only), a wide layer (the head)
over more than ``MAX_ROWS`` rows runs on oneDNN's fp32 GEMM instead: SmolLM2's
head, out of cache, 16-25 ms against 35-43 ms for MKL's at 6-36 rows (and 17-34
for ``W @ xᵀ``). The body's layers take ``W @ xᵀ`` there up to
``MAX_ROWS_DECODING`` rows: per-layer medians over SmolLM2's 30 layers (weights
out of cache, AVX2 EPYC) were 49-87 ms a step for ``W @ xᵀ`` against 65-107 ms
for MKL at 5-8 rows, every shape included. Scoring keeps MKL past ``MAX_ROWS``,
so no score moves.

Only the order of the float sums changes: logits move by float rounding, and a
given input always takes the same path (the choice depends on its row count and
on whether it is a generation forward), so a forward stays a deterministic
function of its input. Generation's near-tie re-decision absorbs the rounding as
it does a batch layout's.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch.nn import functional

#: Rows up to which ``W @ xᵀ`` wins: 4 for the MLP's down projection (it loses at 6),
#: 8 for a weight at least four times wider than it is deep (the head: 7 ms against 15).
MAX_ROWS = 4
MAX_ROWS_WIDE = 8
#: Rows up to which a generation forward's narrower layers take ``W @ xᵀ``.
MAX_ROWS_DECODING = 8
#: Weights smaller than this (LoRA's A and B) are not worth a second path.
MIN_WEIGHT_ELEMENTS = 1 << 16

_DECODING: ContextVar[bool] = ContextVar("sway_decoding", default=False)


@contextmanager
def decoding() -> Iterator[None]:
    """Generation's forwards: a wide layer (the head) past ``MAX_ROWS`` rows runs on
    oneDNN, the others take ``W @ xᵀ`` up to ``MAX_ROWS_DECODING`` rows."""
    token = _DECODING.set(True)
    try:
        yield
    finally:
        _DECODING.reset(token)


@functools.cache
def _onednn() -> bool:
    return _has_onednn_linear()


def _has_onednn_linear() -> bool:
    available = bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]
    return available and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def speed_up_few_rows(model: torch.nn.Module) -> int:
    """Give every large fp32 CPU ``nn.Linear`` in ``model`` the few-row path; returns how many."""
    count = 0
    for module in model.modules():
        if (
            isinstance(module, torch.nn.Linear)
            and not is_patched(module)
            and module.weight.dtype == torch.float32
            and module.weight.device.type == "cpu"
            and module.weight.numel() >= MIN_WEIGHT_ELEMENTS
        ):
            # An instance attribute: the class (and every isinstance check on it) is untouched.
            module.forward = FewRowsForward(module)  # type: ignore[method-assign,assignment]
            count += 1
    return count


def is_patched(module: Any) -> bool:
    return isinstance(getattr(module, "__dict__", {}).get("forward"), FewRowsForward)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weightᵀ + bias`` by oneDNN (2-D ``x``; inference only: it has no backward)."""
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return out


class FewRowsForward:
    """A layer's forward with the few-row path: an object, not a bound method, so a
    deep-copied or pickled layer (PEFT copies heads for ``modules_to_save``) keeps it
    and computes with its own weight."""

    __slots__ = ("layer",)

    def __init__(self, layer: torch.nn.Linear) -> None:
        self.layer = layer

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.layer.weight, self.layer.bias
        rows = x.numel() // x.shape[-1] if x.dim() else 0
        out_features, in_features = weight.shape
        wide = out_features >= 4 * in_features
        if x.dtype != weight.dtype or rows < 1:
            return functional.linear(x, weight, bias)
        decoding = _DECODING.get() and not torch.is_grad_enabled()
        if wide and rows > MAX_ROWS and decoding and _onednn():
            out = onednn_linear(x.reshape(rows, x.shape[-1]).contiguous(), weight, bias)
            return out.reshape(*x.shape[:-1], out_features)
        if rows > (MAX_ROWS_WIDE if wide else MAX_ROWS_DECODING if decoding else MAX_ROWS):
            return functional.linear(x, weight, bias)
        flat = x.reshape(rows, x.shape[-1])
        if rows == 1:
            flat = torch.cat([flat, flat])  # two rows: a threaded GEMM, not a one-core GEMV
        out = (weight @ flat.T).T[:rows].contiguous()
        if bias is not None:
            out = out + bias
        return out.reshape(*x.shape[:-1], out_features)


__all__ = [
    "MAX_ROWS",
    "MAX_ROWS_DECODING",
    "MAX_ROWS_WIDE",
    "FewRowsForward",
    "decoding",
    "is_patched",
    "onednn_linear",
    "speed_up_few_rows",
]
