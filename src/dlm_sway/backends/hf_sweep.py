"""One ``sweep()`` block of the HF backend: members' identical requests share forwards.

A calibrated probe asks the base, the fine-tune and K nulls the same prompts; the
ablation probe asks the adapter at several λ. Inside a sweep, the first request
that misses a member view's cache is scored for every member still lacking it, in
mixed batches (:mod:`.hf_mixed`), and the others' results go straight into their
caches (the base's also into the disk base cache). The chunks are the member
count times the batch size and hold the same texts under each view, so the
padding stays what one view's batch has while every matmul gets more rows.

A generation is shared too, but only the block's first: each member writes its own
text (near-ties re-decided on the member's own forward, :mod:`.hf_null_generate`),
and later prompts may carry one view's text, so all sharing ends with it. Sharing
also stops when the results would crowd the cache, and when the model's LoRA inputs
cannot be told apart by row (then with a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from dlm_sway.backends import base_cache, hf_null_generate
from dlm_sway.backends.hf_lora import LoraSlot
from dlm_sway.backends.hf_mixed import Factors, Group, Stack, installed
from dlm_sway.backends.instrumentation import Instrumentation
from dlm_sway.core.scoring import GenerationError, GenerationSettings

T = TypeVar("T")
Compute = Callable[[list[int]], list[T]]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request(Generic[T]):
    """One scoring call of a view: its cache, op and keys, its items, and how to score
    a list of items (in one or more forwards of whatever rows are selected)."""

    instr: Instrumentation
    op: str
    keys: Sequence[str]
    top_k: int
    items: Sequence[Any]
    score: Callable[[list[Any]], list[T]]
    #: A generation's settings (None: a score).
    settings: GenerationSettings | None = None


class Sweep:
    """The members (cache namespace, LoRA group, factor block) of one sweep block."""

    def __init__(
        self,
        scorer: Any,
        slots: Sequence[LoraSlot],
        scalings: Sequence[float],
        members: Sequence[tuple[str, Group]],
        blocks: Sequence[Callable[[], Factors]],
    ) -> None:
        self.live = True
        self._scorer = scorer
        self._slots = list(slots)
        self._scalings = list(scalings)
        self._namespaces = [ns for ns, _ in members]
        self._groups = [g for _, g in members]
        self._index = {ns: i for i, ns in enumerate(self._namespaces)}
        self._blocks = list(blocks)
        self._stack: Stack | None = None

    def share(self, ns: str, req: Request[T], compute: Compute[T]) -> Compute[T]:
        """``compute`` for view ``ns``'s misses, widened to every member lacking them."""
        me = self._index.get(ns)
        if me is None:
            return compute
        instr, op, keys, top_k = req.instr, req.op, req.keys, req.top_k

        def shared(idx: list[int]) -> list[T]:
            if not self.live:
                return compute(idx)
            writes = req.settings is not None
            if writes:
                self.live = False  # what follows may carry this generation's text
            disk = None if writes else base_cache.for_scorer(self._scorer)
            rows = [(me, i) for i in idx]
            for g, other in enumerate(self._namespaces):
                if g == me:
                    continue
                lacking = [
                    i for i in idx if instr.cache.key(op, other, keys[i], top_k) not in instr.cache
                ]
                if other == base_cache.BASE_NS and disk is not None and lacking:
                    lacking = _from_disk(disk, instr, op, keys, top_k, lacking)
                rows.extend((g, i) for i in lacking)
            if len(rows) == len(idx) or len(rows) > instr.cache.maxsize // 2:
                return compute(idx)
            try:
                values = self._mixed(rows, [req.items[i] for _, i in rows], req)
            except GenerationError:
                return compute(idx)  # this view's own call says what is wrong with its prompts
            except RuntimeError as exc:
                self.live = False
                _log.warning(
                    "views cannot share a batch on this model (%s); scoring one by one", exc
                )
                return compute(idx)
            instr.riders = tuple(sorted({self._namespaces[g] for g, _ in rows} - {ns}))
            mine: list[T] = []
            for (g, i), value in zip(rows, values, strict=True):
                if g == me:
                    mine.append(value)
                    continue
                other = self._namespaces[g]
                instr.cache.put(instr.cache.key(op, other, keys[i], top_k), value)
                if other == base_cache.BASE_NS and disk is not None:
                    disk.put(op, keys[i], top_k, value)  # type: ignore[arg-type]
            if disk is not None:
                disk.enforce_bound()
            return mine

        return shared

    def _mixed(self, rows: Sequence[tuple[int, int]], items: list[Any], req: Request[T]) -> list[T]:
        if self._stack is None:
            self._stack = Stack(self._slots, [draw() for draw in self._blocks], self._groups)
        if not self._stack.finite:
            raise RuntimeError("a member's LoRA factors hold NaN or inf")
        groups = [g for g, _ in rows]
        if req.settings is not None:
            written = hf_null_generate.generate_rows(
                self._stack, self._scalings, self._scorer.generator(), items, groups, req.settings
            )
            return cast(list[T], written)
        width = len(set(groups))
        with (
            installed(self._stack, self._scalings) as stack,
            self._scorer.mixing(stack, groups, width),
        ):
            return req.score(items)


def _from_disk(
    disk: base_cache.BaseCache,
    instr: Instrumentation,
    op: str,
    keys: Sequence[str],
    top_k: int,
    lacking: list[int],
) -> list[int]:
    """Base results a former run stored go to the memory cache; returns those still lacking."""
    still: list[int] = []
    for i in lacking:
        value = disk.get(op, keys[i], top_k)
        if value is None:
            still.append(i)
        else:
            instr.cache.put(instr.cache.key(op, base_cache.BASE_NS, keys[i], top_k), value)
    return still


__all__ = ["Request", "Sweep"]
