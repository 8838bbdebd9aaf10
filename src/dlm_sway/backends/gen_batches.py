"""Several settings' generations of one view, cached per batch, their misses written in
one call (``GeneratingBatches`` for the HF and vLLM views).

Each batch is served through the run cache exactly as ``generate_batch`` serves it
(same op, keys and counters), so what one path wrote the other reads back. The
misses of every batch are collected first and handed to ``write_each`` together,
the first time any batch asks: the HF generator decodes them as rows of the same
batches, the vLLM client sends them as one set of concurrent requests.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from dlm_sway.backends.instrumentation import Instrumentation
from dlm_sway.core.scoring import (
    Conversation,
    Generation,
    GenerationBatch,
    GenerationError,
    GenerationSettings,
    prompt_cache_key,
)

Prompt = str | Conversation
#: Prompt ``i`` under settings ``i``, one generation each, in order.
WriteEach = Callable[[list[Prompt], list[GenerationSettings]], list[Generation]]


def generation_op(settings: GenerationSettings) -> str:
    """The cache op of a generation under ``settings`` (its settings are part of the key)."""
    return "generate:" + repr(settings)


def cached_generations(
    instr: Instrumentation,
    view_id: str,
    batches: Sequence[GenerationBatch],
    write_each: WriteEach,
) -> list[list[Generation]]:
    """Per batch, its generations: cached ones from ``instr``, the rest written together."""
    ops = [generation_op(b.settings) for b in batches]
    keys = [[prompt_cache_key(p) for p in b.prompts] for b in batches]
    pending: dict[tuple[str, str], tuple[Prompt, GenerationSettings]] = {}
    for op, batch, its in zip(ops, batches, keys, strict=True):
        for prompt, key in zip(batch.prompts, its, strict=True):
            if instr.cache.key(op, view_id, key, 0) not in instr.cache:
                pending.setdefault((op, key), (prompt, batch.settings))
    written: dict[tuple[str, str], Generation] = {}

    def write(batch: GenerationBatch, idx: list[int]) -> list[Generation]:
        """``batch``'s misses (``idx`` into its prompts), all batches' written at first."""
        op, settings = generation_op(batch.settings), batch.settings
        items = [batch.prompts[i] for i in idx]
        if pending and not written:
            rows = list(pending.values())
            try:
                made = write_each([p for p, _ in rows], [s for _, s in rows])
            except GenerationError:
                pending.clear()  # each batch's own call says what is wrong with its prompts
            else:
                written.update(zip(pending, made, strict=True))
        wanted = [(op, prompt_cache_key(p)) for p in items]
        # Anything not written together (the cache let it go since it was checked, or
        # the shared call refused a prompt) is written on its own.
        rest = [p for p, k in zip(items, wanted, strict=True) if k not in written]
        if rest:
            again = write_each(rest, [settings] * len(rest))
            written.update(zip([(op, prompt_cache_key(p)) for p in rest], again, strict=True))
        return [written[k] for k in wanted]

    return [
        instr.cached_batch(op, view_id, its, 0, functools.partial(write, batch))
        if batch.prompts
        else []
        for op, batch, its in zip(ops, batches, keys, strict=True)
    ]


__all__ = ["WriteEach", "cached_generations", "generation_op"]
