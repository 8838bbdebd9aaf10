"""Backend proxy that presents a null adapter as "the fine-tune".

Running a probe through :class:`NullCalibrationBackendProxy` answers "what
would this probe report if the fine-tune were structural noise?" — the
denominator of every z-score. ``as_base()`` is the real base; ``as_finetuned()``
is the inner backend's null view at one fixed seed, so re-entering it yields
the same null. The proxy deliberately implements only
:class:`~dlm_sway.core.scoring.DifferentialBackend`: no scaling (ablation on a
null is meaningless) and no null views (calibration must not recurse).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dlm_sway.core.scoring import NullCalibratedBackend, NullConstruction, ScoringModel


class NullCalibrationBackendProxy:
    """Wraps a null-capable backend so ``as_finetuned()`` is one seeded null view."""

    def __init__(
        self,
        inner: NullCalibratedBackend,
        *,
        seed: int,
        init_scale: float = 0.02,
        rank_scale: float = 1.0,
        construction: NullConstruction = "init_scale",
    ) -> None:
        self._inner = inner
        self._seed = seed
        self._init_scale = init_scale
        self._rank_scale = rank_scale
        self._construction: NullConstruction = construction

    @property
    def seed(self) -> int:
        return self._seed

    @contextmanager
    def as_base(self) -> Iterator[ScoringModel]:
        with self._inner.as_base() as view:
            yield view

    @contextmanager
    def as_finetuned(self) -> Iterator[ScoringModel]:
        with self._inner.as_null_adapter(
            self._seed,
            init_scale=self._init_scale,
            rank_scale=self._rank_scale,
            construction=self._construction,
        ) as view:
            yield view


__all__ = ["NullCalibrationBackendProxy"]
