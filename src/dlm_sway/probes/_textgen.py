"""What the generation probes need from a view: text written under it, or a clear SKIP.

A view writes when it implements :class:`~dlm_sway.core.scoring.Generating`; a
backend whose views do not (a scoring-only server, an old third-party backend)
makes these probes SKIP with a message that names the backend and the missing
method, never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from dlm_sway.core.errors import SwayError
from dlm_sway.core.scoring import (
    Conversation,
    Generating,
    GeneratingBatches,
    Generation,
    GenerationBatch,
    GenerationSettings,
    ScoringModel,
)


@dataclass(frozen=True)
class Written:
    """One ``write`` call: which view wrote what, how, and the texts it got."""

    view_id: str
    prompts: tuple[str | Conversation, ...]
    settings: GenerationSettings
    texts: tuple[str, ...]


#: While set, every ``write`` is appended here (null calibration watches its first null).
_LOG: ContextVar[list[Written] | None] = ContextVar("sway_written", default=None)


@contextmanager
def recording() -> Iterator[list[Written]]:
    """Collect the ``write`` calls made inside the block, in order."""
    log: list[Written] = []
    token = _LOG.set(log)
    try:
        yield log
    finally:
        _LOG.reset(token)


class CannotGenerateError(SwayError):
    """The view cannot write text; the message names the view and what it lacks."""


def generating(view: ScoringModel, probe: str) -> Generating:
    if not isinstance(view, Generating):
        raise CannotGenerateError(
            f"{probe} needs a backend whose views generate text (generate_batch), but the "
            f"{view.id!r} view of this backend ({type(view).__name__}) cannot; use the hf "
            "backend, or a backend implementing dlm_sway.core.scoring.Generating"
        )
    return view


def write(
    view: ScoringModel,
    prompts: Sequence[str | Conversation],
    settings: GenerationSettings,
    *,
    probe: str,
) -> list[str]:
    """The text each prompt gets under ``view`` (one batched call)."""
    if not prompts:
        return []
    texts = _texts(generating(view, probe).generate_batch(list(prompts), settings), prompts, probe)
    _record(view, prompts, settings, texts)
    return texts


def write_batches(
    view: ScoringModel,
    batches: Sequence[tuple[Sequence[str | Conversation], GenerationSettings]],
    *,
    probe: str,
) -> list[list[str]]:
    """Per (prompts, settings) batch, what :func:`write` gives for it; written in shared
    decode batches where the view can (:class:`GeneratingBatches`), one by one elsewhere."""
    if not isinstance(view, GeneratingBatches):
        return [write(view, prompts, settings, probe=probe) for prompts, settings in batches]
    wanted = [GenerationBatch(tuple(prompts), settings) for prompts, settings in batches]
    asked = [b for b in wanted if b.prompts]  # as in write, an empty batch asks nothing
    out = iter(view.generate_batches(asked) if asked else [])
    texts: list[list[str]] = []
    for batch in wanted:
        texts.append(_texts(next(out, []) if batch.prompts else [], batch.prompts, probe))
        if batch.prompts:
            _record(view, batch.prompts, batch.settings, texts[-1])
    return texts


def _texts(
    got: Sequence[Generation], prompts: Sequence[str | Conversation], probe: str
) -> list[str]:
    """The texts of ``got``, one per prompt, or a SwayError naming both counts."""
    if len(got) != len(prompts):
        raise SwayError(
            f"{probe}: the backend returned {len(got)} generations for {len(prompts)} prompts"
        )
    return [g.text for g in got]


def _record(
    view: ScoringModel,
    prompts: Sequence[str | Conversation],
    settings: GenerationSettings,
    texts: Sequence[str],
) -> None:
    log = _LOG.get()
    if log is not None:
        log.append(Written(view.id, tuple(prompts), settings, tuple(texts)))


__all__ = [
    "CannotGenerateError",
    "Written",
    "generating",
    "recording",
    "write",
    "write_batches",
]
