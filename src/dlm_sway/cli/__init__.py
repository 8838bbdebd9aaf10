"""The ``sway`` command line. No torch at import time: ``sway --help`` is instant."""

from __future__ import annotations

#: The one line a Ctrl-C prints, wherever it lands.
INTERRUPTED_MESSAGE = "interrupted: the run was stopped; nothing was written"


def main() -> None:
    """The console script. The CLI's own imports take a moment (typer, rich, the probe
    registry); Ctrl-C during them ends like Ctrl-C anywhere else: one line, exit 130,
    no traceback."""
    try:
        from dlm_sway.cli.app import main as sway
    except KeyboardInterrupt:
        import os
        import sys

        sys.stderr.write(f"{INTERRUPTED_MESSAGE}\n")
        sys.stderr.flush()
        os._exit(130)
    sway()
