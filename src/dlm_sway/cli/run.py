"""``sway run`` (report, never gates) and ``sway gate`` (exit 0 pass / 1 fail / 2 bad input)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dlm_sway.cli._common import (
    EXIT_OK,
    EXIT_VERDICT,
    err_console,
    execute,
    render,
    user_errors,
    write_json,
    write_junit,
    write_markdown,
)
from dlm_sway.core.result import SuiteResult, SwayScore, Verdict

SpecArg = Annotated[Path, typer.Argument(help="Path to the sway.yaml spec.")]
JsonOpt = Annotated[
    str | None,
    typer.Option("--json", "-j", help="Write the JSON result here ('-' for stdout, report off)."),
]
MarkdownOpt = Annotated[
    str | None,
    typer.Option("--markdown", "-m", help="Write the markdown report here ('-' for stdout)."),
]
JunitOpt = Annotated[
    str | None,
    typer.Option("--junit", help="Write a JUnit XML report here, one test case per probe."),
]
WeightsOpt = Annotated[
    str | None,
    typer.Option("--weights", help="Category weights, e.g. 'attribution=0.5,ablation=0' (merged)."),
]


def run_cmd(
    spec: SpecArg,
    json_out: JsonOpt = None,
    markdown_out: MarkdownOpt = None,
    junit_out: JunitOpt = None,
    weights: WeightsOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate the spec and list probes; load nothing.")
    ] = False,
) -> None:
    """Run a suite: terminal report, optional JSON/markdown/JUnit files. Exit 0 even on FAIL."""
    from dlm_sway.suite.loader import load_spec

    with user_errors():
        loaded = load_spec(spec)
        if dry_run:
            _dry_run(loaded.path, loaded)
            raise typer.Exit(EXIT_OK)
        quiet = _quiet(json_out, markdown_out, junit_out)
        suite, score = execute(loaded, weights_flag=weights, show_progress=not quiet)
        if not quiet:
            render(suite, score)
        _write_reports(suite, score, json_out, markdown_out, junit_out)


def gate_cmd(
    spec: SpecArg,
    threshold: Annotated[
        float | None,
        typer.Option(help="Minimum composite score (default: defaults.coverage_threshold)."),
    ] = None,
    json_out: JsonOpt = None,
    markdown_out: MarkdownOpt = None,
    junit_out: JunitOpt = None,
    weights: WeightsOpt = None,
) -> None:
    """Run a suite as a CI gate: exit 1 on any FAIL/ERROR or a composite below threshold."""
    from dlm_sway.suite.loader import load_spec

    with user_errors():
        loaded = load_spec(spec)
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise typer.BadParameter("--threshold must be within [0, 1]")
        quiet = _quiet(json_out, markdown_out, junit_out)
        suite, score = execute(loaded, weights_flag=weights, show_progress=not quiet)
        if not quiet:
            render(suite, score)
        _write_reports(suite, score, json_out, markdown_out, junit_out)
    limit = threshold if threshold is not None else loaded.spec.defaults.coverage_threshold
    ok, reason = gate_decision(suite, score, limit)
    if ok:
        err_console.print(f"[green]gate passed[/green] — overall={score.overall:.2f} ≥ {limit:g}")
        raise typer.Exit(EXIT_OK)
    err_console.print(f"[red]gate FAILED[/red] — {escape(reason)}")
    raise typer.Exit(EXIT_VERDICT)


def gate_decision(suite: SuiteResult, score: SwayScore, threshold: float) -> tuple[bool, str]:
    """FAIL and ERROR both fail the gate: an unverifiable probe is not a pass."""
    failed = [p.name for p in suite.probes if p.verdict == Verdict.FAIL]
    errored = [p.name for p in suite.probes if p.verdict == Verdict.ERROR]
    if failed:
        return False, f"probe(s) failed: {', '.join(failed)}"
    if errored:
        return False, f"probe(s) could not run: {', '.join(errored)}"
    if score.overall < threshold:
        return False, f"overall={score.overall:.2f} < threshold {threshold:g}"
    return True, ""


def _quiet(json_out: str | None, markdown_out: str | None, junit_out: str | None) -> bool:
    """True when one report goes to stdout (then nothing else may); two on stdout is an error."""
    on_stdout = [
        flag
        for flag, target in (
            ("--json", json_out),
            ("--markdown", markdown_out),
            ("--junit", junit_out),
        )
        if target == "-"
    ]
    if len(on_stdout) > 1:
        raise typer.BadParameter(
            f"only one report can go to stdout ('-'), got {', '.join(on_stdout)}"
        )
    return bool(on_stdout)


def _write_reports(
    suite: SuiteResult,
    score: SwayScore,
    json_out: str | None,
    markdown_out: str | None,
    junit_out: str | None,
) -> None:
    if json_out:
        write_json(suite, score, json_out)
    if markdown_out:
        write_markdown(suite, score, markdown_out)
    if junit_out:
        write_junit(suite, score, junit_out)


def _dry_run(path: str, loaded: object) -> None:
    from dlm_sway.suite.loader import LoadedSpec

    assert isinstance(loaded, LoadedSpec)
    table = Table(title=f"dry run: {path} — {len(loaded.probes)} probe(s)")
    for col in ("#", "name", "kind", "category", "enabled"):
        table.add_column(col)
    for i, (probe, spec) in enumerate(loaded.probes):
        table.add_row(
            str(i), escape(spec.name), spec.kind, probe.category, "yes" if spec.enabled else "no"
        )
    Console().print(table)


__all__ = ["gate_cmd", "gate_decision", "run_cmd"]
