"""The scoring contract every backend implements and every probe consumes.

A *view* is one configuration of the loaded model (base, fine-tuned, scaled
adapter, null adapter). Backends hand views out through context managers and
never allow two to be open at once: they share one set of weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from dlm_sway.core.errors import SwayError

if TYPE_CHECKING:
    from dlm_sway.core.result import HealthCheck


@dataclass(frozen=True, slots=True)
class TokenDist:
    """Top-k next-token distribution.

    ``tail_logprob`` has three states: ``None`` when the top-k covers the
    vocabulary, ``0.0`` when a tail exists but its mass underflowed, and a
    negative float, the log of the probability mass outside the top-k.
    """

    token_ids: NDArray[np.int64]
    logprobs: NDArray[np.float32]
    vocab_size: int
    tail_logprob: float | None = None

    def __post_init__(self) -> None:
        if self.token_ids.shape != self.logprobs.shape:
            raise ValueError(
                f"TokenDist: token_ids {self.token_ids.shape} and logprobs "
                f"{self.logprobs.shape} differ in shape"
            )

    @property
    def k(self) -> int:
        return int(self.token_ids.shape[0])


@dataclass(frozen=True, slots=True)
class RollingLogprob:
    """Per-token log-probs over one text: N token ids, N-1 scored positions."""

    token_ids: NDArray[np.int64]
    logprobs: NDArray[np.float32]
    num_tokens: int
    total_logprob: float = field(default=0.0)

    @property
    def mean_logprob(self) -> float:
        n = int(self.logprobs.shape[0])
        return self.total_logprob / n if n else 0.0

    @property
    def perplexity(self) -> float:
        return float(np.exp(-self.mean_logprob))


@runtime_checkable
class ScoringModel(Protocol):
    """One view of a model: score text and generate greedily."""

    @property
    def id(self) -> str: ...

    def logprob_of(self, prompt: str, completion: str) -> float:
        """Sum of natural-log probabilities of ``completion``'s tokens given ``prompt``."""
        ...

    def rolling_logprob(self, text: str) -> RollingLogprob: ...

    def next_token_dist(self, prompt: str, top_k: int = 256) -> TokenDist: ...

    def next_token_dist_batch(self, prompts: Sequence[str], top_k: int = 256) -> list[TokenDist]:
        """One dist per prompt; must equal the per-prompt path within float tolerance."""
        ...

    def generate(
        self,
        prompt: str,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> str: ...


@runtime_checkable
class DifferentialBackend(Protocol):
    """One loaded model, two views. Opening a second view while one is open raises."""

    def as_base(self) -> AbstractContextManager[ScoringModel]: ...

    def as_finetuned(self) -> AbstractContextManager[ScoringModel]: ...


@runtime_checkable
class ScalableDifferentialBackend(DifferentialBackend, Protocol):
    """Adds the adapter scaled by λ: 0 is the base, 1 the fine-tune, >1 overshoot."""

    def as_scaled_adapter(self, lam: float) -> AbstractContextManager[ScoringModel]: ...


#: How a null adapter's weights are drawn. ``norm_matched``: random directions with the
#: trained adapter's per-module ‖scaling·B·A‖_F; ``init_scale``: fixed-std noise (the
#: reference behaviour); ``permuted``: the trained weights shuffled within each module.
NullConstruction = Literal["norm_matched", "init_scale", "permuted"]
NULL_CONSTRUCTIONS: tuple[NullConstruction, ...] = ("norm_matched", "init_scale", "permuted")


@runtime_checkable
class NullCalibratedBackend(DifferentialBackend, Protocol):
    """Adds null views: the adapter's structure with seeded random weights.

    This is the seed contract third-party backends are written to; its nulls are
    ``init_scale`` noise. Other constructions need :class:`ConstructedNullBackend`.
    """

    def as_null_adapter(
        self, seed: int, *, init_scale: float = 0.02, rank_scale: float = 1.0
    ) -> AbstractContextManager[ScoringModel]: ...


@runtime_checkable
class ConstructedNullBackend(NullCalibratedBackend, Protocol):
    """Null views of several constructions: ``as_null_adapter`` takes ``construction=``.

    ``null_constructions`` declares which ones; only a backend that declares it is
    ever passed the keyword, so seed-contract backends keep working unchanged.
    """

    @property
    def null_constructions(self) -> tuple[NullConstruction, ...]: ...

    def as_null_adapter(
        self,
        seed: int,
        *,
        init_scale: float = 0.02,
        rank_scale: float = 1.0,
        construction: NullConstruction = "init_scale",
    ) -> AbstractContextManager[ScoringModel]: ...


@runtime_checkable
class PreflightCheckable(Protocol):
    """One forward per view; ``(False, reason)`` when any logit is non-finite."""

    def preflight_finite_check(self) -> tuple[bool, str]: ...


@runtime_checkable
class TokenCounting(Protocol):
    """Views that can say how many tokens a completion adds after a prompt.

    Length normalisation uses real token counts (the reference used chars/4).
    """

    def completion_token_count(self, prompt: str, completion: str) -> int: ...


def completion_tokens(view: ScoringModel, prompt: str, completion: str) -> int:
    """Real token count where the view can tell, else a whitespace-word count (≥ 1)."""
    if isinstance(view, TokenCounting):
        return max(1, view.completion_token_count(prompt, completion))
    return max(1, len(completion.split()))


@runtime_checkable
class NoiseFloorMeasurable(Protocol):
    """Base view scored under two batch layouts, bypassing any cache.

    The divergence between the two is pure numerics (padding, kernel order): an
    adapter effect that does not clear it is not an effect.
    """

    def base_layout_pairs(
        self, prompts: Sequence[str], top_k: int
    ) -> list[tuple[TokenDist, TokenDist]]: ...


@runtime_checkable
class FullDistributions(Protocol):
    """Views that hold full logits and return the whole next-token distribution.

    Each dist lists every token: ``token_ids`` is ``arange(vocab_size)`` (one
    shared read-only array), ``logprobs`` float32 log-softmax, ``tail_logprob``
    None. Divergences between two such dists are exact, with no top-k tail.
    The batch call must equal the per-prompt one within float tolerance.
    """

    def next_token_full(self, prompt: str) -> TokenDist: ...

    def next_token_full_batch(self, prompts: Sequence[str]) -> list[TokenDist]: ...


def loop_batch(model: ScoringModel, prompts: Sequence[str], top_k: int) -> list[TokenDist]:
    """Reference batch implementation: the per-prompt path, one prompt at a time."""
    return [model.next_token_dist(p, top_k=top_k) for p in prompts]


def iter_views(backend: DifferentialBackend) -> Iterator[str]:
    """Names of the optional protocols ``backend`` satisfies (for reports and doctor)."""
    if isinstance(backend, ScalableDifferentialBackend):
        yield "ScalableDifferentialBackend"
    if isinstance(backend, NullCalibratedBackend):
        yield "NullCalibratedBackend"
    if isinstance(backend, PreflightCheckable):
        yield "PreflightCheckable"


@runtime_checkable
class ContextWindow(Protocol):
    """Backends that know how many tokens the model can attend to.

    The runner checks every text a suite will score against
    ``max_context_tokens`` before any probe runs: a longer text would run for
    minutes on positions the model never saw and still yield a verdict.
    """

    def max_context_tokens(self) -> int | None:
        """The model's maximum positions, or None when it has no known limit."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text becomes when scored (special tokens included)."""
        ...


@runtime_checkable
class LoadDiagnostics(Protocol):
    """Backends that loaded despite a problem the spec explicitly allowed (e.g. a partly
    loading adapter); the problems surface as health checks on the result."""

    def load_health(self) -> Sequence[HealthCheck]: ...


__all__ = [
    "NULL_CONSTRUCTIONS",
    "ConstructedNullBackend",
    "ContextWindow",
    "DifferentialBackend",
    "FullDistributions",
    "LoadDiagnostics",
    "NoiseFloorMeasurable",
    "NullConstruction",
    "NullCalibratedBackend",
    "PreflightCheckable",
    "RollingLogprob",
    "ScalableDifferentialBackend",
    "ScoringModel",
    "TokenCounting",
    "TokenDist",
    "completion_tokens",
    "iter_views",
    "loop_batch",
]


# ---- backend capabilities the suite's health checks use ----


@runtime_checkable
class AdapterNorms(Protocol):
    """Backends that know the trained adapter's weight change per module (a LoRA's
    ‖scaling·B·A‖_F): all zeros means the adapter cannot change the model."""

    def adapter_norms(self) -> Mapping[str, float]: ...


@runtime_checkable
class NullCoverage(Protocol):
    """Backends that can list adapter tensors a null adapter leaves as trained (e.g.
    ``modules_to_save``): the null then shares part of the real effect."""

    def null_coverage(self) -> Sequence[str]: ...


__all__ += ["AdapterNorms", "NullCoverage"]


@runtime_checkable
class AdapterSwappable(Protocol):
    """Backends that replace the trained adapter in place, keeping the loaded base.

    After ``swap_adapter(path)`` every adapter view (fine-tuned, scaled, null) is
    the new adapter's and nothing cached for the old one is served again; the
    base view and its cached results are kept (same weights). Raises a
    ``SwayError`` when the adapter does not fit this base; the old adapter then
    stays loaded. Used by ``--adapters`` and ``sway diff``: one load, many adapters.
    """

    def swap_adapter(self, path: str) -> None: ...


__all__ += ["AdapterSwappable"]


# ---- optional view and backend capabilities the probes and the runner use ----


@runtime_checkable
class BatchedDists(Protocol):
    """Views that give many prompts' next-token distributions from padded batches."""

    def next_token_dist_batch(
        self, prompts: Sequence[str], top_k: int = 256
    ) -> list[TokenDist]: ...


@runtime_checkable
class BatchedLogprobs(Protocol):
    """Views that score many (prompt, completion) pairs in padded batches."""

    def logprob_of_batch(self, pairs: Sequence[tuple[str, str]]) -> list[float]: ...


@runtime_checkable
class BatchedRollings(Protocol):
    """Views that score many texts' per-token log-probs in padded batches."""

    def rolling_logprob_batch(self, texts: Sequence[str]) -> list[RollingLogprob]: ...


@runtime_checkable
class CacheIdentified(Protocol):
    """Backends with a stable identity for on-disk caches: it must change whenever the
    numbers could (model, adapter content hash, dtype, ...)."""

    def cache_identity(self) -> str: ...


__all__ += ["BatchedDists", "BatchedLogprobs", "BatchedRollings", "CacheIdentified"]


@runtime_checkable
class TokenPieces(Protocol):
    """Views that can show which text each token of ``rolling_logprob(text)`` covers.

    ``token_pieces(text)`` returns one string per token id of the rolling result, in
    order, concatenating to ``text`` (special tokens give ``""``). Reports shade
    these pieces by how far the adapter moved them; no extra forward is needed.
    """

    def token_pieces(self, text: str) -> list[str]: ...


__all__ += ["TokenPieces"]


# ---- generation: views that write text ----

#: Upper bound on ``max_new_tokens``: past it a probe is asking for a document, not an answer.
MAX_NEW_TOKENS_LIMIT = 4096


class GenerationError(SwayError, ValueError):
    """Generation settings out of range, or a chat template required but missing."""


@dataclass(frozen=True)
class ChatTurn:
    role: Literal["system", "user", "assistant"]
    content: str

    def __post_init__(self) -> None:
        if self.role not in ("system", "user", "assistant"):
            raise GenerationError(
                f"chat turn role must be system, user or assistant, got {self.role!r}"
            )
        if not isinstance(self.content, str):
            raise GenerationError(f"chat turn content must be a string, got {self.content!r}")


Conversation = tuple[ChatTurn, ...]


@dataclass(frozen=True)
class GenerationSettings:
    """How a view writes. Frozen and hashable: part of every generation cache key."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0  # used only when temperature > 0
    stop: tuple[str, ...] = ()  # generation is cut before the first stop string
    #: None: the chat template when the tokenizer has one, else plain text;
    #: True: require a template (error if none); False: plain text.
    chat: bool | None = None

    def __post_init__(self) -> None:
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_NEW_TOKENS_LIMIT:
            raise GenerationError(
                f"max_new_tokens must be an integer in [1, {MAX_NEW_TOKENS_LIMIT}], got {n!r}"
            )
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t < 0:
            raise GenerationError(
                f"temperature must be a finite number >= 0 (0 = greedy), got {t!r}"
            )
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 < p <= 1.0:
            raise GenerationError(f"top_p must be in (0, 1], got {p!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise GenerationError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            raise GenerationError(f"stop must be a tuple of non-empty strings, got {self.stop!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class Generation:
    text: str  # new text only, stop string excluded
    new_tokens: int
    finish: Literal["stop", "eos", "length"]
    templated: bool  # whether the chat template was used


@runtime_checkable
class Generating(Protocol):
    """A view that can write text. Batched output equals one-prompt output."""

    def generate_batch(
        self, prompts: Sequence[str | Conversation], settings: GenerationSettings
    ) -> list[Generation]: ...


@dataclass(frozen=True)
class GenerationBatch:
    """Prompts one view writes under one settings (one of several it may decode together)."""

    prompts: tuple[str | Conversation, ...]
    settings: GenerationSettings


@runtime_checkable
class GeneratingBatches(Protocol):
    """A view that writes several :class:`GenerationBatch` es in shared decode batches.

    Per batch, the generations ``generate_batch`` gives for it; the point is speed (a
    CPU decode step over twice the rows costs about what one does). Callers without
    it write the batches one by one.
    """

    def generate_batches(self, batches: Sequence[GenerationBatch]) -> list[list[Generation]]: ...


def as_conversation(prompt: str | Conversation) -> Conversation:
    """A plain prompt under a chat template is one user turn."""
    return (ChatTurn("user", prompt),) if isinstance(prompt, str) else tuple(prompt)


def plain_text(prompt: str | Conversation) -> str:
    """The plain-text rendering of a prompt for models without a chat template.

    A conversation becomes ``Role: content`` paragraphs ending in ``Assistant:``,
    the convention base models continue most reliably.
    """
    if isinstance(prompt, str):
        return prompt
    lines = [f"{turn.role.capitalize()}: {turn.content}" for turn in prompt]
    return "\n\n".join([*lines, "Assistant:"])


def prompt_cache_key(prompt: str | Conversation) -> str:
    """One unambiguous string per prompt (a str never collides with a conversation)."""
    if isinstance(prompt, str):
        return "s:" + prompt
    return "c:" + json.dumps([[t.role, t.content] for t in prompt], ensure_ascii=False)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` cut before the earliest stop string, and whether one occurred."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


__all__ += [
    "MAX_NEW_TOKENS_LIMIT",
    "ChatTurn",
    "Conversation",
    "Generating",
    "GeneratingBatches",
    "Generation",
    "GenerationBatch",
    "GenerationError",
    "GenerationSettings",
    "as_conversation",
    "cut_at_stop",
    "plain_text",
    "prompt_cache_key",
]


@dataclass(frozen=True)
class NullDraw:
    """One seeded null adapter, named as ``as_null_adapter`` takes it."""

    seed: int
    init_scale: float
    rank_scale: float
    construction: NullConstruction


@runtime_checkable
class NullGenerationPrefetch(Protocol):
    """Writes several null views' generations at once, into the views' own caches.

    The null views then answer ``generate_batch`` for those prompts and settings
    from cache, with the texts they would have written one by one. Returns each
    null's generations (in ``nulls`` order), or None when the backend does not
    batch them (the views then generate as usual).
    """

    def prefetch_null_generations(
        self,
        nulls: Sequence[NullDraw],
        prompts: Sequence[str | Conversation],
        settings: GenerationSettings,
    ) -> list[list[Generation]] | None: ...


__all__ += ["NullDraw", "NullGenerationPrefetch"]


@dataclass(frozen=True)
class SweepMember:
    """One view of a :class:`ScoringSweep`: the base, the fine-tune, the adapter × λ
    (``lam``), or a seeded null (``null``). Build it with the class methods."""

    kind: Literal["base", "finetuned", "scaled", "null"]
    lam: float = 1.0
    null: NullDraw | None = None

    @classmethod
    def base(cls) -> SweepMember:
        return cls("base", 0.0)

    @classmethod
    def finetuned(cls) -> SweepMember:
        return cls("finetuned")

    @classmethod
    def scaled(cls, lam: float) -> SweepMember:
        return cls("scaled", float(lam))

    @classmethod
    def of_null(cls, draw: NullDraw) -> SweepMember:
        return cls("null", 1.0, draw)


@runtime_checkable
class ScoringSweep(Protocol):
    """Scores several views' identical requests in shared forwards.

    Inside ``with backend.sweep(members):`` a scoring call that misses the cache of
    a member view is computed for every member still lacking it, in one mixed
    batch (on CPU a forward over 5× the rows costs far less than 5 forwards), and
    the other members then answer it from their caches. The caller promises only
    that the members will probably be asked the same: a member never asked wastes
    its rows, it never changes a result. Results equal each view's own forward
    within the batch-layout jitter the noise floor measures. Generated text is
    view-specific, so a generation inside the block ends the sharing for its rest.
    The innermost block names who asks: one naming a single view (:data:`BASE_ONLY`)
    pauses an enclosing sweep, so work only that view needs is not done for all.
    """

    def sweep(self, members: Sequence[SweepMember]) -> AbstractContextManager[None]: ...


def open_null(
    backend: NullCalibratedBackend, draw: NullDraw
) -> AbstractContextManager[ScoringModel]:
    """The null view ``draw`` names; ``construction=`` only to a backend that declares it
    (:class:`ConstructedNullBackend`), seed-contract backends are called as the seed does."""
    if isinstance(backend, ConstructedNullBackend):
        return backend.as_null_adapter(
            draw.seed,
            init_scale=draw.init_scale,
            rank_scale=draw.rank_scale,
            construction=draw.construction,
        )
    return backend.as_null_adapter(
        draw.seed, init_scale=draw.init_scale, rank_scale=draw.rank_scale
    )


def open_view(
    backend: DifferentialBackend, member: SweepMember
) -> AbstractContextManager[ScoringModel]:
    """The view ``member`` names on ``backend``; TypeError if the backend has no such view."""
    if member.kind == "base":
        return backend.as_base()
    if member.kind == "finetuned":
        return backend.as_finetuned()
    if member.kind == "scaled" and isinstance(backend, ScalableDifferentialBackend):
        return backend.as_scaled_adapter(member.lam)
    if member.null is not None and isinstance(backend, NullCalibratedBackend):
        return open_null(backend, member.null)
    raise TypeError(f"{type(backend).__name__} has no {member.kind} view")


def shared_forwards(
    backend: object, members: Sequence[SweepMember]
) -> AbstractContextManager[None]:
    """``backend.sweep(members)`` where the backend shares forwards; nothing elsewhere."""
    return backend.sweep(members) if isinstance(backend, ScoringSweep) else nullcontext()


#: The two views every differential probe asks the same requests.
BASE_AND_FT = (SweepMember.base(), SweepMember.finetuned())
#: A block only the base asks in (it writes rewordings): an enclosing sweep pauses.
BASE_ONLY = (SweepMember.base(),)

__all__ += [
    "BASE_AND_FT",
    "BASE_ONLY",
    "ScoringSweep",
    "SweepMember",
    "open_null",
    "open_view",
    "shared_forwards",
]
