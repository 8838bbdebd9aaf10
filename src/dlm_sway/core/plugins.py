"""Guarded loading of third-party entry points (``dlm_sway.probes``, ``dlm_sway.backends``).

One broken plugin must not take sway down with it: a plugin whose module raises
on import, or that registers a kind someone else already owns, becomes a
:class:`PluginLoadWarning` naming the entry point (``name = value``) and the
error, and every other plugin and every built-in still loads.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint


class PluginLoadWarning(UserWarning):
    """A ``dlm_sway.*`` entry point failed to load and was ignored."""


def load_entry_points(
    group: str,
    register: Callable[[EntryPoint], None],
    *,
    rollback: Callable[[], Callable[[], None]] | None = None,
) -> list[str]:
    """Call ``register(ep)`` for every entry point of ``group``; failures become warnings.

    ``rollback`` (when given) is called before each plugin and returns an undo
    function, run if that plugin fails, so a half-registered plugin leaves nothing
    behind. Returns the warning messages (also emitted as :class:`PluginLoadWarning`).
    """
    from importlib.metadata import entry_points

    problems: list[str] = []
    for ep in entry_points(group=group):
        undo = rollback() if rollback is not None else None
        try:
            register(ep)
        except Exception as exc:  # noqa: BLE001 — any plugin failure is reported, never fatal
            if undo is not None:
                undo()
            message = (
                f"sway: ignoring {group} plugin {ep.name!r} ({ep.value}): "
                f"{type(exc).__name__}: {exc}"
            )
            problems.append(message)
            warnings.warn(message, PluginLoadWarning, stacklevel=2)
    return problems


__all__ = ["PluginLoadWarning", "load_entry_points"]
