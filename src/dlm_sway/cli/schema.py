"""``sway schema``: print (or write) the JSON Schema of the run files sway writes.

The schema is generated from the same pydantic models ``sway report`` validates
with (:func:`dlm_sway.report.json_read.run_json_schema`), so it cannot drift
from what the reader accepts. pydantic is imported only when the command runs:
``sway --help`` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dlm_sway.cli._common import user_errors, write_output
from dlm_sway.core.errors import SwayError


def schema_cmd(
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write the schema to this file instead of printing it."
        ),
    ] = None,
) -> None:
    """Print the JSON Schema of a run file (`sway run --json`, schema_version 2)."""
    with user_errors():
        from dlm_sway.report.json_read import run_json_schema

        text = json.dumps(run_json_schema(), indent=2, sort_keys=True) + "\n"
        if output is None:
            write_output(text, "-", kind="JSON Schema")
            return
        target = output.expanduser()
        if target.is_dir():
            raise SwayError(
                f"--output {output}: is a folder; give a file path such as "
                f"{target / 'sway-run.schema.json'}"
            )
        write_output(text, target, kind="JSON Schema")


__all__ = ["schema_cmd"]
