"""An error-level health check fails the gate: no verdict of such a run can be staked on."""

from __future__ import annotations

from datetime import UTC, datetime

from dlm_sway.core.gate import GATE_FAIL, GATE_PASS, GatePolicy, decide
from dlm_sway.core.result import (
    Direction,
    HealthCheck,
    NullSummary,
    ProbeResult,
    SuiteResult,
    SwayScore,
    Verdict,
)

CALIBRATED = NullSummary(
    construction="norm_matched", method="t_prediction", k=10, samples=(), z_threshold=3.0
)


def _suite(*health: HealthCheck) -> SuiteResult:
    now = datetime.now(UTC)
    return SuiteResult(
        spec_path="s.yaml",
        started_at=now,
        finished_at=now,
        base_model_id="b",
        adapter_id="a",
        sway_version="0",
        probes=(
            ProbeResult(
                name="dkl", kind="delta_kl", verdict=Verdict.PASS, score=0.9, null=CALIBRATED
            ),
        ),
        health=health,
    )


SCORE = SwayScore(overall=0.9, band="healthy", components={}, weights={})


def test_a_health_error_fails_an_otherwise_passing_gate() -> None:
    partial = HealthCheck("error", "partial_adapter", "3 tensors did not attach", "re-save")
    decision = decide(_suite(partial), SCORE, GatePolicy(threshold=0.6))
    assert decision.exit_code == GATE_FAIL
    assert "partial_adapter" in decision.summary()


def test_health_warnings_alone_do_not_fail_the_gate() -> None:
    few = HealthCheck("warn", "too_few_nulls", "only 3 nulls", "runs: 10")
    assert decide(_suite(few), SCORE, GatePolicy(threshold=0.6)).exit_code == GATE_PASS


def _run(*probes: ProbeResult) -> SuiteResult:
    from dataclasses import replace

    return replace(_suite(), probes=probes)


def test_forgetting_probes_alone_verify_no_effect_exit_2() -> None:
    """A no-op adapter passes every forgetting probe: "no harm" is not a verified effect."""
    harm = ProbeResult(
        name="cd",
        kind="calibration_drift",
        verdict=Verdict.PASS,
        score=1.0,
        direction=Direction.HARM,
        null=CALIBRATED,
    )
    decision = decide(_run(harm), SCORE, GatePolicy(threshold=0.0))
    assert decision.exit_code == 2
    assert "only forgetting probes" in decision.summary()


def test_a_pass_on_fixed_thresholds_alone_does_not_pass_the_gate() -> None:
    """An uncalibrated PASS cannot tell a trained adapter from a random one of its size."""
    fixed = ProbeResult(name="pc", kind="prompt_collapse", verdict=Verdict.PASS, score=1.0)
    decision = decide(_run(fixed), SCORE, GatePolicy(threshold=0.0))
    assert decision.exit_code == GATE_FAIL
    assert "against null adapters" in decision.summary()
    calibrated = ProbeResult(
        name="dkl", kind="delta_kl", verdict=Verdict.PASS, score=0.9, null=CALIBRATED
    )
    assert decide(_run(fixed, calibrated), SCORE, GatePolicy(threshold=0.0)).exit_code == GATE_PASS
