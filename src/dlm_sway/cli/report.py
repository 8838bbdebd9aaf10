"""``sway report``: re-render a saved ``run --json`` result without loading any model.

The file is validated and read back through
:func:`~dlm_sway.report.json_report.read_run` (every malformed field is exit 2
naming its JSON path) and handed to the same renderers a live run uses, so the markdown or JUnit it
prints equals what ``run --markdown`` / ``gate --junit`` wrote for that run.
Version 2 files are read as written; version 1 files (before the typed verdict
fields) are upgraded on reading; any other ``schema_version`` is exit 2 naming it.
``--format json`` always writes version 2. Nothing here imports torch.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dlm_sway.cli._common import EXIT_USAGE, announce, err_console, render, user_errors
from dlm_sway.cli.outputs import STDOUT, Format
from dlm_sway.core.errors import SpecValidationError, SwayError

if TYPE_CHECKING:  # imported in the functions that need them: keeps `sway --help` instant
    from dlm_sway.core.gate import GateDecision
    from dlm_sway.core.result import SuiteResult, SwayScore


class ReportFormat(StrEnum):
    terminal = "terminal"
    md = "md"
    markdown = "markdown"
    junit = "junit"
    json = "json"
    html = "html"


def report_cmd(
    result_json: Annotated[
        Path, typer.Argument(help="A result file written by `sway run --json` / `gate --json`.")
    ],
    fmt: Annotated[
        ReportFormat,
        typer.Option("--format", "-f", case_sensitive=False, help="Output format."),
    ] = ReportFormat.terminal,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write here instead of stdout (not for terminal)."),
    ] = None,
) -> None:
    """Re-render a saved run as a terminal report, markdown, JUnit XML, JSON or HTML."""
    if fmt is ReportFormat.terminal and out is not None:
        err_console.print(
            "[red]error:[/red] --out needs a file format (md, junit, json or html); "
            "the terminal report only prints",
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_USAGE)
    with user_errors():
        from dlm_sway.cli.outputs import Output, check_outputs, write_outputs

        target = None if out is None else str(out)
        outputs: tuple[Output, ...] = ()
        if fmt is not ReportFormat.terminal:
            outputs = check_outputs(
                [("--out", target or STDOUT, _FORMATS[fmt])],
                inputs=[("result file being re-rendered", result_json)],
            )
        suite, score, gate = load_result(result_json)
        if fmt is ReportFormat.terminal:
            render(suite, score)
            if gate is not None:
                from dlm_sway.cli.run import announce_gate

                announce_gate(gate)
            return
        write_outputs(outputs, suite, score, gate, announce=announce)


def load_result(path: Path) -> tuple[SuiteResult, SwayScore, GateDecision | None]:
    """Read and rebuild a saved run; every problem is a SwayError that names the file."""
    from dlm_sway.report.json_report import read_run

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SwayError(f"{path}: result file not found") from None
    except IsADirectoryError:
        raise SwayError(f"{path}: is a folder, expected a JSON result file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SwayError(f"{path}: cannot read result file: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SwayError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise SwayError(f"{path}: JSON nested too deeply to be a sway result file") from None
    try:
        return read_run(data)
    except SpecValidationError as exc:
        raise SpecValidationError(exc.detail, source=str(path)) from None


_FORMATS: dict[ReportFormat, Format] = {
    ReportFormat.md: "markdown",
    ReportFormat.markdown: "markdown",
    ReportFormat.junit: "junit",
    ReportFormat.json: "json",
    ReportFormat.html: "html",
}


__all__ = ["ReportFormat", "load_result", "report_cmd"]
