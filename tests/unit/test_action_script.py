"""The GitHub Action: ``scripts/action_gate.sh`` run for real on dummy-backend specs, with
fake ``GITHUB_STEP_SUMMARY`` / ``GITHUB_OUTPUT`` files, and the ``action.yml`` wiring."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "action_gate.sh"
PROMPTS = ["The quick brown fox", "Alpha beta gamma delta"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def write_spec(path: Path, options: dict[str, float]) -> Path:
    models = {"ft": {"kind": "dummy", "base": "b", "adapter": "builtin:x", "options": options}}
    suite = [
        {"name": "calib", "kind": "null_adapter", "runs": 10},
        {"name": "topic", "kind": "delta_kl", "prompts": PROMPTS},
    ]
    path.write_text(yaml.safe_dump({"version": 1, "models": models, "suite": suite}), "utf-8")
    return path


def run_action(tmp_path: Path, spec: str, **extra: str) -> tuple[int, str, str, dict[str, str]]:
    summary, outputs = tmp_path / "summary.md", tmp_path / "outputs.txt"
    env = {
        **os.environ,
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        "SWAY_SPEC": spec,
        "SWAY_REPORT_DIR": str(tmp_path / "report"),
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_OUTPUT": str(outputs),
        "NO_COLOR": "1",
        **extra,
    }
    proc = subprocess.run(
        ["bash", str(SCRIPT)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out: dict[str, str] = {}
    if outputs.exists():
        out = dict(line.split("=", 1) for line in outputs.read_text("utf-8").splitlines())
    text = summary.read_text("utf-8") if summary.exists() else ""
    return proc.returncode, proc.stderr, text, out


def test_a_passing_gate_writes_reports_summary_and_outputs(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "sway.yaml", {"strength": 1.0, "planted": 1.0})
    code, stderr, summary, outputs = run_action(tmp_path, str(spec))
    assert code == 0, stderr
    report = tmp_path / "report"
    for name in ("run.json", "junit.xml", "summary.md"):
        assert (report / name).is_file(), name
    assert summary.startswith(f"### sway gate: passed (exit 0) — `{spec}`")
    assert "## Gate" in summary and "PASSED" in summary  # the gate section of the markdown
    assert (report / "summary.md").read_text("utf-8") in summary
    assert outputs == {"exit-code": "0", "verdict": "passed", "report-dir": str(report)}
    # The HTML report is written, or the summary says plainly why it is not.
    assert (report / "report.html").is_file() or "HTML report not written" in summary


def test_a_failing_gate_exits_1_and_still_publishes(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "sway.yaml", {"strength": 0.0})
    code, stderr, summary, outputs = run_action(tmp_path, str(spec), SWAY_THRESHOLD="0.5")
    assert code == 1, stderr
    assert "gate FAILED" in stderr
    assert summary.startswith("### sway gate: failed (exit 1)")
    assert (tmp_path / "report" / "junit.xml").is_file()
    assert outputs["verdict"] == "failed" and outputs["exit-code"] == "1"


@pytest.mark.parametrize(
    ("spec", "words"),
    [("", "SWAY_SPEC is empty"), ("nowhere.yaml", "nowhere.yaml: no such file")],
)
def test_a_missing_spec_is_exit_2_with_a_message(tmp_path: Path, spec: str, words: str) -> None:
    code, stderr, summary, _ = run_action(tmp_path, spec)
    assert code == 2 and words in stderr


def test_a_spec_error_is_exit_2_and_said_on_the_summary(tmp_path: Path) -> None:
    bad = tmp_path / "sway.yaml"
    bad.write_text("version: 1\nsuite: []\n", "utf-8")
    code, stderr, summary, outputs = run_action(tmp_path, str(bad))
    assert code == 2, stderr
    assert "error:" in stderr
    assert summary.startswith("### sway gate: error (exit 2)")
    assert "No report was written" in summary
    assert outputs["verdict"] == "error"


def test_action_yml_runs_the_script_and_uploads_even_on_failure() -> None:
    action = yaml.safe_load((ROOT / "action.yml").read_text("utf-8"))
    assert action["runs"]["using"] == "composite"
    steps = action["runs"]["steps"]
    gate = next(s for s in steps if s.get("id") == "gate")
    assert "scripts/action_gate.sh" in gate["run"]
    assert gate["env"]["SWAY_SPEC"] == "${{ inputs.spec }}"
    install = next(s for s in steps if s.get("name") == "Install sway")
    assert "torch==${{ inputs.torch-version }}" in install["run"]
    assert "download.pytorch.org/whl/cpu" in install["run"]
    upload = next(s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact"))
    assert upload["if"].startswith("always()")
    assert action["inputs"]["spec"]["required"] is True
    assert set(action["outputs"]) == {"exit-code", "verdict", "report-dir"}
