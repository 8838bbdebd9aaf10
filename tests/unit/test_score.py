"""Composite score: exact formula, weight handling and findings."""

from __future__ import annotations

import math
from dataclasses import fields, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.result import ProbeResult, SuiteResult, Verdict
from dlm_sway.probes import base
from dlm_sway.suite.score import (
    DEFAULT_WEIGHTS,
    compute,
    parse_weights_flag,
    validate_weights,
)

ATTR = "_test_score_attr_probe"
CALIB = "_test_score_calib_probe"
#: The category the runner stamps on each kind's results (typed; no registry lookup).
CATEGORY = {
    "null_adapter": "baseline",
    "delta_kl": "adherence",
    "adapter_ablation": "ablation",
    ATTR: "attribution",
    CALIB: "calibration",
}


def probe(
    name: str,
    kind: str,
    score: float | None,
    *,
    verdict: Verdict = Verdict.PASS,
    weight: float = 1.0,
    message: str = "",
    category: str | None = None,
) -> ProbeResult:
    typed = {"category": CATEGORY.get(kind, "") if category is None else category, "weight": weight}
    # Only the fields this ProbeResult has: the same tests then run (and fail for the
    # right reason) against a revision without typed category/weight.
    known = {f.name for f in fields(ProbeResult)}
    return ProbeResult(
        name=name,
        kind=kind,
        verdict=verdict,
        score=score,
        message=message,
        **{k: v for k, v in typed.items() if k in known},
    )


def suite(*probes: ProbeResult) -> SuiteResult:
    t = datetime(2025, 1, 1, tzinfo=UTC)
    return SuiteResult(
        spec_path="sway.yaml",
        started_at=t,
        finished_at=t,
        base_model_id="base",
        adapter_id="adapter",
        sway_version="0.1.0",
        probes=probes,
    )


def test_default_weights_match_the_documented_split() -> None:
    assert dict(DEFAULT_WEIGHTS) == {
        "adherence": 0.30,
        "attribution": 0.35,
        "calibration": 0.20,
        "ablation": 0.15,
        "baseline": 0.0,
    }
    with pytest.raises(TypeError):
        DEFAULT_WEIGHTS["adherence"] = 1.0  # type: ignore[index]


def test_exact_weighted_means_and_empty_category_excluded() -> None:
    result = compute(
        suite(
            probe("null", "null_adapter", 1.0),
            probe("kl_a", "delta_kl", 0.8),
            probe("kl_b", "delta_kl", 0.2, weight=3.0),
            probe("attr", ATTR, 0.9, weight=2),
            probe("abl", "adapter_ablation", 0.5),
        )
    )
    adherence = (0.8 * 1 + 0.2 * 3) / 4
    assert result.components["adherence"] == pytest.approx(adherence)
    assert result.components["attribution"] == pytest.approx(0.9)
    assert result.components["ablation"] == pytest.approx(0.5)
    assert result.components["baseline"] == pytest.approx(1.0)
    # calibration has no probe: reported as 0.0 but left out of the overall.
    assert result.components["calibration"] == 0.0
    expected = (0.30 * adherence + 0.35 * 0.9 + 0.15 * 0.5) / (0.30 + 0.35 + 0.15)
    assert result.overall == pytest.approx(expected)
    assert result.band == "healthy"
    assert result.weights == dict(DEFAULT_WEIGHTS)
    assert list(result.components) == list(DEFAULT_WEIGHTS)


def test_baseline_never_moves_the_overall() -> None:
    with_null = compute(suite(probe("null", "null_adapter", 1.0), probe("kl", "delta_kl", 0.4)))
    without = compute(suite(probe("kl", "delta_kl", 0.4)))
    assert with_null.overall == pytest.approx(0.4)
    assert without.overall == pytest.approx(0.4)


def test_the_typed_weight_counts_and_evidence_is_never_read() -> None:
    heavy = replace(probe("a", "delta_kl", 0.2, weight=3.0), evidence={"weight": 0.0})
    light = replace(probe("b", "delta_kl", 1.0), evidence={"weight": 50.0})
    result = compute(suite(heavy, light))
    assert result.components["adherence"] == pytest.approx((0.2 * 3 + 1.0) / 4)


def test_all_zero_probe_weights_use_denominator_one() -> None:
    result = compute(
        suite(probe("a", "delta_kl", 0.9, weight=0), probe("b", "delta_kl", 0.7, weight=0))
    )
    # Σ 0·s / 1 = 0, and the category still counts as present (it had probes).
    assert result.components["adherence"] == 0.0
    assert result.overall == 0.0
    assert any("adherence scores 0.00" in f for f in result.findings)


def test_skip_error_none_and_nan_scores_are_dropped() -> None:
    result = compute(
        suite(
            probe("ok", "delta_kl", 0.7),
            probe("skipped", "delta_kl", 0.0, verdict=Verdict.SKIP),
            probe("broken", "delta_kl", 0.0, verdict=Verdict.ERROR, message="boom"),
            probe("unscored", "delta_kl", None, verdict=Verdict.WARN),
            probe("nan", "delta_kl", math.nan, verdict=Verdict.WARN),
        )
    )
    assert result.components["adherence"] == pytest.approx(0.7)
    assert result.overall == pytest.approx(0.7)
    assert "1 probe(s) errored — see messages" in result.findings


def test_fail_and_warn_verdicts_still_count_toward_the_score() -> None:
    result = compute(
        suite(
            probe("f", "delta_kl", 0.1, verdict=Verdict.FAIL),
            probe("w", "delta_kl", 0.5, verdict=Verdict.WARN),
        )
    )
    assert result.components["adherence"] == pytest.approx(0.3)


def test_a_result_without_a_stamped_category_counts_as_adherence() -> None:
    result = compute(suite(probe("x", "no_such_kind_anywhere", 0.65)))
    assert result.components["adherence"] == pytest.approx(0.65)
    assert result.overall == pytest.approx(0.65)


def test_the_stamped_category_counts_even_for_a_kind_nobody_registered() -> None:
    """A saved run scores from its typed fields: the plugin that produced it need not
    be installed when it is re-read (the registry was asked before)."""
    plugin = probe("p", "third_party_probe", 0.9, category="attribution", weight=2.0)
    kl = probe("kl", "delta_kl", 0.4)
    assert "third_party_probe" not in base.registry()
    result = compute(suite(plugin, kl))
    assert result.components["attribution"] == pytest.approx(0.9)
    assert result.components["adherence"] == pytest.approx(0.4)
    assert result.overall == pytest.approx((0.35 * 0.9 + 0.30 * 0.4) / 0.65)


def test_a_saved_run_scores_identically_with_no_probe_registered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = suite(
        probe("null", "null_adapter", 1.0),
        probe("kl", "delta_kl", 0.8, weight=2.0),
        probe("attr", ATTR, 0.7),
        probe("cal", CALIB, 0.2, verdict=Verdict.FAIL),
        probe("abl", "adapter_ablation", 0.5),
    )
    before = compute(run)
    monkeypatch.setattr(base, "_REGISTRY", {})
    assert not base.registry()
    assert compute(run) == before


@pytest.mark.parametrize(
    "probes",
    [
        (),
        (probe("s", "delta_kl", None, verdict=Verdict.SKIP),),
        (probe("e", "delta_kl", None, verdict=Verdict.ERROR),),
    ],
)
def test_no_scorable_probe_gives_zero_and_noise(probes: tuple[ProbeResult, ...]) -> None:
    result = compute(suite(*probes))
    assert result.overall == 0.0
    assert result.band == "noise"
    assert all(value == 0.0 for value in result.components.values())
    assert any("no probe produced a score" in f for f in result.findings)


def test_partial_weights_merge_over_defaults() -> None:
    s = suite(probe("kl", "delta_kl", 0.4), probe("attr", ATTR, 1.0), probe("c", CALIB, 0.5))
    result = compute(s, {"attribution": 0.0})
    assert result.weights["attribution"] == 0.0
    assert result.weights["adherence"] == 0.30
    assert result.overall == pytest.approx((0.30 * 0.4 + 0.20 * 0.5) / (0.30 + 0.20))


def test_active_categories_with_zero_weight_give_zero_overall() -> None:
    result = compute(suite(probe("null", "null_adapter", 1.0)))
    assert result.components["baseline"] == 1.0
    assert result.overall == 0.0
    assert result.band == "noise"


def test_compute_rejects_invalid_weights() -> None:
    with pytest.raises(SpecValidationError, match="unknown score category"):
        compute(suite(), {"adherance": 1.0})


def test_findings_order_and_wording() -> None:
    result = compute(
        suite(
            probe("ok", "delta_kl", 0.9),
            probe("first_bad", ATTR, 0.1, verdict=Verdict.FAIL, message="no lift over nulls"),
            probe("second_bad", ATTR, 0.2, verdict=Verdict.FAIL, message="ignored"),
            probe("err1", "delta_kl", None, verdict=Verdict.ERROR),
            probe("err2", CALIB, None, verdict=Verdict.ERROR),
        )
    )
    assert result.findings == (
        f"first_bad ({ATTR}) failed: no lift over nulls",
        "attribution scores 0.15, under the 0.3 noise threshold",
        "2 probe(s) errored — see messages",
    )


def test_fail_without_message_has_no_dangling_colon() -> None:
    result = compute(suite(probe("bad", "delta_kl", 0.9, verdict=Verdict.FAIL)))
    assert result.findings[0] == "bad (delta_kl) failed"


def test_low_categories_are_named_in_order() -> None:
    result = compute(
        suite(
            probe("k", "delta_kl", 0.1),
            probe("a", ATTR, 0.9),
            probe("ab", "adapter_ablation", 0.25),
        )
    )
    assert result.findings == (
        "adherence scores 0.10, under the 0.3 noise threshold",
        "ablation scores 0.25, under the 0.3 noise threshold",
    )


def test_findings_are_capped_and_low_categories_give_way_to_the_error_count() -> None:
    probes = [probe(f"f{i}", "delta_kl", 0.0, verdict=Verdict.FAIL, message="x") for i in range(3)]
    probes += [
        probe("a", ATTR, 0.1),
        probe("c", CALIB, 0.2),
        probe("ab", "adapter_ablation", 0.05),
        probe("n", "null_adapter", 0.0),
        probe("e", "delta_kl", None, verdict=Verdict.ERROR),
    ]
    result = compute(suite(*probes))
    assert result.findings == (
        "f0 (delta_kl) failed: x",
        "adherence scores 0.00, under the 0.3 noise threshold",
        "attribution scores 0.10, under the 0.3 noise threshold",
        "calibration scores 0.20, under the 0.3 noise threshold",
        "1 probe(s) errored — see messages",
    )


def test_preflight_abort_is_a_finding_not_an_error_count() -> None:
    aborted = probe(
        "__preflight__",
        "preflight",
        None,
        verdict=Verdict.ERROR,
        message="suite aborted before any probe ran: non-finite logits in the ft view",
    )
    result = compute(suite(aborted))
    assert result.overall == 0.0
    assert result.band == "noise"
    assert result.findings == (
        "preflight check failed, no probe ran: "
        "suite aborted before any probe ran: non-finite logits in the ft view",
    )


# -- weight validation ---------------------------------------------------------------


def test_validate_weights_merges_and_normalises_types() -> None:
    merged = validate_weights({"ablation": 0, "baseline": 1}, source="defaults.score_weights")
    assert merged == {**DEFAULT_WEIGHTS, "ablation": 0.0, "baseline": 1.0}
    assert all(isinstance(v, float) for v in merged.values())


@pytest.mark.parametrize(
    ("weights", "pattern"),
    [
        ({"adherance": 0.5}, r"unknown score category 'adherance'.*adherence, attribution"),
        ({"ablation": -0.1}, r"'ablation'.*finite and >= 0"),
        ({"ablation": math.nan}, r"'ablation'.*finite"),
        ({"ablation": math.inf}, r"'ablation'.*finite"),
        ({"ablation": True}, r"'ablation' must be a number"),
        ({"ablation": "0.5"}, r"'ablation' must be a number"),
        (
            {"adherence": 0, "attribution": 0, "calibration": 0, "ablation": 0},
            r"every category weight is 0.*positive weight",
        ),
    ],
)
def test_validate_weights_rejects_bad_input_naming_the_source(
    weights: dict[str, Any], pattern: str
) -> None:
    with pytest.raises(SpecValidationError, match=pattern) as info:
        validate_weights(weights, source="defaults.score_weights")
    assert info.value.source == "defaults.score_weights"
    assert str(info.value).startswith("defaults.score_weights: ")


def test_parse_weights_flag_accepts_spacing_and_trailing_commas() -> None:
    parsed = parse_weights_flag(" attribution = 0.5 , ablation=0, ")
    assert parsed == {**DEFAULT_WEIGHTS, "attribution": 0.5, "ablation": 0.0}


def test_parse_weights_flag_matches_the_yaml_path() -> None:
    flag = parse_weights_flag("calibration=1e-1,baseline=0.05")
    yaml = validate_weights({"calibration": 0.1, "baseline": 0.05}, source="x")
    assert flag == yaml


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("", "no weights given"),
        (" , ", "no weights given"),
        ("attribution", "cannot read 'attribution'"),
        ("=0.5", "cannot read '=0.5'"),
        ("attribution=", "cannot read 'attribution='"),
        ("attribution=0.5=1", "cannot read"),
        ("attribution=lots", "'attribution' is not a number: 'lots'"),
        ("attribution=0.5,attribution=0.2", "given twice"),
        ("atribution=0.5", "unknown score category"),
        ("ablation=-1", "finite and >= 0"),
        ("ablation=nan", "finite"),
        ("adherence=0,attribution=0,calibration=0,ablation=0", "every category weight is 0"),
    ],
)
def test_parse_weights_flag_errors_name_the_flag(text: str, pattern: str) -> None:
    with pytest.raises(SpecValidationError, match=pattern) as info:
        parse_weights_flag(text)
    assert info.value.source == "--weights"
