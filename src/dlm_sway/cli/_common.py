"""Shared CLI plumbing: execute a loaded spec, render, write outputs, map errors to exits.

Exit codes: 0 done / gate passed, 1 gate failed on a verdict, 2 bad input or
nothing verified, 130 interrupted (Ctrl-C) with nothing written.
"""

from __future__ import annotations

import errno
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from dlm_sway.cli import INTERRUPTED_MESSAGE
from dlm_sway.core.errors import BackendLoadError, SpecValidationError, SwayError

if TYPE_CHECKING:  # runtime imports stay inside functions: `sway --help` must be instant
    from dlm_sway.core.gate import GatePolicy
    from dlm_sway.core.result import SuiteResult, SwayScore
    from dlm_sway.suite.loader import LoadedSpec
    from dlm_sway.suite.trace import TraceWriter

EXIT_OK = 0
EXIT_VERDICT = 1
EXIT_USAGE = 2
#: 128 + SIGINT, what shells report for a command stopped by Ctrl-C.
EXIT_INTERRUPTED = 130

T = TypeVar("T")


class SwayConsole(Console):
    """rich's console, except that a closed pipe is an unwritable output, not ``exit 1``.

    rich answers a broken pipe with ``SystemExit(1)``, which a CI reads as a failed
    gate; raised as ``BrokenPipeError`` it reaches :func:`dlm_sway.cli.app.main`,
    which says so in one line and exits 2.
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, "the output pipe was closed")


err_console = SwayConsole(stderr=True, highlight=False)


@contextmanager
def user_errors() -> Iterator[None]:
    """Any SwayError (a user mistake or an unusable input) → 'error: …' and exit 2.

    Ctrl-C anywhere inside (model load, probes, writing) → one line and exit 130:
    outputs only land in the final, interrupt-free rename step, so nothing was written.
    """
    try:
        yield
    except SwayError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        err_console.print(INTERRUPTED_MESSAGE, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


def execute(
    loaded: LoadedSpec,
    *,
    weights: Mapping[str, float] | None = None,
    show_progress: bool = True,
    adapter_override: str | None = None,
    trace_path: str | None = None,
) -> tuple[SuiteResult, SwayScore]:
    """Build the backend, run the suite with progress, close the backend, score.

    ``weights`` are already validated (:func:`resolve_weights`); None means the spec's.
    ``trace_path``: write the run's events there (``--trace``, see :mod:`dlm_sway.suite.trace`).
    """
    import time
    from contextlib import nullcontext

    from dlm_sway.backends.quiet import quiet_if_not_interactive
    from dlm_sway.cli.progress import RichProgress
    from dlm_sway.suite.build import backend_from_spec
    from dlm_sway.suite.runner import run
    from dlm_sway.suite.score import compute

    if weights is None:
        weights = loaded.weights
    model = loaded.spec.models.ft
    if adapter_override is not None:
        model = model.model_copy(update={"adapter": adapter_override})
    needs_backend = any(p.needs_backend and s.enabled for p, s in loaded.probes)
    trace = open_trace(loaded, trace_path)
    quiet_if_not_interactive()  # no tqdm bars from model loading in a CI log
    t0 = time.perf_counter()
    try:
        with trace.phase("load_model") if trace is not None else nullcontext():
            backend = backend_from_spec(model) if needs_backend else None
    except BackendLoadError as exc:
        if trace is not None:
            trace.close()
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
        with (
            RichProgress(enabled=None if show_progress else False) as progress,
            trace.attached(backend) if trace is not None else nullcontext(),
        ):
            suite = run(
                loaded, backend, progress=progress, adapter_id=model.adapter or "", trace=trace
            )
        suite = with_identity(suite, backend)
    finally:
        close = getattr(backend, "close", None)
        if callable(close):
            close()
        if trace is not None:
            trace.close(seconds=time.perf_counter() - t0)
    return suite, compute(suite, weights)


def with_identity(suite: SuiteResult, backend: object) -> SuiteResult:
    """Record the backend's cache identity (base, adapter content hash, dtype) in
    ``backend_stats["identity"]``, so a saved run names the exact adapter weights."""
    from dataclasses import replace

    from dlm_sway.core.scoring import CacheIdentified

    if not isinstance(backend, CacheIdentified):
        return suite
    return replace(
        suite, backend_stats={**suite.backend_stats, "identity": backend.cache_identity()}
    )


def open_trace(loaded: LoadedSpec, target: str | None) -> TraceWriter | None:
    """The ``--trace`` writer, its path checked like every output (never an input)."""
    if target is None:
        return None
    from dlm_sway.cli.outputs import check_file_target
    from dlm_sway.suite.trace import TraceWriter

    if target.strip() == "-":
        raise SpecValidationError("--trace -: the trace is a file; give a path such as trace.jsonl")
    check_file_target("--trace", target, inputs=spec_inputs(loaded), example="trace.jsonl")
    return TraceWriter(target, spec=loaded.path)


def resolve_weights(loaded: LoadedSpec, flag: str | None) -> Mapping[str, float]:
    """``--weights`` (validated now, before anything loads) merged over the spec's."""
    if not flag:
        return loaded.weights
    from dlm_sway.suite.score import parse_weights_flag

    return parse_weights_flag(flag)


def spec_inputs(loaded: LoadedSpec) -> list[tuple[str, Path]]:
    """Every file a spec run reads, so no report is written over one of them."""
    from dlm_sway.cli.outputs import input_files

    spec = loaded.spec
    found = input_files("spec file", loaded.path)
    found += input_files("dlm_source document", spec.dlm_source)
    for where, model in (("models.ft", spec.models.ft), ("models.base", spec.models.base)):
        if model is not None:
            found += input_files(f"{where}.adapter", model.adapter)
            found += input_files(f"{where}.base", model.base)
    return found


ALL = "all"


def gate_policy(
    loaded: LoadedSpec,
    *,
    threshold: float | None = None,
    allow_skip: Sequence[str] = (),
    allow_warn: Sequence[str] = (),
) -> GatePolicy:
    """The gate policy from the spec's ``gate`` section and the command line, checked now.

    ``--threshold`` must be a finite number in [0, 1]; every name in an allow list
    (spec or flag) must be a probe of this suite, or the flag value ``all``.
    """
    from dlm_sway.core.gate import GatePolicy

    if threshold is None:
        threshold = loaded.spec.defaults.coverage_threshold
    elif not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise SpecValidationError(
            f"--threshold {threshold!r} is not a number within [0, 1] (e.g. --threshold 0.6)"
        )
    names = [pspec.name for _, pspec in loaded.probes]
    gate = loaded.spec.gate
    allowed: dict[str, tuple[bool, frozenset[str]]] = {}
    for what, from_spec, from_flag in (
        ("skip", gate.allow_skip, allow_skip),
        ("warn", gate.allow_warn, allow_warn),
    ):
        everything = from_spec is True or ALL in from_flag
        listed = [] if isinstance(from_spec, bool) else list(from_spec)
        unknown_spec = [n for n in listed if n not in names]
        unknown_flag = [n for n in from_flag if n != ALL and n not in names]
        known = ", ".join(names)
        if unknown_spec:
            raise SpecValidationError(
                f"gate.allow_{what}: no probe named {', '.join(map(repr, unknown_spec))} in "
                f"this suite (probes: {known}); list probe names, or write true for all",
                source=loaded.path,
            )
        if unknown_flag:
            raise SpecValidationError(
                f"--allow-{what}: no probe named {', '.join(map(repr, unknown_flag))} in "
                f"{loaded.path} (probes: {known}); give a probe name, or 'all'"
            )
        allowed[what] = (everything, frozenset(listed) | frozenset(from_flag) - {ALL})
    return GatePolicy(
        threshold=threshold,
        allow_all_skips=allowed["skip"][0],
        allow_skip=allowed["skip"][1],
        allow_all_warns=allowed["warn"][0],
        allow_warn=allowed["warn"][1],
        disabled=frozenset(pspec.name for _, pspec in loaded.probes if not pspec.enabled),
    )


def write_output(text: str, target: str | Path, *, kind: str) -> None:
    """Write a rendered text: ``'-'`` prints it to stdout; a path is written atomically.

    Success prints ``wrote <kind> → <path>`` on stderr; failure raises a
    :class:`SwayError` naming the path (exit 2). See :mod:`dlm_sway.cli.outputs`.
    """
    from dlm_sway.cli.outputs import atomic_write

    if str(target) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = Path(target).expanduser()
    try:
        atomic_write(text, path)
    except OSError as exc:
        raise SwayError(f"cannot write {kind} to {path}: {exc.strerror or exc}") from None
    announce(f"wrote {kind} → {path}")


def announce(line: str) -> None:
    """A dim status line on stderr (``wrote JSON → run.json``)."""
    err_console.print(Text(line, style="dim"), soft_wrap=True)


#: Layout width for stdout that is not a terminal: wide enough that no table is squeezed.
UNWRAPPED_WIDTH = 1000


def stdout_console() -> Console:
    """The console for reports on stdout. A terminal (or an explicit ``COLUMNS``) keeps
    rich's layout; a pipe or a CI log gets soft wrap and a wide layout, so a line is
    never hard-wrapped at 80 columns (a number split over two lines cannot be grepped)
    and boxes fit their content instead of stretching to the wide layout."""
    console = SwayConsole()
    if console.is_terminal or os.environ.get("COLUMNS"):
        return console
    return SwayConsole(width=UNWRAPPED_WIDTH, soft_wrap=True)


def render(suite: SuiteResult, score: SwayScore, *, console: Console | None = None) -> None:
    from dlm_sway.report.terminal import render_terminal

    render_terminal(suite, score, console=console or stdout_console())


def guarded(fn: Callable[[], T]) -> T:
    with user_errors():
        return fn()


__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_VERDICT",
    "INTERRUPTED_MESSAGE",
    "announce",
    "err_console",
    "execute",
    "gate_policy",
    "guarded",
    "render",
    "resolve_weights",
    "spec_inputs",
    "stdout_console",
    "user_errors",
    "write_output",
]
