"""Logits at the positions a score needs, not at every position of a padded batch.

A causal LM's forward ends in ``lm_head`` over every position: for SmolLM2 that
is 49152×576 multiply-adds per position, a fifth of the model's work and the
slowest matmul in it (its output is the widest). Scoring a completion needs the
logits of the completion's positions only, and never those of padding. So the
body runs once over the padded batch, its last hidden states are gathered at the
wanted positions of every row, and the head runs once over just those rows.

The split relies on the model's forward being ``head(body(x))`` with nothing in
between or after (true of Llama-, Mistral-, Qwen- and GPT-2-style models; not
of models that soft-cap or rescale logits). That is checked once per model, on
a two-row batch against the model's own forward, and a model that differs
falls back to the full forward: a faster path that changed a number would not
be a faster path to the same verdict.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

#: Positions whose target log-probs are computed together.
TARGET_SLICE = 1024
#: Vocabulary entries whose logits exist at once for a slice of positions (8 MB of
#: float32 at 1024 × 2048). A plain ``Linear`` head runs block by block under an online
#: logsumexp: the matmul's output then stays in cache, where one vocabulary-wide output
#: runs at about two-thirds of the rate (measured on SmolLM2's head on a 2-core AVX2
#: CPU: 1.0 s → 0.65 s per 1024 positions, logsumexp included).
VOCAB_BLOCK = 2048
#: A head that is not a plain ``Linear`` runs whole, on this many rows at once (a
#: vocabulary-wide float32 row each: 48 MB for SmolLM2) ...
WHOLE_HEAD_ROWS = 256
#: ... and their logsumexp is taken this many rows at a time (its temporary's rows).
LSE_ROWS = 64
#: |Δ logit| allowed between the split and the full forward (same kernels, same order:
#: in practice 0; anything visible means the model does something after the head).
PARITY_TOL = 1e-4


#: Heads that already carry the hook (a model can get more than one scorer).
_FOLDED: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def fold_head_input(head: Any) -> None:
    """Make the output head's input contiguous, so its matmul runs as one matmul.

    ``logits_to_keep`` (next-token dists, generation's prefill) hands the head a
    strided ``[B, 1, H]`` slice. With frozen weights torch will not fold a strided
    input into one ``[B, H]`` matmul: it expands the head's weight ``B`` times and
    runs a batched matmul (measured on SmolLM2: 76 ms instead of 19 ms per call in
    fp32, and in bf16 a copy of the whole vocabulary matrix per row; one-prompt
    forwards too). Copying the ``B × H`` input is free next to that, and the
    numbers are the same.
    """
    if not isinstance(head, torch.nn.Module) or head in _FOLDED:
        return
    head.register_forward_pre_hook(_contiguous_input)
    _FOLDED.add(head)


def _contiguous_input(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    x = args[0] if args else None
    # Not ``is_contiguous()``: a [1, 1, H] slice counts as contiguous, yet torch's fold
    # test reads its strides literally and still takes the expanding path.
    if isinstance(x, torch.Tensor) and x.dim() > 2 and x.stride() != row_major_strides(x.shape):
        return (x.clone(memory_format=torch.contiguous_format), *args[1:])
    return None


def row_major_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """The strides of a freshly allocated tensor of ``shape`` (size-1 dims included)."""
    strides: list[int] = []
    step = 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(int(size), 1)
    return tuple(reversed(strides))


class PositionHead:
    """``body`` and ``head`` of a causal LM, usable only if they reproduce its forward."""

    def __init__(self, model: Any) -> None:
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        prefix = getattr(inner, "base_model_prefix", "")
        self.body: Any = getattr(inner, prefix, None) if prefix else None
        head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
        fold_head_input(head)  # every path to the head gains, the split or not
        self.head: Any = head if self.body is not None else None
        self.model = model
        self._usable: bool | None = None if self.head is not None else False

    @property
    def checked(self) -> bool:
        """Whether :meth:`usable` has decided (it runs its check once)."""
        return self._usable is not None

    def usable(self, kwargs: dict[str, Any], ids: torch.Tensor) -> bool:
        """Whether the split path equals the model's forward (checked on first use)."""
        if self._usable is None:
            try:
                self._usable = self._parity(kwargs, ids)
            except (TypeError, AttributeError, ValueError):  # a body that is not a plain decoder
                self._usable = False
        return self._usable

    def _parity(self, kwargs: dict[str, Any], ids: torch.Tensor) -> bool:
        rows = ids[:2, : min(ids.shape[1], 8)]
        sub = {k: v[:2, : rows.shape[1]] for k, v in kwargs.items()}
        with torch.inference_mode():
            full = self.model(input_ids=rows, use_cache=False, **sub).logits
            split = self.head(self.body(input_ids=rows, use_cache=False, **sub).last_hidden_state)
        return bool(
            full.shape == split.shape
            and torch.isfinite(full).all()
            and float((full - split).abs().max()) <= PARITY_TOL
        )

    def logits_at(
        self,
        ids: torch.Tensor,
        kwargs: dict[str, Any],
        positions: Sequence[Sequence[int]],
    ) -> list[torch.Tensor]:
        """Per row, the logits at ``positions[row]`` (one body forward, one head matmul)."""
        hidden = self.body(input_ids=ids, use_cache=False, **kwargs).last_hidden_state
        index = [(row, p) for row, ps in enumerate(positions) for p in ps]
        rows = torch.tensor([r for r, _ in index], dtype=torch.long, device=hidden.device)
        cols = torch.tensor([p for _, p in index], dtype=torch.long, device=hidden.device)
        logits = self.head(hidden[rows, cols])
        return list(torch.split(logits, [len(ps) for ps in positions]))

    def target_logprobs(
        self,
        ids: torch.Tensor,
        kwargs: dict[str, Any],
        positions: Sequence[Sequence[int]],
        targets: Sequence[Sequence[int]],
    ) -> list[torch.Tensor]:
        """Per row, the float32 log-prob of ``targets[row][j]`` at ``positions[row][j]``:
        the head runs :data:`TARGET_SLICE` positions at a time and keeps one number of
        each, so a long text never holds its whole vocabulary × length of logits."""
        hidden = self.body(input_ids=ids, use_cache=False, **kwargs).last_hidden_state
        index = [(row, p) for row, ps in enumerate(positions) for p in ps]
        rows = torch.tensor([r for r, _ in index], dtype=torch.long, device=hidden.device)
        cols = torch.tensor([p for _, p in index], dtype=torch.long, device=hidden.device)
        flat = [t for ts in targets for t in ts]
        wanted = torch.tensor(flat, dtype=torch.long, device=hidden.device)
        out = torch.empty(len(index), dtype=torch.float32, device=hidden.device)
        for s in range(0, len(index), TARGET_SLICE):
            part = slice(s, s + TARGET_SLICE)
            out[part] = slice_logprobs(self.head, hidden[rows[part], cols[part]], wanted[part])
        return list(torch.split(out, [len(ps) for ps in positions]))


def slice_logprobs(head: Any, h: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    """float32 ``log softmax(head(h))[i, wanted[i]]`` for the rows of ``h`` [n, H]."""
    if not _plain_linear(head, h):
        return _whole_head_logprobs(head, h, wanted)
    weight, bias = head.weight, head.bias
    if wanted.numel() and not (int(wanted.min()) >= 0 and int(wanted.max()) < weight.shape[0]):
        # A target no block holds would keep a log-prob of -logsumexp: a number, not an error.
        raise IndexError(
            f"a target token id ({int(wanted.min())}..{int(wanted.max())}) is outside the "
            f"model's {weight.shape[0]} output logits: the tokenizer does not match the model"
        )
    n = h.shape[0]
    peak = torch.full((n,), -torch.inf, dtype=torch.float32, device=h.device)
    total = torch.zeros(n, dtype=torch.float32, device=h.device)
    picked = torch.zeros(n, dtype=torch.float32, device=h.device)
    for v in range(0, weight.shape[0], VOCAB_BLOCK):
        w = weight[v : v + VOCAB_BLOCK]
        logits = F.linear(h, w, None if bias is None else bias[v : v + VOCAB_BLOCK]).float()
        inside = ((wanted >= v) & (wanted < v + w.shape[0])).nonzero().squeeze(-1)
        if inside.numel():
            picked[inside] = logits[inside, wanted[inside] - v]
        # Online logsumexp: the running sum is rescaled to each new maximum. A shift of
        # ±inf (a row of -inf so far, or an inf logit) is taken as 0 so no inf − inf
        # appears where torch.logsumexp has none.
        new_peak = torch.maximum(peak, logits.amax(-1))
        shift = torch.where(new_peak.isinf(), torch.zeros_like(new_peak), new_peak)
        total.mul_(torch.exp(peak - shift)).add_(logits.sub_(shift[:, None]).exp_().sum(-1))
        peak = new_peak
    return picked - (torch.where(peak.isinf(), torch.zeros_like(peak), peak) + total.log())


def _plain_linear(head: Any, h: torch.Tensor) -> bool:
    """Whether ``head(h)`` is ``F.linear`` on its own weight: no subclass (quantised
    layers subclass ``Linear``), no accelerate hook that moves or loads the weight."""
    return (
        type(head) is torch.nn.Linear
        and not hasattr(head, "_hf_hook")
        and head.weight.device == h.device
        and head.weight.dtype == h.dtype
    )


def _whole_head_logprobs(head: Any, h: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    """:func:`slice_logprobs` through the head module itself, vocabulary-wide."""
    out = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
    for s in range(0, h.shape[0], WHOLE_HEAD_ROWS):
        logits = head(h[s : s + WHOLE_HEAD_ROWS]).float()
        part = out[s : s + WHOLE_HEAD_ROWS]
        part.copy_(logits.gather(-1, wanted[s : s + WHOLE_HEAD_ROWS, None]).squeeze(-1))
        # log p = logit − logsumexp, the latter a few rows at a time: a whole-slice
        # log_softmax would be a second vocabulary-wide copy of the slice.
        for r in range(0, logits.shape[0], LSE_ROWS):
            part[r : r + LSE_ROWS] -= torch.logsumexp(logits[r : r + LSE_ROWS], dim=-1)
    return out


__all__ = [
    "PARITY_TOL",
    "TARGET_SLICE",
    "VOCAB_BLOCK",
    "PositionHead",
    "fold_head_input",
    "row_major_strides",
    "slice_logprobs",
]
