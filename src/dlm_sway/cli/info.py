"""``sway list-probes`` and ``sway doctor``: what is registered and what is installed."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer


def probe_catalogue() -> list[dict[str, Any]]:
    """Every registered probe kind, read generically from the registry (plugins too)."""
    from dlm_sway.probes.base import registry

    return [
        {
            "kind": kind,
            "category": cls.category,
            "calibrated": cls.calibrated,
            "uncalibrated_reason": None if cls.calibrated else cls.uncalibrated_reason,
            # Calibrated only when null_adapter's calibrate_kinds names it (and why).
            "null_on_request": cls.null_on_request if cls.calibrated else None,
            "needs_model": cls.needs_backend,
            "summary": cls.summary(),
        }
        for kind, cls in sorted(registry().items(), key=lambda kv: (kv[1].category, kv[0]))
    ]


def list_probes_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List every registered probe kind: category, whether nulls calibrate it (and why not),
    whether it loads a model, summary."""
    from rich.markup import escape
    from rich.table import Table

    from dlm_sway.cli._common import SwayConsole

    rows = probe_catalogue()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="sway probes")
    table.add_column("kind", no_wrap=True)
    for col in ("category", "calibrated", "model", "summary"):
        table.add_column(col)
    notes: list[str] = []
    on_request: list[str] = []
    for row in rows:
        if not row["calibrated"]:
            notes.append(f"  {escape(row['kind'])}: {escape(row['uncalibrated_reason'])}")
        elif row["null_on_request"]:
            on_request.append(f"  {escape(row['kind'])}: {escape(row['null_on_request'])}")
        table.add_row(
            escape(row["kind"]),
            row["category"],
            "no (see below)"
            if not row["calibrated"]
            else "on request (see below)"
            if row["null_on_request"]
            else "yes",
            "yes" if row["needs_model"] else "no",
            escape(row["summary"]),
        )
    console = SwayConsole()
    console.print(table)
    if notes:
        console.print("not calibrated against null adapters:", *notes, sep="\n")
    if on_request:
        console.print(
            "calibrated only when null_adapter's calibrate_kinds names them:", *on_request, sep="\n"
        )


def doctor_report(*, deep: bool = False) -> dict[str, Any]:
    """Versions, every declared extra and whether it imports, caches, the demo model."""
    from dlm_sway.cli.doctor import doctor_report as build

    return build(deep=deep)


def doctor_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    deep: Annotated[
        bool,
        typer.Option("--deep", help="Also load the demo model for real and run one forward."),
    ] = False,
) -> None:
    """Show versions, extras (and whether they import), caches, and whether the demo model loads."""
    from dlm_sway.cli._common import stdout_console
    from dlm_sway.cli.doctor import render_lines

    report = doctor_report(deep=deep)
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    console = stdout_console()
    for line in render_lines(report):
        console.print(line)


__all__ = ["doctor_cmd", "doctor_report", "list_probes_cmd", "probe_catalogue"]
