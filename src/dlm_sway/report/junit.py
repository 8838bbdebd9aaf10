"""The JUnit XML report: one test case per probe, for CI systems that chart test results.

A pure function of ``(SuiteResult, SwayScore)``. The document is built with
:mod:`xml.etree.ElementTree`, which escapes attribute values and text, so a
probe message holding ``<``, ``&`` or quotes cannot break the XML. Characters
XML 1.0 cannot carry at all (most control characters) are dropped first.

Verdicts map onto JUnit outcomes: FAIL is a ``<failure>``, ERROR an ``<error>``,
SKIP a ``<skipped>``; PASS and WARN pass, and a WARN's note goes to
``<system-out>`` so it is visible without failing the build.

When the report comes from ``sway gate``, the gate decision is part of it: a
``sway.gate`` test case carries every reason the gate failed (a ``<failure>``
for exit 1, an ``<error>`` when nothing was judged, exit 2), and a SKIP or WARN
the gate did not allow is a ``<failure>`` on its own probe. Every way the gate
fails is then a failing test case, and the counts are those of the elements.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections import Counter
from datetime import UTC

from dlm_sway.core.gate import GATE_UNJUDGED, GateDecision
from dlm_sway.core.result import ProbeResult, SuiteResult, SwayScore, Verdict
from dlm_sway.probes.base import CATEGORIES
from dlm_sway.report.format import probe_note, scored_categories

SUITE_NAME = "sway"
#: The gate's own test case: ``classname="sway" name="gate"`` (shown as ``sway.gate``).
GATE_CASE = ("sway", "gate")
#: Used when a failing, erroring or skipped probe left no message.
DEFAULT_MESSAGES = {Verdict.FAIL: "failed", Verdict.ERROR: "error", Verdict.SKIP: "skipped"}
_OUTCOME_TAGS = {Verdict.FAIL: "failure", Verdict.ERROR: "error", Verdict.SKIP: "skipped"}
_COUNTED = ("failure", "error", "skipped")
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def to_junit(suite: SuiteResult, score: SwayScore, *, gate: GateDecision | None = None) -> str:
    """The run as a JUnit XML document (with an XML declaration), ending in one newline."""
    cases = [_testcase(result, gate) for result in suite.probes]
    if gate is not None:
        cases.append(_gate_case(gate))
    outcomes = Counter(child.tag for case in cases for child in case if child.tag in _COUNTED)
    root = ET.Element(
        "testsuite",
        {
            "name": SUITE_NAME,
            "tests": str(len(cases)),
            "failures": str(outcomes["failure"]),
            "errors": str(outcomes["error"]),
            "skipped": str(outcomes["skipped"]),
            "time": _seconds(suite.wall_seconds),
            "timestamp": _timestamp(suite),
        },
    )
    properties = ET.SubElement(root, "properties")
    props = _properties(suite, score)
    if gate is not None:
        props.append(("gate.exit_code", str(gate.exit_code)))
        props.append(("gate.threshold", f"{gate.threshold:g}"))
    for name, value in props:
        ET.SubElement(properties, "property", {"name": _xml_safe(name), "value": _xml_safe(value)})
    root.extend(cases)
    ET.indent(root, space="  ")
    body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n'


def _properties(suite: SuiteResult, score: SwayScore) -> list[tuple[str, str]]:
    props = [
        ("overall", _fixed(score.overall, 4)),
        ("band", score.band),
        *([("band_reason", score.band_reason)] if score.band_reason else []),
        ("base_model", suite.base_model_id),
        ("adapter", suite.adapter_id),
        ("sway_version", suite.sway_version),
    ]
    if suite.determinism is not None:
        props.append(("determinism", f"{suite.determinism.class_} (seed={suite.determinism.seed})"))
    # Only categories a probe actually scored: an unscored category's 0.0 is not a measurement.
    present = set(score.components) & scored_categories(suite)
    ordered = [c for c in CATEGORIES if c in present] + sorted(present - set(CATEGORIES))
    props.extend((f"component.{c}", _fixed(score.components[c], 4)) for c in ordered)
    return props


def _gate_case(gate: GateDecision) -> ET.Element:
    classname, name = GATE_CASE
    case = ET.Element("testcase", {"classname": classname, "name": name, "time": "0.000"})
    if gate.passed:
        ET.SubElement(case, "system-out").text = f"gate passed: {_xml_safe(gate.summary())}"
        return case
    tag = "error" if gate.exit_code == GATE_UNJUDGED else "failure"
    summary = _xml_safe(gate.summary())
    outcome = ET.SubElement(case, tag, {"message": _one_line(summary), "type": "gate"})
    outcome.text = "\n".join(_xml_safe(reason.message) for reason in gate.reasons)
    return case


def _testcase(result: ProbeResult, gate: GateDecision | None = None) -> ET.Element:
    case = ET.Element(
        "testcase",
        {
            "classname": _xml_safe(result.kind),
            "name": _xml_safe(result.name),
            "time": _seconds(result.duration_s),
        },
    )
    note = _xml_safe(probe_note(result))
    blocked = gate.probe_reason(result.name) if gate is not None else None
    if blocked is not None:
        # A SKIP or WARN the gate did not allow fails the build like a FAIL would.
        word = result.verdict.value.upper()
        detail = note or DEFAULT_MESSAGES.get(result.verdict, word.lower())
        message = f"{word} not allowed by the gate: {detail}"
        outcome = ET.SubElement(case, "failure", {"message": _one_line(message), "type": "gate"})
        outcome.text = f"{message}\n{_xml_safe(blocked.message)}"
        return case
    tag = _OUTCOME_TAGS.get(result.verdict)
    if tag is not None:
        message = note or DEFAULT_MESSAGES[result.verdict]
        outcome = ET.SubElement(case, tag, {"message": _one_line(message)})
        if result.verdict is not Verdict.SKIP:
            outcome.set("type", result.verdict.value)
            outcome.text = message
    elif result.verdict is Verdict.WARN:
        ET.SubElement(case, "system-out").text = f"WARN: {note}" if note else "WARN"
    return case


def _xml_safe(text: str) -> str:
    """``text`` without characters XML 1.0 cannot represent (escaping is ElementTree's job)."""
    return _NOT_XML.sub("", text)


def _one_line(text: str) -> str:
    # Attribute values keep newlines only as &#10;, which many CI viewers print raw.
    return " ".join(text.split())


def _fixed(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "nan"


def _seconds(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) and value >= 0 else "0.000"


def _timestamp(suite: SuiteResult) -> str:
    """The start time in UTC without an offset, the form the JUnit schema expects."""
    moment = suite.started_at
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="seconds")


__all__ = ["DEFAULT_MESSAGES", "GATE_CASE", "SUITE_NAME", "to_junit"]
