"""A suite of only no-model probes (training_drift, gradient_ghost) never builds a backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fresh_process import modules_after_cli
from typer.testing import CliRunner

from dlm_sway.cli.app import app
from dlm_sway.probes.base import registry

pytest.importorskip("safetensors")

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "src" / "dlm_sway" / "demo" / "adapters"


def _spec(tmp_path: Path, adapter: str) -> Path:
    """An hf spec whose base model does not exist: any attempt to load it would fail."""
    losses = [3.0 * 0.97**i + 0.5 for i in range(60)]
    history = [{"loss": v, "step": 10 * (i + 1)} for i, v in enumerate(losses)]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    spec = tmp_path / "sway.yaml"
    spec.write_text(
        "models:\n"
        f"  ft: {{kind: hf, base: ./no-such-model, adapter: {adapter}}}\n"
        "suite:\n"
        "  - {name: undertrained, kind: gradient_ghost}\n"
        "  - {name: loss_curve, kind: training_drift, trainer_state: run}\n"
    )
    return spec


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a backend was built for a suite that needs none")


@pytest.fixture
def no_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    import dlm_sway.backends.registry as backend_registry
    import dlm_sway.suite.build as build

    monkeypatch.setattr(build, "backend_from_spec", _refuse)
    monkeypatch.setattr(backend_registry, "build_backend", _refuse)


def test_both_probes_declare_they_need_no_backend() -> None:
    reg = registry()
    assert not reg["training_drift"].needs_backend and not reg["gradient_ghost"].needs_backend


@pytest.mark.usefixtures("no_backends")
def test_run_and_gate_never_build_a_backend(tmp_path: Path) -> None:
    weak = _spec(tmp_path, str(DEMO / "weak"))
    out = tmp_path / "run.json"
    res = CliRunner().invoke(app, ["run", str(weak), "--json", str(out)])
    assert res.exit_code == 0, res.output
    probes = {p["name"]: p for p in json.loads(out.read_text())["probes"]}
    assert probes["undertrained"]["verdict"] == "fail"  # the 2-step demo adapter
    assert probes["loss_curve"]["verdict"] == "pass"
    # gate: the FAIL fails it (exit 1), still without a model
    res = CliRunner().invoke(app, ["gate", str(weak)])
    assert res.exit_code == 1, res.output
    assert "undertrained" in res.output
    # all healthy: these checks claim no effect, so the gate says nothing was verified (2)
    strong = tmp_path / "strong"
    strong.mkdir()
    res = CliRunner().invoke(app, ["gate", str(_spec(strong, str(DEMO / "strong")))])
    assert res.exit_code == 2, res.output
    assert "no effect was verified" in res.output


def test_no_model_library_is_imported(tmp_path: Path) -> None:
    """In a fresh process: neither transformers nor peft is even imported (and with no
    optimizer state, not torch either)."""
    spec = _spec(tmp_path, str(DEMO / "strong"))
    assert modules_after_cli(["run", str(spec)], ["torch", "transformers", "peft"]) == []
