"""``sway trace TRACE.jsonl``: where a run's time went (per probe and phase, per view,
slowest scoring calls), from the file ``sway run/gate/check --trace`` wrote."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from dlm_sway.cli._common import stdout_console, user_errors, write_output


class TraceFormat(StrEnum):
    terminal = "terminal"
    md = "md"
    markdown = "markdown"
    json = "json"


def trace_cmd(
    trace_file: Annotated[Path, typer.Argument(help="A JSONL file written by `--trace`.")],
    fmt: Annotated[
        TraceFormat,
        typer.Option("--format", "-f", case_sensitive=False, help="Output format."),
    ] = TraceFormat.terminal,
    slowest: Annotated[
        int, typer.Option("--slowest", min=0, help="How many of the slowest calls to list.")
    ] = 10,
) -> None:
    """Summarise a trace: wall time per probe and phase, forwards per view, slowest calls."""
    with user_errors():
        from dlm_sway.report import trace_summary as report

        summary = report.read_trace(trace_file, slowest=slowest)
        if fmt is TraceFormat.terminal:
            stdout_console().print(report.to_renderable(summary))
        elif fmt is TraceFormat.json:
            write_output(json.dumps(report.to_dict(summary), indent=2) + "\n", "-", kind="JSON")
        else:
            write_output(report.to_markdown(summary), "-", kind="markdown")


__all__ = ["TraceFormat", "trace_cmd"]
