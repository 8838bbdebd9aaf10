"""A standard output that cannot be written ends with one line and exit 2, never a
traceback and never exit 1 (which a CI reads as a failed gate)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")

SPEC = """models: {ft: {kind: dummy, base: x, adapter: "builtin:x", options: {strength: 1.0}}}
suite:
  - {name: nb, kind: null_adapter, runs: 10}
  - {name: d, kind: delta_kl, prompts: ["a b c", "d e f", "g h i", "j k l"]}
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["list-probes"],
        ["schema"],
        ["gate", "{spec}"],
        ["run", "{spec}", "--json", "-"],
    ],
)
def test_a_full_stdout_is_exit_2_with_one_line(tmp_path: Path, args: list[str]) -> None:
    with open("/dev/full", "w") as full:  # noqa: PTH123 — a device, not a path to manage
        _assert_unwritable(_sway(tmp_path, args, stdout=full))


@pytest.mark.parametrize("args", [["list-probes"], ["schema"], ["gate", "{spec}"]])
def test_a_closed_pipe_is_exit_2_not_a_failed_gate(tmp_path: Path, args: list[str]) -> None:
    """`sway gate spec.yaml | head -1`: the reader leaves early; click (and rich) would
    exit 1 on the broken pipe, which is what a failing gate exits with."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will ever read: every write meets EPIPE
    try:
        _assert_unwritable(_sway(tmp_path, args, stdout=write_end))
    finally:
        os.close(write_end)


def _sway(tmp_path: Path, args: list[str], *, stdout: Any) -> subprocess.CompletedProcess[str]:
    """The console script on the test spec, its stdout going to ``stdout``."""
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC, encoding="utf-8")
    argv = [a.replace("{spec}", str(spec)) for a in args]
    return subprocess.run(
        [sys.executable, "-c", "from dlm_sway.cli.app import main; main()", *argv],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SWAY_NULL_CACHE_DIR": str(tmp_path / "cache")},
        timeout=120,
    )


def _assert_unwritable(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "cannot write the output" in proc.stderr
