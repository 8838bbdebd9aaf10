"""Texts that open with the same long run of tokens compute that run once.

``prompt_collapse`` puts the same 128–512 tokens of padding before each of its
prompts, and one forward per text recomputes the padding for every prompt. A
causal LM's keys and values at a position depend only on the tokens up to it, so
the shared run (the *trunk*) goes through the model once for all the texts that
continue it: the trunk and every text's own tokens (its *tail*) share one row,
and a 4D attention mask lets each tail see the trunk and itself, never another
tail, at the positions it has in its own text. The numbers equal the full
forward's within float jitter (another matmul layout), the jitter the noise
floor measures. A row is the trunk once plus the tails, so memory stays what
one forward of that many tokens takes (no key/value cache is copied per text).
Whether a model honours the mask is checked once against a whole text
(``HFScorer._packing_usable``); one that does not scores its texts whole.

Which texts share a trunk is chosen to cost the least, attention included (a
packed row computes all its token pairs): texts sorted by their tokens put those
with the longest common prefixes side by side, and a dynamic programme over that
order cuts it into runs (a run's trunk is its members' common prefix, kept one
token short of the shortest member so every member's last position is in its own
tail). A text longer than a packed row (:data:`MAX_PACKED_TOKENS`) is never
packed, so no row's mask outgrows that length squared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

#: Shortest trunk worth its own forward (tokens).
MIN_TRUNK = 32
#: What one more forward costs, in tokens forwarded (the programme's per-run charge).
RUN_COST = 32
#: Row length at which a row's attention costs what its linear layers do (about 6 × the
#: hidden size for a Llama-shaped model: 3456 for SmolLM2; larger models are cheaper): a
#: packed row computes every pair of its tokens, so long tails on a short trunk do not pay.
ATTENTION_TOKENS = 3072
#: Sorted neighbours a run may span (bounds the programme at n × this).
MAX_RUN = 64
#: Tokens a packed row, and a chunk of them (rows × longest row), holds: a row's mask is
#: its length squared.
MAX_PACKED_TOKENS = 2048


@dataclass(frozen=True)
class Trunk:
    """``members`` (indices into the texts) share their first ``length`` tokens."""

    length: int
    members: tuple[int, ...]


def find_trunks(seqs: Sequence[Sequence[int]], keys: Sequence[int] | None = None) -> list[Trunk]:
    """Runs of at least two texts sharing at least :data:`MIN_TRUNK` leading tokens,
    never across different ``keys`` (a mix's views), chosen to cost the least
    (:func:`row_cost`); texts in no run are left out."""
    key = list(keys) if keys is not None else [0] * len(seqs)
    # A text longer than a packed row is always scored whole.
    order = sorted(
        (i for i in range(len(seqs)) if len(seqs[i]) <= MAX_PACKED_TOKENS),
        key=lambda i: (key[i], tuple(seqs[i])),
    )
    n = len(order)
    common = [
        _common(seqs[a], seqs[b]) if key[a] == key[b] else 0
        for a, b in zip(order, order[1:], strict=False)
    ]
    best = [0.0] * (n + 1)
    start = list(range(n + 1))  # start[j]: the run ending at sorted j-1 begins there
    trunk = [0] * (n + 1)
    for j in range(1, n + 1):
        best[j] = best[j - 1] + row_cost(len(seqs[order[j - 1]]))
        start[j], trunk[j] = j - 1, 0
        shared, shortest, total = 1 << 30, len(seqs[order[j - 1]]), len(seqs[order[j - 1]])
        for i in range(j - 2, max(-1, j - 1 - MAX_RUN), -1):
            shared = min(shared, common[i])
            shortest = min(shortest, len(seqs[order[i]]))
            total += len(seqs[order[i]])
            t = min(shared, shortest - 1)
            if t < MIN_TRUNK:
                break
            cost = best[i] + row_cost(total - (j - i - 1) * t) + RUN_COST
            if cost < best[j]:
                best[j], start[j], trunk[j] = cost, i, t
    out: list[Trunk] = []
    j = n
    while j > 0:
        i = start[j]
        if trunk[j]:
            out.append(Trunk(trunk[j], tuple(sorted(order[i:j]))))
        j = i
    return out[::-1]


def row_cost(tokens: int) -> float:
    """What a row of ``tokens`` costs, in tokens: its linear layers plus its attention,
    which a mask does not skip (all pairs are computed, padding and other tails too)."""
    return tokens + tokens * tokens / ATTENTION_TOKENS


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n


@dataclass(frozen=True)
class Packed:
    """A trunk and its members' tails in one row: ``ends[j]`` is the row position of
    member ``j``'s last token, whose logits are its next-token logits."""

    members: tuple[int, ...]
    ids: tuple[int, ...]
    positions: tuple[int, ...]
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    trunk: int


def pack(seqs: Sequence[Sequence[int]], trunk: Trunk) -> list[Packed]:
    """``trunk``'s run once, then each member's own tokens, each tail's positions
    continuing from the trunk's length (as in the member's own text); a new row (the
    trunk again) whenever one would pass :data:`MAX_PACKED_TOKENS`."""
    n = trunk.length
    out: list[Packed] = []
    groups: list[list[int]] = [[]]
    size = n
    for m in trunk.members:
        extra = len(seqs[m]) - n
        if groups[-1] and size + extra > MAX_PACKED_TOKENS:
            groups.append([])
            size = n
        groups[-1].append(m)
        size += extra
    for members in groups:
        ids = list(seqs[members[0]][:n])
        positions = list(range(n))
        starts, ends = [], []
        for m in members:
            tail = list(seqs[m][n:])
            starts.append(len(ids))
            ids += tail
            positions += range(n, n + len(tail))
            ends.append(len(ids) - 1)
        out.append(
            Packed(tuple(members), tuple(ids), tuple(positions), tuple(starts), tuple(ends), n)
        )
    return out


def packed_inputs(
    rows: Sequence[Packed], pad_id: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Right-padded ids, explicit positions and a 4D additive attention mask per row:
    the trunk is causal, each tail sees the trunk and its own earlier tokens (never
    another tail), and a padding position sees only itself (a fully masked row would
    turn into NaN and reach real rows through its values)."""
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    allowed = torch.zeros((len(rows), 1, width, width), dtype=torch.bool)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    for r, row in enumerate(rows):
        ids[r, : len(row.ids)] = torch.tensor(row.ids)
        positions[r, : len(row.ids)] = torch.tensor(row.positions)
        t = row.trunk
        allowed[r, 0, :t, :t] = causal[:t, :t]
        for s, e in zip(row.starts, row.ends, strict=True):
            allowed[r, 0, s : e + 1, :t] = True
            allowed[r, 0, s : e + 1, s : e + 1] = causal[: e + 1 - s, : e + 1 - s]
        pad = torch.arange(len(row.ids), width)
        allowed[r, 0, pad, pad] = True
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return ids.to(device), {"attention_mask": mask.to(device), "position_ids": positions.to(device)}


def packed_chunks(rows: Sequence[Packed]) -> list[list[int]]:
    """Row indices by length, each chunk's rows × longest row within
    :data:`MAX_PACKED_TOKENS` (a single row may exceed it)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))
    out: list[list[int]] = []
    chunk: list[int] = []
    for i in order:
        if chunk and (len(chunk) + 1) * len(rows[i].ids) > MAX_PACKED_TOKENS:
            out.append(chunk)
            chunk = []
        chunk.append(i)
    if chunk:
        out.append(chunk)
    return out


__all__ = [
    "MIN_TRUNK",
    "Packed",
    "Trunk",
    "find_trunks",
    "pack",
    "packed_chunks",
    "packed_inputs",
    "row_cost",
]
