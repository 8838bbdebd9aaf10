"""Batched scoring on a loaded PEFT model, and the view objects probes see.

:class:`HFScorer` owns the forwards: it tokenizes, groups sequences of similar
length into padded chunks, runs one forward per chunk under
``torch.inference_mode()`` and takes log-softmax in float32. :class:`HFView`
is what a backend's ``as_*`` context managers yield: it routes every call
through the run's forward cache under its own namespace and refuses to work
once its with-block has exited (the weights would no longer be its weights).
Views also hand out the full next-token distribution (``FullDistributions``),
so divergence probes are exact over the whole vocabulary.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dlm_sway.backends import base_cache
from dlm_sway.backends.gen_batches import cached_generations, generation_op
from dlm_sway.backends.hf_few_rows import speed_up_few_rows
from dlm_sway.backends.hf_generate import HFGenerator, tie_margin
from dlm_sway.backends.hf_mixed import Stack
from dlm_sway.backends.hf_positions import PositionHead
from dlm_sway.backends.hf_sweep import Request, Sweep
from dlm_sway.backends.hf_trunks import (
    RUN_COST,
    Packed,
    Trunk,
    find_trunks,
    pack,
    packed_chunks,
    packed_inputs,
    row_cost,
)
from dlm_sway.backends.instrumentation import Instrumentation, pair_key
from dlm_sway.core.errors import ProbeError, ViewError
from dlm_sway.core.scoring import (
    Conversation,
    Generation,
    GenerationBatch,
    GenerationError,
    GenerationSettings,
    RollingLogprob,
    TokenDist,
    prompt_cache_key,
)

T = TypeVar("T")

#: Padded tokens per forward chunk: bounds the B×T×V logits tensor on long texts.
MAX_BATCH_TOKENS = 8192
#: Padded tokens a chunk of several views' rows may grow to past the batch size: more
#: rows per matmul run faster, and this bounds what each layer's activations then take
#: (SmolLM2's MLP: 12 MB a tensor at 2048 tokens; 17 prompts under 5 views need 1870).
MIX_CHUNK_TOKENS = 2048
#: Tokens a forward costs however few it holds (it reads every weight): on SmolLM2 in
#: fp32 a forward of t tokens took max(t, 48) + 20 token-times, here charged with the
#: trunks' RUN_COST as max(t, 48) + 32.
MIN_FORWARD_TOKENS = 48
#: Rows turned into full dists at a time (their float64 log-softmax is 8·V bytes a row).
_DIST_ROWS = 16
#: A tail below this mass is reported as 0.0 ("exists but underflowed").
TAIL_FLOOR = 1e-12
#: Memory for cached full-vocabulary dists (float32, 4·V bytes each: 192 KiB for SmolLM2).
#: They get their own LRU so 4096 of them (~800 MiB) never sit in the shared cache.
FULL_CACHE_BYTES = 256 * 2**20


def _frozen(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Results are cached and shared between callers, so make them read-only."""
    array.flags.writeable = False
    return array


def token_dist_from_row(row: torch.Tensor, top_k: int) -> TokenDist:
    """Top-k of one float32 log-prob row plus the three-state tail (shared by all paths)."""
    vocab = int(row.shape[-1])
    k = min(top_k, vocab)
    values, indices = torch.topk(row, k)
    tail: float | None = None
    if k < vocab:
        rest = row.clone()
        rest[indices] = -math.inf
        # log of the mass outside the top-k; exact where 1 - Σexp(top-k) would cancel.
        tail_lp = float(torch.logsumexp(rest, dim=-1))
        tail = tail_lp if math.isnan(tail_lp) or math.exp(tail_lp) > TAIL_FLOOR else 0.0
    return TokenDist(
        token_ids=_frozen(indices.to("cpu", torch.int64).numpy()),
        logprobs=_frozen(values.to("cpu", torch.float32).numpy()),
        vocab_size=vocab,
        tail_logprob=tail,
    )


@functools.lru_cache(maxsize=4)
def _vocab_ids(vocab: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    """``arange(vocab)``, built once and shared by every full dist of that vocabulary."""
    return _frozen(np.arange(vocab, dtype=np.int64))


def full_dists_from_logits(last: torch.Tensor) -> list[TokenDist]:
    """Whole-vocabulary dists from B×V last-position logits.

    Log-softmax runs in float64 on the CPU (MPS has no float64) and is stored
    float32: a float32 log-softmax alone is off by ~3e-6 nats of KL on SmolLM2.
    Each row is copied out, so an evicted dist never pins the whole batch.
    """
    vocab = int(last.shape[-1])
    ids = _vocab_ids(vocab)
    out: list[TokenDist] = []
    for start in range(0, int(last.shape[0]), _DIST_ROWS):  # bounds the float64 copies
        block = last[start : start + _DIST_ROWS].detach().to("cpu", torch.float64)
        rows = block.log_softmax(dim=-1).float().numpy()
        out += [TokenDist(ids, _frozen(row.copy()), vocab, None) for row in rows]
    return out


def _chunks(
    lengths: Sequence[int],
    batch_size: int,
    *,
    widen: int = 1,
    own_rows: int | None = None,
    logits: Sequence[int] | None = None,
    max_logits: int | None = None,
) -> list[list[int]]:
    """Indices cut into forwards of similar length that cost the least in all: each
    chunk pays its padded rows (:func:`row_cost` of its longest) and one ``RUN_COST``,
    so a few long texts do not pad a run of short ones, nor does every length get a
    forward of its own. A chunk holds at most ``batch_size`` rows and ~MAX_BATCH_TOKENS;
    views sharing forwards (``widen`` of them) may fill up to ``widen`` times the rows,
    past ``own_rows`` (one view's chunk; default ``batch_size``) only up to
    MIX_CHUNK_TOKENS, and to ``max_logits`` logit rows (``logits[i]`` each) when given.
    A dynamic programme over the texts in length order. Each end scans back until a
    limit fails (they only tighten further back) or no earlier start can win: a cut's
    cost is at least its texts' own tokens, so ``real[i]`` (the tokens before ``i``)
    plus the chunk's rows bounds every start at or before ``i`` from below."""
    own = batch_size if own_rows is None else own_rows
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    real = [0, *itertools.accumulate(lengths[i] for i in order)]
    best = [0.0] * (len(order) + 1)
    start = [0] * (len(order) + 1)  # start[j]: the chunk ending at sorted j-1 begins there
    for j in range(1, len(order) + 1):
        width = lengths[order[j - 1]]  # sorted ascending: the chunk's last sets its width
        per_row = row_cost(width)
        best[j], held = float("inf"), 0
        for i in range(j - 1, -1, -1):
            rows = j - i
            held += logits[order[i]] if logits is not None else 0
            if rows > 1 and (
                rows > batch_size * widen
                or rows * width > MAX_BATCH_TOKENS
                or (rows > own and rows * width > MIX_CHUNK_TOKENS)
                or (max_logits is not None and held > max_logits)
            ):
                break
            if real[i] + rows * per_row + RUN_COST > best[j]:
                break
            cost = best[i] + max(rows * per_row, MIN_FORWARD_TOKENS) + RUN_COST
            if cost <= best[j]:  # ties: the longer chunk, one forward fewer
                best[j], start[j] = cost, i
    chunks: list[list[int]] = []
    j = len(order)
    while j > 0:
        chunks.append(order[start[j] : j])
        j = start[j]
    return chunks[::-1]


def prefix_hosts(seqs: Sequence[Sequence[int]]) -> list[int]:
    """Per sequence, the longest sequence it is a prefix of (itself if none; equal ones
    share one). In lexicographic order a prefix sits right before the run of sequences
    that extend it, so one backward pass over the sorted order finds every host."""
    order = sorted(range(len(seqs)), key=lambda i: tuple(seqs[i]))
    hosts = list(range(len(seqs)))
    for k in range(len(order) - 2, -1, -1):
        here, after = seqs[order[k]], seqs[order[k + 1]]
        if len(here) <= len(after) and tuple(after[: len(here)]) == tuple(here):
            hosts[order[k]] = hosts[order[k + 1]]
    return hosts


class HFScorer:
    """Tokenize, pad, forward and gather on one PEFT model (whatever view is active)."""

    def __init__(
        self,
        model: PeftModel | PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        device: torch.device,
        batch_size: int,
        instrumentation: Instrumentation,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size
        self.instr = instrumentation
        # A two-model backend scores plain transformers models: no PEFT wrapper to unwrap.
        inner = model.get_base_model() if isinstance(model, PeftModel) else model
        vocab = getattr(inner.config, "vocab_size", None) or 2**17
        self.full_instr = Instrumentation(
            max(1, min(instrumentation.cache.maxsize, FULL_CACHE_BYTES // (4 * int(vocab))))
        )
        self.full_instr.stats = instrumentation.stats  # one set of counters per backend
        self.pad_id = int(tokenizer.pad_token_id)
        forward_params = inspect.signature(inner.forward).parameters
        self._logits_to_keep = "logits_to_keep" in forward_params
        # Left padding needs explicit positions; a model that takes none gets the default.
        self._position_ids = "position_ids" in forward_params
        #: Whether texts sharing a long opening may be packed into one row (:mod:`.hf_trunks`):
        #: None until checked against a whole text (it needs explicit positions).
        self._packing: bool | None = None if self._position_ids else False
        self._dtype = next(model.parameters()).dtype
        self._head = PositionHead(model)
        speed_up_few_rows(model)  # decode steps and one-prompt forwards (fp32 on CPU)
        #: While views share forwards (:mod:`.hf_sweep`): the stack and each item's group.
        self._mix: tuple[Stack, list[int]] | None = None
        self._widen = 1

    @contextmanager
    def mixing(self, stack: Stack, groups: Sequence[int], width: int) -> Iterator[None]:
        """Item ``i`` of the next calls is a row of group ``groups[i]`` of ``stack``.
        Chunks take ``width`` times the batch size: the same texts under ``width`` views."""
        self._mix, self._widen = (stack, list(groups)), max(width, 1)
        try:
            yield
        finally:
            self._mix, self._widen = None, 1

    def _row_chunks(
        self, lengths: Sequence[int], items: Sequence[int] | None = None
    ) -> list[list[int]]:
        """Chunks of one forward each: wider while views share forwards, but past what
        one view's chunk of these texts would hold only up to MIX_CHUNK_TOKENS (long
        texts' activations grow with every row). ``items[c]``: the item of length ``c``
        (default: itself), whose group orders a mixed chunk (:meth:`_view_major`)."""
        own = min(self.batch_size, -(-len(lengths) // self._widen))
        return self._view_major(
            _chunks(lengths, self.batch_size, widen=self._widen, own_rows=own), items
        )

    def _logit_chunks(
        self, lengths: Sequence[int], wanted: Sequence[int], items: Sequence[int]
    ) -> list[list[int]]:
        """Chunks for ops that keep logits at ``wanted[i]`` positions per text: a mix's
        wider chunks never hold more logits than one view's largest chunk of the same
        texts would (rolling log-probs keep a vocabulary-wide row per token: 12 views'
        rows of 500-token texts in one chunk would hold 1.6 GB of logits)."""
        if self._widen == 1:
            return _chunks(lengths, self.batch_size)
        per_view = -(-len(lengths) // self._widen)
        most = min(self.batch_size, per_view) * max(wanted, default=1)
        chunks = _chunks(
            lengths, self.batch_size, widen=self._widen, logits=wanted, max_logits=most
        )
        return self._view_major(chunks, items)

    def _view_major(self, chunks: list[list[int]], items: Sequence[int] | None) -> list[list[int]]:
        """While views share forwards, each chunk's rows one view after another (the same
        lengths in the same order within each): every LoRA module then computes each
        view's own term over its run of rows, not every view's over all (:mod:`.hf_mixed`)."""
        if self._mix is None:
            return chunks
        groups = self._mix[1]
        item = (lambda c: c) if items is None else items.__getitem__
        return [sorted(chunk, key=lambda c: groups[item(c)]) for chunk in chunks]

    def _rows(self, items: Sequence[int]) -> None:
        """Before a forward over ``items``: tell the mix whose rows they are."""
        if self._mix is not None:
            stack, groups = self._mix
            stack.select([groups[i] for i in items])

    def _hosts(self, encoded: Sequence[Sequence[int]]) -> list[int]:
        """:func:`prefix_hosts`, never across a mix's groups (another view's forward)."""
        if self._mix is None:
            return prefix_hosts(encoded)
        groups = self._mix[1]
        return prefix_hosts([[-1 - groups[i], *ids] for i, ids in enumerate(encoded)])

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer(text)["input_ids"]
        return ids

    def pieces(self, text: str) -> list[str]:
        """The text each token of :meth:`encode` covers, concatenating to ``text``.

        From the fast tokenizer's character offsets (a gap, e.g. a trimmed space,
        goes to the token after it; special tokens get ""); a slow tokenizer falls
        back to decoding each id alone, which may not concatenate exactly.
        """
        ids = self.encode(text)
        try:
            offsets = self.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
        except NotImplementedError:
            offsets = None
        if offsets is None or len(offsets) != len(ids):
            return [str(self.tokenizer.decode([i])) for i in ids]
        out: list[str] = []
        pos = 0
        for _, end in offsets:
            out.append(text[pos:end] if end > pos else "")
            pos = max(pos, end)
        if out:
            out[-1] += text[pos:]
        return out

    def _inputs(
        self, seqs: Sequence[Sequence[int]], side: Literal["left", "right"]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Padded ids, mask and explicit position ids (padding never shifts positions)."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
            ids[row, span] = torch.tensor(list(seq), dtype=torch.long)
            mask[row, span] = 1
        kwargs: dict[str, Any] = {"attention_mask": mask.to(self.device)}
        if self._position_ids:
            positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
            kwargs["position_ids"] = positions.to(self.device)
        return ids.to(self.device), kwargs

    def forward(
        self,
        seqs: Sequence[Sequence[int]],
        *,
        side: Literal["left", "right"],
        last_only: bool,
        batched: bool,
    ) -> torch.Tensor:
        """Logits for a padded batch (only the last position's with ``last_only``)."""
        ids, kwargs = self._inputs(seqs, side)
        if last_only and side == "left" and self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        with torch.inference_mode():
            out = self.model(input_ids=ids, use_cache=False, **kwargs)
        self._record(seqs, batched)
        logits: torch.Tensor = out.logits
        return logits

    def logits_at(
        self, seqs: Sequence[Sequence[int]], positions: Sequence[Sequence[int]], *, batched: bool
    ) -> list[torch.Tensor]:
        """Per (right-padded) row, the logits at ``positions[row]`` only.

        The head runs on the wanted positions alone when the model splits cleanly
        into body and head (:mod:`dlm_sway.backends.hf_positions`); otherwise the
        full forward's rows are sliced. Same numbers either way.
        """
        ids, kwargs = self._inputs(seqs, "right")
        with torch.inference_mode():
            if self._split_usable(kwargs, ids):
                out = self._head.logits_at(ids, kwargs, positions)
            else:
                full = self.model(input_ids=ids, use_cache=False, **kwargs).logits
                out = [full[row, list(ps)] for row, ps in enumerate(positions)]
        self._record(seqs, batched)
        return out

    def target_logprobs_at(
        self,
        seqs: Sequence[Sequence[int]],
        positions: Sequence[Sequence[int]],
        *,
        batched: bool,
    ) -> list[torch.Tensor]:
        """Per (right-padded) row, the float32 log-prob of the token after each of
        ``positions[row]``: :meth:`logits_at` reduced as it goes, so only a slice of
        positions' logits exists at a time (:meth:`PositionHead.target_logprobs`)."""
        targets = [[seq[p + 1] for p in ps] for seq, ps in zip(seqs, positions, strict=True)]
        ids, kwargs = self._inputs(seqs, "right")
        with torch.inference_mode():
            if self._split_usable(kwargs, ids):
                out = self._head.target_logprobs(ids, kwargs, positions, targets)
            else:
                full = self.model(input_ids=ids, use_cache=False, **kwargs).logits
                out = [
                    _target_logprobs(full[row, list(ps)], tg)
                    for row, (ps, tg) in enumerate(zip(positions, targets, strict=True))
                ]
        self._record(seqs, batched)
        return out

    def _split_usable(self, kwargs: dict[str, Any], ids: torch.Tensor) -> bool:
        """:meth:`PositionHead.usable`; its one-time check runs on the batch's first two
        rows, so a mix is told those rows for it."""
        if self._mix is None or self._head.checked:
            return self._head.usable(kwargs, ids)
        stack = self._mix[0]
        rows = stack.rows or ()
        stack.select(rows[:2])
        try:
            return self._head.usable(kwargs, ids)
        finally:
            stack.select(rows)

    def _record(self, seqs: Sequence[Sequence[int]], batched: bool) -> None:
        self.instr.stats.record_forward(
            num_prompts=len(seqs), real_tokens=sum(len(s) for s in seqs), batched=batched
        )

    def next_token_dists(
        self, prompts: Sequence[str], top_k: int, *, batched: bool
    ) -> list[TokenDist]:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        return self._last_rows(
            prompts,
            lambda last: [token_dist_from_row(r, top_k) for r in last.float().log_softmax(dim=-1)],
            batched,
        )

    def next_token_full(self, prompts: Sequence[str], *, batched: bool) -> list[TokenDist]:
        """Whole-vocabulary next-token dists (same forwards as :meth:`next_token_dists`)."""
        return self._last_rows(prompts, full_dists_from_logits, batched)

    def _last_rows(
        self,
        prompts: Sequence[str],
        to_dists: Callable[[torch.Tensor], list[TokenDist]],
        batched: bool,
    ) -> list[TokenDist]:
        """Each prompt's last-position logits (B×V per chunk), turned into dists."""
        encoded = [self.encode(p) for p in prompts]
        for prompt, ids in zip(prompts, encoded, strict=True):
            if not ids:
                raise ProbeError(
                    "next_token_dist",
                    f"prompt {prompt[:40]!r} encodes to zero tokens and the tokenizer adds "
                    "no BOS token: there is no position to predict from",
                )
        results: list[TokenDist | None] = [None] * len(prompts)
        # Some prompts are token prefixes of others (a dialogue scored turn by turn): a
        # causal LM's logits at a prefix's last position are that prefix's next-token
        # logits, so one forward per longest text serves all of them.
        guests: dict[int, list[int]] = {}
        for i, host in enumerate(self._hosts(encoded)):
            guests.setdefault(host, []).append(i)
        # Texts that only open alike (padding before each prompt) share that opening.
        alone = [h for h, g in guests.items() if g == [h]]
        done = self._trunk_rows(encoded, alone, to_dists, results, batched)
        tops = [h for h in guests if h not in done]
        if all(guests[h] == [h] for h in tops):
            for chunk in self._row_chunks([len(encoded[h]) for h in tops], tops):
                items = [tops[c] for c in chunk]
                self._rows(items)
                logits = self.forward(
                    [encoded[i] for i in items], side="left", last_only=True, batched=batched
                )
                with torch.inference_mode():
                    for i, dist in zip(items, to_dists(logits[:, -1, :]), strict=True):
                        results[i] = dist
            return [r for r in results if r is not None]
        sizes = [len(guests[h]) for h in tops]
        for chunk in self._logit_chunks([len(encoded[h]) for h in tops], sizes, tops):
            members = [tops[c] for c in chunk]
            self._rows(members)
            wanted = [[len(encoded[i]) - 1 for i in guests[h]] for h in members]
            rows = self.logits_at([encoded[h] for h in members], wanted, batched=batched)
            with torch.inference_mode():
                dists = to_dists(torch.cat(rows))
            flat = [i for h in members for i in guests[h]]
            for i, dist in zip(flat, dists, strict=True):
                results[i] = dist
        return [r for r in results if r is not None]

    def _trunk_rows(
        self,
        encoded: Sequence[Sequence[int]],
        items: Sequence[int],
        to_dists: Callable[[torch.Tensor], list[TokenDist]],
        results: list[TokenDist | None],
        batched: bool,
    ) -> set[int]:
        """Fill ``results`` for those of ``items`` that open with a long run shared with
        others (the run is computed once, :mod:`.hf_trunks`); returns the ones filled."""
        done: set[int] = set()
        if self._packing is False or len(items) < 2:
            return done
        groups = self._mix[1] if self._mix is not None else None
        found = find_trunks(
            [encoded[i] for i in items], None if groups is None else [groups[i] for i in items]
        )
        packed = [
            row
            for t in found
            for row in pack(encoded, Trunk(t.length, tuple(items[m] for m in t.members)))
        ]
        if not packed or not self._packing_usable(packed[0], encoded):
            return done
        for chunk in packed_chunks(packed):
            rows = [packed[c] for c in chunk]
            if groups is not None:  # one view after another, as in _view_major
                rows.sort(key=lambda r: groups[r.members[0]])
            ids, kwargs = packed_inputs(rows, self.pad_id, self._dtype, self.device)
            self._rows([r.members[0] for r in rows])
            with torch.inference_mode():
                logits = torch.cat(self._head.logits_at(ids, kwargs, [r.ends for r in rows]))
                dists = to_dists(logits)
            self._record([r.ids for r in rows], batched)
            for i, dist in zip([m for r in rows for m in r.members], dists, strict=True):
                results[i] = dist
                done.add(i)
        return done

    def _packing_usable(self, row: Packed, encoded: Sequence[Sequence[int]]) -> bool:
        """Whether a packed row reproduces its texts' own forwards, checked once per model
        on ``row``'s last text (the one whose tail follows the others': a model that
        ignored the 4D mask would let it see them). Needs the body/head split too."""
        if self._packing is None:
            last = row.members[-1]
            self._rows([last])
            ids, kwargs = self._inputs([encoded[last]], "left")
            self._packing = False
            if self._split_usable(kwargs, ids):
                try:
                    whole = self.forward([encoded[last]], side="left", last_only=True, batched=True)
                    p_ids, p_kwargs = packed_inputs([row], self.pad_id, self._dtype, self.device)
                    self._rows([row.members[0]])
                    with torch.inference_mode():
                        packed = self._head.logits_at(p_ids, p_kwargs, [row.ends[-1:]])[0]
                    gap = float((packed[0].float() - whole[0, -1].float()).abs().max())
                    self._packing = gap <= tie_margin(self._dtype)
                except (TypeError, ValueError, RuntimeError):  # a model without 4D masks
                    self._packing = False
        return self._packing

    def logprobs_of(self, pairs: Sequence[tuple[str, str]], *, batched: bool) -> list[float]:
        seqs: list[list[int]] = []
        starts: list[int] = []
        for prompt, completion in pairs:
            full = self.encode(prompt + completion)
            # Position 0 has no context, so at least one token is always conditioning.
            start = max(len(self.encode(prompt)), 1)
            if len(full) <= start:
                raise ProbeError(
                    "logprob_of",
                    f"completion {completion[:40]!r} adds no tokens after prompt "
                    f"{prompt[:40]!r}; nothing to score",
                )
            seqs.append(full)
            starts.append(start)
        results: list[float] = [0.0] * len(pairs)
        for chunk in self._row_chunks([len(s) for s in seqs]):
            self._rows(chunk)
            wanted = [range(starts[i] - 1, len(seqs[i]) - 1) for i in chunk]
            rows = self.target_logprobs_at([seqs[i] for i in chunk], wanted, batched=batched)
            for per_token, i in zip(rows, chunk, strict=True):
                results[i] = float(per_token.double().sum())
        return results

    def rollings(self, texts: Sequence[str], *, batched: bool) -> list[RollingLogprob]:
        encoded = [self.encode(t) for t in texts]
        results: list[RollingLogprob] = [_rolling(ids, None) for ids in encoded]
        scorable = [i for i, ids in enumerate(encoded) if len(ids) >= 2]
        for chunk in self._row_chunks([len(encoded[i]) for i in scorable], scorable):
            members = [scorable[c] for c in chunk]
            self._rows(members)
            wanted = [range(0, len(encoded[i]) - 1) for i in members]
            rows = self.target_logprobs_at([encoded[i] for i in members], wanted, batched=batched)
            for per_token, i in zip(rows, members, strict=True):
                results[i] = _rolling(encoded[i], per_token)
        return results

    def generate_batch(
        self, prompts: Sequence[str | Conversation], settings: GenerationSettings
    ) -> list[Generation]:
        """Batched, KV-cached generation (see :mod:`dlm_sway.backends.hf_generate`)."""
        return self.generator().generate(prompts, settings)

    def generate_each(
        self, prompts: Sequence[str | Conversation], settings: Sequence[GenerationSettings]
    ) -> list[Generation]:
        """Prompt ``i`` under ``settings[i]``, in shared decode batches."""
        return self.generator().generate_each(prompts, settings)

    def generator(self) -> HFGenerator:
        """A generator on this scorer's model, tokenizer and batch size."""
        return HFGenerator(
            self.model,
            self.tokenizer,
            device=self.device,
            batch_size=self.batch_size,
            pad_id=self.pad_id,
            logits_to_keep=self._logits_to_keep,
        )


def _target_logprobs(logits: torch.Tensor, targets: Sequence[int]) -> torch.Tensor:
    """Log-prob of each target under the row of logits that predicts it (float32)."""
    lp = logits.float().log_softmax(dim=-1)
    index = torch.tensor(list(targets), dtype=torch.long, device=lp.device)
    return lp.gather(-1, index.unsqueeze(-1)).squeeze(-1)


def _rolling(ids: Sequence[int], per_token: torch.Tensor | None) -> RollingLogprob:
    token_ids = _frozen(np.asarray(ids, dtype=np.int64))
    if per_token is None:
        return RollingLogprob(token_ids, _frozen(np.zeros(0, dtype=np.float32)), len(ids), 0.0)
    logprobs = per_token.to("cpu", torch.float32).numpy()
    total = float(per_token.double().sum())
    return RollingLogprob(token_ids, _frozen(logprobs), len(ids), total)


class HFView:
    """One view of the backend's model; valid only inside the with-block that made it.

    ``id`` is the human-readable name used in reports; ``cache_ns`` is the
    exact cache namespace (it keeps full float precision, so λ=0.1234567 and
    λ=0.1234568 never share cached results even though their ids print alike).
    ``sweep`` is the open sweep block the view belongs to, if any (:mod:`.hf_sweep`).
    """

    def __init__(
        self,
        scorer: HFScorer,
        view_id: str,
        cache_ns: str,
        is_live: Callable[[], bool],
        sweep: Sweep | None = None,
    ) -> None:
        self._scorer = scorer
        self._id = view_id
        self.cache_ns = cache_ns
        self._is_live = is_live
        self._sweep = sweep

    @property
    def id(self) -> str:
        return self._id

    def __repr__(self) -> str:
        return f"HFView(id={self._id!r})"

    def _check(self) -> HFScorer:
        if not self._is_live():
            raise ViewError(
                f"view {self._id!r} was used after its with-block exited; score inside the block"
            )
        return self._scorer

    def _score(
        self,
        instr: Instrumentation,
        op: str,
        keys: Sequence[str],
        top_k: int,
        items: Sequence[Any],
        score: Callable[[list[Any]], list[T]],
        settings: GenerationSettings | None = None,
    ) -> list[T]:
        """Results for ``items`` (cached under ``keys``): a miss tries the on-disk base
        cache (base view, :mod:`.base_cache`; scores only, not ``settings``' writing),
        then ``score``, widened to the other members of an open sweep."""

        def direct(idx: list[int]) -> list[T]:
            return score([items[i] for i in idx])

        compute: Callable[[list[int]], list[T]] = direct
        if self._sweep is not None:
            req = Request(instr, op, keys, top_k, items, score, settings)
            compute = self._sweep.share(self.cache_ns, req, compute)
        base = self.cache_ns == base_cache.BASE_NS and settings is None
        disk = base_cache.for_scorer(self._scorer) if base else None
        if disk is not None:
            miss = compute

            def stored(idx: list[int]) -> list[T]:
                return disk.fetch(
                    op, [keys[i] for i in idx], top_k, lambda sub: miss([idx[j] for j in sub])
                )

            compute = stored

        return instr.cached_batch(op, self.cache_ns, keys, top_k, compute)

    def completion_token_count(self, prompt: str, completion: str) -> int:
        """Tokens ``completion`` adds after ``prompt`` (tokenised in context, as scored)."""
        scorer = self._check()
        return len(scorer.encode(prompt + completion)) - len(scorer.encode(prompt))

    def logprob_of(self, prompt: str, completion: str) -> float:
        scorer = self._check()
        return self._score(
            scorer.instr,
            "logprob_of",
            [pair_key(prompt, completion)],
            0,
            [(prompt, completion)],
            lambda pairs: scorer.logprobs_of(pairs, batched=False),
        )[0]

    def logprob_of_batch(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        scorer = self._check()
        pairs = list(pairs)
        return self._score(
            scorer.instr,
            "logprob_of",
            [pair_key(p, c) for p, c in pairs],
            0,
            pairs,
            lambda sub: scorer.logprobs_of(sub, batched=True),
        )

    def token_pieces(self, text: str) -> list[str]:
        """One text piece per token id of :meth:`rolling_logprob` (see ``TokenPieces``)."""
        return self._check().pieces(text)

    def rolling_logprob(self, text: str) -> RollingLogprob:
        scorer = self._check()
        return self._score(
            scorer.instr, "rolling", [text], 0, [text], lambda t: scorer.rollings(t, batched=False)
        )[0]

    def rolling_logprob_batch(self, texts: Sequence[str]) -> list[RollingLogprob]:
        scorer = self._check()
        texts = list(texts)
        return self._score(
            scorer.instr, "rolling", texts, 0, texts, lambda t: scorer.rollings(t, batched=True)
        )

    def next_token_dist(self, prompt: str, top_k: int = 256) -> TokenDist:
        scorer = self._check()
        return self._score(
            scorer.instr,
            "next_token",
            [prompt],
            top_k,
            [prompt],
            lambda p: scorer.next_token_dists(p, top_k, batched=False),
        )[0]

    def next_token_dist_batch(self, prompts: Sequence[str], top_k: int = 256) -> list[TokenDist]:
        scorer = self._check()
        prompts = list(prompts)
        return self._score(
            scorer.instr,
            "next_token",
            prompts,
            top_k,
            prompts,
            lambda p: scorer.next_token_dists(p, top_k, batched=True),
        )

    def next_token_full(self, prompt: str) -> TokenDist:
        scorer = self._check()
        return self._score(
            scorer.full_instr,
            "next_token_full",
            [prompt],
            0,
            [prompt],
            lambda p: scorer.next_token_full(p, batched=False),
        )[0]

    def next_token_full_batch(self, prompts: Sequence[str]) -> list[TokenDist]:
        scorer = self._check()
        prompts = list(prompts)
        return self._score(
            scorer.full_instr,
            "next_token_full",
            prompts,
            0,
            prompts,
            lambda p: scorer.next_token_full(p, batched=True),
        )

    def generate_batch(
        self, prompts: Sequence[str | Conversation], settings: GenerationSettings
    ) -> list[Generation]:
        """Cached per (view, prompt, settings) for the run, like every score. An open
        sweep's first generation is written for all its members at once; it ends the
        sweep's sharing (what follows may carry this view's own text)."""
        scorer = self._check()
        prompts = list(prompts)

        def write(items: list[str | Conversation]) -> list[Generation]:
            return scorer.generate_batch(items, settings)

        keys = [prompt_cache_key(p) for p in prompts]
        try:
            return self._score(
                scorer.instr, generation_op(settings), keys, 0, prompts, write, settings
            )
        finally:
            if self._sweep is not None:
                self._sweep.live = False

    def generate_batches(self, batches: Sequence[GenerationBatch]) -> list[list[Generation]]:
        """Several settings' generations in shared decode batches, cached as
        :meth:`generate_batch` caches each. A lone batch, and the first of an open sweep
        (so its members share it), are written by ``generate_batch``; the misses of the
        rest are decoded together, once, when the first of them is asked for."""
        scorer = self._check()
        out: list[list[Generation]] = []
        todo = list(batches)
        if len(todo) == 1 or (todo and self._sweep is not None and self._sweep.live):
            out.append(self.generate_batch(todo[0].prompts, todo[0].settings))
            todo = todo[1:]
        return out + cached_generations(scorer.instr, self.cache_ns, todo, scorer.generate_each)

    def generate(
        self,
        prompt: str,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> str:
        """One plain-text prompt (the ``ScoringModel`` contract): ``generate_batch`` of one."""
        if max_new_tokens < 0:
            raise GenerationError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if max_new_tokens == 0:
            return ""
        settings = GenerationSettings(
            max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, chat=False
        )
        return self.generate_batch([prompt], settings)[0].text
