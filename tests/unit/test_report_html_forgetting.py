"""The HTML forgetting panel says "no item regressed" only for probes that score items.

A chunk-level or weight-level forgetting probe (external_perplexity, gradient_ghost)
has no items; the demo's page once told a FAILed ``general_english`` "No item
regressed past the margin", which read as a contradiction of its own verdict.
"""

from __future__ import annotations

from datetime import UTC, datetime

from dlm_sway.core.result import Direction, ProbeResult, SuiteResult, Verdict
from dlm_sway.report.html import to_html
from dlm_sway.suite.score import compute

NO_ITEMS = "No item regressed past the margin."


def _block(page: str, name: str) -> str:
    """The forgetting panel's part for one probe: from its heading to the next one."""
    panel = page.split('data-panel="forgetting"')[1].split("</section>")[0]
    return panel.split(f"<h4>{name} ")[1].split("<h4>")[0]


def _page(*probes: ProbeResult) -> str:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    suite = SuiteResult("spec.yaml", now, now, "base", "adapter", "0.1.0", probes)
    return to_html(suite, compute(suite))


def test_item_less_forgetting_probe_does_not_claim_no_item_regressed() -> None:
    chunks = ProbeResult(
        "general_english",
        "external_perplexity",
        Verdict.FAIL,
        raw=-3.0,
        measured="mean Δ log-prob -3.0 nats/token over 3 chunk(s)",
        direction=Direction.HARM,
    )
    items = ProbeResult(
        "general_knowledge",
        "calibration_drift",
        Verdict.PASS,
        raw=0.0,
        direction=Direction.HARM,
        evidence={"worst_items": []},
    )
    page = _page(chunks, items)
    assert "over 3 chunk(s)" in _block(page, "general_english")
    assert NO_ITEMS not in _block(page, "general_english")
    assert NO_ITEMS in _block(page, "general_knowledge")


def test_worst_items_are_listed_not_summarised_away() -> None:
    worst = [
        {"id": "geog-012", "prompt": "The capital of Greece is", "gold": "Athens", "delta": -13.9}
    ]
    items = ProbeResult(
        "general_knowledge",
        "calibration_drift",
        Verdict.FAIL,
        raw=0.9,
        direction=Direction.HARM,
        evidence={"worst_items": worst},
    )
    block = _block(_page(items), "general_knowledge")
    assert "The capital of Greece is" in block and "Athens" in block
    assert NO_ITEMS not in block
