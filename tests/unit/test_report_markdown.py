"""Markdown report: what a reviewer reads when a run is pasted into a PR or a CI summary."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from dlm_sway.core.result import (
    DeterminismReport,
    HealthCheck,
    NullCalibration,
    NullSummary,
    ProbeResult,
    SuiteResult,
    SwayScore,
    Verdict,
)
from dlm_sway.report.json_report import from_json, to_json
from dlm_sway.report.markdown import PROBE_HEADERS, cell, code, to_markdown
from dlm_sway.suite.score import compute

PER_SECTION = [
    {"section_id": "s1", "title": "Refund policy", "effective_sis": 0.31, "passed": True},
    {"section_id": "s2", "title": "Shipping | returns", "effective_sis": 0.01, "passed": False},
    {"section_id": "s3", "kind": "prose", "effective_sis": None, "passed": None},
]


def run() -> SuiteResult:
    start = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    probes = (
        ProbeResult(
            "calibrate",
            "null_adapter",
            Verdict.PASS,
            score=1.0,
            message="calibrated 2 probe(s) over 10 null seed(s)",
            duration_s=2.5,
            category="baseline",
            calibration=NullCalibration(by_rank={}, primary="rank_1.00"),
        ),
        ProbeResult(
            "moves_tokens",
            "delta_kl",
            Verdict.PASS,
            score=0.93,
            raw=1.7,
            z_score=9.4,
            p_value=0.00004,
            p_adjusted=0.0002,
            effect_ratio=170.0,
            ci_95=(1.5, 1.9),
            message="mean KL 1.700 nats",
            duration_s=0.75,
            category="adherence",
            null=NullSummary(
                construction="norm_matched",
                method="t_prediction",
                k=10,
                samples=(0.01,) * 10,
                z_threshold=3.0,
                z_by_rank={"rank_1.00": 9.4, "rank_0.50": 12.0},
            ),
        ),
        ProbeResult(
            "pipes|and\nlines",
            "delta_kl",
            Verdict.FAIL,
            score=0.1,
            raw=0.02,
            z_score=-0.3,
            p_value=0.6,
            p_adjusted=1.0,
            effect_ratio=1.02,
            message="a | b\nsecond line\r\nthird",
            duration_s=0.5,
            category="adherence",
            null=NullSummary(
                construction="init_scale",
                method="reference_z",
                k=3,
                samples=(0.02, 0.02, 0.02),
                z_threshold=3.0,
                degenerate="the null has\nno spread",
            ),
        ),
        ProbeResult(
            "sections",
            "section_internalization",
            Verdict.WARN,
            score=0.5,
            raw=0.16,
            evidence={"per_section": PER_SECTION},
            message="1 of 2 sections moved",
            duration_s=1.25,
            category="attribution",
        ),
        ProbeResult(
            "ablate",
            "adapter_ablation",
            Verdict.PASS,
            score=0.8,
            raw=0.95,
            evidence={
                "lambdas": [0.0, 0.5, 1.0, 1.25],
                "mean_divergence_per_lambda": [0.0, 0.2, math.nan, 0.63],
            },
            message="R²=0.950",
            duration_s=0.3,
            category="ablation",
        ),
        ProbeResult(
            "styled",
            "style_fingerprint",
            Verdict.SKIP,
            message="needs pip install 'dlm-sway[style]'",
        ),
        ProbeResult("broken", "delta_kl", Verdict.ERROR, message="ProbeError: boom"),
    )
    return SuiteResult(
        spec_path="sway.yaml",
        started_at=start,
        finished_at=start + timedelta(seconds=12.5),
        base_model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        adapter_id="/home/me/runs/exp1/checkpoint-500/adapter",
        sway_version="0.1.0",
        probes=probes,
        null_stats={"pipes|and\nlines": {"mean": 0.02, "std": 0.0, "n": 3, "degenerate": True}},
        determinism=DeterminismReport(class_="strict", seed=7),
        backend_stats={"forward_passes": 1200, "cache_hits": 30, "cache_misses": 10},
        noise_floor={"js_max": 1.2e-12, "prompts": 14},
        health=(
            HealthCheck("warn", "too_few_nulls", "only 3 nulls", "raise runs to 19"),
            HealthCheck("error", "adapter_norm_zero", "the adapter has zero norm"),
        ),
    )


def render(suite: SuiteResult | None = None, score: SwayScore | None = None) -> str:
    suite = suite if suite is not None else run()
    return to_markdown(suite, score if score is not None else compute(suite))


def section(text: str, heading: str) -> str:
    """The body of one ``## heading`` section."""
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def table_rows(block: str) -> list[list[str]]:
    """Cells of every row of the first table in ``block`` (escaped pipes kept in the cell)."""
    rows = []
    for line in block.splitlines():
        if line.startswith("| "):
            cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
            rows.append([c.strip() for c in cells])
    return rows


def test_summary_names_score_models_run_and_backend() -> None:
    suite = run()
    score = compute(suite)
    text = render(suite, score)
    assert text.startswith("# sway report\n")
    assert score.band_reason
    assert f"- **Overall:** {score.overall:.2f} `{score.band}` — {score.band_reason}\n" in text
    assert "- **Base:** `HuggingFaceTB/SmolLM2-135M-Instruct`" in text
    assert "- **Adapter:** `exp1/checkpoint-500/adapter`" in text
    assert "- **Wall:** 12.5s (started 2025-03-04 05:06:07 UTC)" in text
    assert "- **Determinism:** strict (seed=7)" in text
    assert "- **Noise floor:** JS ≤ 1.2e-12 over 14 prompts" in text
    assert "- **Backend:** forwards: 1,200, cache hit 75%" in text


def test_components_table_in_canonical_order_with_dashes_for_unscored() -> None:
    suite = run()
    score = compute(suite)
    rows = table_rows(section(render(suite, score), "Components"))
    assert rows[0] == ["category", "score", "weight", "note"]
    by_category = {row[0]: row for row in rows[2:]}
    assert list(by_category)[:2] == ["adherence", "attribution"]
    assert by_category["adherence"][1] == f"{score.components['adherence']:.2f}"
    assert by_category["calibration"][1:] == [
        "—",
        f"{score.weights['calibration']:g}",
        "no scored probes",
    ]
    assert by_category["baseline"][2:] == ["0", "informational"]


def test_probe_table_has_one_row_per_probe_with_shared_formatting() -> None:
    suite = run()
    rows = table_rows(section(render(suite), "Probes"))
    assert tuple(rows[0]) == PROBE_HEADERS
    body = rows[2:]
    assert len(body) == len(suite.probes)
    assert [row[2] for row in body] == [f"**{p.verdict.value.upper()}**" for p in suite.probes]
    moves = body[1]
    assert moves[:11] == [
        "moves_tokens",
        "`delta_kl`",
        "**PASS**",
        "0.93",
        "1.700",
        "×170.0",
        "[1.500, 1.900]",
        "+9.40σ",
        "p=4e-05 (Holm 0.0002)",
        "norm×10",
        "0.75s",
    ]
    assert moves[11] == "mean KL 1.700 nats \\| rank profile: +12.00σ @ 0.5x / +9.40σ @ 1x"
    broken = body[-1]
    assert broken[3:10] == ["—"] * 7  # never a fake 0.00 for an unmeasured number


def test_pipes_are_escaped_and_newlines_flattened_in_cells() -> None:
    text = render()
    rows = table_rows(section(text, "Probes"))
    header_width = len(PROBE_HEADERS)
    assert all(len(row) == header_width for row in rows)  # no cell split the row
    row = next(r for r in rows if r[0].startswith("pipes"))
    assert row[0] == "pipes\\|and lines"
    assert row[-1] == "a \\| b second line third"
    assert "\r" not in text


def test_no_nan_or_inf_leaks_into_the_document() -> None:
    lowered = render().lower()
    assert "nan" not in lowered
    assert "inf" not in lowered.replace("information", "")


def test_findings_health_uncalibrated_and_unusable_nulls() -> None:
    suite = run()
    score = compute(suite)
    text = render(suite, score)
    findings = section(text, "Top findings")
    for i, finding in enumerate(score.findings, start=1):
        assert f"{i}. {' '.join(finding.split())}" in findings
    health = section(text, "Health checks")
    assert "- **warn** `too_few_nulls`: only 3 nulls — raise runs to 19" in health
    assert "- **error** `adapter_norm_zero`: the adapter has zero norm\n" in health + "\n"
    # The SKIP says what to install in its own row; no section re-parses messages.
    assert "## Skipped" not in text
    probes = section(text, "Probes")
    assert "needs pip install 'dlm-sway[style]'" in probes
    uncalibrated = section(text, "Not null-calibrated")
    assert "- sections (section_internalization)\n" in uncalibrated
    assert "- ablate (adapter_ablation)" in uncalibrated
    assert "moves_tokens" not in uncalibrated and "styled" not in uncalibrated
    unusable = section(text, "Unusable null distributions")
    assert "- pipes|and lines: the null has no spread" in unusable


def test_per_section_evidence_becomes_a_table() -> None:
    detail = section(render(), "Details")
    assert "### sections (`section_internalization`)" in detail
    start = detail.index("Per section (3):")
    rows = table_rows(detail[start : detail.index("###", start)])
    assert rows[0] == ["section", "title", "effective sis", "passed"]
    assert rows[2:] == [
        ["`s1`", "Refund policy", "0.310", "yes"],
        ["`s2`", "Shipping \\| returns", "0.010", "**no**"],
        ["`s3`", "prose", "—", "—"],
    ]


def test_ablation_curve_becomes_a_lambda_table() -> None:
    detail = section(render(), "Details")
    block = detail[detail.index("### ablate") :]
    rows = table_rows(block)
    assert rows[0] == ["λ", "mean divergence"]
    assert rows[2:] == [["0", "0.000"], ["0.5", "0.200"], ["1", "—"], ["1.25", "0.630"]]


def test_probes_without_structured_evidence_get_no_detail() -> None:
    detail = section(render(), "Details")
    assert "### moves_tokens" not in detail and "### broken" not in detail


def test_optional_sections_are_absent_when_not_applicable() -> None:
    suite = SuiteResult(
        spec_path="",
        started_at=datetime(2025, 1, 1),  # naive: taken to be UTC
        finished_at=datetime(2025, 1, 1, 0, 0, 3),
        base_model_id="base",
        adapter_id="",
        sway_version="0.1.0",
        probes=(ProbeResult("kl", "delta_kl", Verdict.PASS, score=0.7, raw=0.5),),
    )
    text = render(suite)
    for absent in (
        "## Top findings",
        "## Health checks",
        "## Skipped",
        "## Not null-calibrated",
        "## Unusable",
        "## Details",
        "Noise floor",
        "Backend",
        "Determinism",
        "spec `",
    ):
        assert absent not in text
    assert "- **Adapter:** `(base only)`" in text
    assert "(started 2025-01-01 00:00:00 UTC)" in text
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_empty_suite_renders() -> None:
    suite = replace(run(), probes=(), health=(), null_stats={})
    text = render(suite)
    assert "_this run has no probe results_" in text


def test_saved_json_re_renders_identically() -> None:
    suite = run()
    score = compute(suite)
    restored = from_json(json.loads(to_json(suite, score)))
    assert to_markdown(*restored) == to_markdown(suite, score)


def test_code_spans_survive_backticks_and_cells_survive_pipes() -> None:
    assert code("plain") == "`plain`"
    assert code("a`b") == "``a`b``"
    assert code("`x`") == "`` `x` ``"
    assert code("") == "—"
    assert cell("a|b\n  c") == "a\\|b c"


def with_evidence(kind: str, evidence: dict[str, object]) -> SuiteResult:
    probe = ProbeResult("probe", kind, Verdict.PASS, score=0.8, raw=0.5, evidence=evidence)
    return replace(run(), probes=(probe,), null_stats={}, health=())


def test_section_table_prefers_the_value_the_verdict_is_decided_on() -> None:
    entries = [
        {
            "section_id": "intro",
            "title": "",
            "tag": "faq",
            "effective_sis": 0.4,
            "internalization": 0.2,
            "passed": True,
        }
    ]
    suite = with_evidence("section_internalization", {"per_section": entries})
    rows = table_rows(section(render(suite), "Details"))
    assert rows[0] == ["section", "title", "internalization", "passed"]
    assert rows[2] == ["`intro`", "faq", "0.200", "yes"]  # an empty title falls back to the tag


def test_cluster_breakdown_lists_size_mean_and_exemplars() -> None:
    suite = with_evidence(
        "cluster_kl",
        {
            "per_cluster_size": [3, 1],
            "per_cluster_mean": [0.25, math.nan],
            "cluster_exemplars": [["cats | dogs", "birds"], ["tax\nlaw"]],
        },
    )
    text = render(suite)
    rows = table_rows(section(text, "Details"))
    assert rows[0] == ["cluster", "size", "mean divergence", "exemplars"]
    assert rows[2:] == [["0", "3", "0.250", "cats \\| dogs; birds"], ["1", "1", "—", "tax law"]]
    restored = from_json(json.loads(to_json(suite, compute(suite))))
    assert to_markdown(*restored) == text


def test_long_detail_tables_are_capped() -> None:
    entries = [{"section_id": f"s{i}", "effective_sis": 0.1, "passed": True} for i in range(60)]
    detail = section(
        render(with_evidence("section_internalization", {"per_section": entries})), "Details"
    )
    assert len(table_rows(detail)) == 2 + 50
    assert "… and 10 more sections" in detail


def test_unregistered_kinds_render_under_their_recorded_category(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A saved run re-renders the same whatever is installed: no report asks the registry."""
    import io

    from rich.console import Console

    import dlm_sway.probes.base as base
    from dlm_sway.report.junit import to_junit
    from dlm_sway.report.terminal import render_terminal

    def refuse(*_: object) -> None:
        raise AssertionError("a report consulted the probe registry")

    monkeypatch.setattr(base, "registry", refuse)
    monkeypatch.setattr(base, "get_probe_class", refuse)
    suite = replace(
        run(),
        probes=(
            ProbeResult("mine", "my_plugin_probe", Verdict.PASS, score=0.9, category="attribution"),
            ProbeResult("yours", "other_plugin", Verdict.FAIL, score=0.1, category="ablation"),
        ),
        null_stats={},
    )
    score = SwayScore(
        0.5,
        "partial",
        {"adherence": 0.0, "attribution": 0.9, "ablation": 0.1},
        {"adherence": 0.3, "attribution": 0.35, "ablation": 0.15},
        band_reason="by the overall score 0.50",
    )
    rows = {r[0]: r for r in table_rows(section(to_markdown(suite, score), "Components"))[2:]}
    assert rows["attribution"][1] == "0.90" and rows["ablation"][1] == "0.10"
    assert rows["adherence"][1:] == ["—", "0.3", "no scored probes"]
    junit = to_junit(suite, score)
    assert 'name="component.attribution" value="0.9000"' in junit
    assert "component.adherence" not in junit
    console = Console(width=160, record=True, color_system=None, file=io.StringIO())
    render_terminal(suite, score, console=console)
    text = console.export_text()
    adherence = next(line for line in text.splitlines() if " adherence " in line)
    assert "no scored probes" in adherence
    attribution = next(line for line in text.splitlines() if " attribution " in line)
    assert "0.90" in attribution
