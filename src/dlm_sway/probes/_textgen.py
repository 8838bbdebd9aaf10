"""What the generation probes need from a view: text written under it, or a clear SKIP.

A view writes when it implements :class:`~dlm_sway.core.scoring.Generating`; a
backend whose views do not (a scoring-only server, an old third-party backend)
makes these probes SKIP with a message that names the backend and the missing
method, never a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence

from dlm_sway.core.errors import SwayError
from dlm_sway.core.scoring import (
    Conversation,
    Generating,
    GenerationSettings,
    ScoringModel,
)


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
    return [g.text for g in out]


__all__ = ["CannotGenerateError", "generating", "write"]
