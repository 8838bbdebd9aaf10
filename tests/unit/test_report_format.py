"""Shared report formatters: fixed pins, and an em dash for anything unmeasured."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm_sway.core.result import NullCalibration, NullSummary, ProbeResult, SuiteResult, Verdict
from dlm_sway.report.format import (
    DASH,
    FALLBACK_CATEGORY,
    adapter_label,
    backend_line,
    collect_degenerate_nulls,
    collect_uncalibrated,
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
    result_category,
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
    # As the judge writes z into messages (``z=+1234.57σ``): no grouping, or the two differ.
    [(9.41, "+9.41σ"), (-0.5, "-0.50σ"), (1234.567, "+1234.57σ"), (3, "+3.00σ")],
)
def test_format_z(value: float, text: str) -> None:
    assert format_z(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.5, "p=0.5"),
        (0.003, "p=0.003"),
        (0.0022, "p=0.0022"),
        (0.0014, "p=0.0014"),
        (0.00042, "p=0.00042"),
        (2e-05, "p=2e-05"),
        (0.0, "p=0"),
        (1.0, "p=1"),
    ],
)
def test_format_p_is_the_judges_format(value: float, text: str) -> None:
    from dlm_sway.core.judge import format_p as judge_p

    assert format_p(value) == text == f"p={judge_p(value)}"


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


def summary(**overrides: Any) -> NullSummary:
    fields: dict[str, Any] = {
        "construction": "norm_matched",
        "method": "t_prediction",
        "k": 10,
        "samples": (0.1, 0.2),
        "z_threshold": 3.0,
    }
    return NullSummary(**{**fields, **overrides})


def test_rank_profile_needs_two_ranks_and_sorts_by_multiplier() -> None:
    assert rank_profile(None) == ""
    assert rank_profile(summary()) == ""
    assert rank_profile(summary(z_by_rank={"rank_1.00": 4.2})) == ""
    profile = rank_profile(
        summary(z_by_rank={"rank_2.00": 8.0, "rank_0.50": 2.5, "rank_1.00": 4.2})
    )
    assert profile == "+2.50σ @ 0.5x / +4.20σ @ 1x / +8.00σ @ 2x"
    nan_rank = summary(z_by_rank={"rank_1.00": math.nan, "rank_2.00": 1.0})
    assert rank_profile(nan_rank) == f"{DASH} @ 1x / +1.00σ @ 2x"


def test_probe_note_appends_rank_profile_from_the_typed_null() -> None:
    ranked = summary(z_by_rank={"rank_1.00": 4.2, "rank_0.50": 6.8})
    plain = ProbeResult("kl", "delta_kl", Verdict.PASS, message="kl 1.2 nats")
    assert probe_note(plain) == "kl 1.2 nats"
    # A z_by_rank left in evidence (v1's place for it) is not read.
    stray = ProbeResult(
        "kl", "delta_kl", Verdict.PASS, message="m", evidence={"z_by_rank": {"a": 1, "b": 2}}
    )
    assert probe_note(stray) == "m"
    with_rank = ProbeResult("kl", "delta_kl", Verdict.PASS, message="kl 1.2 nats", null=ranked)
    assert probe_note(with_rank) == "kl 1.2 nats | rank profile: +6.80σ @ 0.5x / +4.20σ @ 1x"
    bare = ProbeResult("kl", "delta_kl", Verdict.PASS, null=ranked)
    assert probe_note(bare) == "rank profile: +6.80σ @ 0.5x / +4.20σ @ 1x"


def _suite(*probes: ProbeResult, null_stats: dict[str, Any] | None = None) -> SuiteResult:
    """A suite of ``probes`` (``null_stats`` is SuiteResult's own provenance block)."""
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


def _null_step(failures: dict[str, str] | None = None) -> ProbeResult:
    return ProbeResult(
        "calib",
        "null_adapter",
        Verdict.PASS,
        score=1.0,
        calibration=NullCalibration(by_rank={}, primary="rank_1.00", failures=failures or {}),
        # v1 kept this list in evidence; reports no longer read it.
        evidence={"skipped_kinds": [{"kind": "ghost", "name": "ghost", "reason": "evidence"}]},
    )


def test_uncalibrated_entries_come_from_typed_fields() -> None:
    suite = _suite(
        _null_step({"kl2": "seed 1000: boom"}),
        ProbeResult("kl", "delta_kl", Verdict.PASS, null=summary()),
        ProbeResult("kl2", "delta_kl", Verdict.WARN, message="not calibrated: ..."),
        ProbeResult("abl", "adapter_ablation", Verdict.PASS),
        ProbeResult("prompt_collapse", "prompt_collapse", Verdict.FAIL),
        ProbeResult("gone", "delta_kl", Verdict.SKIP),
        ProbeResult("broke", "delta_kl", Verdict.ERROR),
    )
    assert collect_uncalibrated(suite) == [
        ("kl2 (delta_kl)", "seed 1000: boom"),
        ("abl (adapter_ablation)", ""),
        ("prompt_collapse", ""),
    ]


def test_without_a_null_step_nothing_is_listed_as_uncalibrated() -> None:
    """Every message then says "no null_adapter in the suite" itself."""
    evidence_only = ProbeResult(
        "calib", "null_adapter", Verdict.PASS, evidence={"skipped_kinds": ["delta_kl"]}
    )
    suite = _suite(evidence_only, ProbeResult("abl", "adapter_ablation", Verdict.PASS))
    assert collect_uncalibrated(suite) == []


def test_degenerate_nulls_come_from_each_results_null() -> None:
    suite = _suite(
        ProbeResult("kl", "delta_kl", Verdict.PASS, null=summary(degenerate="no spread")),
        ProbeResult("abl", "adapter_ablation", Verdict.PASS, null=summary()),
        ProbeResult("x", "delta_kl", Verdict.PASS),
        # SuiteResult.null_stats is provenance, not where the verdict's null lives.
        null_stats={"abl": {"mean": 0.1, "std": 1e-6, "n": 1, "degenerate": True}},
    )
    assert collect_degenerate_nulls(suite) == [("kl", "no spread")]


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


def test_category_is_the_stamped_one_not_the_registrys() -> None:
    # A kind nobody registered keeps the category its run stamped on it.
    plugin = ProbeResult("p", "third_party_probe", Verdict.PASS, score=0.9, category="ablation")
    assert result_category(plugin) == "ablation"
    # Even a registered kind: the result's own category wins (a saved run is a record).
    moved = ProbeResult("k", "delta_kl", Verdict.PASS, score=0.9, category="attribution")
    assert result_category(moved) == "attribution"
    assert result_category(ProbeResult("u", "x", Verdict.PASS)) == FALLBACK_CATEGORY
    suite = _suite(
        ProbeResult("n", "null_adapter", Verdict.PASS, score=1.0, category="baseline"),
        ProbeResult("a", "adapter_ablation", Verdict.SKIP, category="ablation"),
        ProbeResult("k", "delta_kl", Verdict.ERROR, category="adherence"),
        plugin,
    )
    assert scored_categories(suite) == {"baseline", "ablation"}
    assert not is_scored(ProbeResult("w", "delta_kl", Verdict.WARN, score=math.nan))
    assert is_scored(ProbeResult("w", "delta_kl", Verdict.WARN, score=0.0))


@pytest.mark.parametrize(
    ("p_value", "p_adjusted", "expected"),
    [
        (0.003, 0.009, "p=0.003 (Holm 0.009)"),
        (0.0004, 0.0012, "p=0.0004 (Holm 0.0012)"),
        (0.00047, 0.0014, "p=0.00047 (Holm 0.0014)"),
        (0.00001, 0.00005, "p=1e-05 (Holm 5e-05)"),
        (0.3, 1.0, "p=0.3 (Holm 1)"),
        (0.003, None, "p=0.003"),
        (0.003, math.nan, "p=0.003"),
        (None, None, DASH),
        (math.nan, 0.01, f"{DASH} (Holm 0.01)"),
    ],
)
def test_p_with_holm(p_value: Any, p_adjusted: Any, expected: str) -> None:
    assert format_p_holm(p_value, p_adjusted) == expected


@pytest.mark.parametrize(
    ("null", "expected"),
    [
        ({"construction": "norm_matched", "k": 10, "method": "t_prediction"}, "norm×10"),
        ({"construction": "init_scale", "k": 3, "method": "reference_z"}, "init×3 ref"),
        ({"construction": "permuted", "k": 19}, "perm×19"),
        ({"construction": "norm_matched", "k": 8, "method": "bootstrap"}, "norm×8 bootstrap"),
        ({"construction": "spectral", "k": 5}, "spec×5"),
        ({"construction": "norm_matched", "k": 0}, "norm"),
        ({"construction": "", "k": 4}, "null×4"),
        ({"construction": "norm_matched", "k": 1, "degenerate": "1 sample"}, "norm×1 unusable"),
        (None, DASH),
    ],
)
def test_null_marker_reads_the_typed_null(null: Any, expected: str) -> None:
    assert null_marker(None if null is None else summary(**null)) == expected


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


# --- the table and the judge's message print the same numbers ----------------------------


def _judged(raw: float, samples: list[float], *, log_scale: bool, z_bar: float) -> ProbeResult:
    """A result built the way probes build it: compare_to_null → judge_effect → typed fields."""
    from dlm_sway.core.calibration import compare_to_null
    from dlm_sway.core.judge import Bar, judge_effect, versus

    c = compare_to_null(raw, samples, log_scale=log_scale)
    j = judge_effect(
        raw, c, Bar(z=z_bar), what=f"mean KL {raw:.4g}", versus=versus("norm_matched", c.k)
    )
    return ProbeResult(
        "kl",
        "delta_kl",
        j.verdict,
        score=j.score,
        raw=raw,
        z_score=c.z,
        p_value=c.p_value,
        effect_ratio=c.effect_ratio,
        message=j.message,
        headline=j.headline,
        null=NullSummary("norm_matched", c.method, c.k, tuple(samples), z_bar, log_scale),
    )


def _row_cells(result: ProbeResult) -> dict[str, str]:
    from dlm_sway.core.result import SwayScore
    from dlm_sway.report.markdown import PROBE_HEADERS, to_markdown

    text = to_markdown(_suite(result), SwayScore(0.5, "partial", {}, {}))
    row = next(line for line in text.splitlines() if line.startswith("| kl "))
    cells = [c.strip() for c in row.strip().strip("|").split(" | ")]
    return dict(zip(PROBE_HEADERS, cells, strict=True))


positive = st.floats(min_value=1e-3, max_value=5.0, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(
    raw=positive,
    samples=st.lists(positive, min_size=3, max_size=20, unique=True),
    log_scale=st.booleans(),
    z_bar=st.sampled_from([2.0, 3.0, 4.0]),
    family=st.integers(min_value=1, max_value=12),
)
def test_table_z_and_p_appear_verbatim_in_the_judges_message(
    raw: float, samples: list[float], log_scale: bool, z_bar: float, family: int
) -> None:
    """PASS, WARN and FAIL alike: a reader never sees two different p's for one result."""
    from dlm_sway.core.judge import holm_rejudge

    result = _judged(raw, samples, log_scale=log_scale, z_bar=z_bar)
    if result.p_value is None:  # the null had no spread: no z or p anywhere
        assert _row_cells(result)["p (Holm)"] == DASH
        return
    cells = _row_cells(result)
    assert _verbatim(cells["p (Holm)"], result.message), (cells, result.message)
    assert _verbatim(f"z={cells['z']}", result.message), (cells, result.message)
    # After Holm: a PASS is re-judged and its message names the adjusted p the table prints.
    p_adj = min(1.0, result.p_value * family)
    adjusted = holm_rejudge(result, p_adj, family)
    holm_cell = _row_cells(adjusted)["p (Holm)"]
    assert holm_cell.startswith(cells["p (Holm)"] + " (Holm ")
    if result.verdict is Verdict.PASS:
        holm = holm_cell.removeprefix(cells["p (Holm)"] + " (Holm ").removesuffix(")")
        assert _verbatim(f"p_adj={holm}", adjusted.message), (holm_cell, adjusted.message)


def _verbatim(number: str, message: str) -> bool:
    """``number`` in ``message`` as a whole number (``p=0.002`` is not in ``p=0.0022``)."""
    return re.search(re.escape(number) + r"(?![0-9.e])", message) is not None
