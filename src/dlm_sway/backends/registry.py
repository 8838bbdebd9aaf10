"""The one backend registry: kind → factory, plus the ``dlm_sway.backends`` entry points.

Factories take keyword options (already validated by the spec layer) and return
an object satisfying at least :class:`~dlm_sway.core.scoring.DifferentialBackend`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any

from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.scoring import DifferentialBackend

BackendFactory = Callable[..., DifferentialBackend]

_FACTORIES: dict[str, BackendFactory] = {}
_ENTRY_POINTS_LOADED = False


def register_backend(kind: str, factory: BackendFactory) -> None:
    if kind in _FACTORIES and _FACTORIES[kind] is not factory:
        raise ValueError(f"backend kind {kind!r} is already registered")
    _FACTORIES[kind] = factory


def _build_hf(**options: Any) -> DifferentialBackend:
    from dlm_sway.backends.builtin_models import resolve_base
    from dlm_sway.backends.hf import HFDifferentialBackend

    options["base"] = resolve_base(str(options["base"]))
    backend: DifferentialBackend = HFDifferentialBackend(**options)
    return backend


def _build_dummy(**options: Any) -> DifferentialBackend:
    from dlm_sway.backends.dummy import DummyDifferentialBackend

    return DummyDifferentialBackend(**options)


register_backend("hf", _build_hf)
register_backend("dummy", _build_dummy)


def backends() -> Mapping[str, BackendFactory]:
    global _ENTRY_POINTS_LOADED
    if not _ENTRY_POINTS_LOADED:
        _ENTRY_POINTS_LOADED = True
        for ep in entry_points(group="dlm_sway.backends"):
            register_backend(ep.name, ep.load())
    return MappingProxyType(_FACTORIES)


def build_backend(kind: str, **options: Any) -> DifferentialBackend:
    """Build a backend; an unknown kind is a spec error listing the known ones."""
    table = backends()
    if kind not in table:
        raise SpecValidationError(
            f"unknown backend kind {kind!r}; known kinds: {', '.join(sorted(table))}",
            source="models.ft.kind",
        )
    return table[kind](**options)


__all__ = ["BackendFactory", "backends", "build_backend", "register_backend"]
