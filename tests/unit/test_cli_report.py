"""``sway report`` and the report-file flags of ``run``/``gate``, end to end on the dummy backend.

The contract a user relies on: a saved ``--json`` run re-renders without a
model into exactly the markdown/JUnit/JSON the live run wrote, every command
agrees on the verdicts, and bad input exits 2 naming the file.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from dlm_sway.cli.app import app

PROMPTS = ["The quick brown fox", "Alpha beta gamma delta", "Hello | world", "Once upon a time"]
ENV = {"COLUMNS": "100", "NO_COLOR": "1", "FORCE_COLOR": None, "TTY_COMPATIBLE": None}


def spec_dict(options: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": 1,
        "models": {
            "ft": {
                "kind": "dummy",
                "base": "dummy-base",
                "adapter": "builtin:x",
                "options": options,
            }
        },
        "defaults": {"seed": 0},
        "suite": [
            {"name": "calib", "kind": "null_adapter", "runs": 10},
            {"name": "topic", "kind": "delta_kl", "prompts": PROMPTS},
            {"name": "scale", "kind": "adapter_ablation", "prompts": PROMPTS[:2]},
            {"name": "off", "kind": "delta_kl", "prompts": PROMPTS, "enabled": False},
        ],
    }


@pytest.fixture
def cli() -> Any:
    runner = CliRunner()

    def invoke(*args: str | Path) -> Any:
        return runner.invoke(app, [str(a) for a in args], env=ENV)

    return invoke


@pytest.fixture(params=["noop", "trained"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    options = {"strength": 0.0} if request.param == "noop" else {"strength": 1.0, "planted": 1.0}
    path = tmp_path / f"{request.param}.yaml"
    path.write_text(yaml.safe_dump(spec_dict(options)), encoding="utf-8")
    return path


@pytest.fixture
def saved(cli: Any, spec: Path, tmp_path: Path) -> dict[str, Path]:
    """One gate run that wrote every report format: the reference for re-rendering."""
    out = tmp_path / "out"
    paths = {"json": out / "run.json", "md": out / "run.md", "junit": out / "deep" / "run.xml"}
    result = cli(
        "gate", spec, "--json", paths["json"], "--markdown", paths["md"], "--junit", paths["junit"]
    )
    assert result.exit_code in (0, 1), result.output
    for kind, label in (("json", "JSON"), ("md", "markdown"), ("junit", "JUnit")):
        assert paths[kind].is_file()
        assert f"wrote {label} → {paths[kind]}" in " ".join(result.stderr.split())
    return paths


def assert_usage_error(result: Any, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, f"{needle!r} missing from:\n{result.output}"


# --- re-rendering equals the live run ------------------------------------------------------


@pytest.mark.parametrize(("fmt", "kind"), [("md", "md"), ("markdown", "md"), ("junit", "junit")])
def test_report_reproduces_what_the_live_run_wrote(
    cli: Any, saved: dict[str, Path], fmt: str, kind: str
) -> None:
    result = cli("report", saved["json"], "--format", fmt)
    assert result.exit_code == 0, result.output
    assert result.stdout == saved[kind].read_text(encoding="utf-8")


def test_report_json_round_trips_the_saved_file(cli: Any, saved: dict[str, Path]) -> None:
    result = cli("report", saved["json"], "--format", "json")
    assert result.exit_code == 0, result.output
    assert result.stdout == saved["json"].read_text(encoding="utf-8")


def test_run_markdown_matches_report_of_its_own_json(cli: Any, spec: Path, tmp_path: Path) -> None:
    md, js = tmp_path / "r.md", tmp_path / "r.json"
    result = cli("run", spec, "-m", md, "-j", js)
    assert result.exit_code == 0, result.output
    assert "sway —" in result.stdout  # the terminal report still prints
    rerendered = cli("report", js, "-f", "md")
    assert rerendered.stdout == md.read_text(encoding="utf-8")
    assert md.read_text(encoding="utf-8").startswith("# sway report\n")


def test_report_out_writes_the_file_atomically(
    cli: Any, saved: dict[str, Path], tmp_path: Path
) -> None:
    target = tmp_path / "new" / "dir" / "again.xml"
    result = cli("report", saved["json"], "-f", "junit", "-o", target)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert f"wrote JUnit → {target}" in " ".join(result.stderr.split())
    assert target.read_text(encoding="utf-8") == saved["junit"].read_text(encoding="utf-8")
    assert [p.name for p in target.parent.iterdir()] == ["again.xml"]  # no temp file left
    assert stat.S_IMODE(target.stat().st_mode) & 0o044  # readable like any other file


def test_report_terminal_prints_the_rich_report(cli: Any, saved: dict[str, Path]) -> None:
    result = cli("report", saved["json"])
    assert result.exit_code == 0, result.output
    assert "sway — dummy-base vs builtin:x" in result.stdout
    for name in ("calib", "topic", "scale", "off"):
        assert name in result.stdout


# --- verdicts agree across commands ---------------------------------------------------------


def test_run_gate_junit_and_report_agree_on_verdict_counts(
    cli: Any, spec: Path, tmp_path: Path
) -> None:
    live = json.loads(cli("run", spec, "--json", "-").stdout)
    counts = Counter(p["verdict"] for p in live["probes"])
    junit_path = tmp_path / "gate.xml"
    gate = cli("gate", spec, "--junit", junit_path, "--json", tmp_path / "gate.json")
    report = cli("report", tmp_path / "gate.json", "--format", "junit")
    assert report.exit_code == 0, report.output
    for text in (junit_path.read_text(encoding="utf-8"), report.stdout):
        root = ET.fromstring(text)
        # One case per probe plus the gate's own (sway.gate), failing exactly when the gate does.
        assert root.get("tests") == str(sum(counts.values()) + 1)
        assert root.get("failures") == str(counts["fail"] + (gate.exit_code == 1))
        assert root.get("errors") == str(counts["error"])
        assert root.get("skipped") == str(counts["skip"])
        gate_case = root.find("testcase[@classname='sway'][@name='gate']")
        assert gate_case is not None
        assert (gate_case.find("failure") is not None) == (gate.exit_code == 1)
    # The gate's exit code follows the same verdicts the JUnit file reports.
    assert (gate.exit_code == 1) == (
        counts["fail"] + counts["error"] > 0 or live["score"]["overall"] < 0.6
    )
    assert counts["skip"] == 1


def test_markdown_to_stdout_replaces_the_terminal_report(cli: Any, spec: Path) -> None:
    result = cli("run", spec, "--markdown", "-")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("# sway report\n")
    assert "sway —" not in result.stdout


def test_two_reports_on_stdout_is_a_usage_error(cli: Any, spec: Path) -> None:
    assert_usage_error(cli("gate", spec, "--json", "-", "--junit", "-"), "stdout")


# --- errors ---------------------------------------------------------------------------------


def test_unknown_format_is_a_usage_error(cli: Any, saved: dict[str, Path]) -> None:
    assert_usage_error(cli("report", saved["json"], "--format", "mdd"), "mdd")


def test_terminal_with_out_is_a_usage_error(
    cli: Any, saved: dict[str, Path], tmp_path: Path
) -> None:
    target = tmp_path / "term.txt"
    assert_usage_error(cli("report", saved["json"], "-o", target), "--out")
    assert not target.exists()


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ("{not json", ("broken.json", "invalid JSON", "line 1")),
        ("[1, 2]", ("broken.json", "schema_version")),
        (json.dumps({"schema_version": 99, "probes": []}), ("broken.json", "99")),
        (json.dumps({"schema_version": 1, "score": {"overall": 0.5}}), ("broken.json", "probes")),
        (
            json.dumps(
                {"schema_version": 1, "score": {"overall": 0.5}, "probes": [{"verdict": "meh"}]}
            ),
            ("broken.json", "probes[0]"),
        ),
        (b"\xff\xfe\x00garbage", ("broken.json", "cannot read")),
    ],
)
def test_invalid_result_files_exit_2_naming_the_file(
    cli: Any, tmp_path: Path, content: str | bytes, needles: tuple[str, ...]
) -> None:
    path = tmp_path / "broken.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    for fmt in ("terminal", "md", "junit", "json"):
        assert_usage_error(cli("report", path, "--format", fmt), *needles)


def test_missing_result_file_exits_2(cli: Any, tmp_path: Path) -> None:
    assert_usage_error(cli("report", tmp_path / "nowhere.json"), "nowhere.json", "not found")
    assert_usage_error(cli("report", tmp_path), str(tmp_path), "folder")


def test_unwritable_report_targets_exit_2(cli: Any, spec: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert_usage_error(cli("gate", spec, "--junit", blocker / "x.xml"), "x.xml")
    assert_usage_error(cli("run", spec, "--markdown", blocker / "x.md"), "x.md")


def test_report_never_imports_torch(saved: dict[str, Path]) -> None:
    script = textwrap.dedent(
        f"""
        import json, sys
        from typer.testing import CliRunner
        from dlm_sway.cli.app import app
        codes = [
            CliRunner().invoke(app, ["report", {str(saved["json"])!r}, "--format", fmt]).exit_code
            for fmt in ("terminal", "md", "junit", "json")
        ]
        print(json.dumps([codes, "torch" in sys.modules]))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    codes, torch_loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert codes == [0, 0, 0, 0]
    assert torch_loaded is False
