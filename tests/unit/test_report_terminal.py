"""Terminal report: what a user reads in the console after a run."""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from rich.console import Console

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
from dlm_sway.core.stats import NullStats
from dlm_sway.report.json_report import from_json, to_json
from dlm_sway.report.terminal import HEALTH_STYLES, VERDICT_STYLES, render_terminal
from dlm_sway.suite.score import compute

LONG_NOTE = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike "
    "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
)


HEALTH = (
    HealthCheck(
        "warn",
        "too_few_nulls",
        "only 3 null adapters: the p-values rest on a rough t approximation",
        "raise the null_adapter probe's runs to 19 or more",
    ),
    HealthCheck("error", "adapter_norm_zero", "the adapter's update has zero norm"),
    HealthCheck("info", "noise_floor", "the noise floor is far below every effect", ""),
)


def run() -> SuiteResult:
    start = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    probes = (
        ProbeResult(
            "calibrate",
            "null_adapter",
            Verdict.PASS,
            score=1.0,
            message="calibrated 1 probe(s) over 3 null seed(s)",
            duration_s=2.5,
            category="baseline",
            calibration=NullCalibration(
                by_rank={"rank_1.00": {"moves_tokens": NullStats.from_samples([0.01, 0.012])}},
                primary="rank_1.00",
                failures={"flat": "seed 1000: no finite null raw"},
            ),
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
                log_scale=True,
                z_by_rank={"rank_1.00": 9.4, "rank_0.50": 12.0},
            ),
        ),
        ProbeResult(
            "wordy",
            "delta_kl",
            Verdict.FAIL,
            score=0.1,
            raw=0.02,
            z_score=-0.3,
            p_value=0.6,
            p_adjusted=1.0,
            effect_ratio=1.02,
            ci_95=(0.01, 0.03),
            message=LONG_NOTE,
            duration_s=0.5,
            category="adherence",
            null=NullSummary(
                construction="init_scale",
                method="reference_z",
                k=3,
                samples=(0.02, 0.03, 0.01),
                z_threshold=3.0,
            ),
        ),
        ProbeResult(
            "flat",
            "external_perplexity",
            Verdict.WARN,
            raw=1.2,
            message="not calibrated: the null adapters could not be measured for this probe",
            duration_s=0.3,
            category="calibration",
        ),
        ProbeResult(
            "lumpy",
            "cluster_kl",
            Verdict.PASS,
            score=0.6,
            raw=0.4,
            message="above threshold: clusters differ; null unusable (no spread)",
            duration_s=0.3,
            category="adherence",
            null=NullSummary(
                construction="norm_matched",
                method="t_prediction",
                k=1,
                samples=(0.2,),
                z_threshold=3.0,
                degenerate="only 1 null sample: need at least 2 (raise runs:)",
            ),
        ),
        ProbeResult(
            "ablate",
            "adapter_ablation",
            Verdict.SKIP,
            message="needs pip install 'dlm-sway[hf]' for [bold]scaling[/bold]",
            duration_s=0.01,
            category="ablation",
        ),
        ProbeResult(
            "broken",
            "delta_kl",
            Verdict.ERROR,
            raw=math.nan,
            message="ProbeError: boom",
            duration_s=0.02,
            category="adherence",
        ),
    )
    return SuiteResult(
        spec_path="sway.yaml",
        started_at=start,
        finished_at=start + timedelta(seconds=12.5),
        base_model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        adapter_id="/home/me/runs/exp1/checkpoint-500/adapter",
        sway_version="0.1.0",
        probes=probes,
        null_stats={
            "moves_tokens": {"mean": 0.01, "std": 0.002, "n": 3, "degenerate": False},
        },
        determinism=DeterminismReport(class_="strict", seed=7),
        backend_stats={
            "forward_passes": 1200,
            "scored_tokens": 45678,
            "cache_hits": 30,
            "cache_misses": 10,
        },
        noise_floor={"js_max": 1.2e-12, "js_mean": 3e-13, "prompts": 14, "method": "batch_layout"},
        health=HEALTH,
    )


def render(suite: SuiteResult, score: SwayScore | None = None, *, width: int = 200) -> str:
    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    render_terminal(suite, score if score is not None else compute(suite), console=console)
    return console.export_text()


def test_report_shows_every_probe_verdict_and_finding() -> None:
    suite = run()
    score = compute(suite)
    text = render(suite, score)
    for result in suite.probes:
        assert result.name in text
        assert result.kind in text
        assert result.verdict.value.upper() in text
    assert "top findings:" in text
    for i, finding in enumerate(score.findings, start=1):
        assert f"{i}. {finding}" in text
    assert "wordy (delta_kl) failed" in text
    assert "1 probe(s) errored — see messages" in text


def test_header_panel_names_models_score_band_and_components() -> None:
    suite = run()
    score = compute(suite)
    text = render(suite, score)
    assert "sway — HuggingFaceTB/SmolLM2-135M-Instruct vs exp1/checkpoint-500/adapter" in text
    assert score.band_reason  # the band rules always name the rule that decided
    flat = " ".join(text.split())
    assert f"overall: {score.overall:.2f} [ {score.band} ] {score.band_reason}" in flat
    assert "(informational, weight=0)" in text
    baseline = next(line for line in text.splitlines() if "baseline" in line)
    assert "1.00" in baseline and "██████████" in baseline
    adherence = next(line for line in text.splitlines() if " adherence " in line)
    filled = round(score.components["adherence"] * 10)
    assert "█" * filled + "░" * (10 - filled) in adherence
    # No probe scored under calibration: a dash, not a fake 0.00.
    calibration = next(line for line in text.splitlines() if "calibration" in line)
    assert "—" in calibration and "0.00" not in calibration
    assert "no scored probes" in calibration


def test_probe_columns_use_the_shared_formatters() -> None:
    text = render(run())
    row = next(line for line in text.splitlines() if "moves_tokens" in line)
    for cell in ("0.93", "1.700", "×170.0", "[1.500, 1.900]", "+9.40σ", "p=4e-05", "0.75s"):
        assert cell in row
    assert "rank profile: +12.00σ @ 0.5x / +9.40σ @ 1x" in " ".join(text.split())


def test_missing_and_non_finite_numbers_are_dashes_never_nan() -> None:
    text = render(run())
    assert "nan" not in text.lower()
    assert "inf" not in text.lower().replace("info", "")
    row = next(line for line in text.splitlines() if line.lstrip().startswith("broken"))
    cells = row.split()
    assert cells[2] == "ERROR"
    assert cells[3:10] == ["—"] * 7  # score, raw, effect, ci95, z, p, null: all unmeasured
    assert cells[10] == "0.02s"
    assert "0.00 " not in row


def test_messages_print_verbatim_not_as_markup() -> None:
    text = render(run())
    assert "pip install 'dlm-sway[hf]' for [bold]scaling[/bold]" in text


def test_long_notes_wrap_and_are_never_truncated() -> None:
    for width in (140, 100, 80, 60):
        text = render(run(), width=width)
        assert "…" not in text, width
        words = set(text.split())
        assert set(LONG_NOTE.split()) <= words, width
        assert max(len(line.rstrip()) for line in text.splitlines()) <= width


def test_narrow_console_stacks_probes_instead_of_crushing_columns() -> None:
    text = render(run(), width=80)
    assert "moves_tokens (delta_kl)  score 0.93" in text
    assert "z +9.40σ" in text and "ci95 [1.500, 1.900]" in text
    wide = render(run(), width=200)
    assert "moves_tokens (delta_kl)" not in wide  # the table has separate columns


def test_footers_list_uncalibrated_and_unusable_nulls_and_run_stats() -> None:
    text = " ".join(render(run()).split())
    assert (
        "not null-calibrated (fixed thresholds, no z-score): "
        "flat (external_perplexity): seed 1000: no finite null raw"
    ) in text
    assert (
        "unusable null distribution (fixed thresholds instead): "
        "lumpy: only 1 null sample: need at least 2 (raise runs:)"
    ) in text
    # A SKIP's message says what to install itself; no footer re-parses it.
    assert "missing extras" not in text
    assert (
        "wall 12.5s | sway 0.1.0 | det: strict (seed=7) | "
        "forwards: 1,200, tokens: 45,678, cache hit 75%"
    ) in text


def test_footers_are_absent_when_not_applicable() -> None:
    suite = SuiteResult(
        spec_path="s.yaml",
        started_at=datetime(2025, 1, 1, tzinfo=UTC),
        finished_at=datetime(2025, 1, 1, 0, 0, 3, tzinfo=UTC),
        base_model_id="base",
        adapter_id="",
        sway_version="0.1.0",
        probes=(ProbeResult("kl", "delta_kl", Verdict.PASS, score=0.7, raw=0.5),),
    )
    text = render(suite)
    assert "sway — base vs (base only)" in text
    for absent in (
        "top findings",
        "health:",
        "noise floor",
        "Holm",
        "×",
        "not null-calibrated",
        "degenerate",
        "extras",
        "det:",
        "cache",
    ):
        assert absent not in text
    assert text.rstrip().endswith("wall 3.00s | sway 0.1.0")
    # Not calibrated: every number that comes from the nulls is a dash, the raw still shows.
    row = next(line for line in text.splitlines() if line.lstrip().startswith("kl "))
    assert row.split()[3:11] == ["0.70", "0.500", "—", "—", "—", "—", "—", "0.00s"]
    narrow = render(suite, width=80)
    assert "health:" not in narrow and "noise floor" not in narrow


def test_preflight_abort_renders_with_its_reason() -> None:
    suite = SuiteResult(
        spec_path="s.yaml",
        started_at=datetime(2025, 1, 1, tzinfo=UTC),
        finished_at=datetime(2025, 1, 1, tzinfo=UTC),
        base_model_id="base",
        adapter_id="runs/a",
        sway_version="0.1.0",
        probes=(
            ProbeResult(
                "__preflight__",
                "preflight",
                Verdict.ERROR,
                message="aborted before any probe ran: non-finite logits in the fine-tuned view",
            ),
        ),
    )
    text = " ".join(render(suite, width=120).split())
    assert "overall: 0.00 [ noise ]" in text
    assert "1. preflight check failed, no probe ran: aborted before any probe ran" in text


def test_empty_suite_renders() -> None:
    suite = SuiteResult(
        spec_path="s.yaml",
        started_at=datetime(2025, 1, 1, tzinfo=UTC),
        finished_at=datetime(2025, 1, 1, tzinfo=UTC),
        base_model_id="base",
        adapter_id="a",
        sway_version="0.1.0",
        probes=(),
    )
    text = render(suite)
    assert "(this run has no probe results)" in text
    assert "no probe produced a score" in text


def test_verdicts_and_band_are_coloured() -> None:
    assert VERDICT_STYLES[Verdict.PASS].endswith("green")
    assert VERDICT_STYLES[Verdict.FAIL].endswith("red")
    assert VERDICT_STYLES[Verdict.WARN].endswith("yellow")
    assert VERDICT_STYLES[Verdict.SKIP] == "dim"
    assert VERDICT_STYLES[Verdict.ERROR].endswith("magenta")
    out = io.StringIO()
    console = Console(
        width=200, file=out, force_terminal=True, color_system="standard", no_color=False
    )
    suite = run()
    render_terminal(suite, compute(suite), console=console)
    ansi = out.getvalue()
    assert "\x1b[1;32mPASS" in ansi
    assert "\x1b[1;31mFAIL" in ansi
    assert "\x1b[1;35mERROR" in ansi


def test_saved_json_re_renders_identically() -> None:
    suite = run()
    score = compute(suite)
    restored = from_json(json.loads(to_json(suite, score)))
    assert render(*restored) == render(suite, score)


def test_calibrated_probes_show_holm_adjusted_p_and_null_marker() -> None:
    text = render(run(), width=200)
    row = next(line for line in text.splitlines() if "moves_tokens" in line)
    for cell in ("×170.0", "[1.500, 1.900]", "+9.40σ", "p=4e-05 (Holm 0.0002)", "norm×10"):
        assert cell in row
    assert " t " not in row  # the default t prediction carries no marker
    wordy = next(line for line in text.splitlines() if line.lstrip().startswith("wordy"))
    assert "p=0.6 (Holm 1)" in wordy and "init×3 ref" in wordy
    lumpy = next(line for line in text.splitlines() if line.lstrip().startswith("lumpy"))
    assert "norm×1 unusable" in lumpy
    header = next(line for line in text.splitlines() if line.lstrip().startswith("name"))
    assert header.split()[7:11] == ["z", "p", "null", "time"]


def test_p_without_holm_shows_just_the_p() -> None:
    suite = run()
    plain = replace(suite.probes[1], p_adjusted=None)
    text = render(replace(suite, probes=(plain,)), width=200)
    row = next(line for line in text.splitlines() if "moves_tokens" in line)
    assert "p=4e-05" in row and "Holm" not in text


def test_narrow_layout_shows_calibration_on_its_own_line() -> None:
    text = render(run(), width=80)
    lines = [line.strip() for line in text.splitlines()]
    assert "raw 1.700 · effect ×170.0 · ci95 [1.500, 1.900] · 0.75s" in lines
    assert "z +9.40σ · p=4e-05 (Holm 0.0002) · null norm×10" in lines
    assert "z -0.30σ · p=0.6 (Holm 1) · null init×3 ref" in lines
    assert "z — · p — · null —" in lines  # uncalibrated probes
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80


def test_medium_console_keeps_the_table_with_holm_on_a_second_line() -> None:
    medium = render(run(), width=158)
    assert "moves_tokens (delta_kl)" not in medium  # still the table
    lines = medium.splitlines()
    i = next(n for n, line in enumerate(lines) if "moves_tokens" in line)
    assert "p=4e-05" in lines[i] and "Holm" not in lines[i]
    assert "(Holm 0.0002)" in lines[i + 1]
    assert max(len(line.rstrip()) for line in lines) <= 158
    wide = render(run(), width=170)
    assert "p=4e-05 (Holm 0.0002)" in wide
    for width in range(100, 201, 5):
        text = render(run(), width=width)
        assert max(len(line.rstrip()) for line in text.splitlines()) <= width, width


def test_health_section_lists_every_check_after_the_findings() -> None:
    for width in (200, 80):
        text = render(run(), width=width)
        flat = " ".join(text.split())
        assert text.index("top findings:") < text.index("health:") < text.index("wall ")
        assert (
            "[warn] only 3 null adapters: the p-values rest on a rough t approximation — "
            "raise the null_adapter probe's runs to 19 or more"
        ) in flat
        assert "[error] the adapter's update has zero norm [info]" in flat  # no fix, no dash
        assert "[info] the noise floor is far below every effect" in flat


def test_health_levels_are_coloured() -> None:
    assert HEALTH_STYLES["error"].endswith("red")
    assert HEALTH_STYLES["warn"].endswith("yellow")
    out = io.StringIO()
    console = Console(
        width=200, file=out, force_terminal=True, color_system="standard", no_color=False
    )
    suite = run()
    render_terminal(suite, compute(suite), console=console)
    ansi = out.getvalue()
    assert "\x1b[1;31m  [error]" in ansi
    assert "\x1b[33m  [warn]" in ansi


def test_noise_floor_closes_the_status_line() -> None:
    text = " ".join(render(run()).split())
    assert "cache hit 75% | noise floor: JS ≤ 1.2e-12 over 14 prompts" in text


def test_broken_statistics_never_print_nan() -> None:
    suite = run()
    odd = ProbeResult(
        "odd",
        "delta_kl",
        Verdict.WARN,
        score=0.5,
        raw=0.2,
        z_score=math.nan,
        p_value=math.inf,
        p_adjusted=math.nan,
        effect_ratio=math.nan,
        ci_95=(math.nan, 0.3),
        null=NullSummary(
            construction="",
            method="",
            k=0,
            samples=(),
            z_threshold=math.nan,
            z_by_rank={"rank_1.00": math.nan, "rank_2.00": math.inf},
        ),
    )
    broken = replace(
        suite,
        probes=(*suite.probes, odd),
        noise_floor={"js_max": math.nan, "prompts": math.nan},
        health=(HealthCheck("", "", "", ""),),
    )
    for width in (200, 150, 80):
        text = render(broken, width=width)
        assert "nan" not in text.lower()
        assert "inf" not in text.lower().replace("info", "")
        assert "noise floor" not in text
