"""``sway report``: re-render a saved ``run --json`` result without loading any model.

The file is read back through :func:`~dlm_sway.report.json_report.from_json`
and handed to the same renderers a live run uses, so the markdown or JUnit it
prints equals what ``run --markdown`` / ``gate --junit`` wrote for that run.
Nothing here imports torch.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from dlm_sway.cli._common import EXIT_USAGE, err_console, render, user_errors, write_output
from dlm_sway.core.errors import SpecValidationError, SwayError
from dlm_sway.core.result import SuiteResult, SwayScore


class ReportFormat(StrEnum):
    terminal = "terminal"
    md = "md"
    markdown = "markdown"
    junit = "junit"
    json = "json"


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
    """Re-render a saved run as a terminal report, markdown, JUnit XML or JSON."""
    if fmt is ReportFormat.terminal and out is not None:
        err_console.print(
            "[red]error:[/red] --out needs a file format (md, junit or json); "
            "the terminal report only prints",
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_USAGE)
    with user_errors():
        suite, score = load_result(result_json)
        if fmt is ReportFormat.terminal:
            render(suite, score)
            return
        text, kind = _rendered(suite, score, fmt)
        write_output(text, "-" if out is None else out, kind=kind)


def load_result(path: Path) -> tuple[SuiteResult, SwayScore]:
    """Read and rebuild a saved run; every problem is a SwayError that names the file."""
    from dlm_sway.report.json_report import from_json

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
    try:
        return from_json(data)
    except SpecValidationError as exc:
        raise SpecValidationError(exc.detail, source=str(path)) from None


def _rendered(suite: SuiteResult, score: SwayScore, fmt: ReportFormat) -> tuple[str, str]:
    if fmt in (ReportFormat.md, ReportFormat.markdown):
        from dlm_sway.report.markdown import to_markdown

        return to_markdown(suite, score), "markdown"
    if fmt is ReportFormat.junit:
        from dlm_sway.report.junit import to_junit

        return to_junit(suite, score), "JUnit"
    from dlm_sway.report.json_report import to_json

    return to_json(suite, score) + "\n", "JSON"


__all__ = ["ReportFormat", "load_result", "report_cmd"]
