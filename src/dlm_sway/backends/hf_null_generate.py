"""Generate under several views in one batch: K nulls, or a sweep's members.

Calibrating a generation probe decodes the same prompts under the base, the
fine-tune and each of K nulls, a few rows at a time: on CPU a decode step over 3
rows costs nearly what one over 16 does, so separate passes mostly read the
weights again and again. Here the views' rows decode together, each view's LoRA
factors one block of a stack (:mod:`.hf_mixed`).

A row's text is the one its view writes alone. Every decision that leads by less
than the generator's tie margin is re-made on the canonical forward, run with that
view's own state (its r-wide factors and scaling, or no LoRA term for the base) —
bit for bit its own forward — and every other decision leads by far more than the
float jitter that the wider matmul and the batch layout bring (:mod:`.hf_generate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dlm_sway.backends.hf_generate import HFGenerator, Row
from dlm_sway.backends.hf_lora import LoraSlot
from dlm_sway.backends.hf_mixed import Factors, Group, Stack, installed
from dlm_sway.core.scoring import Conversation, Generation, GenerationSettings

#: Rows of a mixed decode batch, as a multiple of the plain batch size...
MIXED_ROWS = 4
#: ...while its KV cache stays under this (a chunk may then hold 1.5x, see
#: ``_length_chunks``). On CPU a decode step costs far less than twice as much at
#: twice the rows: 72 rows of SmolLM2 decoded as one batch took 0.7x the time of two
#: batches of 36, whose KV caches need 190 MB each at 64 new tokens.
KV_BUDGET_BYTES = 384 << 20


class _MixedGenerator(HFGenerator):
    """Rows of several nulls in one batch (``groups`` = null index per prompt)."""

    def __init__(self, base: HFGenerator, stack: Stack) -> None:
        self.__dict__.update(base.__dict__)  # the same model, tokenizer, batch size, margin
        self.stack = stack

    def _chunk_rows(self, rows: Sequence[Row]) -> int:
        """Up to ``MIXED_ROWS`` plain batches, as many rows as the KV budget holds (at
        least one plain batch; twice one where the model's KV size is unknown)."""
        per_token = kv_bytes_per_token(self.model)
        if per_token is None or not rows:
            return 2 * self.batch_size
        longest = max(len(r.prompt_ids) + r.settings.max_new_tokens for r in rows)
        fits = KV_BUDGET_BYTES // (per_token * longest)
        return max(self.batch_size, min(MIXED_ROWS * self.batch_size, fits))

    def _forward(self, rows: Sequence[Row], **inputs: Any) -> Any:
        self.stack.select([r.group for r in rows])
        return self.model(**inputs)

    def _canonical(self, row: Row) -> torch.Tensor:
        with self.stack.own(row.group):  # exactly the row's view's own forward
            return super()._canonical(row)


def generate_rows(
    stack: Stack,
    scalings: Sequence[float],
    generator: HFGenerator,
    prompts: Sequence[str | Conversation],
    groups: Sequence[int],
    settings: GenerationSettings,
) -> list[Generation]:
    """Prompt ``i`` written by the view of ``stack``'s group ``groups[i]``, every row in
    the batches of its own text. Batches hold up to ``MIXED_ROWS`` times ``generator``'s
    batch size within ``KV_BUDGET_BYTES``: 9 nulls × 3 prompts then decode as one
    batch, 0.36× the time of one null at a time on SmolLM2 against 0.54× at the plain
    batch size."""
    if not stack.finite:
        raise RuntimeError("a view's LoRA factors hold NaN or inf")
    with installed(stack, scalings):
        return _MixedGenerator(generator, stack).generate(prompts, settings, groups=groups)


def kv_bytes_per_token(model: Any) -> int | None:
    """Bytes one token takes in ``model``'s KV cache (keys and values of every layer),
    or None when its config does not say."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    config = getattr(config, "get_text_config", lambda: config)()
    heads = _count(getattr(config, "num_attention_heads", None))
    hidden = _count(getattr(config, "hidden_size", None))
    layers = _count(getattr(config, "num_hidden_layers", None))
    kv_heads = _count(getattr(config, "num_key_value_heads", None)) or heads
    head_dim = _count(getattr(config, "head_dim", None)) or (
        hidden // heads if hidden and heads else None
    )
    if layers is None or kv_heads is None or not head_dim:
        return None
    element: int = next(base.parameters()).element_size()
    return 2 * layers * kv_heads * head_dim * element


def _count(value: object) -> int | None:
    """``value`` if it is a positive int (a config may hold a list, a float or None)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def generate_mixed(
    slots: Sequence[LoraSlot],
    draws: Sequence[Factors],
    scalings: Sequence[float],
    generator: HFGenerator,
    prompts: Sequence[str | Conversation],
    settings: GenerationSettings,
) -> list[list[Generation]]:
    """Per null (one (A, B) per slot, in ``slots`` order), its generations of ``prompts``."""
    stack = Stack(slots, draws, [Group(k) for k in range(len(draws))])
    flat = generate_rows(
        stack,
        scalings,
        generator,
        [p for _ in draws for p in prompts],
        [k for k in range(len(draws)) for _ in prompts],
        settings,
    )
    n = len(prompts)
    return [flat[k * n : (k + 1) * n] for k in range(len(draws))]


__all__ = ["generate_mixed", "generate_rows"]
