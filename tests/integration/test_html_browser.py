"""The HTML report in a real browser: headless Chromium opens a saved run from file://.

Asserts what a user attaching the page to a pull request relies on: the page makes
no request besides itself (no CDN, no font, no image), logs no console error or
exception, draws every panel, the token view answers the keyboard, print hides
the chrome, and a screenshot can be taken (saved next to the test's files).

Needs the Debian package ``chromium`` (``scripts/setup.sh`` installs it). Without
it the test skips, naming the package, except under CI, where that is a failure.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from tests.integration.chromium import find_chromium, open_page

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core.documents import load_document
from dlm_sway.core.result import GeneratedSample, ProbeResult, SuiteResult, Verdict
from dlm_sway.demo.assets import document_path
from dlm_sway.report.html import to_html
from dlm_sway.report.json_report import from_json, to_json
from dlm_sway.suite.loader import from_dict
from dlm_sway.suite.runner import run
from dlm_sway.suite.score import compute

pytestmark = pytest.mark.browser

PROMPTS = ["The Guild keeps the", "Every light of the Reach", "A keeper who", "The widow"]
PANELS = [
    "header",
    "probes",
    "nulls",
    "ablation",
    "sections",
    "forgetting",
    "generations",
    "tokens",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        message = "chromium is not installed: apt-get install chromium (scripts/setup.sh does)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run the browser test")
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def saved_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo-like dummy run, saved as JSON, re-read and rendered, as `sway report` does."""
    loaded = from_dict(
        {
            "models": {"ft": {"kind": "dummy", "base": "dummy-base", "adapter": "builtin:x"}},
            "defaults": {"seed": 0, "top_k": 64},
            "suite": [
                {"name": "null_baseline", "kind": "null_adapter", "runs": 3},
                {"name": "topic_shift", "kind": "delta_kl", "prompts": PROMPTS},
                {"name": "sections", "kind": "section_internalization"},
                {"name": "knowledge", "kind": "calibration_drift", "items_limit": 16},
                {"name": "scale", "kind": "adapter_ablation", "prompts": PROMPTS[:2]},
            ],
        },
        document=load_document(document_path()),
    )
    suite = run(loaded, DummyDifferentialBackend())
    sample = GeneratedSample("Who keeps the lamps?", "I am not sure.", "The Guild's keepers.")
    gen = ProbeResult("answers", "generation_demo", Verdict.PASS, generations=(sample,))
    fields = {name: getattr(suite, name) for name in SuiteResult.__dataclass_fields__}
    suite = SuiteResult(**{**fields, "probes": (*suite.probes, gen)})
    folder = tmp_path_factory.mktemp("html")
    saved = folder / "run.json"
    saved.write_text(to_json(suite, compute(suite, loaded.weights)), encoding="utf-8")
    page = folder / "report.html"
    page.write_text(to_html(*from_json(json.loads(saved.read_text("utf-8")))), encoding="utf-8")
    return page


def test_report_opens_offline_without_errors_and_draws_every_panel(
    chromium: str, saved_page: Path
) -> None:
    url = saved_page.as_uri()
    with open_page(url, chromium=chromium) as page:
        state: dict[str, Any] = page.evaluate(
            """JSON.stringify({
              panels: Array.from(document.querySelectorAll('[data-panel]'))
                .map(e => e.dataset.panel).filter(p => p !== 'health'),
              nulls: document.querySelectorAll('svg circle.null').length,
              tokens: document.querySelectorAll('.tokens .t').length,
              shaded: getComputedStyle(document.querySelector('.tokens .t.p5, .tokens .t.n5'))
                .backgroundColor,
              width: document.documentElement.scrollWidth,
            })"""
        )
        state = json.loads(str(state))
        # Keyboard: the first token is the tab stop; ArrowRight moves to the next one.
        page.evaluate("document.querySelector('.tokens .t[tabindex=\"0\"]').focus()")
        page.key("ArrowRight")
        moved = page.evaluate(
            """(() => { const all = document.querySelector('.tokens').querySelectorAll('.t');
                 return document.activeElement === all[1]; })()"""
        )
        page.send("Emulation.setEmulatedMedia", media="print")
        footer = page.evaluate("getComputedStyle(document.querySelector('footer')).display")
        page.send("Emulation.setEmulatedMedia", media="screen")
        shot = saved_page.with_suffix(".png")
        page.screenshot(shot)
        requests = [e["request"]["url"] for e in page.of("Network.requestWillBeSent")]
        failed = page.of("Network.loadingFailed")
        exceptions = page.of("Runtime.exceptionThrown")
        console = [
            e
            for e in page.of("Runtime.consoleAPICalled")
            if e.get("type") in ("error", "warning", "assert")
        ]
        logged = [e["entry"] for e in page.of("Log.entryAdded") if e["entry"]["level"] == "error"]

    assert requests == [url], f"the page requested more than itself: {requests}"
    assert not failed and not exceptions and not console and not logged, (
        failed,
        exceptions,
        console,
        logged,
    )
    assert state["panels"] == PANELS
    assert state["nulls"] > 0 and state["tokens"] > 100
    assert state["shaded"] not in ("rgba(0, 0, 0, 0)", "transparent")
    assert state["width"] <= 1200, "the page scrolls sideways at 1200 px"
    assert moved is True
    assert footer == "none"
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(data[16:20], "big") == 1200


def test_a_browser_session_leaves_nothing_in_the_temp_folder(
    chromium: str, saved_page: Path
) -> None:
    """Chromium's profile and its own scratch folders (``org.chromium.Chromium.*``, the
    singleton socket) all live in one folder that goes when the page closes."""
    import tempfile

    scratch = Path(tempfile.gettempdir())
    before = set(scratch.iterdir())
    with open_page(saved_page.as_uri(), chromium=chromium) as page:
        assert page.evaluate("document.readyState") == "complete"
    left = [p.name for p in set(scratch.iterdir()) - before]
    assert not [n for n in left if "chromium" in n.lower()], left
