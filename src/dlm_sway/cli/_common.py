"""Shared CLI plumbing: execute a loaded spec, render, write outputs, map errors to exits."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console

from dlm_sway.core.errors import SwayError
from dlm_sway.core.result import SuiteResult, SwayScore
from dlm_sway.suite.loader import LoadedSpec

EXIT_OK = 0
EXIT_VERDICT = 1
EXIT_USAGE = 2

T = TypeVar("T")

err_console = Console(stderr=True, highlight=False)


@contextmanager
def user_errors() -> Iterator[None]:
    """Any SwayError (a user mistake or an unusable input) → 'error: …' and exit 2."""
    try:
        yield
    except SwayError as exc:
        err_console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None


def execute(
    loaded: LoadedSpec,
    *,
    weights_flag: str | None = None,
    show_progress: bool = True,
    adapter_override: str | None = None,
) -> tuple[SuiteResult, SwayScore]:
    """Build the backend, run the suite with progress, close the backend, score."""
    from dlm_sway.cli.progress import RichProgress
    from dlm_sway.suite.build import backend_from_spec
    from dlm_sway.suite.runner import run
    from dlm_sway.suite.score import compute, parse_weights_flag

    weights = parse_weights_flag(weights_flag) if weights_flag else loaded.weights
    model = loaded.spec.models.ft
    if adapter_override is not None:
        model = model.model_copy(update={"adapter": adapter_override})
    needs_backend = any(p.needs_backend and s.enabled for p, s in loaded.probes)
    backend = backend_from_spec(model) if needs_backend else None
    try:
        with RichProgress(enabled=None if show_progress else False) as progress:
            suite = run(loaded, backend, progress=progress, adapter_id=model.adapter or "")
    finally:
        close = getattr(backend, "close", None)
        if callable(close):
            close()
    return suite, compute(suite, weights)


def write_json(suite: SuiteResult, score: SwayScore, target: str) -> None:
    from dlm_sway.report.json_report import to_json

    text = to_json(suite, score)
    if target == "-":
        sys.stdout.write(text + "\n")
        return
    path = Path(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        raise SwayError(f"cannot write JSON to {path}: {exc}") from None
    err_console.print(f"[dim]wrote JSON → {path}[/dim]")


def render(suite: SuiteResult, score: SwayScore, *, console: Console | None = None) -> None:
    from dlm_sway.report.terminal import render_terminal

    render_terminal(suite, score, console=console or Console())


def guarded(fn: Callable[[], T]) -> T:
    with user_errors():
        return fn()


__all__ = [
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_VERDICT",
    "err_console",
    "execute",
    "guarded",
    "render",
    "user_errors",
    "write_json",
]
