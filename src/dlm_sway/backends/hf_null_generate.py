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


class _MixedGenerator(HFGenerator):
    """Rows of several nulls in one batch (``groups`` = null index per prompt)."""

    def __init__(self, base: HFGenerator, stack: Stack) -> None:
        self.__dict__.update(base.__dict__)  # the same model, tokenizer, batch size, margin
        self.stack = stack

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
    the batches of its own text. Batches hold about twice ``generator``'s batch size (at
    most three times, and so its KV cache): 9 nulls × 3 prompts then decode as one
    batch, 0.36× the time of one null at a time on SmolLM2 against 0.54× at the plain
    batch size."""
    if not stack.finite:
        raise RuntimeError("a view's LoRA factors hold NaN or inf")
    with installed(stack, scalings):
        mixed = _MixedGenerator(generator, stack)
        mixed.batch_size = 2 * generator.batch_size
        return mixed.generate(prompts, settings, groups=groups)


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
