"""``--adapters DIR_OR_GLOB …`` on ``run``/``gate``/``check``: one run, many adapters.

Expansion and the run itself live in :mod:`dlm_sway.suite.many_adapters`; here the
outputs are split per adapter (``run.json`` → ``run.<label>.json``, checked before
anything loads), each adapter's report is printed, then one comparison table
(``sway compare``'s, first adapter = baseline). ``--json`` also writes that
comparison to ``<stem>.compare.json``. A report cannot go to stdout (``-``):
several adapters are several reports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape

from dlm_sway.cli._common import announce, err_console, render, spec_inputs, stdout_console
from dlm_sway.core.errors import SpecValidationError

if TYPE_CHECKING:
    from dlm_sway.cli.outputs import Format, Output
    from dlm_sway.core.gate import GateDecision, GatePolicy
    from dlm_sway.suite.loader import LoadedSpec
    from dlm_sway.suite.many_adapters import AdapterRef, AdapterRun

Requested = Sequence[tuple[str, str | None, "Format"]]
COMPARE_LABEL = "compare"


def suffixed(target: str, label: str) -> str:
    """``run.json`` → ``run.<label>.json`` (the label is a folder name, no separators)."""
    path = Path(target)
    return str(path.with_name(f"{path.stem}.{label}{path.suffix}"))


def plan_outputs(
    requested: Requested, refs: Sequence[AdapterRef], inputs: Sequence[tuple[str, Path]]
) -> tuple[list[tuple[AdapterRef | None, Output]], tuple[Output, ...]]:
    """Per-adapter outputs ``(ref, output)`` plus the comparison JSON (ref None), all
    checked now; '-' is refused."""
    from dlm_sway.cli.outputs import check_outputs

    flat: list[tuple[str, str, Format]] = []
    owners: list[AdapterRef | None] = []
    for flag, target, fmt in requested:
        if target is None:
            continue
        if target.strip() == "-":
            raise SpecValidationError(
                f"{flag} -: with --adapters every adapter gets its own report; give a file "
                f"path (e.g. {flag} run.{'md' if fmt == 'markdown' else fmt}), each adapter's "
                "name is added before the extension"
            )
        for ref in refs:
            flat.append((flag, suffixed(target, ref.label), fmt))
            owners.append(ref)
        if fmt == "json":
            flat.append((flag, suffixed(target, COMPARE_LABEL), "json"))
            owners.append(None)
    adapter_inputs = [("adapter", ref.path / "adapter_config.json") for ref in refs]
    checked = check_outputs(flat, inputs=[*inputs, *adapter_inputs])
    return list(zip(owners, checked, strict=True)), checked


def run_adapters(
    loaded: LoadedSpec,
    patterns: Sequence[str],
    *,
    requested: Requested,
    weights: Mapping[str, float],
    policy: GatePolicy | None = None,
    extra_inputs: Sequence[tuple[str, Path]] = (),
    show: bool = True,
) -> tuple[list[AdapterRun], list[GateDecision]]:
    """Run every adapter, print each report and the comparison, write the files."""
    from dlm_sway.cli.outputs import render_report, write_texts
    from dlm_sway.cli.progress import RichProgress
    from dlm_sway.core.gate import decide
    from dlm_sway.report.compare import compare_runs, summary_lines, to_table
    from dlm_sway.report.compare import to_json as compare_json
    from dlm_sway.suite.many_adapters import expand_adapters, run_many

    refs = expand_adapters(patterns)
    plan, _ = plan_outputs(requested, refs, [*spec_inputs(loaded), *extra_inputs])

    def started(i: int, ref: AdapterRef) -> None:
        err_console.print(
            f"[cyan]adapter {i + 1}/{len(refs)}: {escape(ref.label)}[/cyan] "
            f"[dim]({escape(str(ref.path))})[/dim]",
            soft_wrap=True,
        )

    with RichProgress() as progress:
        runs = run_many(
            loaded,
            refs,
            weights=weights,
            progress=progress,
            on_note=lambda line: err_console.print(escape(line), soft_wrap=True),
            on_adapter=started,
        )
    decisions = [decide(r.suite, r.score, policy) for r in runs] if policy is not None else []
    comparison = compare_runs([(r.ref.label, str(r.ref.path), r.suite, r.score) for r in runs])
    console = stdout_console()
    if show:
        for r in runs:
            console.rule(f"adapter {r.ref.label}", style="cyan")
            render(r.suite, r.score, console=console)
        console.print(to_table(comparison))
        for line in summary_lines(comparison):
            console.print(line, markup=False)
    gates: list[GateDecision | None] = [*decisions] if decisions else [None] * len(runs)
    by_label = {r.ref.label: (r, d) for r, d in zip(runs, gates, strict=True)}
    texts: list[tuple[Output, str]] = []
    for ref, out in plan:
        if ref is None:
            texts.append((out, compare_json(comparison) + "\n"))
            continue
        run, decision = by_label[ref.label]
        texts.append((out, render_report(out.fmt, run.suite, run.score, decision)))
    write_texts(texts, announce)
    return runs, decisions


__all__ = ["plan_outputs", "run_adapters", "suffixed"]
