"""Forward chunks are the cheapest cut of the length-sorted texts, within the limits."""

from __future__ import annotations

import itertools
import random

import pytest

from dlm_sway.backends.hf_trunks import RUN_COST, row_cost
from dlm_sway.backends.hf_views import (
    MAX_BATCH_TOKENS,
    MIN_FORWARD_TOKENS,
    MIX_CHUNK_TOKENS,
    _chunks,
)


def _cost(lengths: list[int], chunks: list[list[int]]) -> float:
    return sum(
        max(len(c) * row_cost(max(lengths[i] for i in c)), MIN_FORWARD_TOKENS) + RUN_COST
        for c in chunks
    )


def _fits(lengths: list[int], chunk: list[int], batch: int, widen: int, own: int) -> bool:
    rows, width = len(chunk), max(lengths[i] for i in chunk)
    return rows == 1 or (
        rows <= batch * widen
        and rows * width <= MAX_BATCH_TOKENS
        and (rows <= own or rows * width <= MIX_CHUNK_TOKENS)
    )


def _brute_force(lengths: list[int], batch: int, widen: int, own: int) -> float:
    """The cheapest cut of the sorted order into contiguous chunks that fit."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = float("inf")
    for cuts in itertools.product((False, True), repeat=len(order) - 1):
        chunks, current = [], [order[0]]
        for cut, i in zip(cuts, order[1:], strict=True):
            if cut:
                chunks.append(current)
                current = []
            current.append(i)
        chunks.append(current)
        if all(_fits(lengths, c, batch, widen, own) for c in chunks):
            best = min(best, _cost(lengths, chunks))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_chunks_cost_no_more_than_any_other_cut(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.choice([3, 5, 9, 14, 30, 90, 400, 1500]) for _ in range(rng.randint(2, 9))]
    batch, widen = rng.choice([(2, 1), (3, 1), (4, 2), (2, 4)])
    own = rng.randint(1, batch)
    chunks = _chunks(lengths, batch, widen=widen, own_rows=own)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
    assert all(_fits(lengths, c, batch, widen, own) for c in chunks)
    assert _cost(lengths, chunks) == pytest.approx(_brute_force(lengths, batch, widen, own))


def test_a_long_text_does_not_pad_a_run_of_short_ones() -> None:
    lengths = [6] * 12 + [300]
    chunks = _chunks(lengths, 16)
    assert [len(c) for c in chunks] == [12, 1]
    assert chunks[1] == [12]
    # Twelve views of 13 prompts (a delta_kl under nulls): the greedy fill padded 24%.
    prompts = [4, 5, 8, 9, 9, 10, 10, 10, 13, 19, 24, 25, 28]
    mixed = prompts * 12
    cut = _chunks(mixed, 16, widen=12, own_rows=2)
    padded = sum(len(c) * max(mixed[i] for i in c) for c in cut)
    assert padded <= 1.05 * sum(mixed)


def test_short_texts_share_a_forward_rather_than_pay_one_each() -> None:
    # Each forward reads every weight: texts this short cost less together than apart.
    assert _chunks([3, 4, 5, 6, 7, 9, 12, 15], 8) == [[0, 1, 2, 3, 4, 5, 6, 7]]


def test_limits_still_bound_every_chunk() -> None:
    lengths = [MAX_BATCH_TOKENS // 3] * 7
    assert sorted(len(c) for c in _chunks(lengths, 16)) == [1, 3, 3]
    assert [len(c) for c in _chunks([10] * 20, 4)] == [4] * 5
    # Logit rows: never more than max_logits in one chunk (a lone text may exceed it).
    chunks = _chunks([8] * 9, 4, widen=3, logits=[7] * 9, max_logits=28)
    assert all(len(c) * 7 <= 28 for c in chunks) and len(chunks) == 3
