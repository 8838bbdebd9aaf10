"""The one backend registry: kind → factory, plus the ``dlm_sway.backends`` entry points.

Factories take keyword options (already validated by the spec layer) and return
an object satisfying at least :class:`~dlm_sway.core.scoring.DifferentialBackend`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.plugins import load_entry_points
from dlm_sway.core.scoring import DifferentialBackend

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

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


def _build_vllm(**options: Any) -> DifferentialBackend:
    from dlm_sway.backends.vllm import build

    backend: DifferentialBackend = build(**options)
    return backend


def _build_two_model(**options: Any) -> DifferentialBackend:
    from dlm_sway.backends.builtin_models import resolve_base
    from dlm_sway.backends.hf_two_model import TwoModelBackend

    options["base"] = resolve_base(str(options["base"]))
    options["finetuned"] = resolve_base(str(options["finetuned"]))
    backend: DifferentialBackend = TwoModelBackend(**options)
    return backend


register_backend("hf", _build_hf)
register_backend("two_model", _build_two_model)
register_backend("dummy", _build_dummy)
register_backend("vllm", _build_vllm)


def _register_entry_point(ep: EntryPoint) -> None:
    factory = ep.load()
    if not callable(factory):
        raise TypeError(f"{type(factory).__name__} is not a backend factory (not callable)")
    register_backend(ep.name, factory)


def backends() -> Mapping[str, BackendFactory]:
    """Kind → factory: the built-ins plus every ``dlm_sway.backends`` entry point that loads.

    A plugin that fails to import, is not callable or claims a taken kind is a
    :class:`~dlm_sway.core.plugins.PluginLoadWarning`; the others still register.
    """
    global _ENTRY_POINTS_LOADED
    if not _ENTRY_POINTS_LOADED:
        _ENTRY_POINTS_LOADED = True
        load_entry_points("dlm_sway.backends", _register_entry_point)
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
