"""``sway run`` (report, never gates) and ``sway gate`` (exit 0 pass / 1 fail / 2 bad input).

The gate policy and its single decision function live in :mod:`dlm_sway.core.gate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from dlm_sway.cli._common import (
    EXIT_OK,
    EXIT_VERDICT,
    announce,
    err_console,
    execute,
    gate_policy,
    render,
    resolve_weights,
    spec_inputs,
    stdout_console,
    user_errors,
)
from dlm_sway.core.errors import SpecValidationError, SwayError

if TYPE_CHECKING:  # imported in the functions that need them: keeps `sway --help` instant
    from collections.abc import Mapping

    from dlm_sway.cli.outputs import Format, Output
    from dlm_sway.core.gate import GateDecision, GatePolicy
    from dlm_sway.suite.loader import LoadedSpec

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
HtmlOpt = Annotated[
    str | None,
    typer.Option("--html", help="Write a self-contained HTML report here (offline, one file)."),
]
WeightsOpt = Annotated[
    str | None,
    typer.Option("--weights", help="Category weights, e.g. 'attribution=0.5,ablation=0' (merged)."),
]


TraceOpt = Annotated[
    str | None,
    typer.Option(
        "--trace", help="Write one JSON line per probe, phase and scoring call (see `sway trace`)."
    ),
]


AdaptersOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--adapters",
        help="Run the suite on each of these adapters (folders or a quoted glob such as "
        "'out/checkpoint-*'; repeatable) with one model load, plus a comparison table.",
    ),
]


AllowSkipOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-skip",
        help="Let this probe SKIP without failing the gate (repeatable; 'all' for every probe).",
    ),
]
AllowWarnOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-warn",
        help="Let this probe WARN without failing the gate (repeatable; 'all' for every probe).",
    ),
]


def run_cmd(
    spec: SpecArg,
    json_out: JsonOpt = None,
    markdown_out: MarkdownOpt = None,
    junit_out: JunitOpt = None,
    html_out: HtmlOpt = None,
    weights: WeightsOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate the spec and list probes; load nothing.")
    ] = False,
    trace: TraceOpt = None,
    adapters: AdaptersOpt = None,
) -> None:
    """Run a suite: terminal report, optional JSON/markdown/JUnit files. Exit 0 even on FAIL."""
    with user_errors():
        from dlm_sway.cli.outputs import write_outputs
        from dlm_sway.suite.loader import load_spec

        loaded = load_spec(spec)
        gate_policy(loaded)  # the spec's gate section is checked here too, not only by `gate`
        chosen = resolve_weights(loaded, weights)
        if adapters and not dry_run:
            _many(loaded, adapters, json_out, markdown_out, junit_out, html_out, chosen, trace)
            return
        outputs = _outputs(loaded, json_out, markdown_out, junit_out, html_out)
        if dry_run:
            _dry_run(loaded.path, loaded)
            raise typer.Exit(EXIT_OK)
        quiet = any(out.to_stdout for out in outputs)
        suite, score = execute(loaded, weights=chosen, show_progress=not quiet, trace_path=trace)
        if not quiet:
            render(suite, score)
        write_outputs(outputs, suite, score, announce=announce)


def gate_cmd(
    spec: SpecArg,
    threshold: Annotated[
        float | None,
        typer.Option(help="Minimum composite score (default: defaults.coverage_threshold)."),
    ] = None,
    json_out: JsonOpt = None,
    markdown_out: MarkdownOpt = None,
    junit_out: JunitOpt = None,
    html_out: HtmlOpt = None,
    weights: WeightsOpt = None,
    allow_skip: AllowSkipOpt = None,
    allow_warn: AllowWarnOpt = None,
    trace: TraceOpt = None,
    adapters: AdaptersOpt = None,
) -> None:
    """Run a suite as a CI gate: exit 0 pass, 1 fail, 2 bad input or nothing verified.

    FAIL, ERROR, a SKIP at run time, a WARN and a composite below the threshold each
    fail the gate, unless the spec's ``gate:`` section or --allow-skip / --allow-warn
    allows that SKIP or WARN. A suite where nothing besides null_adapter was judged
    exits 2.
    """
    with user_errors():
        from dlm_sway.cli.outputs import write_outputs
        from dlm_sway.core.gate import decide
        from dlm_sway.suite.loader import load_spec

        loaded = load_spec(spec)
        policy = gate_policy(
            loaded, threshold=threshold, allow_skip=allow_skip or (), allow_warn=allow_warn or ()
        )
        chosen = resolve_weights(loaded, weights)
        if adapters:
            decisions = _many(
                loaded, adapters, json_out, markdown_out, junit_out, html_out, chosen, trace, policy
            )
            for decision in decisions:
                announce_gate(decision)
            raise typer.Exit(max(d.exit_code for d in decisions))
        outputs = _outputs(loaded, json_out, markdown_out, junit_out, html_out)
        quiet = any(out.to_stdout for out in outputs)
        suite, score = execute(loaded, weights=chosen, show_progress=not quiet, trace_path=trace)
        decision = decide(suite, score, policy)
        if not quiet:
            render(suite, score)
        failure: SwayError | None = None
        try:
            write_outputs(outputs, suite, score, decision, announce=announce)
        except SwayError as exc:
            failure = exc
        announce_gate(decision)
        if failure is not None:
            raise failure
    raise typer.Exit(decision.exit_code)


def announce_gate(decision: GateDecision) -> None:
    """The gate's one line on stderr: passed, FAILED with every reason, or error (exit 2)."""
    if decision.passed:
        allowed = ""
        if decision.allowed_skips or decision.allowed_warns:
            names = ", ".join((*decision.allowed_skips, *decision.allowed_warns))
            allowed = f" (allowed by policy: {names})"
        err_console.print(
            f"[green]gate passed[/green] — {escape(decision.summary())}{escape(allowed)}",
            soft_wrap=True,
        )
    elif decision.exit_code == EXIT_VERDICT:
        err_console.print(f"[red]gate FAILED[/red] — {escape(decision.summary())}", soft_wrap=True)
    else:
        err_console.print(f"[red]error:[/red] {escape(decision.summary())}", soft_wrap=True)


def _many(
    loaded: LoadedSpec,
    adapters: list[str],
    json_out: str | None,
    markdown_out: str | None,
    junit_out: str | None,
    html_out: str | None,
    weights: Mapping[str, float],
    trace: str | None,
    policy: GatePolicy | None = None,
) -> list[GateDecision]:
    """``--adapters``: each adapter's report and file(s), then the comparison table."""
    from dlm_sway.cli.many import run_adapters

    if trace is not None:
        raise SpecValidationError("--trace records one run; it cannot be combined with --adapters")
    requested: list[tuple[str, str | None, Format]] = [
        ("--json", json_out, "json"),
        ("--markdown", markdown_out, "markdown"),
        ("--junit", junit_out, "junit"),
        ("--html", html_out, "html"),
    ]
    _, decisions = run_adapters(
        loaded, adapters, requested=requested, weights=weights, policy=policy
    )
    return decisions


def _outputs(
    loaded: LoadedSpec,
    json_out: str | None,
    markdown_out: str | None,
    junit_out: str | None,
    html_out: str | None = None,
) -> tuple[Output, ...]:
    from dlm_sway.cli.outputs import check_outputs

    return check_outputs(
        [
            ("--json", json_out, "json"),
            ("--markdown", markdown_out, "markdown"),
            ("--junit", junit_out, "junit"),
            ("--html", html_out, "html"),
        ],
        inputs=spec_inputs(loaded),
    )


def _dry_run(path: str, loaded: object) -> None:
    from rich.table import Table

    from dlm_sway.suite.loader import LoadedSpec

    assert isinstance(loaded, LoadedSpec)
    table = Table(title=f"dry run: {path} — {len(loaded.probes)} probe(s)")
    for col in ("#", "name", "kind", "category", "enabled"):
        table.add_column(col)
    for i, (probe, spec) in enumerate(loaded.probes):
        table.add_row(
            str(i), escape(spec.name), spec.kind, probe.category, "yes" if spec.enabled else "no"
        )
    stdout_console().print(table)


__all__ = ["TraceOpt", "announce_gate", "gate_cmd", "run_cmd"]
