"""``--trace`` on the tiny in-process HF model: scoring calls carry real forwards and tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from dlm_sway.cli.app import app

PROMPTS = ["The quick brown fox", "She opened the door and", "The river flows past"]


@pytest.fixture(autouse=True)
def null_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWAY_NULL_CACHE_DIR", str(tmp_path / "null-cache"))


def test_trace_counts_the_forwards_of_each_view(tiny_assets: Any, tmp_path: Path) -> None:
    spec = tmp_path / "sway.yaml"
    models = {
        "ft": {"kind": "hf", "base": str(tiny_assets.base), "adapter": str(tiny_assets.adapter)}
    }
    suite = [
        {"name": "calib", "kind": "null_adapter", "runs": 3},
        {"name": "topic", "kind": "delta_kl", "prompts": PROMPTS},
    ]
    spec.write_text(yaml.safe_dump({"version": 1, "models": models, "suite": suite}), "utf-8")
    trace, run = tmp_path / "t.jsonl", tmp_path / "run.json"
    result = CliRunner().invoke(app, ["run", str(spec), "--trace", str(trace), "--json", str(run)])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in trace.read_text("utf-8").splitlines()]
    calls = [e for e in events if e["event"] == "score"]
    topic = [e for e in calls if e["probe"] == "topic"]
    assert {e["view"] for e in topic} >= {"base", "ft"}
    # Both views were scored in the calibration's shared forwards: topic's calls hit.
    assert all(e["hits"] == e["prompts"] and e["seconds"] >= 0 for e in topic)
    # A view's rows ran in its own call's forwards or rode along another view's (a sweep).
    scored = {v for e in calls if e["forwards"] for v in [e["view"], *e.get("shared", [])]}
    assert scored >= {"base", "ft"}
    assert any(e.get("shared") for e in calls)
    assert any(e["view"].startswith("null") for e in calls if e["probe"] == "calib")
    # every forward the backend counted went through a traced call
    forwards = json.loads(run.read_text("utf-8"))["backend_stats"]["forward_passes"]
    assert 0 < sum(e["forwards"] for e in calls) <= forwards
    summary = CliRunner().invoke(app, ["trace", str(trace), "--format", "json"])
    data = json.loads(summary.stdout)
    assert data["totals"]["forwards"] == sum(e["forwards"] for e in calls)
    assert data["totals"]["tokens"] > 0
