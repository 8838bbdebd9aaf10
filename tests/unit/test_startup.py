"""``sway --help`` / ``--version`` stay instant: start-up imports typer and the commands, no more.

Timing is machine-dependent, so these tests check its cause instead: which modules a
fresh interpreter has imported after ``import dlm_sway.cli.app`` and after running
``--help``, ``--version`` and every ``<command> --help``. Each heavy dependency
(scipy alone cost ~0.6 s) and every probe module must still be absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fresh_process import modules_after_cli

#: Top-level packages that must not load at start-up (each costs 40 ms to seconds).
HEAVY = ("numpy", "scipy", "torch", "transformers", "peft", "pydantic", "yaml", "safetensors")

COMMANDS = ("run", "gate", "check", "report", "autogen", "demo", "list-probes", "doctor")

SCRIPT = textwrap.dedent(
    """
    import json, sys
    steps = {}

    def loaded():
        heavy = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
        sway = sorted(
            m for m in sys.modules
            if m.startswith(("dlm_sway.probes", "dlm_sway.suite", "dlm_sway.backends",
                             "dlm_sway.report", "dlm_sway.core.result", "dlm_sway.core.stats"))
        )
        return heavy + sway

    import dlm_sway.cli.app as cli_app
    steps["import"] = [0, loaded(), ""]
    from typer.testing import CliRunner
    for args in ARGS:
        result = CliRunner().invoke(cli_app.app, args)
        steps[" ".join(args)] = [result.exit_code, loaded(), result.output]
    print(json.dumps(steps))
    """
)


def _run(args: list[list[str]]) -> dict[str, list[object]]:
    code = f"HEAVY = {HEAVY!r}\nARGS = {args!r}\n" + SCRIPT
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "120", "NO_COLOR": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    steps: dict[str, list[object]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return steps


def test_importing_the_app_loads_no_heavy_module_and_no_probe() -> None:
    steps = _run([])
    assert steps["import"][1] == []


def test_help_and_version_load_no_heavy_module() -> None:
    steps = _run([["--help"], ["--version"]])
    for name in ("--help", "--version"):
        code, loaded, output = steps[name]
        assert code == 0, output
        assert loaded == [], name
    assert "list-probes" in str(steps["--help"][2])
    assert str(steps["--version"][2]).startswith("sway ")


@pytest.fixture(scope="module")
def command_helps() -> dict[str, list[object]]:
    """Every ``<command> --help`` in one interpreter: modules loaded accumulate."""
    return _run([[c, "--help"] for c in COMMANDS])


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_help_is_complete_and_light(
    command_helps: dict[str, list[object]], command: str
) -> None:
    """The commands' own ``--help`` still shows their options, from a light module.

    Typer (≥ 0.29) itself imports pydantic to build a command's parameters, so
    pydantic is allowed here; nothing of sway's heavy side is.
    """
    code, loaded, output = command_helps[f"{command} --help"]
    assert code == 0, output
    assert [m for m in loaded if m != "pydantic"] == [], command
    assert f"sway {command}" in str(output)
    assert "--help" in str(output)


def test_a_calibrated_run_does_not_import_scipy_stats(tmp_path: Path) -> None:
    """p-values and z come from scipy.special; scipy.stats alone costs ~0.3 s per run."""
    spec = tmp_path / "sway.yaml"
    spec.write_text(
        "models:\n  ft: {kind: dummy, base: b}\nsuite:\n"
        "  - {name: nulls, kind: null_adapter, runs: 5}\n"
        "  - {name: shift, kind: delta_kl, prompts: [alpha, beta, gamma]}\n"
    )
    out = tmp_path / "run.json"
    loaded = modules_after_cli(
        ["run", str(spec), "--json", str(out)], ["scipy.stats", "dlm_sway.core.calibration"]
    )
    assert loaded == ["dlm_sway.core.calibration"]
    shift = next(p for p in json.loads(out.read_text())["probes"] if p["name"] == "shift")
    assert shift["z_score"] is not None  # judged against the nulls, through scipy.special
