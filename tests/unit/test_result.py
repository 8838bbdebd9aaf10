"""safe_finalize never lets a non-finite number read as a verdict; with_duration keeps fields."""

from __future__ import annotations

import dataclasses
import math

import pytest

from dlm_sway.core.result import ProbeResult, Verdict, safe_finalize


def full_result(**overrides: object) -> ProbeResult:
    base: dict[str, object] = {
        "name": "dkl",
        "kind": "delta_kl",
        "verdict": Verdict.PASS,
        "score": 0.9,
        "raw": 0.12,
        "z_score": 4.2,
        "p_value": 0.001,
        "effect_ratio": 7.5,
        "base_value": 0.5,
        "ft_value": 0.6,
        "ci_95": (0.1, 0.14),
        "evidence": {"weight": 2.0, "per_prompt": [0.1, 0.14]},
        "message": "above noise",
    }
    base.update(overrides)
    return ProbeResult(**base)  # type: ignore[arg-type]


NUMBERS = ("score", "raw", "z_score", "p_value", "effect_ratio", "base_value", "ft_value", "ci_95")


class TestSafeFinalize:
    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
    def test_non_finite_raw_becomes_error_with_numbers_cleared(self, bad: float) -> None:
        out = safe_finalize(full_result(raw=bad))
        assert out.verdict is Verdict.ERROR
        for name in NUMBERS:
            assert getattr(out, name) is None, name
        assert "raw" in out.evidence["non_finite_inputs"]
        assert "non-finite raw" in out.message
        assert out.evidence["weight"] == 2.0  # the rest of the evidence survives

    def test_custom_critical_field(self) -> None:
        out = safe_finalize(full_result(z_score=math.nan), critical_fields=("raw", "z_score"))
        assert out.verdict is Verdict.ERROR
        assert out.raw is None and out.score is None

    @pytest.mark.parametrize("field", ["z_score", "p_value", "effect_ratio", "score", "ft_value"])
    def test_non_critical_nan_is_nulled_and_listed(self, field: str) -> None:
        out = safe_finalize(full_result(**{field: math.nan}))
        assert out.verdict is Verdict.PASS
        assert getattr(out, field) is None
        assert out.evidence["defensively_nulled"] == [field]
        assert out.raw == 0.12 and out.ci_95 == (0.1, 0.14)

    def test_non_finite_ci_is_nulled_and_listed(self) -> None:
        out = safe_finalize(full_result(ci_95=(0.1, math.inf)))
        assert out.verdict is Verdict.PASS
        assert out.ci_95 is None
        assert out.evidence["defensively_nulled"] == ["ci_95"]
        assert out.raw == 0.12

    def test_finite_result_unchanged(self) -> None:
        r = full_result()
        assert safe_finalize(r) == r
        assert "defensively_nulled" not in safe_finalize(r).evidence

    def test_none_and_bool_values_are_not_flagged(self) -> None:
        r = full_result(z_score=None, p_value=None, effect_ratio=None, ci_95=None)
        assert safe_finalize(r) == r

    def test_input_is_not_mutated(self) -> None:
        r = full_result(z_score=math.nan)
        safe_finalize(r)
        assert "defensively_nulled" not in r.evidence
        assert math.isnan(r.z_score or 0.0)


def test_with_duration_keeps_every_field() -> None:
    r = full_result(evidence={"weight": 1.0, "null": {"mean": 0.1}})
    timed = r.with_duration(1.25)
    assert timed.duration_s == 1.25
    for f in dataclasses.fields(ProbeResult):
        if f.name != "duration_s":
            assert getattr(timed, f.name) == getattr(r, f.name), f.name
    assert timed.ci_95 == (0.1, 0.14)
    assert timed.p_value == 0.001
    assert timed.effect_ratio == 7.5
    assert timed.evidence == {"weight": 1.0, "null": {"mean": 0.1}}
