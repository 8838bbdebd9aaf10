"""One error hierarchy. Every user-facing failure is a :class:`SwayError`.

The CLI maps any ``SwayError`` to exit code 2 with its message, so messages
must say what is wrong, where, and how to fix it.
"""

from __future__ import annotations


class SwayError(Exception):
    """Root of every error sway raises on purpose."""


class SpecValidationError(SwayError):
    """A spec file, a probe entry or a CLI option is malformed."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        self.source = source
        self.detail = message
        super().__init__(f"{source}: {message}" if source else message)


class BackendNotAvailableError(SwayError):
    """An optional dependency needed by a backend or probe is not installed."""

    def __init__(self, backend: str, *, extra: str, hint: str = "") -> None:
        self.backend = backend
        self.extra = extra
        msg = (
            f"the {backend!r} backend needs optional dependencies: pip install 'dlm-sway[{extra}]'"
        )
        if hint:
            msg = f"{msg} ({hint})"
        super().__init__(msg)


class BackendLoadError(SwayError):
    """A model or adapter could not be loaded (missing path, wrong format, shape mismatch)."""


class ProbeError(SwayError):
    """A probe could not *execute* (as opposed to failing its assertion)."""

    def __init__(self, probe: str, message: str) -> None:
        self.probe = probe
        super().__init__(f"{probe}: {message}")


class ViewError(SwayError, RuntimeError):
    """A second view was opened while one is active, or a view was misused."""


__all__ = [
    "BackendLoadError",
    "BackendNotAvailableError",
    "ProbeError",
    "SpecValidationError",
    "SwayError",
    "ViewError",
]
