"""training_drift: a trainer's loss log → typed findings → a fixed-check verdict, no model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.loss_curve import Thresholds, analyse, spike_steps
from dlm_sway.core.result import Verdict
from dlm_sway.core.training_logs import discover, read_dlm_logs, read_trainer_state
from dlm_sway.probes.base import RunContext
from dlm_sway.probes.training_drift import TrainingDriftProbe, TrainingDriftSpec
from dlm_sway.suite.loader import from_dict, load_spec
from dlm_sway.suite.runner import run

MODELS = {"ft": {"kind": "dummy", "base": "dummy-base"}}


def healthy(n: int = 120, seed: int = 0) -> list[float]:
    """A decaying loss with small batch noise, like a real fine-tune's log."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return list(0.6 + 3.0 * np.exp(-t / 25.0) + rng.normal(0.0, 0.03, n))


def write_state(folder: Path, losses: list[float], evals: dict[int, float] | None = None) -> Path:
    """A trainer_state.json as transformers' Trainer writes it (NaN as the bare token)."""
    history: list[dict[str, Any]] = []
    for i, loss in enumerate(losses):
        step = (i + 1) * 10
        history.append(
            {
                "epoch": step / 400,
                "grad_norm": 1.0,
                "learning_rate": 2e-4,
                "loss": loss,
                "step": step,
            }
        )
        if evals and step in evals:
            history.append({"epoch": step / 400, "eval_loss": evals[step], "step": step})
    history.append({"step": len(losses) * 10, "train_loss": 1.0, "train_runtime": 12.0})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "trainer_state.json"
    path.write_text(json.dumps({"global_step": len(losses) * 10, "log_history": history}))
    return path


def run_probe(tmp: Path, **fields: Any) -> Any:
    spec = TrainingDriftSpec(name="curve", **fields)
    return TrainingDriftProbe().run(spec, RunContext(backend=None, adapter_dir=str(tmp)))


def test_healthy_curve_passes(tmp_path: Path) -> None:
    write_state(tmp_path, healthy())
    res = run_probe(tmp_path)
    assert res.verdict is Verdict.PASS, res.message
    assert res.raw is not None and res.raw < 0.3  # final / initial loss
    assert res.base_value is not None and res.ft_value is not None
    assert res.raw == pytest.approx(res.ft_value / res.base_value)
    assert "not calibrated against null adapters" in res.message
    assert res.null is None and res.z_score is None


def test_diverging_curve_fails_with_the_step_it_turned(tmp_path: Path) -> None:
    losses = healthy(60) + [0.7 + 0.05 * i for i in range(60)]  # falls, then climbs back
    write_state(tmp_path, losses)
    res = run_probe(tmp_path)
    assert res.verdict is Verdict.FAIL
    assert res.headline == "a fixed check failed"
    assert "giving back" in res.message and "max_rebound" in res.message
    kinds = [f["kind"] for f in res.evidence["findings"]]
    assert "divergence" in kinds


def test_a_spike_is_found_at_its_step_and_can_be_allowed(tmp_path: Path) -> None:
    losses = healthy()
    losses[80] += 1.5
    write_state(tmp_path, losses)
    res = run_probe(tmp_path)
    assert res.verdict is Verdict.FAIL
    assert "1 loss spike(s)" in res.message and "at step 810" in res.message
    assert res.evidence["spike_steps"] == [810]
    assert run_probe(tmp_path, max_spikes=1).verdict is Verdict.PASS


def test_smooth_exponential_decay_has_no_spikes() -> None:
    # The reference's "Δ > 3·rolling std" flagged nearly every step of this curve.
    y = 3.0 * np.exp(-np.arange(200) / 30.0) + 0.5
    assert spike_steps(np.arange(200), y, 6.0) == []


def test_a_flat_curve_is_no_learning(tmp_path: Path) -> None:
    write_state(tmp_path, [2.0 + 0.01 * math.sin(i) for i in range(50)])
    res = run_probe(tmp_path)
    assert res.verdict is Verdict.FAIL
    assert "never fell more than 2%" in res.message


def test_a_late_plateau_is_a_note_not_a_failure() -> None:
    losses = [(i, 3.0 * math.exp(-i / 3.0) + 0.5) for i in range(100)]
    report = analyse(tuple(losses), (), Thresholds())
    plateau = [f for f in report.findings if f.kind == "plateau"]
    assert plateau and not plateau[0].fails
    assert not any(f.fails for f in report.findings)


def test_overfit_when_eval_rises_while_train_falls(tmp_path: Path) -> None:
    evals = {100: 2.0, 300: 1.5, 500: 1.4, 700: 1.6, 900: 1.8, 1100: 2.0}
    write_state(tmp_path, healthy(), evals)
    res = run_probe(tmp_path)
    assert res.verdict is Verdict.FAIL
    assert "over-fitting" in res.message and "step 500" in res.message
    # the same eval curve still falling is fine
    write_state(tmp_path, healthy(), {100: 2.0, 500: 1.5, 900: 1.4, 1100: 1.39})
    assert run_probe(tmp_path).verdict is Verdict.PASS


def test_nan_loss_fails_naming_the_step(tmp_path: Path) -> None:
    losses = healthy()
    losses[40] = float("nan")
    path = write_state(tmp_path, losses)
    assert "NaN" in path.read_text()  # Python's json writes the bare token, as Trainer does
    res = run_probe(tmp_path)
    assert res.verdict is Verdict.FAIL
    assert "1 non-finite train loss value(s) (NaN/inf), first at step 410" in res.message


def test_too_few_points_warn_instead_of_judging(tmp_path: Path) -> None:
    write_state(tmp_path, [3.0, 2.0, 1.5])
    res = run_probe(tmp_path)
    assert res.verdict is Verdict.WARN
    assert "fewer than min_points 5" in res.message


def test_malformed_file_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "trainer_state.json").write_text('{"log_history": [{"loss": 1.0, "st')
    res = run_probe(tmp_path)
    assert res.verdict is Verdict.ERROR
    assert str(tmp_path / "trainer_state.json") in res.message and "not valid JSON" in res.message
    (tmp_path / "trainer_state.json").write_text('{"log_history": [{"loss": "low", "step": 1}]}')
    with pytest.raises(Exception, match=r"log_history\[0\]\.loss must be a number"):
        read_trainer_state(tmp_path / "trainer_state.json")


def test_nothing_found_is_a_skip_saying_where_it_looked(tmp_path: Path) -> None:
    res = run_probe(tmp_path)
    assert res.verdict is Verdict.SKIP
    assert "no training log found" in res.message and "checkpoint-*/" in res.message


def test_newest_checkpoint_wins(tmp_path: Path) -> None:
    write_state(tmp_path / "checkpoint-200", healthy(20))
    write_state(tmp_path / "checkpoint-1000", healthy(100))
    write_state(tmp_path / "checkpoint-300", healthy(30))
    log, _ = discover(str(tmp_path / "final"), None)
    assert log is not None and log.source.endswith("checkpoint-1000/trainer_state.json")
    assert len(log.train_loss) == 100


def test_dlm_store_logs_are_merged_and_a_cut_last_line_skipped(tmp_path: Path) -> None:
    logs = tmp_path / "store" / "logs"
    logs.mkdir(parents=True)
    lines = [json.dumps({"type": "banner", "run_id": 1})]
    lines += [
        json.dumps({"type": "step", "step": i + 1, "loss": v, "lr": 1e-4, "val_loss": None})
        for i, v in enumerate(healthy(40))
    ]
    (logs / "train-000001-20260418T101523.jsonl").write_text("\n".join(lines) + '\n{"type": "st')
    log = read_dlm_logs(logs)
    assert len(log.train_loss) == 40 and log.notes and "cut off" in log.notes[0]
    res = TrainingDriftProbe().run(
        TrainingDriftSpec(name="c"), RunContext(backend=None, dlm_store=str(tmp_path / "store"))
    )
    assert res.verdict is Verdict.PASS and "dlm_jsonl" in res.message
    (logs / "train-000002-20260419T101523.jsonl").write_text("{broken\n" + lines[1] + "\n")
    with pytest.raises(Exception, match=r"train-000002-20260419T101523\.jsonl:1: not valid JSON"):
        read_dlm_logs(logs)


def test_a_configured_path_that_is_missing_is_a_load_error(tmp_path: Path) -> None:
    data = {
        "models": MODELS,
        "suite": [{"name": "curve", "kind": "training_drift", "trainer_state": "nope/ts.json"}],
    }
    with pytest.raises(SpecValidationError, match=r"suite\[0\] \(curve\): trainer_state: .*nope"):
        from_dict(data, base_dir=tmp_path)


def test_relative_paths_resolve_against_the_spec_folder(tmp_path: Path) -> None:
    write_state(tmp_path / "run" / "checkpoint-50", healthy())
    spec = tmp_path / "sway.yaml"
    spec.write_text(
        "models:\n  ft: {kind: dummy, base: b}\nsuite:\n"
        "  - {name: curve, kind: training_drift, trainer_state: run/checkpoint-50}\n"
    )
    loaded = load_spec(spec)
    suite = run(loaded, None)
    (res,) = suite.probes
    assert res.verdict is Verdict.PASS, res.message
    assert res.evidence["source"] == str(tmp_path / "run" / "checkpoint-50" / "trainer_state.json")
    assert res.category == "calibration"
