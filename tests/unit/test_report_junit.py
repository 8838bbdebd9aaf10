"""JUnit XML report: what a CI system parses to chart a gate's probes as test cases."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from dlm_sway.core.result import ProbeResult, SuiteResult, SwayScore, Verdict
from dlm_sway.report.json_report import from_json, to_json
from dlm_sway.report.junit import to_junit
from dlm_sway.suite.score import compute

NASTY = "KL < 0.1 & \"quoted\" <tag> 'single'"


def run(*probes: ProbeResult) -> SuiteResult:
    start = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    return SuiteResult(
        spec_path="sway.yaml",
        started_at=start,
        finished_at=start + timedelta(seconds=12.3456),
        base_model_id="base <model>",
        adapter_id="runs/a&b",
        sway_version="0.1.0",
        probes=probes
        or (
            ProbeResult(
                "ok", "delta_kl", Verdict.PASS, score=0.9, raw=1.2, message="fine", duration_s=0.5
            ),
            ProbeResult(
                "bad<1>",
                "delta_kl",
                Verdict.FAIL,
                score=0.1,
                raw=0.01,
                message=f"{NASTY}\nsecond line",
                duration_s=0.25,
            ),
            ProbeResult(
                "worried",
                "adapter_ablation",
                Verdict.WARN,
                score=0.5,
                message="wobbly",
                category="ablation",
            ),
            ProbeResult(
                "off", "delta_kl", Verdict.SKIP, message="needs pip install 'dlm-sway[hf]'"
            ),
            ProbeResult("broken", "delta_kl", Verdict.ERROR, message="ProbeError: boom & bust"),
            ProbeResult("silent", "delta_kl", Verdict.FAIL, score=0.0),
            ProbeResult("calib", "null_adapter", Verdict.PASS, score=1.0, category="baseline"),
        ),
    )


def parse(suite: SuiteResult, score: SwayScore | None = None) -> ET.Element:
    text = to_junit(suite, score if score is not None else compute(suite))
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n')
    return ET.fromstring(text.encode("utf-8"))


def case(root: ET.Element, name: str) -> ET.Element:
    found = [c for c in root.iter("testcase") if c.get("name") == name]
    assert len(found) == 1, name
    return found[0]


def test_suite_counts_match_the_verdicts() -> None:
    suite = run()
    root = parse(suite)
    assert root.tag == "testsuite" and root.get("name") == "sway"
    counts = Counter(p.verdict for p in suite.probes)
    assert root.get("tests") == str(len(suite.probes))
    assert root.get("failures") == str(counts[Verdict.FAIL]) == "2"
    assert root.get("errors") == str(counts[Verdict.ERROR]) == "1"
    assert root.get("skipped") == str(counts[Verdict.SKIP]) == "1"
    assert root.get("time") == "12.346"
    assert root.get("timestamp") == "2025-03-04T05:06:07"
    cases = root.findall("testcase")
    assert [c.get("name") for c in cases] == [p.name for p in suite.probes]
    assert len([c for c in cases if c.find("failure") is not None]) == 2
    assert len([c for c in cases if c.find("error") is not None]) == 1
    assert len([c for c in cases if c.find("skipped") is not None]) == 1


def test_testcases_carry_kind_name_and_time() -> None:
    root = parse(run())
    ok = case(root, "ok")
    assert ok.get("classname") == "delta_kl"
    assert ok.get("time") == "0.500"
    assert list(ok) == []  # a pass is an empty test case


def test_outcome_elements_carry_the_probe_note() -> None:
    root = parse(run())
    failure = case(root, "bad<1>").find("failure")
    assert failure is not None
    assert failure.get("message") == f"{NASTY} second line"  # attributes stay on one line
    assert failure.text == f"{NASTY}\nsecond line"
    error = case(root, "broken").find("error")
    assert error is not None and error.get("message") == "ProbeError: boom & bust"
    skipped = case(root, "off").find("skipped")
    assert skipped is not None and skipped.get("message") == "needs pip install 'dlm-sway[hf]'"


def test_empty_messages_get_a_default_word() -> None:
    failure = case(parse(run()), "silent").find("failure")
    assert failure is not None and failure.get("message") == "failed"


def test_warn_passes_with_its_note_on_system_out() -> None:
    warned = case(parse(run()), "worried")
    assert warned.find("failure") is None and warned.find("error") is None
    out = warned.find("system-out")
    assert out is not None and out.text is not None and "wobbly" in out.text


def test_escaping_keeps_the_document_well_formed_and_lossless() -> None:
    text = to_junit(run(), compute(run()))
    assert "<tag>" not in text and "& " not in text  # escaped on the way out…
    root = ET.fromstring(text)
    assert case(root, "bad<1>") is not None  # …and read back verbatim
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["base_model"] == "base <model>"
    assert props["adapter"] == "runs/a&b"


def test_characters_xml_cannot_carry_are_dropped() -> None:
    suite = run(ProbeResult("ctl\x00\x1b", "delta_kl", Verdict.FAIL, message="bell\x07 here"))
    root = parse(suite)
    failure = case(root, "ctl").find("failure")
    assert failure is not None and failure.get("message") == "bell here"


def test_properties_hold_overall_band_and_scored_components() -> None:
    suite = run()
    score = compute(suite)
    props = {p.get("name"): p.get("value") for p in parse(suite, score).iter("property")}
    assert props["overall"] == f"{score.overall:.4f}"
    assert props["band"] == score.band
    assert score.band_reason and props["band_reason"] == score.band_reason
    assert props["component.adherence"] == f"{score.components['adherence']:.4f}"
    assert props["component.ablation"] == f"{score.components['ablation']:.4f}"
    # No probe scored under attribution: no made-up 0.0000 for it.
    assert "component.attribution" not in props


@pytest.mark.parametrize("verdict", list(Verdict))
def test_every_verdict_maps_to_exactly_one_outcome(verdict: Verdict) -> None:
    root = parse(run(ProbeResult("only", "delta_kl", verdict, score=0.5, message="m")))
    children = {child.tag for child in case(root, "only")}
    expected = {
        Verdict.PASS: set(),
        Verdict.WARN: {"system-out"},
        Verdict.FAIL: {"failure"},
        Verdict.ERROR: {"error"},
        Verdict.SKIP: {"skipped"},
    }[verdict]
    assert children == expected


def test_empty_suite_is_a_valid_document() -> None:
    suite = SuiteResult(
        spec_path="s.yaml",
        started_at=datetime(2025, 1, 1),
        finished_at=datetime(2025, 1, 1),
        base_model_id="base",
        adapter_id="",
        sway_version="0.1.0",
        probes=(),
    )
    root = parse(suite, SwayScore(overall=0.0, band="noise", components={}, weights={}))
    assert root.get("tests") == "0" and root.findall("testcase") == []
    assert root.get("timestamp") == "2025-01-01T00:00:00"


def test_saved_json_re_renders_identically() -> None:
    suite = run()
    score = compute(suite)
    restored = from_json(json.loads(to_json(suite, score)))
    assert to_junit(*restored) == to_junit(suite, score)
