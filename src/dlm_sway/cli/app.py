"""The ``sway`` Typer app. Subcommands live one per module; nothing heavy imports here."""

from __future__ import annotations

import contextlib
from typing import Annotated

import typer

from dlm_sway import __version__
from dlm_sway.cli.autogen import autogen_cmd
from dlm_sway.cli.check import check_cmd
from dlm_sway.cli.compare import compare_cmd
from dlm_sway.cli.demo import demo_cmd
from dlm_sway.cli.diff import diff_cmd
from dlm_sway.cli.info import doctor_cmd, list_probes_cmd
from dlm_sway.cli.report import report_cmd
from dlm_sway.cli.run import gate_cmd, run_cmd
from dlm_sway.cli.schema import schema_cmd
from dlm_sway.cli.trace import trace_cmd

app = typer.Typer(
    name="sway",
    help="Differential testing of LoRA fine-tunes: is the adapter's effect beyond noise?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sway {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """sway: did the adapter change the model the way you trained it, or is it noise?"""


app.command("run")(run_cmd)
app.command("gate")(gate_cmd)
app.command("check")(check_cmd)
app.command("report")(report_cmd)
app.command("autogen")(autogen_cmd)
app.command("demo")(demo_cmd)
app.command("list-probes")(list_probes_cmd)
app.command("doctor")(doctor_cmd)
app.command("schema")(schema_cmd)
app.command("compare")(compare_cmd)
app.command("diff")(diff_cmd)
app.command("trace")(trace_cmd)


def main() -> None:
    """The console script. Standard streams that cannot be written (a full disk behind
    ``> file``, a closed pipe) end the command with one line and exit 2, never a
    traceback and never exit 1, which a CI would read as a failed gate.

    Before anything loads, freed heap memory is kept for reuse (:mod:`.heap`).

    A finished command leaves with ``os._exit`` once its streams are flushed: every
    file it wrote is closed by then, and tearing down the interpreter after torch,
    transformers and peft are imported takes about a second that changes nothing.
    """
    import errno
    import logging
    import os
    import sys

    from dlm_sway.cli.heap import keep_freed_memory

    keep_freed_memory()
    try:
        try:
            app()
            code = 0
        except SystemExit as done:
            code = _exit_status(done.code)
        if _pipe_closed():
            raise BrokenPipeError(errno.EPIPE, "the output pipe was closed")
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EPIPE, errno.EIO, errno.EBADF):
            raise
        with contextlib.suppress(OSError):
            sys.stderr.write(f"error: cannot write the output: {exc.strerror or exc}\n")
            sys.stderr.flush()
        # Buffered text already refused by the stream must not fail again at exit.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        os._exit(2)
    logging.shutdown()
    os._exit(code)


def _pipe_closed() -> bool:
    """Whether click met a closed stdout pipe: it then wraps the streams to silence their
    flush and exits 1, which would read as a failed gate."""
    import sys

    return type(sys.stdout).__name__ == "PacifyFlushWrapper"


def _exit_status(code: object) -> int:
    """What the interpreter would exit with for ``SystemExit(code)``."""
    import sys

    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    sys.stderr.write(f"{code}\n")
    sys.stderr.flush()
    return 1


__all__ = ["app", "main"]
