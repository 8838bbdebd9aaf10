"""``--trace`` and ``sway trace``: the events a run writes and the summary of where time went."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from dlm_sway.backends.instrumentation import CallRecord, Instrumentation
from dlm_sway.cli.app import app
from dlm_sway.report.trace_summary import read_trace, summarise
from dlm_sway.suite.trace import TraceWriter

PROMPTS = ["The quick brown fox", "Alpha beta gamma delta", "Hello world, once again"]
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


def cli(*args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "sway.yaml"
    models = {"ft": {"kind": "dummy", "base": "b", "options": {"strength": 1.0, "planted": 1.0}}}
    suite = [
        {"name": "calib", "kind": "null_adapter", "runs": 10},
        {"name": "topic", "kind": "delta_kl", "prompts": PROMPTS},
        {"name": "off", "kind": "delta_kl", "prompts": PROMPTS, "enabled": False},
    ]
    path.write_text(yaml.safe_dump({"version": 1, "models": models, "suite": suite}), "utf-8")
    return path


def fake_forward(instr: Instrumentation, tokens: int) -> Any:
    """A compute_misses that does what a real scorer does: one counted forward per call."""

    def compute(misses: list[int]) -> list[str]:
        instr.stats.record_forward(num_prompts=len(misses), real_tokens=tokens, batched=True)
        return [f"r{i}" for i in misses]

    return compute


def test_scoring_calls_report_their_forwards_tokens_and_hits() -> None:
    instr = Instrumentation()
    seen: list[CallRecord] = []
    instr.stats.on_call = seen.append
    instr.cached_batch("next_token_dist", "ft", ["a", "b", "a"], 8, fake_forward(instr, 12))
    instr.cached_batch("next_token_dist", "ft", ["a", "b"], 8, fake_forward(instr, 99))
    first, second = seen
    assert (first.view_id, first.prompts, first.hits, first.forwards, first.tokens) == (
        "ft",
        3,
        1,  # the duplicate "a" is served once
        1,
        12,
    )
    assert (second.hits, second.forwards, second.tokens, second.seconds) == (2, 0, 0, 0.0)
    stats = instr.stats.to_dict()
    assert "on_call" not in stats and json.dumps(stats)  # the listener never reaches reports


def test_run_trace_has_each_phase_and_probe_in_order(spec: Path, tmp_path: Path) -> None:
    trace, out = tmp_path / "t.jsonl", tmp_path / "run.json"
    result = cli("run", spec, "--trace", trace, "--json", out)
    assert result.exit_code == 0, result.output
    got = events(trace)
    assert got[0]["event"] == "trace" and got[0]["spec"] == str(spec)
    assert got[-1]["event"] == "done" and got[-1]["seconds"] > 0
    ends = [(e["what"], e["name"]) for e in got if e["event"] == "end"]
    assert ends == [
        ("phase", "load_model"),
        ("phase", "preflight"),
        ("phase", "noise_floor"),
        ("probe", "topic"),  # judged as soon as its nulls are in, inside calib
        ("probe", "calib"),
        ("probe", "off"),
    ]
    # Every forward is charged to the probe that asked for it, also the null's draws
    # after the nested entry has finished.
    assert {e["probe"] for e in got if e["event"] == "score"} <= {"calib", "topic", "noise_floor"}
    verdicts = {e["name"]: e["verdict"] for e in got if e["event"] == "end" and "verdict" in e}
    saved = {p["name"]: p["verdict"] for p in json.loads(out.read_text("utf-8"))["probes"]}
    assert verdicts == saved
    times = [e["t"] for e in got]
    assert times == sorted(times)


def test_gate_writes_a_trace_too(spec: Path, tmp_path: Path) -> None:
    trace = tmp_path / "gate.jsonl"
    result = cli("gate", spec, "--trace", trace)
    assert result.exit_code in (0, 1), result.output
    assert any(e["event"] == "end" and e.get("name") == "topic" for e in events(trace))


def test_trace_over_an_input_is_refused_before_anything_runs(spec: Path) -> None:
    before = spec.read_text("utf-8")
    result = cli("run", spec, "--trace", spec)
    assert result.exit_code == 2, result.output
    assert "--trace" in result.output and "overwrite an input" in result.output
    assert spec.read_text("utf-8") == before


def traced_calls(path: Path) -> None:
    """A trace with real score events: two probes, two views, one slow call."""
    instr = Instrumentation()
    writer = TraceWriter(path, spec="s.yaml")
    with writer.attached(instr):
        writer.probe_started("alpha", "delta_kl", 0)
        instr.cached_batch("next_token_dist", "base", ["a", "b"], 8, fake_forward(instr, 10))
        instr.cached_batch("next_token_dist", "ft", ["a", "b"], 8, fake_forward(instr, 10))
        writer.write("end", what="probe", name="alpha", verdict="pass", seconds=0.5)
        writer.probe_started("beta", "delta_kl", 1)
        instr.cached_batch("next_token_dist", "ft", ["a", "c"], 8, fake_forward(instr, 7))
        writer.write("end", what="probe", name="beta", verdict="fail", seconds=0.25)
    writer.close(seconds=1.0)
    assert instr.stats.on_call is None  # detached after the run


def test_summary_per_probe_per_view_and_slowest(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    traced_calls(path)
    summary = read_trace(path, slowest=2)
    alpha, beta = summary.sections["alpha"], summary.sections["beta"]
    assert (alpha.calls, alpha.forwards, alpha.tokens, alpha.seconds) == (2, 2, 20, 0.5)
    assert (beta.calls, beta.hits, beta.forwards, beta.tokens) == (1, 1, 1, 7)
    assert summary.views["ft"].forwards == 2 and summary.views["base"].forwards == 1
    assert summary.totals.forwards == 3 and summary.wall_seconds == 1.0
    slow = [e["seconds"] for e in summary.slowest]
    assert len(slow) == 2 and slow == sorted(slow, reverse=True)

    as_json = cli("trace", path, "--format", "json")
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert [s["name"] for s in data["sections"]] == ["alpha", "beta"]
    assert data["totals"]["tokens"] == 27
    text = cli("trace", path)
    assert text.exit_code == 0
    assert "per view" in text.stdout and "slowest scoring calls" in text.stdout
    assert "alpha" in text.stdout and "50%" in text.stdout  # 0.5 s of a 1.0 s run
    md = cli("trace", path, "--format", "md", "--slowest", "0")
    assert "## Per view" in md.stdout and "Slowest" not in md.stdout


def test_a_truncated_last_line_is_counted_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    traced_calls(path)
    with path.open("a", encoding="utf-8") as fh:
        fh.write('{"event": "score", "probe": "gam')
    summary = summarise(path.read_text("utf-8").splitlines())
    assert summary.bad_lines == 1 and summary.totals.forwards == 3


@pytest.mark.parametrize("content", [None, "", "not json\n"])
def test_a_file_that_is_not_a_trace_is_exit_2(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "t.jsonl"
    if content is not None:
        path.write_text(content, "utf-8")
    result = cli("trace", path)
    assert result.exit_code == 2, result.output
    assert str(path) in result.output and "Traceback" not in result.output
