"""JSON report: the v2 shape, the no-NaN rule, and an exact round trip of every typed field."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.gate import GateDecision, GateReason
from dlm_sway.core.result import (
    SCHEMA_VERSION,
    DeterminismReport,
    Direction,
    GeneratedSample,
    HealthCheck,
    NullCalibration,
    NullSummary,
    OverfitSignal,
    ProbeResult,
    SuiteResult,
    SwayScore,
    TokenTrace,
    Verdict,
)
from dlm_sway.core.stats import NullStats
from dlm_sway.report.json_report import from_json, read_run, to_json, to_json_dict
from dlm_sway.report.junit import to_junit
from dlm_sway.report.markdown import to_markdown
from dlm_sway.report.terminal import render_terminal

TOP_LEVEL_KEYS = {
    "schema_version",
    "sway_version",
    "spec_path",
    "base_model_id",
    "adapter_id",
    "started_at",
    "finished_at",
    "wall_seconds",
    "determinism",
    "backend_stats",
    "timings",
    "versions",
    "score",
    "null_stats",
    "noise_floor",
    "health",
    "probes",
}
PROBE_KEYS = {
    "name",
    "kind",
    "verdict",
    "score",
    "raw",
    "z_score",
    "p_value",
    "p_adjusted",
    "effect_ratio",
    "base_value",
    "ft_value",
    "ci_95",
    "evidence",
    "message",
    "duration_s",
    "category",
    "weight",
    "direction",
    "headline",
    "measured",
    "null",
    "calibration",
    "config",
    "overfit",
    "tokens",
    "generations",
}
NULL_KEYS = {
    "construction",
    "method",
    "k",
    "samples",
    "z_threshold",
    "log_scale",
    "non_negative",
    "statistic",
    "p_empirical",
    "degenerate",
    "z_by_rank",
}


def full_run() -> tuple[SuiteResult, SwayScore]:
    start = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
    probes = (
        ProbeResult(
            "null",
            "null_adapter",
            Verdict.PASS,
            score=1.0,
            evidence={"runs": 3},
            message="calibrated 1 probe(s) over 3 null seed(s)",
            duration_s=2.5,
            category="baseline",
            weight=0.0,
            config={"name": "null", "kind": "null_adapter", "runs": 3, "enabled": True},
            calibration=NullCalibration(
                by_rank={
                    "rank_1.00": {
                        "kl": NullStats.from_samples(
                            [0.01, 0.012, 0.008], construction="norm_matched"
                        )
                    },
                    "rank_0.50": {
                        "kl": NullStats.from_samples(
                            [0.005, 0.006, 0.004], construction="norm_matched"
                        )
                    },
                },
                primary="rank_1.00",
                failures={"abl": "seed 1000: no finite null raw"},
                from_cache=True,
                cache_file="/cache/nulls/abc.json",
            ),
        ),
        ProbeResult(
            "kl",
            "delta_kl",
            Verdict.PASS,
            score=0.93,
            raw=1.7,
            z_score=9.4,
            p_value=0.0004,
            p_adjusted=0.0012,
            effect_ratio=170.0,
            base_value=0.0,
            ft_value=1.7,
            ci_95=(1.5, 1.9),
            evidence={"per_prompt": [1.6, 1.8]},
            message="above noise: mean KL 1.700 nats; z=+9.40σ, p=0.0004 vs 3 norm-matched nulls",
            duration_s=0.75,
            category="adherence",
            weight=2.0,
            direction=Direction.EFFECT,
            headline="above noise",
            measured="mean KL 1.700 nats",
            config={"name": "kl", "kind": "delta_kl", "prompts": ["a", "b"], "weight": 2.0},
            null=NullSummary(
                construction="norm_matched",
                method="t_prediction",
                k=3,
                samples=(0.01, 0.012, 0.008),
                z_threshold=3.0,
                log_scale=True,
                non_negative=True,
                statistic=8.1,
                p_empirical=0.25,
                degenerate=None,
                z_by_rank={"rank_1.00": 9.4, "rank_0.50": 12.0},
            ),
            overfit=OverfitSignal("verbatim_over_paraphrase", "verbatim 1.2, paraphrase 0.1"),
            tokens=(TokenTrace("section s1", ("The", " cat"), (None, 0.25), "lift"),),
            generations=(GeneratedSample("Q:", " base answer", " tuned answer"),),
        ),
        ProbeResult(
            "abl",
            "adapter_ablation",
            Verdict.ERROR,
            evidence={"non_finite_inputs": {"raw": "nan"}},
            message="non-finite raw",
            category="ablation",
            direction=Direction.HARM,
        ),
    )
    suite = SuiteResult(
        spec_path="examples/sway.yaml",
        started_at=start,
        finished_at=start + timedelta(seconds=12.5),
        base_model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        adapter_id="/runs/exp1/adapter",
        sway_version="0.1.0",
        probes=probes,
        null_stats={"kl": {"mean": 0.01, "std": 0.002, "n": 3, "degenerate": False}},
        determinism=DeterminismReport(class_="strict", seed=7, notes=("cpu", "fp32")),
        backend_stats={"forward_passes": 12, "cache_hits": 3, "cache_misses": 9},
        timings={"load_s": 0.2, "probes_s": 12.1},
        versions={"torch": "2.13.0", "python": "3.11"},
        noise_floor={"js_max": 1.2e-12, "js_mean": 3.5e-13, "prompts": 14, "method": "batch"},
        health=(
            HealthCheck("warn", "too_few_nulls", "only 3 nulls", "raise runs to 19"),
            HealthCheck("error", "adapter_norm_zero", "the adapter has zero norm"),
        ),
    )
    score = SwayScore(
        overall=0.93,
        band="suspicious",
        components={"adherence": 0.93, "baseline": 1.0, "ablation": 0.0},
        weights={"adherence": 0.3, "baseline": 0.0, "ablation": 0.15},
        findings=("1 probe(s) errored — see messages",),
        band_reason="kl shows the over-fit signal verbatim_over_paraphrase",
    )
    return suite, score


def test_top_level_and_probe_schema() -> None:
    suite, score = full_run()
    data = to_json_dict(suite, score)
    assert set(data) == TOP_LEVEL_KEYS
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["started_at"] == "2025-03-04T05:06:07.123456+00:00"
    assert data["wall_seconds"] == 12.5
    assert data["determinism"] == {"class": "strict", "seed": 7, "notes": ["cpu", "fp32"]}
    assert set(data["score"]) == {
        "overall",
        "band",
        "band_reason",
        "components",
        "weights",
        "findings",
    }
    assert all(set(p) == PROBE_KEYS for p in data["probes"])
    assert SCHEMA_VERSION == 2
    assert [p["verdict"] for p in data["probes"]] == ["pass", "pass", "error"]
    assert data["probes"][1]["ci_95"] == [1.5, 1.9]
    assert data["probes"][0]["ci_95"] is None
    assert data["probes"][1]["p_adjusted"] == 0.0012
    assert data["probes"][0]["p_adjusted"] is None
    assert data["noise_floor"] == {
        "js_max": 1.2e-12,
        "js_mean": 3.5e-13,
        "prompts": 14,
        "method": "batch",
    }
    assert data["health"] == [
        {
            "level": "warn",
            "code": "too_few_nulls",
            "message": "only 3 nulls",
            "fix": "raise runs to 19",
        },
        {
            "level": "error",
            "code": "adapter_norm_zero",
            "message": "the adapter has zero norm",
            "fix": "",
        },
    ]


def test_every_typed_field_is_written() -> None:
    suite, score = full_run()
    data = to_json_dict(suite, score)
    calib, kl, abl = data["probes"]
    assert set(kl["null"]) == NULL_KEYS
    assert kl["null"]["k"] == 3 and kl["null"]["samples"] == [0.01, 0.012, 0.008]
    assert kl["null"]["z_by_rank"] == {"rank_1.00": 9.4, "rank_0.50": 12.0}
    assert (kl["category"], kl["weight"], kl["direction"]) == ("adherence", 2.0, "effect")
    assert (kl["headline"], kl["measured"]) == ("above noise", "mean KL 1.700 nats")
    assert kl["config"]["prompts"] == ["a", "b"]
    assert kl["overfit"] == {
        "name": "verbatim_over_paraphrase",
        "message": "verbatim 1.2, paraphrase 0.1",
    }
    assert kl["tokens"] == [
        {"label": "section s1", "pieces": ["The", " cat"], "values": [None, 0.25], "unit": "lift"}
    ]
    assert kl["generations"] == [
        {"prompt": "Q:", "base": " base answer", "finetuned": " tuned answer"}
    ]
    assert calib["tokens"] == [] and calib["generations"] == []
    assert kl["calibration"] is None and calib["null"] is None
    cal = calib["calibration"]
    assert cal["primary"] == "rank_1.00" and set(cal["by_rank"]) == {"rank_1.00", "rank_0.50"}
    assert cal["by_rank"]["rank_1.00"]["kl"]["n"] == 3
    assert cal["by_rank"]["rank_1.00"]["kl"]["construction"] == "norm_matched"
    assert cal["failures"] == {"abl": "seed 1000: no finite null raw"}
    assert (cal["from_cache"], cal["cache_file"]) == (True, "/cache/nulls/abc.json")
    assert abl["direction"] == "harm" and abl["null"] is None and abl["overfit"] is None
    assert data["score"]["band_reason"].startswith("kl shows")
    # Weight and category live in typed fields, not in evidence.
    assert all("weight" not in p["evidence"] for p in data["probes"])


def test_to_json_is_indented_sorted_and_parses_back_to_the_dict() -> None:
    suite, score = full_run()
    text = to_json(suite, score)
    assert text.startswith('{\n  "adapter_id": ')
    assert json.loads(text) == to_json_dict(suite, score)


def test_round_trip_is_exact() -> None:
    suite, score = full_run()
    first = to_json(suite, score)
    suite2, score2 = from_json(json.loads(first))
    assert to_json(suite2, score2) == first
    assert suite2 == suite
    assert score2 == score
    assert suite2.probes[1].p_adjusted == 0.0012
    assert suite2.probes[1].null == suite.probes[1].null
    assert suite2.probes[0].calibration == suite.probes[0].calibration
    assert suite2.probes[2].direction is Direction.HARM
    assert suite2.noise_floor == suite.noise_floor
    assert suite2.health == suite.health


def _terminal(suite: SuiteResult, score: SwayScore) -> str:
    import io

    from rich.console import Console

    console = Console(width=160, record=True, color_system=None, file=io.StringIO())
    render_terminal(suite, score, console=console)
    return console.export_text()


def test_round_trip_renders_identically_in_every_format() -> None:
    suite, score = full_run()
    gate = GateDecision(
        exit_code=1,
        threshold=0.5,
        overall=score.overall,
        reasons=(GateReason("errored", "1 probe errored", ("abl",)),),
    )
    back_suite, back_score, back_gate = read_run(json.loads(to_json(suite, score, gate=gate)))
    assert back_gate == gate
    assert _terminal(back_suite, back_score) == _terminal(suite, score)
    assert to_markdown(back_suite, back_score) == to_markdown(suite, score)
    assert to_junit(back_suite, back_score, gate=back_gate) == to_junit(suite, score, gate=gate)
    assert to_json(back_suite, back_score, gate=back_gate) == to_json(suite, score, gate=gate)
    # What the typed fields put on screen survives the trip.
    text = " ".join(_terminal(back_suite, back_score).split())
    assert "norm×3" in text and "rank profile: +12.00σ @ 0.5x / +9.40σ @ 1x" in text
    assert "kl shows the over-fit signal" in text  # the band line's reason


def test_run_without_statistics_writes_empty_defaults_and_round_trips() -> None:
    suite, score = full_run()
    bare = SuiteResult(**{**_fields(suite), "noise_floor": {}, "health": ()})
    text = to_json(bare, score)
    data = json.loads(text)
    assert data["noise_floor"] == {} and data["health"] == []
    assert to_json(*from_json(data)) == text


def test_non_finite_statistics_are_written_as_null() -> None:
    suite, score = full_run()
    odd = ProbeResult("odd", "delta_kl", Verdict.WARN, p_value=0.1, p_adjusted=math.nan)
    suite = SuiteResult(
        **{
            **_fields(suite),
            "probes": (odd,),
            "noise_floor": {"js_max": math.nan, "prompts": 3},
        }
    )
    text = to_json(suite, score)
    assert "NaN" not in text
    data = json.loads(text)
    assert data["probes"][0]["p_adjusted"] is None
    assert data["noise_floor"] == {"js_max": None, "prompts": 3}
    assert to_json(*from_json(data)) == text


def test_non_finite_values_are_written_as_null_and_round_trip() -> None:
    suite, score = full_run()
    weird = ProbeResult(
        "weird",
        "delta_kl",
        Verdict.WARN,
        score=math.nan,
        raw=math.inf,
        ci_95=(math.nan, 1.0),
        evidence={"per_cluster": [0.1, math.nan, -math.inf], "nested": {"x": (1, math.nan)}},
        duration_s=math.nan,
    )
    suite = SuiteResult(
        **{**_fields(suite), "probes": (*suite.probes, weird), "timings": {"t": math.inf}}
    )
    # The overall itself must be a real score to read back (see tests/unit/test_report_input.py).
    score = SwayScore(0.0, "noise", {"adherence": math.nan}, {"adherence": 0.3})
    text = to_json(suite, score)
    for token in ("NaN", "Infinity"):
        assert token not in text
    entry = json.loads(text)["probes"][-1]
    assert entry["score"] is None and entry["raw"] is None and entry["duration_s"] is None
    assert entry["ci_95"] is None
    assert entry["evidence"] == {"per_cluster": [0.1, None, None], "nested": {"x": [1, None]}}
    assert to_json(*from_json(json.loads(text))) == text


def test_numpy_values_in_evidence_are_plain_json() -> None:
    np = pytest.importorskip("numpy")
    suite, score = full_run()
    extra = ProbeResult(
        "np",
        "delta_kl",
        Verdict.PASS,
        score=np.float64(0.5),
        evidence={"arr": np.array([1.0, np.nan]), "i": np.int64(3), "f": np.float32(0.25)},
    )
    suite = SuiteResult(**{**_fields(suite), "probes": (extra,)})
    data = json.loads(to_json(suite, score))
    assert data["probes"][0]["evidence"] == {"arr": [1.0, None], "i": 3, "f": 0.25}


def test_naive_timestamps_are_written_as_utc_and_offsets_are_kept() -> None:
    suite, score = full_run()
    naive = SuiteResult(
        **{
            **_fields(suite),
            "started_at": datetime(2025, 1, 1, 0, 0, 0),
            "finished_at": datetime(2025, 1, 1, 2, 0, 1, tzinfo=timezone(timedelta(hours=2))),
        }
    )
    data = to_json_dict(naive, score)
    assert data["started_at"] == "2025-01-01T00:00:00+00:00"
    assert data["finished_at"] == "2025-01-01T02:00:01+02:00"
    assert data["wall_seconds"] == 1.0
    back, _ = from_json(data)
    assert back.finished_at.utcoffset() == timedelta(hours=2)


def test_from_json_tolerates_a_minimal_payload() -> None:
    suite, score = from_json(
        {
            "schema_version": SCHEMA_VERSION,
            "score": {"overall": 0.42},
            "probes": [{"name": "kl", "kind": "delta_kl", "verdict": "PASS"}],
        }
    )
    assert suite.started_at == datetime(1970, 1, 1, tzinfo=UTC)
    assert suite.wall_seconds == 0.0
    assert suite.determinism is None
    assert suite.probes[0].verdict is Verdict.PASS
    assert suite.probes[0].score is None and suite.probes[0].ci_95 is None
    assert suite.probes[0].duration_s == 0.0
    assert score.band == "partial"
    assert score.weights == {} and score.findings == ()
    # Written before the statistics fields existed: they read back as their defaults.
    assert suite.probes[0].p_adjusted is None
    assert suite.noise_floor == {} and suite.health == ()
    partial_check, _ = from_json(
        {
            "schema_version": SCHEMA_VERSION,
            "score": {"overall": 0},
            "probes": [],
            "noise_floor": None,
            "health": [{"level": "warn", "message": "m", "fix": None}],
        }
    )
    assert partial_check.noise_floor == {}
    assert partial_check.health == (HealthCheck("warn", "", "m", ""),)
    determinism_default, _ = from_json(
        {"schema_version": 2, "score": {"overall": 0}, "probes": [], "determinism": {}}
    )
    assert determinism_default.determinism == DeterminismReport("best_effort", 0, ())


@pytest.mark.parametrize(
    ("payload", "pattern"),
    [
        ([], "not a sway JSON report"),
        ({"probes": []}, "not a sway JSON report"),
        ({"schema_version": 3, "score": {"overall": 0}, "probes": []}, "schema_version 3"),
        ({"schema_version": 0, "score": {"overall": 0}, "probes": []}, "versions 1 and 2"),
        ({"schema_version": "1", "score": {"overall": 0}, "probes": []}, "schema_version '1'"),
        ({"schema_version": True, "score": {"overall": 0}, "probes": []}, "schema_version True"),
        ({"schema_version": 1, "score": {"overall": 0}}, "probes is missing"),
        ({"schema_version": 1, "probes": []}, "score is missing"),
        ({"schema_version": 1, "score": {}, "probes": []}, "score.overall is missing"),
        (
            {"schema_version": 1, "score": {"overall": 0}, "probes": [{"name": "a", "kind": "k"}]},
            r"probes\[0\].verdict is missing",
        ),
        (
            {
                "schema_version": 1,
                "score": {"overall": 0},
                "probes": [{"name": "a", "kind": "k", "verdict": "maybe"}],
            },
            r"probes\[0\].verdict: 'maybe' is not one of pass, fail",
        ),
        (
            {
                "schema_version": 1,
                "score": {"overall": 0},
                "probes": [{"name": "a", "kind": "k", "verdict": "pass", "raw": "1.0"}],
            },
            r"probes\[0\].raw: expected a number or null",
        ),
        (
            {
                "schema_version": 1,
                "score": {"overall": 0},
                "probes": [{"name": "a", "kind": "k", "verdict": "pass", "ci_95": [1]}],
            },
            r"probes\[0\].ci_95: expected \[lo, hi\]",
        ),
        (
            {"schema_version": 1, "score": {"overall": 0}, "probes": [], "health": "ok"},
            "health: expected a list",
        ),
        (
            {"schema_version": 1, "score": {"overall": 0}, "probes": [], "health": ["ok"]},
            r"health\[0\]: expected an object",
        ),
        (
            {
                "schema_version": 1,
                "score": {"overall": 0},
                "probes": [],
                "health": [{"level": "warn", "message": 3}],
            },
            r"health\[0\].message: expected a string",
        ),
        (
            {"schema_version": 1, "score": {"overall": 0}, "probes": [], "noise_floor": [1]},
            "noise_floor: expected an object",
        ),
        (
            {
                "schema_version": 1,
                "score": {"overall": 0},
                "probes": [{"name": "a", "kind": "k", "verdict": "pass", "p_adjusted": "0.1"}],
            },
            r"probes\[0\].p_adjusted: expected a number or null",
        ),
        (
            {"schema_version": 1, "score": {"overall": 0}, "probes": [], "started_at": "soon"},
            "started_at: expected an ISO-8601 timestamp",
        ),
    ],
)
def test_from_json_rejects_foreign_or_broken_payloads(payload: Any, pattern: str) -> None:
    with pytest.raises(SpecValidationError, match=pattern):
        from_json(payload)


def _fields(suite: SuiteResult) -> dict[str, Any]:
    return {name: getattr(suite, name) for name in SuiteResult.__dataclass_fields__}
