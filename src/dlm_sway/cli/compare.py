"""``sway compare RUN.json RUN.json …``: saved runs side by side; exit 1 on a regression.

The first file is the baseline; each later run is compared with it (see
:mod:`dlm_sway.report.compare` for what a regression is). The table is always
printed before the exit code, so a CI log shows what regressed.
"""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from dlm_sway.cli._common import EXIT_VERDICT, stdout_console, user_errors, write_output
from dlm_sway.core.errors import SpecValidationError


class CompareFormat(StrEnum):
    terminal = "terminal"
    md = "md"
    markdown = "markdown"
    json = "json"
    html = "html"


def compare_cmd(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="Two or more result files from `sway run --json`; the first is the baseline."
        ),
    ],
    fmt: Annotated[
        CompareFormat,
        typer.Option("--format", "-f", case_sensitive=False, help="Output format."),
    ] = CompareFormat.terminal,
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", help="Write md/json/html here instead of stdout."),
    ] = None,
    fail_on_regression: Annotated[
        bool,
        typer.Option(
            "--fail-on-regression",
            help="Exit 1 when a probe's verdict got worse than in the baseline, or a "
            "probe's score or the overall score fell by at least --max-drop.",
        ),
    ] = False,
    max_drop: Annotated[
        float,
        typer.Option("--max-drop", help="Score fall (0..1) that counts as a regression."),
    ] = 0.10,
) -> None:
    """Compare saved runs probe by probe: verdicts, values, z and deltas vs the first run."""
    with user_errors():
        from dlm_sway.cli.report import load_result
        from dlm_sway.report.compare import compare_runs

        if len(runs) < 2:
            raise SpecValidationError(
                "sway compare needs at least two result files (the first is the baseline)"
            )
        if not (math.isfinite(max_drop) and 0.0 < max_drop <= 1.0):
            raise SpecValidationError(f"--max-drop {max_drop!r} must be within (0, 1]")
        if fmt is CompareFormat.terminal and out is not None:
            raise SpecValidationError("--out needs a file format (md, json or html)")
        if out is not None:
            from dlm_sway.cli.outputs import check_file_target

            inputs = [("result file being compared", path) for path in runs]
            check_file_target("--out", out, inputs=inputs, example=f"compare.{fmt.value}")
        stems = [p.stem for p in runs]
        labels = [p.stem if stems.count(p.stem) == 1 else str(p) for p in runs]
        loaded = []
        for label, path in zip(labels, runs, strict=True):
            suite, score, _ = load_result(path)
            loaded.append((label, str(path), suite, score))
        comparison = compare_runs(loaded, max_drop=max_drop)
        _emit(comparison, fmt, out)
    if fail_on_regression and comparison.regressions:
        raise typer.Exit(EXIT_VERDICT)


def _emit(comparison: object, fmt: CompareFormat, out: str | None) -> None:
    from dlm_sway.report import compare as report
    from dlm_sway.report.compare import Comparison

    assert isinstance(comparison, Comparison)
    if fmt is CompareFormat.terminal:
        console = stdout_console()
        console.print(report.to_table(comparison))
        for line in report.summary_lines(comparison):
            console.print(line, style="red" if comparison.regressions else None, markup=False)
        return
    if fmt is CompareFormat.json:
        text, kind = report.to_json(comparison), "JSON"
    elif fmt is CompareFormat.html:
        from dlm_sway.report.compare_html import to_html

        text, kind = to_html(comparison), "HTML"
    else:
        text, kind = report.to_markdown(comparison), "markdown"
    write_output(text, out or "-", kind=kind)


__all__ = ["CompareFormat", "compare_cmd"]
