"""Holm and the health checks read typed result fields only, and Holm's words follow its numbers.

``result()`` passes only the fields the installed ``ProbeResult`` has and adds the
legacy ``evidence["null"]`` block, so the defect tests also run against a revision
that read evidence (and fail on their assertion there).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core import result as res
from dlm_sway.core.multiplicity import z_from_p
from dlm_sway.core.result import ProbeResult, Verdict
from dlm_sway.core.stats import NullStats
from dlm_sway.suite.evidence import apply_holm, health_checks

try:  # absent before the typed verdict layer: the defect tests then fail on their asserts
    from dlm_sway.core import judge
except ImportError:  # pragma: no cover - only when run against 416dd1a
    judge = None

HEADLINE = {
    Verdict.PASS: "above noise",
    Verdict.WARN: "real but below the bar",
    Verdict.FAIL: "indistinguishable from noise",
}


def summary(z_threshold: float = 3.0, *, degenerate: str | None = None, k: int = 10) -> Any:
    return res.NullSummary(
        construction="norm_matched",
        method="t_prediction",
        k=k,
        samples=tuple(0.01 * i for i in range(k)),
        z_threshold=z_threshold,
        degenerate=degenerate,
    )


def result(
    name: str,
    verdict: Verdict,
    p: float | None,
    *,
    z_threshold: float = 3.0,
    kind: str = "delta_kl",
    **typed: Any,
) -> ProbeResult:
    if hasattr(res, "NullSummary"):
        typed.setdefault("null", summary(z_threshold))
    typed.setdefault("headline", HEADLINE.get(verdict, ""))
    typed.setdefault("measured", f"mean JS of {name}")
    known = {f.name for f in fields(ProbeResult)}
    z = None if p is None else z_from_p(p)
    return ProbeResult(
        name=name,
        kind=kind,
        verdict=verdict,
        score=0.9 if verdict is Verdict.PASS else 0.2,
        z_score=z,
        p_value=p,
        message=f"{typed['headline']}: {typed['measured']}; original words",
        evidence={"null": {"z_threshold": z_threshold}},
        **{k: v for k, v in typed.items() if k in known},
    )


def _z_in(message: str) -> float:
    match = re.search(r"z_adj=([+-]\d+\.\d+)σ", message)
    assert match, message
    return float(match.group(1))


def _p_adj_in(message: str) -> str:
    match = re.search(r"p_adj=([0-9.e+-]+)", message)
    assert match, message
    return match.group(1)


def test_a_holm_demotion_says_what_its_numbers_say() -> None:
    """The defect: "not significant after Holm correction … (p_adj=0.0014, z=+2.99σ < 3):
    above noise" — a message contradicting itself and the table's Holm column."""
    out = apply_holm([result("a", Verdict.PASS, 0.0007), result("b", Verdict.PASS, 0.0007)])
    for r in out:
        assert r.p_adjusted == pytest.approx(0.0014)
        # p_adj < 0.05: real, but z_adj = 2.99 < 3 — below the bar, not "not significant".
        assert r.verdict is Verdict.WARN
        assert r.headline == "real but below the bar"
        assert r.message.startswith("real but below the bar: ")
        assert "not significant" not in r.message and "above noise" not in r.message
        assert _p_adj_in(r.message) == f"{r.p_adjusted:.2g}" == "0.0014"
        assert _z_in(r.message) < 3
        assert "across 2 calibrated probes" in r.message
        assert r.score is not None and r.score <= 0.5


def test_a_pass_whose_adjusted_p_reaches_alpha_fails_as_noise() -> None:
    out = apply_holm([result(n, Verdict.PASS, 0.02, z_threshold=2.0) for n in "abc"])
    for r in out:
        assert r.p_adjusted == pytest.approx(0.06)
        assert r.verdict is Verdict.FAIL
        assert r.message.startswith("indistinguishable from noise: ")
        assert _p_adj_in(r.message) == "0.06"
        assert r.score is not None and r.score <= 0.25


def test_a_pass_that_survives_carries_its_adjusted_p_in_its_words() -> None:
    out = apply_holm([result("strong", Verdict.PASS, 1e-6), result("weak", Verdict.FAIL, 0.4)])
    strong, weak = out
    assert strong.verdict is Verdict.PASS and strong.p_adjusted == pytest.approx(2e-6)
    assert strong.message.startswith("above noise: mean JS of strong; ")
    assert _p_adj_in(strong.message) == judge.format_p(2e-6)
    # A FAIL keeps its verdict and words; only the adjusted p is recorded.
    assert weak.verdict is Verdict.FAIL and weak.p_adjusted == pytest.approx(0.4)
    assert weak.message == result("weak", Verdict.FAIL, 0.4).message


def test_the_family_is_read_from_typed_fields_only() -> None:
    members = [
        result("pass", Verdict.PASS, 0.01),
        result("fail", Verdict.FAIL, 0.2),
        result("warn", Verdict.WARN, 0.03),
    ]
    outsiders = [
        # A forgetting probe's PASS claims "no harm": never part of the family.
        result(
            "harm", Verdict.PASS, 0.01, kind="external_perplexity", direction=res.Direction.HARM
        ),
        # No null comparison (fixed thresholds), even though the legacy evidence has one.
        result("fixed", Verdict.PASS, 0.01, null=None),
        result("null_baseline", Verdict.PASS, 0.01, kind="null_adapter"),
        result("skip", Verdict.SKIP, 0.01),
        result("error", Verdict.ERROR, 0.01),
        result("no_p", Verdict.PASS, None),
    ]
    out = {r.name: r for r in apply_holm(members + outsiders)}
    for r in outsiders:
        assert out[r.name] == r
    for r in members:
        assert out[r.name].p_adjusted is not None
    assert "across 3 calibrated probes" in out["pass"].message


def test_holm_leaves_a_run_without_a_family_untouched() -> None:
    plain = [result("fixed", Verdict.PASS, 0.01, null=None)]
    assert apply_holm(plain) == plain


@st.composite
def families(draw: st.DrawFn) -> list[ProbeResult]:
    out = []
    for i in range(draw(st.integers(1, 8))):
        verdict = draw(st.sampled_from([Verdict.PASS, Verdict.FAIL, Verdict.WARN]))
        p = draw(st.floats(1e-12, 1.0))
        bar = draw(st.sampled_from([1.645, 2.0, 3.0, 4.0]))
        out.append(result(f"p{i}", verdict, p, z_threshold=bar))
    return out


@settings(max_examples=250, deadline=None)
@given(before=families())
def test_holm_words_always_match_its_numbers(before: Sequence[ProbeResult]) -> None:
    after = apply_holm(list(before))
    rank = {Verdict.PASS: 2, Verdict.WARN: 1, Verdict.FAIL: 0}
    for old, new in zip(before, after, strict=True):
        assert new.p_adjusted is not None and old.p_value is not None
        assert new.p_adjusted >= old.p_value - 1e-15
        assert rank[new.verdict] <= rank[old.verdict]  # Holm never promotes
        if old.verdict is not Verdict.PASS:
            # Nothing is real after Holm when p_adj ≥ α: a WARN or a FAIL that called its
            # direction real becomes FAIL "indistinguishable from noise"; else unchanged.
            if new.p_adjusted >= judge.ALPHA:
                assert new.verdict is Verdict.FAIL
                assert new.headline == "indistinguishable from noise"
                assert new.message.startswith("indistinguishable from noise: ") or (
                    new.message == old.message and old.headline == new.headline
                )
            else:
                assert new.verdict is old.verdict and new.message == old.message
            continue
        assert new.headline == HEADLINE[new.verdict]
        assert new.message.startswith(f"{new.headline}: ")
        assert _p_adj_in(new.message) == judge.format_p(new.p_adjusted)
        z = _z_in(new.message)
        assert new.null is not None
        bar = new.null.z_threshold
        if new.verdict is Verdict.PASS:
            assert new.p_adjusted < judge.ALPHA and z >= bar - 0.005
        elif new.verdict is Verdict.WARN:
            assert new.p_adjusted < judge.ALPHA and z < bar + 0.005
        else:
            assert new.p_adjusted >= judge.ALPHA


# ---- health checks ------------------------------------------------------------------


def null_adapter_result(k: int, method: str = "t_prediction") -> ProbeResult:
    stats = NullStats.from_samples([0.01 * (i + 1) for i in range(k)], method=method)
    calibration = res.NullCalibration(by_rank={"rank_1.00": {"kl": stats}}, primary="rank_1.00")
    known = {f.name for f in fields(ProbeResult)}
    typed = {"calibration": calibration} if "calibration" in known else {}
    return ProbeResult(
        "null_baseline",
        "null_adapter",
        Verdict.PASS,
        score=1.0,
        # The legacy keys say the opposite: only the typed calibration may count.
        evidence={"runs": 50, "calibration": "t_prediction"},
        **typed,
    )


def codes(checks: Sequence[Any]) -> list[str]:
    return [c.code for c in checks]


def test_too_few_nulls_is_read_from_the_typed_calibration() -> None:
    checks = health_checks([null_adapter_result(3), result("kl", Verdict.PASS, 0.01)], [], None)
    (few,) = [c for c in checks if c.code == "too_few_nulls"]
    assert few.message.startswith("only 3 null adapter(s): to reach z ≥ 3 ")
    assert "runs: 10" in few.fix


def test_too_few_nulls_uses_the_highest_bar_of_the_run() -> None:
    checks = health_checks(
        [null_adapter_result(4), result("kl", Verdict.PASS, 0.01, z_threshold=4.0)], [], None
    )
    (few,) = [c for c in checks if c.code == "too_few_nulls"]
    assert "to reach z ≥ 4 " in few.message


def test_too_few_nulls_names_reference_z() -> None:
    checks = health_checks([null_adapter_result(3, "reference_z")], [], None)
    (few,) = [c for c in checks if c.code == "too_few_nulls"]
    assert "with reference_z" in few.message


def test_enough_nulls_raise_no_warning() -> None:
    assert "too_few_nulls" not in codes(health_checks([null_adapter_result(10)], [], None))


def test_a_degenerate_null_is_read_from_the_typed_summary_only() -> None:
    typed = result("kl", Verdict.PASS, None, null=summary(degenerate="the null has no spread"))
    legacy = ProbeResult(
        "abl", "adapter_ablation", Verdict.PASS, evidence={"null": {"degenerate": "no spread"}}
    )
    checks = health_checks([typed, legacy], [], None)
    (degenerate,) = [c for c in checks if c.code == "degenerate_null"]
    assert degenerate.message.startswith("kl: the null distribution is unusable (the null ")


def test_a_zero_norm_adapter_is_an_error_through_the_declared_protocol() -> None:
    backend = DummyDifferentialBackend(strength=0.0)
    assert isinstance(backend, res_scoring().AdapterNorms)
    assert "adapter_zero_norm" in codes(health_checks([], [], backend))
    live = DummyDifferentialBackend(strength=0.5)
    assert "adapter_zero_norm" not in codes(health_checks([], [], live))


class _Uncovered(DummyDifferentialBackend):
    def null_coverage(self) -> list[str]:
        return ["lm_head.weight", "embed_tokens.weight"]


def test_tensors_no_null_replaces_are_a_warning_through_the_declared_protocol() -> None:
    backend = _Uncovered()
    assert isinstance(backend, res_scoring().NullCoverage)
    (mismatch,) = [c for c in health_checks([], [], backend) if c.code == "null_structure_mismatch"]
    assert "2 non-LoRA tensor(s) (e.g. lm_head.weight)" in mismatch.message


def res_scoring() -> Any:
    from dlm_sway.core import scoring

    return scoring
