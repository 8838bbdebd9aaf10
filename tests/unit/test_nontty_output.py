"""Output that is not a terminal: no hard wrap at 80 columns, no third-party progress bars."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

PROMPTS = ["The quick brown fox", "Alpha beta gamma delta", "Hello world, once again"]


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("nontty") / "sway.yaml"
    models = {"ft": {"kind": "dummy", "base": "b", "options": {"strength": 1.0, "planted": 1.0}}}
    suite = [
        {"name": "calib", "kind": "null_adapter", "runs": 10},
        {"name": "topic", "kind": "delta_kl", "prompts": PROMPTS},
        {"name": "scale", "kind": "adapter_ablation", "prompts": PROMPTS[:2]},
    ]
    path.write_text(yaml.safe_dump({"version": 1, "models": models, "suite": suite}), "utf-8")
    return path


def sway(*args: str | Path, columns: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real console script with stdout and stderr piped (neither is a terminal)."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "LINES")}
    env["NO_COLOR"] = "1"
    if columns is not None:
        env["COLUMNS"] = columns
    code = "from dlm_sway.cli.app import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_a_piped_report_keeps_each_probe_and_its_numbers_on_one_line(
    spec: Path, tmp_path: Path
) -> None:
    saved = tmp_path / "run.json"
    result = sway("run", spec, "--json", saved)  # the report, as a file
    assert result.returncode == 0, result.stderr
    piped = sway("run", spec)
    assert piped.returncode == 0, piped.stderr
    lines = piped.stdout.splitlines()
    for probe in json.loads(saved.read_text("utf-8"))["probes"]:
        row = [line for line in lines if line.strip().startswith(probe["name"] + " ")]
        assert len(row) == 1, (probe["name"], piped.stdout)
        # the whole verdict sentence, every number in it, sits on that one line
        assert probe["message"] in row[0], (probe["message"], row[0])
    status = [line for line in lines if line.startswith("wall ")]
    assert len(status) == 1 and "noise floor" in status[0]
    assert max(len(line) for line in lines) > 80  # nothing folded at 80
    # the header box fits its text instead of stretching to the wide layout
    assert max(len(line) for line in lines if line.startswith("╭")) < 120


def test_an_explicit_columns_is_still_honoured(spec: Path) -> None:
    result = sway("run", spec, columns="80")
    assert result.returncode == 0, result.stderr
    assert max(len(line.rstrip()) for line in result.stdout.splitlines()) <= 80


def test_compare_and_trace_tables_are_not_wrapped_when_piped(spec: Path, tmp_path: Path) -> None:
    run = tmp_path / "a.json"
    trace = tmp_path / "t.jsonl"
    assert sway("run", spec, "--json", run, "--trace", trace).returncode == 0
    compare = sway("compare", run, run)
    assert compare.returncode == 0, compare.stderr
    assert any(
        line.strip().startswith("topic") and "σ" in line for line in compare.stdout.splitlines()
    )
    summary = sway("trace", trace)
    assert summary.returncode == 0, summary.stderr
    first = summary.stdout.splitlines()[0]
    assert first.startswith("trace of ") and "cache hits" in first  # one line, not folded


BAR = textwrap.dedent(
    """
    import sys
    {setup}
    from tqdm.auto import tqdm
    for _ in tqdm(range(3), desc="Converting and de-quantizing"):
        pass
    """
)


def run_bar(setup: str, env: dict[str, str] | None = None) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    base.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    proc = subprocess.run(
        [sys.executable, "-c", BAR.format(setup=setup)],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=120,
        check=True,
    )
    return proc.stderr


def test_third_party_bars_are_silenced_in_a_non_interactive_cli_run(spec: Path) -> None:
    assert "Converting" in run_bar("")  # the control: tqdm draws into a pipe by default
    cli_first = (
        "from typer.testing import CliRunner\n"
        "from dlm_sway.cli.app import app\n"
        f"assert CliRunner().invoke(app, ['run', {str(spec)!r}]).exit_code == 0\n"
    )
    assert run_bar(cli_first) == ""  # `sway run` (stderr not a TTY) switched them off
    # a choice the user made in the environment is kept (tqdm reads "" as False)
    assert "Converting" in run_bar(cli_first, {"TQDM_DISABLE": ""})


def test_silencing_reaches_libraries_already_imported() -> None:
    pytest.importorskip("transformers")
    code = textwrap.dedent(
        """
        import transformers.utils.logging as hf_logging
        import huggingface_hub.utils as hub
        from dlm_sway.backends.quiet import silence_progress_bars
        silence_progress_bars()
        print(hf_logging.is_progress_bar_enabled(), hub.are_progress_bars_disabled())
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.split() == ["False", "True"]
