"""Rich progress on stderr: one bar for the suite, one for the current probe's steps."""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from dlm_sway.core.result import ProbeResult, Verdict

_STYLES = {
    Verdict.PASS: "green",
    Verdict.FAIL: "red",
    Verdict.WARN: "yellow",
    Verdict.ERROR: "bold red",
    Verdict.SKIP: "dim",
}


class RichProgress:
    """Implements :class:`dlm_sway.suite.runner.RunProgress`; silent when stderr is no TTY."""

    def __init__(self, *, enabled: bool | None = None) -> None:
        console = Console(stderr=True)
        self.enabled = console.is_terminal if enabled is None else enabled
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not self.enabled,
        )
        self._suite: TaskID | None = None
        self._step: TaskID | None = None
        self._streamed = False

    def __enter__(self) -> RichProgress:
        self._progress.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.__exit__(exc_type, exc, tb)

    def probe_started(self, name: str, index: int, total: int) -> None:
        if self._suite is None:
            self._suite = self._progress.add_task("suite", total=total)
        self._progress.update(self._suite, description=f"probe {name}", completed=index)

    def probe_finished(self, result: ProbeResult) -> None:
        if self.enabled:
            self._stream(result)
        if self._suite is not None:
            self._progress.advance(self._suite)
        if self._step is not None:
            self._progress.remove_task(self._step)
            self._step = None

    def _stream(self, result: ProbeResult) -> None:
        """Each verdict as soon as it exists, so a long suite answers in seconds.

        Provisional: Holm's correction across the suite can still turn a PASS into a
        WARN, and the report printed at the end says so; these lines say it too."""
        if not self._streamed:
            self._streamed = True
            self._progress.console.print(
                Text("verdicts as they come (provisional: the report below applies Holm):"),
                style="dim",
            )
        line = Text(f"  {result.verdict.value.upper():5s} ", style=_STYLES.get(result.verdict, ""))
        line.append(f"{result.name} ({result.kind})")
        if result.headline:
            line.append(f" {result.headline}")
        line.append(f" · {result.duration_s:.1f}s", style="dim")
        self._progress.console.print(line, overflow="ellipsis", no_wrap=True)

    def step(self, label: str, done: int, total: int) -> None:
        if self._step is None:
            self._step = self._progress.add_task(label, total=total)
        self._progress.update(self._step, description=f"  {label}", completed=done, total=total)


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


__all__ = ["RichProgress", "stderr_is_tty"]
