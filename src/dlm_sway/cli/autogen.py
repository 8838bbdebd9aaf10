"""``sway autogen DOC``: write a calibrated, commented suite for a training document."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from dlm_sway.cli._common import err_console, user_errors, write_output
from dlm_sway.core.errors import SpecValidationError


def autogen_cmd(
    document: Annotated[Path, typer.Argument(help="Training document (.md, .txt or .dlm).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the spec.")] = Path(
        "sway.yaml"
    ),
    adapter: Annotated[
        str | None,
        typer.Option(help="PEFT adapter dir (default: the .dlm store's current adapter)."),
    ] = None,
    base: Annotated[
        str | None,
        typer.Option(help="Base model (default: the .dlm's base_model or adapter_config.json)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Build a calibrated suite from a training document and write it as commented YAML."""
    from dlm_sway.cli.check import infer_base
    from dlm_sway.cli.outputs import check_file_target, input_files
    from dlm_sway.core.documents import load_document
    from dlm_sway.suite.autogen import build_spec, render_yaml
    from dlm_sway.suite.loader import from_dict

    with user_errors():
        if str(out) != "-" and out.exists() and not force and out.is_file():
            raise SpecValidationError(
                "already exists; pass --force to overwrite it (nothing was written)",
                source=str(out),
            )
        doc = load_document(document)
        adapter = adapter or doc.adapter_path
        if not adapter:
            raise SpecValidationError(
                "no adapter: pass --adapter PATH (a .dlm finds its trained adapter in its "
                "store; train it first)",
                source=str(document),
            )
        adapter_path = Path(adapter).expanduser().resolve()
        check_file_target(
            "--out",
            out,
            inputs=[("document", document), *input_files("adapter", adapter_path)],
            example="sway.yaml",
        )
        base = base or doc.base_model or infer_base(adapter_path)
        out_dir = out.expanduser().resolve().parent
        spec, plan = build_spec(doc, base=base, adapter=str(adapter_path), out_dir=out_dir)
        from_dict(spec, source=str(out), base_dir=out_dir)  # never write an invalid spec
        write_output(render_yaml(spec, plan, document=doc), str(out), kind="spec")
    err_console.print(
        f"[dim]{len(plan.suite)} probes; next: sway run {escape(str(out))} --json run.json[/dim]",
        highlight=False,
    )


__all__ = ["autogen_cmd"]
