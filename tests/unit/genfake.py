"""A torch-free backend whose views *write*, for the generation probes' unit tests.

Each view is configured by plain functions, so every expected number can be
worked out by hand:

* ``writer(prompt, settings) -> str``: what the view generates;
* ``shift(text) -> float``: size of the logit shift this view adds to the fixed
  base next-token logits after ``text`` (0 for the base view);
* ``boost(prompt, completion) -> float``: extra nats per completion word.

Null adapters are ``null(seed) -> ViewSpec``. Views record what they were asked
to write (``backend.asked``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from dlm_sway.core.scoring import (
    NULL_CONSTRUCTIONS,
    Conversation,
    Generation,
    GenerationSettings,
    TokenDist,
    plain_text,
)

VOCAB = 64
Writer = Callable[[str | Conversation, GenerationSettings], str]


def _seed(text: str) -> int:
    return int(hashlib.md5(text.encode("utf-8")).hexdigest()[:8], 16)


def _zero(*_: object) -> float:
    return 0.0


def echo_writer(prefix: str) -> Writer:
    return lambda prompt, settings: f"{prefix} {plain_text(prompt)[-30:]}"


@dataclass
class ViewSpec:
    writer: Writer
    shift: Callable[[str], float] = _zero
    boost: Callable[[str, str], float] = _zero
    direction: int = 1


class FakeView:
    def __init__(self, owner: FakeGenBackend, view_id: str, spec: ViewSpec) -> None:
        self._owner = owner
        self._id = view_id
        self._spec = spec

    @property
    def id(self) -> str:
        return self._id

    # --- writing ---
    def generate_batch(
        self, prompts: Sequence[str | Conversation], settings: GenerationSettings
    ) -> list[Generation]:
        out = []
        for p in prompts:
            self._owner.asked.append((self._id, p))
            text = self._spec.writer(p, settings)
            for stop in settings.stop:
                if stop in text:
                    text = text[: text.index(stop)]
            out.append(Generation(text, len(text.split()), "eos", templated=False))
        return out

    # --- scoring ---
    def _logits(self, text: str) -> NDArray[np.float64]:
        s = _seed(text)
        base = 2.0 * np.random.default_rng([s, 0]).standard_normal(VOCAB)
        d = np.random.default_rng([s, self._spec.direction]).standard_normal(VOCAB)
        out: NDArray[np.float64] = base + self._spec.shift(text) * d
        return out

    def next_token_dist(self, prompt: str, top_k: int = 256) -> TokenDist:
        z = self._logits(prompt)
        lp = z - (z.max() + math.log(float(np.exp(z - z.max()).sum())))
        return TokenDist(
            token_ids=np.arange(VOCAB, dtype=np.int64),
            logprobs=lp.astype(np.float32),
            vocab_size=VOCAB,
            tail_logprob=None,
        )

    def next_token_dist_batch(self, prompts: Sequence[str], top_k: int = 256) -> list[TokenDist]:
        return [self.next_token_dist(p, top_k) for p in prompts]

    def completion_token_count(self, prompt: str, completion: str) -> int:
        return max(1, len(completion.split()))

    def logprob_of(self, prompt: str, completion: str) -> float:
        n = max(1, len(completion.split()))
        jitter = (_seed(prompt + "\x00" + completion) % 1000) / 1000.0
        return -2.0 * n - jitter + self._spec.boost(prompt, completion) * n


@dataclass
class FakeGenBackend:
    base: ViewSpec
    ft: ViewSpec
    null: Callable[[int], ViewSpec] | None = None
    asked: list[tuple[str, str | Conversation]] = field(default_factory=list)
    null_constructions = NULL_CONSTRUCTIONS

    @contextmanager
    def as_base(self) -> Iterator[FakeView]:
        yield FakeView(self, "base", self.base)

    @contextmanager
    def as_finetuned(self) -> Iterator[FakeView]:
        yield FakeView(self, "ft", self.ft)

    @contextmanager
    def as_null_adapter(self, seed: int, **_: object) -> Iterator[FakeView]:
        assert self.null is not None, "this fake has no null adapters"
        yield FakeView(self, f"null{seed}", self.null(seed))


class _ScoringOnlyView:
    """A view with the scoring methods but no ``generate_batch``."""

    def __init__(self, inner: FakeView) -> None:
        self._inner = inner

    @property
    def id(self) -> str:
        return self._inner.id

    def next_token_dist(self, prompt: str, top_k: int = 256) -> TokenDist:
        return self._inner.next_token_dist(prompt, top_k)

    def logprob_of(self, prompt: str, completion: str) -> float:
        return self._inner.logprob_of(prompt, completion)


class ScoringOnlyBackend:
    """Views that score but cannot write (a backend without the Generating capability)."""

    def __init__(self) -> None:
        self._fake = FakeGenBackend(base=ViewSpec(echo_writer("b")), ft=ViewSpec(echo_writer("f")))

    @contextmanager
    def as_base(self) -> Iterator[_ScoringOnlyView]:
        with self._fake.as_base() as v:
            yield _ScoringOnlyView(v)

    @contextmanager
    def as_finetuned(self) -> Iterator[_ScoringOnlyView]:
        with self._fake.as_finetuned() as v:
            yield _ScoringOnlyView(v)
