"""Texts that open with the same long run of tokens compute that run once.

``prompt_collapse`` puts the same 128–512 tokens of padding before each of its
prompts, and one forward per text recomputes the padding for every prompt. A
causal LM's keys and values at a position depend only on the tokens up to it, so
the shared run (the *trunk*) goes through the model once and its KV cache serves
every text that continues it: each text's own tokens (its *tail*) then attend to
the trunk's cached keys. The numbers equal the full forward's within float
jitter (another matmul layout), the jitter the noise floor measures.

Which texts share a trunk is chosen to forward the fewest tokens: texts sorted
by their tokens put those with the longest common prefixes side by side, and a
dynamic programme over that order cuts it into runs (a run's trunk is its
members' common prefix, kept one token short of the shortest member so every
member's last position is in its own tail).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

#: Shortest trunk worth its own forward (tokens).
MIN_TRUNK = 32
#: What one more forward costs, in tokens forwarded (the programme's per-run charge).
RUN_COST = 32
#: Sorted neighbours a run may span (bounds the programme at n × this).
MAX_RUN = 64
#: Rows × (trunk + tail) positions a tail forward may hold: each row carries its own
#: copy of the trunk's keys and values (46 KB a position on SmolLM2: 141 MB here).
MAX_SLOTS = 3072


@dataclass(frozen=True)
class Trunk:
    """``members`` (indices into the texts) share their first ``length`` tokens."""

    length: int
    members: tuple[int, ...]


def find_trunks(seqs: Sequence[Sequence[int]], keys: Sequence[int] | None = None) -> list[Trunk]:
    """Runs of at least two texts sharing at least :data:`MIN_TRUNK` leading tokens,
    never across different ``keys`` (a mix's views), chosen to forward the fewest
    tokens; texts in no run are left out."""
    n = len(seqs)
    key = list(keys) if keys is not None else [0] * n
    order = sorted(range(n), key=lambda i: (key[i], tuple(seqs[i])))
    common = [
        _common(seqs[a], seqs[b]) if key[a] == key[b] else 0
        for a, b in zip(order, order[1:], strict=False)
    ]
    best = [0.0] * (n + 1)
    start = list(range(n + 1))  # start[j]: the run ending at sorted j-1 begins there
    trunk = [0] * (n + 1)
    for j in range(1, n + 1):
        best[j] = best[j - 1] + len(seqs[order[j - 1]])
        start[j], trunk[j] = j - 1, 0
        shared, shortest, total = 1 << 30, len(seqs[order[j - 1]]), len(seqs[order[j - 1]])
        for i in range(j - 2, max(-1, j - 1 - MAX_RUN), -1):
            shared = min(shared, common[i])
            shortest = min(shortest, len(seqs[order[i]]))
            total += len(seqs[order[i]])
            t = min(shared, shortest - 1)
            if t < MIN_TRUNK:
                break
            cost = best[i] + total - (j - i - 1) * t + RUN_COST
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


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n


class TrunkUnsupportedError(RuntimeError):
    """The model's cache is not one plain key/value tensor per layer (sliding windows,
    linear attention): trunks cannot be handed to tails; score the texts whole."""


KV = list[tuple[torch.Tensor, torch.Tensor]]


def last_logits(
    model: Callable[..., Any],
    seqs: Sequence[Sequence[int]],
    trunks: Sequence[Trunk],
    *,
    pad_id: int,
    device: torch.device,
    cache_kw: str,
    rows: Callable[[Sequence[int]], None],
    record: Callable[[Sequence[Sequence[int]]], None],
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Per chunk of members, their texts' last-position logits (rows in member order).

    ``rows(items)`` is told whose rows the next forward holds (a mix's views; each
    trunk forward row stands for its first member), ``record(seqs)`` what it pushed.
    """
    owner = {m: c for c, t in enumerate(trunks) for m in t.members}
    by_length = sorted(range(len(trunks)), key=lambda c: trunks[c].length)
    for picked in _chunks([trunks[c].length for c in by_length]):
        chunk = [by_length[p] for p in picked]
        kv = _trunk_forward(model, seqs, [trunks[c] for c in chunk], pad_id, device, rows)
        record([seqs[trunks[c].members[0]][: trunks[c].length] for c in chunk])
        members = sorted(
            (m for c in chunk for m in trunks[c].members),
            key=lambda m: (trunks[owner[m]].length, len(seqs[m])),
        )
        tails = [len(seqs[m]) - trunks[owner[m]].length for m in members]
        depth = [trunks[owner[m]].length for m in members]
        for part in _chunks(tails, depth):
            items = [members[i] for i in part]
            rows(items)
            logits = _tail_forward(
                model,
                seqs,
                items,
                [trunks[owner[m]].length for m in items],
                [kv[chunk.index(owner[m])] for m in items],
                pad_id,
                device,
                cache_kw,
            )
            record([seqs[m][trunks[owner[m]].length :] for m in items])
            yield items, logits


def _trunk_forward(
    model: Callable[..., Any],
    seqs: Sequence[Sequence[int]],
    trunks: Sequence[Trunk],
    pad_id: int,
    device: torch.device,
    rows: Callable[[Sequence[int]], None],
) -> list[KV]:
    """Each trunk's keys and values (right-padded batch; a row stands for its first member)."""
    width = max(t.length for t in trunks)
    ids = torch.full((len(trunks), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(trunks), width), dtype=torch.long)
    for r, t in enumerate(trunks):
        ids[r, : t.length] = torch.tensor(list(seqs[t.members[0]][: t.length]))
        mask[r, : t.length] = 1
    rows([t.members[0] for t in trunks])
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=torch.arange(width).expand(len(trunks), width).to(device),
        use_cache=True,
        logits_to_keep=1,
    )
    layers = _layers(out)
    return [
        [(k[r : r + 1, :, : t.length], v[r : r + 1, :, : t.length]) for k, v in layers]
        for r, t in enumerate(trunks)
    ]


def _tail_forward(
    model: Callable[..., Any],
    seqs: Sequence[Sequence[int]],
    items: list[int],
    depths: list[int],
    pasts: list[KV],
    pad_id: int,
    device: torch.device,
    cache_kw: str,
) -> torch.Tensor:
    """One forward of ``items``' tails (left-padded) behind their trunks' cached keys
    (right-padded): the padding between a short trunk and its tail is masked out, and
    each tail's positions continue from its own trunk's length (``depths``)."""
    past = max(depths)
    width = max(len(seqs[m]) - n for m, n in zip(items, depths, strict=True))
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), past + width), dtype=torch.long)
    positions = torch.zeros((len(items), width), dtype=torch.long)
    for r, (m, n) in enumerate(zip(items, depths, strict=True)):
        tail = list(seqs[m][n:])
        ids[r, width - len(tail) :] = torch.tensor(tail)
        mask[r, :n] = 1
        mask[r, past + width - len(tail) :] = 1
        positions[r, width - len(tail) :] = torch.arange(n, n + len(tail))
    cache = DynamicCache(
        ddp_cache_data=[
            (
                torch.cat([_pad(kv[layer][0], past) for kv in pasts]),
                torch.cat([_pad(kv[layer][1], past) for kv in pasts]),
            )
            for layer in range(len(pasts[0]))
        ]
    )
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        use_cache=True,
        logits_to_keep=1,
        **{cache_kw: cache},
    )
    logits: torch.Tensor = out.logits[:, -1, :]
    return logits


def _pad(t: torch.Tensor, length: int) -> torch.Tensor:
    """A [1, heads, n, dim] cache tensor zero-padded to ``length`` positions (masked)."""
    extra = length - t.shape[-2]
    if not extra:
        return t
    return torch.cat([t, t.new_zeros((*t.shape[:-2], extra, t.shape[-1]))], dim=-2)


def _layers(out: Any) -> KV:
    cache = getattr(out, "cache", None)
    cache = cache if cache is not None else getattr(out, "past_key_values", None)
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        raise TrunkUnsupportedError("the model's KV cache is not plain per-layer keys and values")
    return [(layer.keys, layer.values) for layer in layers]


def _chunks(lengths: Sequence[int], past: Sequence[int] | None = None) -> list[list[int]]:
    """Consecutive indices, each chunk's rows × (deepest past + longest length) within
    :data:`MAX_SLOTS` (a single row may exceed it)."""
    out: list[list[int]] = []
    chunk: list[int] = []
    longest = deepest = 0
    for i, n in enumerate(lengths):
        p = past[i] if past is not None else 0
        if chunk and (len(chunk) + 1) * (max(longest, n) + max(deepest, p)) > MAX_SLOTS:
            out.append(chunk)
            chunk, longest, deepest = [], 0, 0
        chunk.append(i)
        longest, deepest = max(longest, n), max(deepest, p)
    if chunk:
        out.append(chunk)
    return out


__all__ = ["MIN_TRUNK", "Trunk", "TrunkUnsupportedError", "find_trunks", "last_logits"]
