"""Shared CLI plumbing: execute a loaded spec, render, write outputs, map errors to exits."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from dlm_sway.core.errors import BackendLoadError, SwayError
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
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
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
    try:
        backend = backend_from_spec(model) if needs_backend else None
    except BackendLoadError as exc:
        text = str(exc)
        field = (
            "models.ft.base"
            if "base model" in text
            else "models.ft.adapter"
            if "adapter" in text
            else "models.ft"
        )
        raise BackendLoadError(f"{loaded.path}: {field}: {text}") from None
    try:
        with RichProgress(enabled=None if show_progress else False) as progress:
            suite = run(loaded, backend, progress=progress, adapter_id=model.adapter or "")
    finally:
        close = getattr(backend, "close", None)
        if callable(close):
            close()
    return suite, compute(suite, weights)


def write_json(suite: SuiteResult, score: SwayScore, target: str) -> None:
    """The JSON report to ``target`` ('-' for stdout)."""
    from dlm_sway.report.json_report import to_json

    write_output(to_json(suite, score) + "\n", target, kind="JSON")


def write_markdown(suite: SuiteResult, score: SwayScore, target: str) -> None:
    """The markdown report to ``target`` ('-' for stdout)."""
    from dlm_sway.report.markdown import to_markdown

    write_output(to_markdown(suite, score), target, kind="markdown")


def write_junit(suite: SuiteResult, score: SwayScore, target: str) -> None:
    """The JUnit XML report to ``target`` ('-' for stdout)."""
    from dlm_sway.report.junit import to_junit

    write_output(to_junit(suite, score), target, kind="JUnit")


def write_output(text: str, target: str | Path, *, kind: str) -> None:
    """Write a rendered report: ``'-'`` prints it to stdout; a path is written atomically.

    The text goes to a temporary file next to the target, which is then renamed
    over it, so a reader never sees half a report and a failed write leaves any
    previous file intact. Missing parent folders are created. Success prints
    ``wrote <kind> → <path>`` on stderr; failure raises a :class:`SwayError`
    naming the path (exit 2).
    """
    if str(target) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = Path(target)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        tmp = Path(name)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        tmp.chmod(_new_file_mode())  # mkstemp makes 0600; match a plain open()
        tmp.replace(path)
        tmp = None
    except OSError as exc:
        raise SwayError(f"cannot write {kind} to {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    err_console.print(Text(f"wrote {kind} → {path}", style="dim"), soft_wrap=True)


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


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
    "write_junit",
    "write_markdown",
    "write_output",
]
