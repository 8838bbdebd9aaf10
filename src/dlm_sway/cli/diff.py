"""``sway diff SPEC --a A --b B``: two adapters on the spec's base, loaded once.

Prompts: ``--prompts FILE``, else the spec's ``delta_kl`` prompts (else any probe's
prompts). Exit 0 whatever the verdict; 2 on bad input. See
:mod:`dlm_sway.suite.adapter_diff` for what is measured and how it is judged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from dlm_sway.cli._common import spec_inputs, stdout_console, user_errors, write_output
from dlm_sway.core.errors import SpecValidationError

if TYPE_CHECKING:
    from dlm_sway.suite.adapter_diff import AdapterDiff
    from dlm_sway.suite.loader import LoadedSpec


def spec_prompts(loaded: LoadedSpec) -> list[str]:
    """The ``delta_kl`` probes' prompts, else every probe's, in order, once each."""
    specs = [s for _, s in loaded.probes]
    chosen = [s for s in specs if s.kind == "delta_kl"] or specs
    found: list[str] = []
    for spec in chosen:
        for p in getattr(spec, "prompts", None) or []:
            if isinstance(p, str) and p not in found:
                found.append(p)
    if not found:
        raise SpecValidationError(
            "no prompts to compare the adapters on: add a delta_kl probe with prompts to the "
            "spec, or pass --prompts FILE",
            source=loaded.path,
        )
    return found


def render_diff(diff: AdapterDiff) -> None:
    from rich.table import Table

    console = stdout_console()
    colour = {"pass": "green", "warn": "yellow", "fail": "red"}.get(diff.verdict.value, "cyan")
    console.print(f"[bold]A[/bold] {escape(diff.a)}\n[bold]B[/bold] {escape(diff.b)}")
    table = Table(title="per prompt: JS(A‖B) and each adapter's JS from the base")
    for col in ("prompt", "JS(A‖B)", "A vs base", "B vs base", "moves more"):
        table.add_column(col, justify="left" if col == "prompt" else "right")
    for row in sorted(diff.prompts, key=lambda r: -r.js_ab):
        table.add_row(
            escape(row.prompt[:60]),
            f"{row.js_ab:.4g}",
            f"{row.js_a:.4g}",
            f"{row.js_b:.4g}",
            row.mover,
        )
    console.print(table)
    a_more = sum(p.mover == "A" for p in diff.prompts)
    b_more = sum(p.mover == "B" for p in diff.prompts)
    console.print(f"A moves {a_more} prompt(s) more than B does; B moves {b_more} more than A.")
    if diff.null_values:
        lo, hi = min(diff.null_values), max(diff.null_values)
        console.print(
            f"null pairs (norm-matched to A and to B): mean JS {lo:.4g} … {hi:.4g} "
            f"over {len(diff.null_values)} pairs"
        )
    console.print(
        f"[bold {colour}]{escape(diff.headline)}[/bold {colour}] — {escape(diff.message)}",
        soft_wrap=True,
    )


def diff_cmd(
    spec: Annotated[Path, typer.Argument(help="Spec whose base model (and prompts) to use.")],
    a: Annotated[str, typer.Option("--a", help="Adapter A (PEFT adapter folder).")],
    b: Annotated[str, typer.Option("--b", help="Adapter B (PEFT adapter folder).")],
    prompts_file: Annotated[
        Path | None, typer.Option("--prompts", help="File with one prompt per line.")
    ] = None,
    runs: Annotated[int, typer.Option(min=2, max=200, help="Null adapter pairs (K).")] = 10,
    json_out: Annotated[
        str | None, typer.Option("--json", "-j", help="Write the diff as JSON ('-': stdout).")
    ] = None,
) -> None:
    """How far apart two adapters are, per prompt, judged against pairs of null adapters."""
    with user_errors():
        from dlm_sway.cli.check import read_prompts
        from dlm_sway.cli.outputs import check_file_target
        from dlm_sway.suite.adapter_diff import diff_adapters
        from dlm_sway.suite.loader import load_spec
        from dlm_sway.suite.many_adapters import build_for_adapter, expand_adapters

        loaded = load_spec(spec)
        refs = [expand_adapters([x])[0] for x in (a, b)]
        prompts = read_prompts(prompts_file) if prompts_file is not None else spec_prompts(loaded)
        if json_out is not None:
            check_file_target("--json", json_out, inputs=spec_inputs(loaded), example="diff.json")
        backend = build_for_adapter(loaded, refs[0].path)
        try:
            diff = diff_adapters(
                backend,
                str(refs[0].path),
                str(refs[1].path),
                prompts,
                runs=runs,
                seed=loaded.spec.defaults.seed,
                top_k=loaded.spec.defaults.top_k,
            )
        finally:
            close = getattr(backend, "close", None)
            if callable(close):
                close()
        if json_out is not None:
            write_output(json.dumps(diff.to_dict(), indent=2) + "\n", json_out, kind="JSON")
        if json_out != "-":
            render_diff(diff)


__all__ = ["diff_cmd", "render_diff", "spec_prompts"]
