"""An error-level health check fails the gate: no verdict of such a run can be staked on."""

from __future__ import annotations

from datetime import UTC, datetime

from dlm_sway.core.gate import GATE_FAIL, GATE_PASS, GatePolicy, decide
from dlm_sway.core.result import HealthCheck, ProbeResult, SuiteResult, SwayScore, Verdict


def _suite(*health: HealthCheck) -> SuiteResult:
    now = datetime.now(UTC)
    return SuiteResult(
        spec_path="s.yaml",
        started_at=now,
        finished_at=now,
        base_model_id="b",
        adapter_id="a",
        sway_version="0",
        probes=(ProbeResult(name="dkl", kind="delta_kl", verdict=Verdict.PASS, score=0.9),),
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
