"""Shared report formatters: fixed pins, and an em dash for anything unmeasured."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from dlm_sway.core.result import ProbeResult, SuiteResult, Verdict
from dlm_sway.report.format import (
    DASH,
    adapter_label,
    backend_line,
    category_of,
    collect_degenerate_null_kinds,
    collect_missing_extras,
    collect_null_opt_outs,
    count_missing_extra_skips,
    format_ci,
    format_duration,
    format_js,
    format_p,
    format_p_holm,
    format_percent,
    format_ratio,
    format_raw,
    format_score,
    format_z,
    is_scored,
    noise_floor_line,
    null_marker,
    probe_note,
    rank_profile,
    scored_categories,
)

NUMERIC_FORMATTERS: list[Callable[[Any], str]] = [
    format_score,
    format_raw,
    format_z,
    format_p,
    format_ratio,
    format_duration,
    format_percent,
    format_js,
]


@pytest.mark.parametrize("fmt", NUMERIC_FORMATTERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("value", [None, math.nan, math.inf, -math.inf])
def test_missing_or_non_finite_renders_as_em_dash(fmt: Callable[[Any], str], value: Any) -> None:
    assert DASH == "\u2014"
    assert fmt(value) == DASH


@pytest.mark.parametrize("ci", [None, (math.nan, 1.0), (0.1, math.inf)])
def test_ci_with_missing_bound_is_a_dash(ci: Any) -> None:
    assert format_ci(ci) == DASH


def test_zero_is_zero_not_a_dash() -> None:
    assert format_score(0.0) == "0.00"
    assert format_raw(0.0) == "0.000"
    assert format_z(0.0) == "+0.00σ"


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.0, "0.00"), (0.874, "0.87"), (0.875, "0.88"), (1, "1.00"), (0.999, "1.00")],
)
def test_format_score(value: float, text: str) -> None:
    assert format_score(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0123, "0.012"),
        (1.7, "1.700"),
        (-2.5, "-2.500"),
        (999.9994, "999.999"),
        (1234.5678, "1,234.568"),
        (-1234567.0, "-1,234,567.000"),
        (0.001, "0.001"),
        (0.000123, "1.23e-04"),
        (-4.5e-7, "-4.50e-07"),
    ],
)
def test_format_raw(value: float, text: str) -> None:
    assert format_raw(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(9.41, "+9.41σ"), (-0.5, "-0.50σ"), (1234.567, "+1,234.57σ"), (3, "+3.00σ")],
)
def test_format_z(value: float, text: str) -> None:
    assert format_z(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.5, "p=0.500"),
        (0.003, "p=0.003"),
        (0.001, "p=0.001"),
        (0.00042, "p=0.0004"),
        (0.0001, "p=0.0001"),
        (0.00009, "p<1e-4"),
        (0.0, "p<1e-4"),
        (1.0, "p=1.000"),
    ],
)
def test_format_p(value: float, text: str) -> None:
    assert format_p(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(12.34, "×12.3"), (1234.5, "×1,234.5"), (2.5, "×2.50"), (0.42, "×0.42"), (0.0003, "×3.0e-04")],
)
def test_format_ratio(value: float, text: str) -> None:
    assert format_ratio(value) == text


def test_format_ci() -> None:
    assert format_ci((0.01234, 1.5)) == "[0.012, 1.500]"
    assert format_ci((-1500.0, 2000.25)) == "[-1,500.000, 2,000.250]"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0.00s"),
        (4.2137, "4.21s"),
        (9.994, "9.99s"),
        (9.996, "10.0s"),
        (42.15, "42.1s"),
        (99.96, "100s"),
        (1234.4, "1,234s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_percent() -> None:
    assert format_percent(0.666) == "67%"
    assert format_percent(0) == "0%"


@pytest.mark.parametrize(
    ("adapter", "label"),
    [
        ("", "(base only)"),
        ("adapter", "adapter"),
        ("/home/me/runs/exp1/checkpoint-500/adapter", "exp1/checkpoint-500/adapter"),
        ("runs/exp1/", "runs/exp1"),
        ("C:\\runs\\a\\b\\c", "a/b/c"),
        ("/data/my runs/exp 1/adapter", '"my runs/exp 1/adapter"'),
    ],
)
def test_adapter_label(adapter: str, label: str) -> None:
    assert adapter_label(adapter) == label


def test_rank_profile_needs_two_ranks_and_sorts_by_multiplier() -> None:
    assert rank_profile({}) == ""
    assert rank_profile({"z_by_rank": {"rank_1.00": 4.2}}) == ""
    profile = rank_profile({"z_by_rank": {"rank_2.00": 8.0, "rank_0.50": 2.5, "rank_1.00": 4.2}})
    assert profile == "+2.50σ @ 0.5x / +4.20σ @ 1x / +8.00σ @ 2x"
    assert rank_profile({"z_by_rank": {1.0: math.nan, 2.0: 1.0}}) == f"{DASH} @ 1x / +1.00σ @ 2x"


def test_probe_note_appends_rank_profile() -> None:
    evidence = {"z_by_rank": {"rank_1.00": 4.2, "rank_0.50": 6.8}}
    assert probe_note("kl 1.2 nats", {}) == "kl 1.2 nats"
    assert probe_note("kl 1.2 nats", evidence) == (
        "kl 1.2 nats | rank profile: +6.80σ @ 0.5x / +4.20σ @ 1x"
    )
    assert probe_note("", evidence) == "rank profile: +6.80σ @ 0.5x / +4.20σ @ 1x"


def _suite(*probes: ProbeResult, null_stats: dict[str, Any] | None = None) -> SuiteResult:
    t = datetime(2025, 1, 1, tzinfo=UTC)
    return SuiteResult(
        spec_path="s.yaml",
        started_at=t,
        finished_at=t,
        base_model_id="b",
        adapter_id="a",
        sway_version="0",
        probes=probes,
        null_stats=null_stats or {},
    )


def test_missing_extras_come_from_skip_messages_only() -> None:
    suite = _suite(
        ProbeResult("a", "k", Verdict.SKIP, message="needs: pip install 'dlm-sway[hf]'"),
        ProbeResult("b", "k", Verdict.SKIP, message="pip install 'dlm-sway[semsim,hf]'"),
        ProbeResult("c", "k", Verdict.FAIL, message="pip install 'dlm-sway[ignored]'"),
        ProbeResult("d", "k", Verdict.SKIP, message="disabled in spec"),
    )
    assert collect_missing_extras(suite) == ["hf", "semsim"]
    assert count_missing_extra_skips(suite) == 2


def test_null_opt_outs_read_the_null_adapter_evidence() -> None:
    null = ProbeResult(
        "null",
        "null_adapter",
        Verdict.PASS,
        score=1.0,
        evidence={
            "skipped_kinds": [
                {"kind": "adapter_ablation", "name": "abl", "reason": "probe opted out"},
                {"kind": "delta_kl", "reason": "no finite raw"},
                {"kind": "", "name": "kl2", "reason": "seed 1000: boom"},
                "style_fingerprint",
            ]
        },
    )
    other = ProbeResult("x", "delta_kl", Verdict.PASS, evidence={"skipped_kinds": ["nope"]})
    assert collect_null_opt_outs(_suite(null, other)) == [
        ("abl (adapter_ablation)", "probe opted out"),
        ("delta_kl", "no finite raw"),
        ("kl2", "seed 1000: boom"),
        ("style_fingerprint", ""),
    ]


def test_degenerate_null_kinds_accept_bool_and_float_flags() -> None:
    suite = _suite(
        null_stats={
            "kl": {"mean": 0.1, "std": 1e-6, "n": 1, "degenerate": True},
            "abl": {"mean": 0.1, "std": 1e-6, "n": 3, "degenerate": 1.0},
            "fine": {"mean": 0.1, "std": 0.2, "n": 3, "degenerate": False},
            "old": {"mean": 0.1, "std": 0.2, "n": 3},
        }
    )
    assert collect_degenerate_null_kinds(suite) == ["abl", "kl"]


def test_backend_line_uses_counters_that_are_present() -> None:
    assert backend_line({}) == ""
    assert backend_line({"cache_hits": 0, "cache_misses": 0}) == ""
    stats = {
        "forward_passes": 1200,
        "scored_tokens": 45678,
        "cache_hits": 2,
        "cache_misses": 1,
        "batches_sent": 4,
        "batched_prompts": 30,
    }
    assert backend_line(stats) == (
        "forwards: 1,200, tokens: 45,678, cache hit 67%, batches: 4 (avg 7.5)"
    )


def test_category_lookup_and_scored_categories() -> None:
    assert category_of("delta_kl") == "adherence"
    assert category_of("adapter_ablation") == "ablation"
    assert category_of("null_adapter") == "baseline"
    assert category_of("not_a_registered_kind") == "adherence"
    suite = _suite(
        ProbeResult("n", "null_adapter", Verdict.PASS, score=1.0),
        ProbeResult("a", "adapter_ablation", Verdict.SKIP),
        ProbeResult("k", "delta_kl", Verdict.ERROR),
    )
    assert scored_categories(suite) == {"baseline"}
    assert not is_scored(ProbeResult("w", "delta_kl", Verdict.WARN, score=math.nan))
    assert is_scored(ProbeResult("w", "delta_kl", Verdict.WARN, score=0.0))


@pytest.mark.parametrize(
    ("p_value", "p_adjusted", "expected"),
    [
        (0.003, 0.009, "p=0.003 (Holm 0.009)"),
        (0.0004, 0.0012, "p=0.0004 (Holm 0.001)"),
        (0.00001, 0.00005, "p<1e-4 (Holm <1e-4)"),
        (0.00001, 0.0004, "p<1e-4 (Holm 0.0004)"),
        (0.3, 1.0, "p=0.300 (Holm 1.000)"),
        (0.003, None, "p=0.003"),
        (0.003, math.nan, "p=0.003"),
        (None, None, DASH),
        (math.nan, 0.01, f"{DASH} (Holm 0.010)"),
    ],
)
def test_p_with_holm(p_value: Any, p_adjusted: Any, expected: str) -> None:
    assert format_p_holm(p_value, p_adjusted) == expected


@pytest.mark.parametrize(
    ("null", "expected"),
    [
        ({"construction": "norm_matched", "k": 10, "method": "t_prediction"}, "norm×10"),
        ({"construction": "init_scale", "k": 3, "method": "reference_z"}, "init×3 ref"),
        ({"construction": "permuted", "k": 19, "method": "t_prediction"}, "perm×19"),
        ({"construction": "norm_matched", "k": 10}, "norm×10"),  # t prediction is the default
        ({"construction": "norm_matched", "k": 8.0, "method": "bootstrap"}, "norm×8 bootstrap"),
        ({"construction": "spectral", "k": 5}, "spec×5"),
        ({"construction": "norm_matched"}, "norm"),
        ({"construction": "norm_matched", "k": math.nan}, "norm"),
        ({"k": 4}, "null×4"),
        ({}, DASH),
        (None, DASH),
        ("norm_matched", DASH),
    ],
)
def test_null_marker(null: Any, expected: str) -> None:
    evidence = {} if null is None else {"null": null}
    assert null_marker(evidence) == expected


def test_js_values_are_readable_at_any_scale() -> None:
    assert format_js(1.234e-12) == "1.2e-12"
    assert format_js(0.0) == "0"
    assert format_js(0.01234) == "0.0123"


@pytest.mark.parametrize(
    ("floor", "expected"),
    [
        (
            {"js_max": 1.2e-12, "js_mean": 4e-13, "prompts": 14, "method": "batch_layout"},
            "noise floor: JS ≤ 1.2e-12 over 14 prompts",
        ),
        ({"js_max": 0.0, "prompts": 1}, "noise floor: JS ≤ 0 over 1 prompt"),
        ({"js_max": 2e-7}, "noise floor: JS ≤ 2.0e-07"),
        ({"js_max": 2e-7, "prompts": math.nan}, "noise floor: JS ≤ 2.0e-07"),
        ({}, ""),
        ({"js_max": None, "prompts": 14}, ""),
        ({"js_max": math.nan, "prompts": 14}, ""),
        ({"js_max": "tiny", "prompts": 14}, ""),
    ],
)
def test_noise_floor_line(floor: dict[str, Any], expected: str) -> None:
    assert noise_floor_line(floor) == expected
