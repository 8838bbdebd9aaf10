"""Backend proxy that presents a null adapter as "the fine-tune".

Running a probe through :class:`NullCalibrationBackendProxy` answers "what
would this probe report if the fine-tune were structural noise?" — the
denominator of every z-score. ``as_base()`` is the real base; ``as_finetuned()``
is the inner backend's null view at one fixed seed, so re-entering it yields
the same null. The proxy deliberately implements only
:class:`~dlm_sway.core.scoring.DifferentialBackend` and ``sweep``: no scaling
(ablation on a null is meaningless) and no null views (calibration must not
recurse).

Backends written to the seed contract (``as_null_adapter(seed, *, init_scale,
rank_scale)``) are called exactly that way; ``construction=`` goes only to a
:class:`~dlm_sway.core.scoring.ConstructedNullBackend` that declares it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

from dlm_sway.core.errors import SwayError
from dlm_sway.core.scoring import (
    ConstructedNullBackend,
    NullCalibratedBackend,
    NullConstruction,
    NullDraw,
    ScoringModel,
    SweepMember,
    open_null,
    shared_forwards,
)

#: The construction every seed-contract backend draws (fixed-std LoRA init noise).
SEED_CONSTRUCTION: NullConstruction = "init_scale"


def supported_constructions(backend: NullCalibratedBackend) -> tuple[NullConstruction, ...]:
    """The null constructions ``backend`` can draw: declared, or the seed contract's one."""
    if isinstance(backend, ConstructedNullBackend):
        return tuple(backend.null_constructions)
    return (SEED_CONSTRUCTION,)


class NullCalibrationBackendProxy:
    """Wraps a null-capable backend so ``as_finetuned()`` is one seeded null view.

    Raises :class:`SwayError` at construction when the backend cannot draw the
    requested ``construction``: calibrating against a different null than the one
    asked for would silently change what every z-score means.
    """

    def __init__(
        self,
        inner: NullCalibratedBackend,
        *,
        seed: int,
        init_scale: float = 0.02,
        rank_scale: float = 1.0,
        construction: NullConstruction = SEED_CONSTRUCTION,
    ) -> None:
        supported = supported_constructions(inner)
        if construction not in supported:
            raise SwayError(_unsupported(inner, construction, supported))
        self._inner = inner
        self._seed = seed
        self._init_scale = init_scale
        self._rank_scale = rank_scale
        self._construction: NullConstruction = construction
        #: Ids of the views ``as_finetuned`` opened (what was written under the null).
        self.ft_view_ids: set[str] = set()

    def draw(self, seed: int) -> NullDraw:
        """The null this proxy shows, at another seed."""
        return NullDraw(seed, self._init_scale, self._rank_scale, self._construction)

    @property
    def seed(self) -> int:
        return self._seed

    @contextmanager
    def as_base(self) -> Iterator[ScoringModel]:
        with self._inner.as_base() as view:
            yield view

    @contextmanager
    def as_finetuned(self) -> Iterator[ScoringModel]:
        with open_null(self._inner, self.draw(self._seed)) as view:
            self.ft_view_ids.add(view.id)
            yield view

    def sweep(self, members: Sequence[SweepMember]) -> AbstractContextManager[None]:
        """A probe's own sweep, seen from inside calibration: the null_adapter's sweep
        already holds the base, the fine-tune and every null, so a block of two views
        keeps it; a block only one view asks in pauses it (:data:`BASE_ONLY`)."""
        if len(set(members)) > 1:
            return nullcontext()
        return shared_forwards(self._inner, members)


def _unsupported(
    backend: object, construction: str, supported: tuple[NullConstruction, ...]
) -> str:
    name = type(backend).__name__
    if isinstance(backend, ConstructedNullBackend):
        how = f"it declares null_constructions = {list(supported)}"
    else:
        how = (
            "its as_null_adapter follows the seed contract (no construction= keyword, "
            "init_scale nulls only); a backend that can draw more declares "
            "null_constructions (see dlm_sway.core.scoring.ConstructedNullBackend)"
        )
    options = " or ".join(supported) or "(none)"
    return (
        f"backend {name} cannot draw {construction!r} null adapters: {how}. "
        f"Set null: {options} on the null_adapter entry, or use a backend that supports it"
    )


__all__ = ["SEED_CONSTRUCTION", "NullCalibrationBackendProxy", "supported_constructions"]
