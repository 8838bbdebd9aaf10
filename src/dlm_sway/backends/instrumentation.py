"""Per-run memoisation and counters for scoring backends (torch-free).

Probes often share prompts (the same prompt list goes through several probes
and several views), so every scoring result is memoised by
``(op, view_id, prompt, top_k)``. Because the view id is part of the key, each
view is its own namespace and nothing ever needs invalidating while the
backend's weights are fixed.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar, cast

T = TypeVar("T")

#: Prompts longer than this are keyed by their SHA-1 instead of their text, to bound memory.
_INLINE_KEY_CHARS = 256

CacheKey = tuple[str, str, str, int]


def prompt_key(prompt: str) -> str:
    """Short prompts key by text (readable in debugging); long ones by a SHA-1 digest."""
    if len(prompt) <= _INLINE_KEY_CHARS:
        return "t:" + prompt
    return "h:" + hashlib.sha1(prompt.encode("utf-8")).hexdigest()


def pair_key(prompt: str, completion: str) -> str:
    """Unambiguous single-string key for a (prompt, completion) pair."""
    return f"{len(prompt)}:{prompt}{completion}"


class ForwardCache:
    """Bounded, thread-safe LRU of scoring results."""

    def __init__(self, maxsize: int = 4096) -> None:
        if maxsize < 1:
            raise ValueError(f"ForwardCache maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._data: OrderedDict[CacheKey, Any] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(op: str, view_id: str, prompt: str, top_k: int) -> CacheKey:
        return (op, view_id, prompt_key(prompt), top_k)

    def get(self, key: CacheKey) -> tuple[bool, Any]:
        """``(found, value)``; a hit refreshes the entry's recency."""
        with self._lock:
            if key not in self._data:
                return False, None
            self._data.move_to_end(key)
            return True, self._data[key]

    def __contains__(self, key: CacheKey) -> bool:
        """Whether ``key`` is stored (recency untouched)."""
        with self._lock:
            return key in self._data

    def put(self, key: CacheKey, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def drop_views(self, keep: Callable[[str], bool]) -> int:
        """Forget every entry whose view namespace ``keep`` rejects (an adapter swap makes
        adapter views stale, the base view's results stay valid); returns how many."""
        with self._lock:
            stale = [k for k in self._data if not keep(k[1])]
            for k in stale:
                del self._data[k]
        return len(stale)

    def __len__(self) -> int:
        return len(self._data)


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One scoring call, for a listener (``sway run --trace``): what it asked, what the
    cache served, and what the misses cost."""

    op: str
    view_id: str
    prompts: int
    hits: int
    forwards: int
    tokens: int
    seconds: float
    #: Other views whose rows these forwards scored too (views sharing forwards in a
    #: sweep, :mod:`dlm_sway.backends.hf_sweep`); their own calls then hit the cache.
    shared: tuple[str, ...] = ()


@dataclass
class BackendStats:
    """Counters a run reports so users can see what scoring cost.

    ``scored_tokens`` counts real (non-pad) tokens pushed through forwards;
    ``batches_sent``/``batched_prompts`` count forwards issued by batched calls.
    """

    forward_passes: int = 0
    scored_tokens: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    batches_sent: int = 0
    batched_prompts: int = 0
    max_batch_size: int = 0
    scoring_wall_s: float = 0.0
    #: Called with a :class:`CallRecord` after every scoring call (None: nobody listens).
    on_call: Callable[[CallRecord], None] | None = field(default=None, repr=False, compare=False)

    @property
    def hit_rate(self) -> float:
        total = self.cache_hits + self.cache_misses
        return self.cache_hits / total if total else 0.0

    @property
    def avg_batch_size(self) -> float:
        return self.batched_prompts / self.batches_sent if self.batches_sent else 0.0

    def record_forward(self, *, num_prompts: int, real_tokens: int, batched: bool) -> None:
        self.forward_passes += 1
        self.scored_tokens += real_tokens
        if batched:
            self.batches_sent += 1
            self.batched_prompts += num_prompts
            self.max_batch_size = max(self.max_batch_size, num_prompts)

    def to_dict(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name != "on_call"
        }
        out["hit_rate"] = self.hit_rate
        out["avg_batch_size"] = self.avg_batch_size
        return out


class Instrumentation:
    """One cache plus one stats object; the only way scoring results get memoised."""

    def __init__(self, cache_maxsize: int = 4096) -> None:
        self.cache = ForwardCache(cache_maxsize)
        self.stats = BackendStats()
        #: Set by a computation that scored other views' rows too; the call's record
        #: names them (then it is cleared).
        self.riders: tuple[str, ...] = ()

    def cached(self, op: str, view_id: str, prompt: str, top_k: int, compute: Callable[[], T]) -> T:
        """Serve ``compute()`` from the cache, computing and storing it on a miss."""
        return self.cached_batch(op, view_id, [prompt], top_k, lambda _idx: [compute()])[0]

    def cached_batch(
        self,
        op: str,
        view_id: str,
        prompts: Sequence[str],
        top_k: int,
        compute_misses: Callable[[list[int]], list[T]],
    ) -> list[T]:
        """Results for ``prompts`` in order, calling ``compute_misses`` once for the misses.

        ``compute_misses`` receives the indices (into ``prompts``) of the
        distinct uncached prompts and must return one result per index.
        Duplicates within one call are computed once.
        """
        results: list[Any] = [None] * len(prompts)
        first_index: dict[Hashable, int] = {}
        misses: list[int] = []
        duplicates: list[tuple[int, int]] = []
        for i, prompt in enumerate(prompts):
            key = ForwardCache.key(op, view_id, prompt, top_k)
            found, value = self.cache.get(key)
            if found:
                self.stats.cache_hits += 1
                results[i] = value
            elif key in first_index:
                self.stats.cache_hits += 1
                duplicates.append((i, first_index[key]))
            else:
                self.stats.cache_misses += 1
                first_index[key] = i
                misses.append(i)
        forwards, tokens, elapsed = self.stats.forward_passes, self.stats.scored_tokens, 0.0
        self.riders = ()
        if misses:
            start = time.perf_counter()
            computed = compute_misses(misses)
            elapsed = time.perf_counter() - start
            self.stats.scoring_wall_s += elapsed
            if len(computed) != len(misses):
                raise RuntimeError(
                    f"compute_misses returned {len(computed)} results for {len(misses)} prompts"
                )
            for i, value in zip(misses, computed, strict=True):
                results[i] = value
                self.cache.put(ForwardCache.key(op, view_id, prompts[i], top_k), value)
        for i, source in duplicates:
            results[i] = results[source]
        if self.stats.on_call is not None:
            self.stats.on_call(
                CallRecord(
                    op=op,
                    view_id=view_id,
                    prompts=len(prompts),
                    hits=len(prompts) - len(misses),
                    forwards=self.stats.forward_passes - forwards,
                    tokens=self.stats.scored_tokens - tokens,
                    seconds=elapsed,
                    shared=self.riders,
                )
            )
        self.riders = ()
        return cast(list[T], results)


__all__ = [
    "BackendStats",
    "CallRecord",
    "ForwardCache",
    "Instrumentation",
    "pair_key",
    "prompt_key",
]
