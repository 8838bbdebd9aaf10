"""SIGKILL while reports are being written: never a partial or truncated report file.

A ``sway gate`` writing three reports is parked at a known point of the write
(half of one report's bytes on disk, or between the renames that publish them)
and killed with SIGKILL, which no handler can catch. Every target must then be
either its previous content or a complete new report; the only other files
allowed are temporaries named ``.<target name>.<random>.tmp`` (the documented
pattern, see :mod:`dlm_sway.cli.outputs`). A later run replaces the targets
normally with those temporaries still present.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

PROMPTS = ["The quick brown fox", "Alpha beta gamma delta", "Hello world", "Once upon a time"]
TARGETS = {"--json": "r.json", "--markdown": "r.md", "--junit": "r.xml"}
PREVIOUS = {name: f"previous {name}\n" for name in TARGETS.values()}
TEMP = re.compile(r"^\.(r\.json|r\.md|r\.xml)\.[A-Za-z0-9_]+\.tmp$")

#: Runs `sway ARGS...`, parking (marker file, then sleep) half-way into the temporary of the
#: N-th report ("stage N", 0-based) or after the N-th rename that publishes one ("commit N").
PARKED = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path

    marker, phase, index, args = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    calls = {"n": 0}

    def park():
        marker.write_text(str(os.getpid()))
        time.sleep(120)
        raise SystemExit("the test never killed this process")

    if phase == "stage":
        import tempfile
        real_mkstemp = tempfile.mkstemp
        def mkstemp(*a, **k):
            fd, name = real_mkstemp(*a, **k)
            if not os.path.basename(name).startswith(".sway-write-check"):
                if calls["n"] == index:
                    os.write(fd, b'{"half of a report": ')  # a write cut short
                    os.fsync(fd)
                    park()
                calls["n"] += 1
            return fd, name
        tempfile.mkstemp = mkstemp
    else:
        real_replace = os.replace
        def replace(src, dst, *a, **k):
            real_replace(src, dst, *a, **k)
            if str(src).endswith(".tmp"):
                calls["n"] += 1
                if calls["n"] == index:
                    park()
        os.replace = replace
    sys.argv = ["sway", *args]
    from dlm_sway.cli.app import main
    main()
    """
)


def spec_file(folder: Path) -> Path:
    data = {
        "version": 1,
        "models": {"ft": {"kind": "dummy", "base": "dummy-base", "options": {"strength": 1.0}}},
        "suite": [
            {"name": "calib", "kind": "null_adapter", "runs": 10},
            {"name": "topic", "kind": "delta_kl", "prompts": PROMPTS},
        ],
    }
    path = folder / "sway.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def gate_args(spec: Path, out: Path) -> list[str]:
    return ["gate", str(spec), *(a for f, n in TARGETS.items() for a in (f, str(out / n)))]


def complete(name: str, text: str) -> bool:
    """Whether ``text`` is a whole report of its kind (parses and ends where it should)."""
    try:
        if name.endswith(".json"):
            return "probes" in json.loads(text)
        if name.endswith(".xml"):
            return ET.fromstring(text).tag == "testsuite"
    except (ValueError, ET.ParseError):
        return False
    return text.startswith("# sway report") and "## Gate" in text and text.endswith("\n")


def check_folder(out: Path) -> dict[str, str]:
    """Each target's state (previous / new); fails on a partial target or an unknown file."""
    states = {}
    for path in out.iterdir():
        if path.name in PREVIOUS:
            text = path.read_text(encoding="utf-8")
            if text == PREVIOUS[path.name]:
                states[path.name] = "previous"
            else:
                assert complete(path.name, text), f"partial {path.name}:\n{text[-300:]}"
                states[path.name] = "new"
        else:
            assert TEMP.match(path.name), f"unexpected file {path.name}"
    assert set(states) == set(PREVIOUS), states
    return states


@pytest.mark.parametrize(("phase", "index"), [("stage", 1), ("stage", 2), ("commit", 1)])
def test_sigkill_mid_write_leaves_whole_files_only(tmp_path: Path, phase: str, index: int) -> None:
    spec = spec_file(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    for name, text in PREVIOUS.items():
        (out / name).write_text(text, encoding="utf-8")
    marker = tmp_path / "parked"
    proc = subprocess.Popen(
        [sys.executable, "-c", PARKED, str(marker), phase, str(index), *gate_args(spec, out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SWAY_DISABLE_NULL_CACHE": "1"},
    )
    deadline = time.monotonic() + 60
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before parking:\n{proc.communicate()}")
        assert time.monotonic() < deadline, "never reached the write"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    if phase == "stage":
        # Nothing is published before every report is staged: all previous, one half temp.
        for name, text in PREVIOUS.items():
            assert (out / name).read_text(encoding="utf-8") == text, f"{name} was published"
        temps = [p for p in out.iterdir() if TEMP.match(p.name)]
        assert temps, "the kill did not land mid-write"
    states = check_folder(out)
    if phase == "commit":
        assert list(states.values()).count("new") == index

    if (phase, index) != ("stage", 1):
        return
    # The next run publishes whole reports over everything, stray temporaries or not.
    rerun = subprocess.run(
        [sys.executable, "-c", "from dlm_sway.cli.app import main; main()", *gate_args(spec, out)],
        capture_output=True,
        text=True,
        env={**os.environ, "SWAY_DISABLE_NULL_CACHE": "1"},
        timeout=120,
    )
    assert rerun.returncode in (0, 1), rerun.stderr
    assert set(check_folder(out).values()) == {"new"}
