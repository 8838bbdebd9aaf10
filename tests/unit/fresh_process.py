"""Run a sway CLI command in a fresh interpreter and report which modules it imported."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence


def modules_after_cli(args: Sequence[str], names: Sequence[str]) -> list[str]:
    """Which of ``names`` are in ``sys.modules`` after ``sway ARGS`` exits 0 in a new process."""
    code = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from dlm_sway.cli.app import app\n"
        f"r = CliRunner().invoke(app, {list(args)!r})\n"
        "assert r.exit_code == 0, r.output\n"
        f"print(json.dumps(sorted(m for m in {list(names)!r} if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded
