"""Ctrl-C at any point of a run: exit 130, one line, no traceback, nothing written.

Each test starts a real ``sway`` process (the console-script entry point, in a
subprocess) and sends it SIGINT while it is parked at a known point: loading
the model, running a probe, or half-way through writing a report (the park is
a test double that signals readiness through a marker file). A final test
interrupts an unmodified ``sway run`` of a long dummy suite at a CPU-time point
well past start-up. After each: exit 130, exactly the documented line on
stderr, no ``Traceback``, no output file (a previous one untouched), and no
temporary file left in the output folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

MESSAGE = "interrupted: the run was stopped; nothing was written"
PROMPTS = ["The quick brown fox", "Alpha beta gamma delta", "Hello world", "Once upon a time"]

#: Runs `sway ARGS...` after parking one phase: it writes MARKER, then sleeps until signalled.
PARKED = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path

    marker, phase, args = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]

    def park():
        marker.write_text(str(os.getpid()))
        time.sleep(120)
        raise SystemExit("the test never signalled")

    if phase == "load":
        import dlm_sway.suite.build as build
        real = build.backend_from_spec
        def slow_load(model):
            park()
            return real(model)
        build.backend_from_spec = slow_load
    elif phase == "probe":
        from dlm_sway.probes.base import Probe, ProbeSpec
        class Sleeper(Probe):
            '''Test double: parks inside a probe.'''
            kind = "faults_sleeper"
            spec_cls = ProbeSpec
            needs_backend = False
            uncalibrated_reason = "a test double"
            def run(self, spec, ctx):
                park()
    elif phase == "write":
        import dlm_sway.cli.outputs as outputs
        def slow_write(fd, data):
            os.write(fd, data[: len(data) // 2])
            park()
        outputs.write_all = slow_write
    sys.argv = ["sway", *args]
    from dlm_sway.cli.app import main
    main()
    """
)


def spec_file(
    folder: Path, *extra: dict[str, Any], prompts: list[str] = PROMPTS, runs: int = 10
) -> Path:
    data = {
        "version": 1,
        "models": {"ft": {"kind": "dummy", "base": "dummy-base", "options": {"strength": 1.0}}},
        "suite": [
            {"name": "calib", "kind": "null_adapter", "runs": runs},
            {"name": "topic", "kind": "delta_kl", "prompts": prompts},
            *extra,
        ],
    }
    path = folder / "sway.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def env() -> dict[str, str]:
    return {**os.environ, "SWAY_DISABLE_NULL_CACHE": "1", "NO_COLOR": "1", "COLUMNS": "100"}


def wait_for(marker: Path, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"exited {proc.returncode} before parking:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("never reached the parking point")
        time.sleep(0.02)


def assert_interrupted(proc: subprocess.Popen[str], out_dir: Path) -> None:
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, stdout, stderr)
    assert "Traceback" not in stderr + stdout
    assert stderr.strip().splitlines() == [MESSAGE], stderr
    leftovers = sorted(p.name for p in out_dir.iterdir())
    assert leftovers == ["previous.json"], leftovers  # no new report, no temporary
    assert (out_dir / "previous.json").read_text() == "previous\n"


@pytest.mark.parametrize("phase", ["load", "probe", "write"])
def test_ctrl_c_at_any_phase_exits_130_and_writes_nothing(tmp_path: Path, phase: str) -> None:
    extra = [{"name": "sleeper", "kind": "faults_sleeper"}] if phase == "probe" else []
    spec = spec_file(tmp_path, *extra)
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.json").write_text("previous\n")
    marker = tmp_path / "parked"
    args = [
        "gate", str(spec), "--json", str(out / "previous.json"),
        "--markdown", str(out / "r.md"), "--junit", str(out / "r.xml"),
    ]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", PARKED, str(marker), phase, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    wait_for(marker, proc)
    proc.send_signal(signal.SIGINT)
    assert_interrupted(proc, out)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc for CPU time")
def test_ctrl_c_on_the_real_console_script(tmp_path: Path) -> None:
    """An unmodified `sway run` of a long suite, interrupted once start-up is long past."""
    script = Path(sys.executable).with_name("sway")
    if not script.exists():
        pytest.skip("the sway console script is not installed next to this python")
    prompts = [f"Prompt number {i} about topic {i % 7}" for i in range(240)]
    spec = spec_file(tmp_path, prompts=prompts, runs=100)  # about 7 s of CPU in all
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.json").write_text("previous\n")
    proc = subprocess.Popen(
        [str(script), "run", str(spec), "--json", str(out / "previous.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    # Start-up (imports, spec load) costs about 1 s of CPU; 2.5 s is inside the probes.
    deadline = time.monotonic() + 120
    while proc.poll() is None and cpu_seconds(proc.pid) < 2.5:
        assert time.monotonic() < deadline, "the run never used 2.5 s of CPU"
        time.sleep(0.05)
    assert proc.poll() is None, "the suite finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    assert_interrupted(proc, out)


#: Raises KeyboardInterrupt when the CLI's app module is imported: Ctrl-C landing while
#: the console script is still loading typer, rich and the probe registry.
INTERRUPT_AT_IMPORT = textwrap.dedent(
    """
    import sys
    from importlib.abc import MetaPathFinder

    class Interrupt(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "dlm_sway.cli.app":
                raise KeyboardInterrupt
            return None

    sys.meta_path.insert(0, Interrupt())
    from dlm_sway.cli import main
    main()
    """
)


def test_ctrl_c_while_the_cli_is_still_importing() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", INTERRUPT_AT_IMPORT, "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 130
    assert proc.stderr.strip() == MESSAGE
    assert "Traceback" not in proc.stderr
