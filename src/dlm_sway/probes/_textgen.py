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
    out = generating(view, probe).generate_batch(list(prompts), settings)
    if len(out) != len(prompts):
        raise SwayError(
            f"{probe}: the backend returned {len(out)} generations for {len(prompts)} prompts"
        )
    texts = [g.text for g in out]
    log = _LOG.get()
    if log is not None:
        log.append(Written(view.id, tuple(prompts), settings, tuple(texts)))
    return texts


__all__ = ["CannotGenerateError", "Written", "generating", "recording", "write"]
