"""Test helpers around a real HF backend: spying on its scorer, and its spec entry."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def views_at(backend: Any, method: str) -> Iterator[list[str]]:
    """The active view id (``"None"`` outside views) at each call of ``scorer.<method>``,
    while the block runs. Every forward path records itself once through ``_record``;
    ``generate_batch`` runs only on cache misses."""
    scorer = backend._live_scorer()
    original = getattr(scorer, method)
    seen: list[str] = []

    def spying(*args: Any, **kwargs: Any) -> Any:
        seen.append(str(backend._active))
        return original(*args, **kwargs)

    setattr(scorer, method, spying)
    try:
        yield seen
    finally:
        delattr(scorer, method)


def hf_entry(base: Any, adapter: Any, batch_size: int) -> dict[str, Any]:
    """``models.ft`` of a spec for the HF backend on CPU in fp32."""
    return {
        "kind": "hf",
        "base": str(base),
        "adapter": str(adapter),
        "dtype": "fp32",
        "device": "cpu",
        "batch_size": batch_size,
    }


def run_spied(loaded: Any, method: str) -> tuple[Any, list[str]]:
    """Run a loaded suite on a fresh backend of its spec; the views at each ``method`` call."""
    from dlm_sway.suite.build import backend_from_spec
    from dlm_sway.suite.runner import run

    backend = backend_from_spec(loaded.spec.models.ft)
    try:
        with views_at(backend, method) as seen:
            suite = run(loaded, backend)
    finally:
        backend.close()
    return suite, seen
