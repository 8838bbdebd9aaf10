"""Seconds from starting ``sway run`` until the first probe verdict is on the terminal.

Runs the CLI under a pseudo-terminal (progress and streamed verdicts only show on
a TTY) and timestamps every line; the first line that names a verdict
(PASS/FAIL/WARN/SKIP/ERROR followed by a probe name) is the first answer. A tree
without streaming prints its first verdict with the final report.

    python bench/first_verdict.py bench/specs/race.yaml [--tree /tmp/sway416]
"""

from __future__ import annotations

import argparse
import os
import pty
import re
import select
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERDICT_LINE = re.compile(r"^\s*(PASS|FAIL|WARN|SKIP|ERROR)\s+\S")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def first_verdict(tree: Path, spec: Path, *, timeout: float = 1800.0) -> tuple[float, float, str]:
    """(seconds to the first verdict line, seconds to exit, that line)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(tree / "src"),
        "SWAY_DISABLE_NULL_CACHE": "1",
        "SWAY_DISABLE_BASE_CACHE": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "COLUMNS": "160",
    }
    argv = [sys.executable, "-c", "from dlm_sway.cli.app import main; main()", "run", str(spec)]
    start = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:  # child
        os.chdir(spec.parent)
        os.execvpe(argv[0], argv, env)
    first: tuple[float, str] | None = None
    buf = b""
    while time.perf_counter() - start < timeout:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        buf += chunk
        *lines, rest = re.split(rb"[\r\n]", buf)
        buf = rest
        for raw in lines:
            line = ANSI.sub("", raw.decode("utf-8", "replace"))
            if first is None and VERDICT_LINE.match(line):
                first = (time.perf_counter() - start, line.strip())
    os.waitpid(pid, 0)
    total = time.perf_counter() - start
    if first is None:
        raise SystemExit(f"no verdict line seen in {total:.1f}s")
    return first[0], total, first[1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--tree", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    seconds, total, line = first_verdict(args.tree, args.spec.resolve())
    print(f"first verdict after {seconds:.1f}s (run exited after {total:.1f}s): {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
