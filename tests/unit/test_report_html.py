"""The HTML report: every panel drawn from a saved run, offline, small, and safe to open.

The page is a pure function of the run (re-reading the JSON draws the same page),
requests nothing (every ``src``/``href`` is an in-page anchor), stays small enough
to attach to a pull request, and shows hostile text from a result as text.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from markupsafe import escape
from typer.testing import CliRunner

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core.calibration import compare_to_null
from dlm_sway.core.documents import load_document
from dlm_sway.core.result import (
    Direction,
    GeneratedSample,
    NullSummary,
    ProbeResult,
    SuiteResult,
    SwayScore,
    TokenTrace,
    Verdict,
)
from dlm_sway.demo.assets import document_path
from dlm_sway.report.html import HtmlRun, to_html, to_html_runs, verdict_bar
from dlm_sway.report.json_report import from_json, to_json
from dlm_sway.suite.loader import from_dict
from dlm_sway.suite.runner import run
from dlm_sway.suite.score import compute

PROMPTS = ["The Guild keeps the", "Every light of the Reach", "A keeper who", "The widow"]
PAGE_LIMIT = 1_500_000
ENV = {"COLUMNS": "120", "NO_COLOR": "1"}


def demo_like_suite() -> list[dict[str, Any]]:
    return [
        {"name": "null_baseline", "kind": "null_adapter", "runs": 3},
        {"name": "topic_shift", "kind": "delta_kl", "prompts": PROMPTS},
        {"name": "sections", "kind": "section_internalization"},
        {"name": "knowledge", "kind": "calibration_drift", "items_limit": 16},
        {"name": "scale", "kind": "adapter_ablation", "prompts": PROMPTS[:2]},
    ]


@pytest.fixture(scope="module")
def demo_run() -> tuple[SuiteResult, SwayScore]:
    """A calibrated dummy run on the demo document: every panel has something to draw."""
    loaded = from_dict(
        {
            "models": {"ft": {"kind": "dummy", "base": "dummy-base", "adapter": "builtin:x"}},
            "defaults": {"seed": 0, "top_k": 64},
            "suite": demo_like_suite(),
        },
        document=load_document(document_path()),
    )
    suite = run(loaded, DummyDifferentialBackend())
    return suite, compute(suite, loaded.weights)


@pytest.fixture(scope="module")
def page(demo_run: tuple[SuiteResult, SwayScore]) -> str:
    return to_html(*demo_run)


def panels(html: str) -> list[str]:
    return re.findall(r'data-panel="([a-z]+)"', html)


# --- panels ----------------------------------------------------------------------------


def test_every_panel_of_a_demo_like_run_is_drawn(page: str) -> None:
    drawn = [p for p in panels(page) if p != "health"]  # health: only when a check fired
    assert drawn == ["header", "probes", "nulls", "ablation", "sections", "forgetting", "tokens"]


def test_header_names_base_adapter_version_nulls_composite_and_counts(
    demo_run: tuple[SuiteResult, SwayScore], page: str
) -> None:
    suite, score = demo_run
    header = page.split('data-panel="header"')[1].split("</section>")[0]
    assert "dummy-base" in header and "builtin:x" in header
    assert suite.sway_version in header
    assert "norm_matched × 3" in header
    assert f"{score.overall:.2f}" in header and score.band in header
    for verdict in {p.verdict for p in suite.probes}:
        count = sum(1 for p in suite.probes if p.verdict is verdict)
        assert f"{verdict.value.upper()} {count}" in header


def test_every_null_value_is_a_dot_and_the_bar_is_drawn(
    demo_run: tuple[SuiteResult, SwayScore], page: str
) -> None:
    suite, _ = demo_run
    calibrated = [p for p in suite.probes if p.null is not None and p.null.samples]
    assert calibrated
    for p in calibrated:
        assert p.null is not None
        figure = page.split(f'id="r0-null-{p.name}"')[1].split("</figure>")[0]
        assert figure.count('<circle class="null"') == len(p.null.samples)
        assert figure.count('<line class="bar"') == (0 if p.null.degenerate else 1)
        assert "<title>adapter:" in figure
        # The numbers are in text too, not only in the drawing.
        assert f"{len(p.null.samples)} nulls" in figure


def test_ablation_curve_has_one_point_per_lambda(
    demo_run: tuple[SuiteResult, SwayScore], page: str
) -> None:
    scale = demo_run[0].by_name("scale")
    panel = page.split('data-panel="ablation"')[1].split("</section>")[0]
    assert panel.count('<circle class="pt"') == len(scale.evidence["lambdas"])
    assert "<polyline" in panel


def test_section_bars_one_per_section_with_pass_state_in_text(
    demo_run: tuple[SuiteResult, SwayScore], page: str
) -> None:
    per = demo_run[0].by_name("sections").evidence["per_section"]
    panel = page.split('data-panel="sections"')[1].split("</section>")[0]
    assert panel.count('<rect class="hb') == len(per)
    for entry in per:
        assert str(escape(entry["title"])) in panel
    assert panel.count("<td>yes</td>") + panel.count("<td>no</td>") == len(per)


def test_forgetting_lists_the_worst_items(
    demo_run: tuple[SuiteResult, SwayScore], page: str
) -> None:
    knowledge = demo_run[0].by_name("knowledge")
    panel = page.split('data-panel="forgetting"')[1].split("</section>")[0]
    worst = knowledge.evidence["worst_items"]
    if worst:
        assert worst[0]["prompt"] in panel
    else:
        assert "No item regressed" in panel


# --- per-token view --------------------------------------------------------------------


def test_section_probe_keeps_per_token_lift_from_its_own_forwards(
    demo_run: tuple[SuiteResult, SwayScore],
) -> None:
    doc = load_document(document_path())
    sections = demo_run[0].by_name("sections")
    prose = [s for s in doc.sections if s.kind == "prose" and s.content.strip()]
    assert len(sections.tokens) == len(prose)
    trace = sections.tokens[0]
    text = prose[0].content[:2000]
    assert "".join(trace.pieces) == text
    assert len(trace.values) == len(trace.pieces) and trace.values[0] is None
    backend = DummyDifferentialBackend()
    with backend.as_base() as view:
        base = view.rolling_logprob(text).logprobs
    with backend.as_finetuned() as view:
        ft = view.rolling_logprob(text).logprobs
    for got, b, f in zip(trace.values[1:], base, ft, strict=True):
        assert got == pytest.approx(float(f) - float(b), abs=1e-4)


def test_token_view_shades_every_token_and_gives_its_number_in_text(
    demo_run: tuple[SuiteResult, SwayScore], page: str
) -> None:
    traces = demo_run[0].by_name("sections").tokens
    panel = page.split('data-panel="tokens"')[1].split("</section>")[0]
    spans = re.findall(r'<span class="t [^"]*"[^>]*title="([^"]*)"', panel)
    assert len(spans) == sum(sum(1 for p in t.pieces if p) for t in traces)
    # Each token's exact number is on hover/focus (title) and the largest are in lists.
    value = next(v for v in traces[0].values if v is not None)
    assert f"{value:+.3f}" in spans
    moved = panel.split("Most-moved tokens")[1].split("</table>")[0]
    assert moved.count("<tr><td><a") == 20
    # Keyboard: each trace has one tab stop; links from the list reach their token.
    assert panel.count('tabindex="0"') == len(traces)
    for anchor in re.findall(r'<a href="#(r0-t[0-9-]+)">', moved):
        assert f'id="{anchor}"' in panel


def test_generated_texts_are_shown_side_by_side(demo_run: tuple[SuiteResult, SwayScore]) -> None:
    suite, score = demo_run
    gen = ProbeResult(
        "style",
        "generation_demo",
        Verdict.PASS,
        generations=(
            GeneratedSample("Tell me about the Guild.", "I do not know.", "It keeps lamps."),
        ),
    )
    page = to_html(SuiteResult(**{**_fields(suite), "probes": (*suite.probes, gen)}), score)
    panel = page.split('data-panel="generations"')[1].split("</section>")[0]
    assert panel.index("I do not know.") < panel.index("It keeps lamps.")
    assert "<h5>base</h5>" in panel and "<h5>fine-tuned</h5>" in panel


# --- offline, small, pure --------------------------------------------------------------


def test_page_requests_nothing(page: str) -> None:
    refs = re.findall(r'\b(?:src|href|action|poster|data)\s*=\s*["\']?([^"\'\s>]*)', page)
    assert refs and all(ref.startswith("#") for ref in refs), refs
    assert "@import" not in page and "url(" not in page
    assert re.search(r"https?://(?!www\.w3\.org/2000/svg)", page) is None


def test_demo_like_page_is_small(page: str) -> None:
    assert len(page.encode("utf-8")) < PAGE_LIMIT


def test_a_huge_token_trace_keeps_the_page_small(demo_run: tuple[SuiteResult, SwayScore]) -> None:
    suite, score = demo_run
    pieces = tuple(f" w{i}" for i in range(60_000))
    values = (None, *(((i % 13) - 6) / 3 for i in range(1, 60_000)))
    big = ProbeResult(
        "big",
        "section_internalization",
        Verdict.PASS,
        tokens=(TokenTrace("huge", pieces, values), TokenTrace("small", (" a", " b"), (None, 1.0))),
    )
    page = to_html(SuiteResult(**{**_fields(suite), "probes": (big,)}), score)
    assert len(page.encode("utf-8")) < PAGE_LIMIT
    assert "not drawn: the page shows at most 20,000 tokens" in page
    assert re.search(r'<span class="t [^"]*"[^>]*>b</span>', page)  # later small traces drawn


def test_saved_run_draws_the_same_page(demo_run: tuple[SuiteResult, SwayScore], page: str) -> None:
    suite, score = from_json(json.loads(to_json(*demo_run)))
    assert to_html(suite, score) == page


def test_several_runs_share_one_page_with_a_run_list(
    demo_run: tuple[SuiteResult, SwayScore],
) -> None:
    suite, score = demo_run
    page = to_html_runs(
        [HtmlRun("strong", suite, score), HtmlRun("weak", suite, score)], title="sway demo"
    )
    assert '<a href="#r0">strong</a>' in page and '<a href="#r1">weak</a>' in page
    assert panels(page).count("header") == 2
    assert len(set(re.findall(r'\bid="([^"]+)"', page))) == len(re.findall(r'\bid="', page))


# --- hostile text ----------------------------------------------------------------------

EVIL = '"><script>alert(1)</script><img src=x onerror=alert(2)>\u202e'


def test_hostile_text_is_shown_as_text(demo_run: tuple[SuiteResult, SwayScore]) -> None:
    suite, score = demo_run
    evil = ProbeResult(
        EVIL,
        EVIL,
        Verdict.FAIL,
        raw=0.5,
        message=EVIL,
        headline=EVIL,
        measured=EVIL,
        direction=Direction.HARM,
        evidence={
            "per_section": [{"section_id": EVIL, "title": EVIL, "internalization": 0.1}],
            "worst_items": [{"id": EVIL, "prompt": EVIL, "gold": EVIL, "delta": -2.0}],
            "lambdas": [0, 1],
            "mean_divergence_per_lambda": [0.0, "x"],
        },
        null=NullSummary(EVIL, EVIL, 3, (0.1, 0.2, 0.3), 3.0, degenerate=EVIL),
        tokens=(TokenTrace(EVIL, (EVIL, "</span>"), (None, 1.0), EVIL),),
        generations=(GeneratedSample(EVIL, EVIL, EVIL),),
    )
    bare = SuiteResult(**{**_fields(suite), "adapter_id": EVIL, "base_model_id": EVIL})
    page = to_html(SuiteResult(**{**_fields(bare), "probes": (evil,)}), score)
    assert page.count("<script") == 1  # the page's own keyboard script, nothing else
    assert "<img" not in page and "</span></span>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "\u202e" not in page and "\\u202e" in page  # a bidi override cannot reorder the page


def test_non_finite_and_missing_numbers_never_print_nan(
    demo_run: tuple[SuiteResult, SwayScore],
) -> None:
    suite, score = demo_run
    odd = ProbeResult(
        "odd",
        "delta_kl",
        Verdict.ERROR,
        raw=None,
        null=NullSummary("norm_matched", "t_prediction", 2, (math.nan, 0.1), 3.0),
        tokens=(TokenTrace("t", ("a", " b"), (None, math.inf)),),
    )
    page = to_html(SuiteResult(**{**_fields(suite), "probes": (odd,)}), score)
    assert not re.search(r"\b(nan|inf|NaN|Infinity)\b", page)


# --- the verdict's bar ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("samples", "raw", "sign", "log_scale", "method"),
    [
        ((0.01, 0.012, 0.008, 0.011), 0.5, 1, True, "t_prediction"),
        ((0.2, 0.25, 0.22, 0.21, 0.3), 0.9, 1, False, "t_prediction"),
        ((-0.1, -0.12, -0.13, -0.11), -0.8, -1, False, "t_prediction"),
        ((0.2, 0.25, 0.22, 0.21, 0.3), 0.1, 1, False, "reference_z"),
    ],
)
def test_bar_is_where_the_z_threshold_lies(
    samples: tuple[float, ...], raw: float, sign: int, log_scale: bool, method: str
) -> None:
    c = compare_to_null(raw, samples, sign=sign, log_scale=log_scale, method=method)  # type: ignore[arg-type]
    null = NullSummary(
        "norm_matched",
        method,
        len(samples),
        samples,
        3.0,
        log_scale=log_scale,
        statistic=c.statistic,
    )
    bar = verdict_bar(null, raw)
    assert bar is not None
    at_bar = compare_to_null(bar, samples, sign=sign, log_scale=log_scale, method=method)  # type: ignore[arg-type]
    assert at_bar.z == pytest.approx(3.0, abs=1e-6)


def test_an_unusable_null_gets_no_bar() -> None:
    null = NullSummary("norm_matched", "t_prediction", 3, (0.1, 0.1, 0.1), 3.0, degenerate="flat")
    assert verdict_bar(null, 0.5) is None


# --- command line ------------------------------------------------------------------------


def test_cli_writes_html_from_run_and_from_a_saved_run(tmp_path: Path) -> None:
    from dlm_sway.cli.app import app

    spec = tmp_path / "sway.yaml"
    models = {"ft": {"kind": "dummy", "base": "b", "options": {"strength": 1.0}}}
    suite = [
        {"name": "calib", "kind": "null_adapter", "runs": 3},
        {"name": "topic", "kind": "delta_kl", "prompts": PROMPTS},
    ]
    spec.write_text(yaml.safe_dump({"version": 1, "models": models, "suite": suite}))
    runner = CliRunner()
    out = runner.invoke(
        app,
        [
            "gate",
            str(spec),
            "--json",
            str(tmp_path / "run.json"),
            "--html",
            str(tmp_path / "a.html"),
        ],
        env=ENV,
    )
    assert out.exit_code in (0, 1), out.output
    live = (tmp_path / "a.html").read_text(encoding="utf-8")
    assert "gate</dt>" in live and panels(live)[:3] == ["header", "probes", "nulls"]
    again = runner.invoke(
        app,
        ["report", str(tmp_path / "run.json"), "--format", "html", "-o", str(tmp_path / "b.html")],
        env=ENV,
    )
    assert again.exit_code == 0, again.output
    assert (tmp_path / "b.html").read_text(encoding="utf-8") == live


def test_cli_html_to_a_folder_is_a_usage_error_before_anything_runs(tmp_path: Path) -> None:
    from dlm_sway.cli.app import app

    spec = tmp_path / "sway.yaml"
    models = {"ft": {"kind": "dummy", "base": "b"}}
    suite = [{"name": "topic", "kind": "delta_kl", "prompts": PROMPTS}]
    spec.write_text(yaml.safe_dump({"version": 1, "models": models, "suite": suite}))
    out = CliRunner().invoke(app, ["run", str(spec), "--html", str(tmp_path)], env=ENV)
    assert out.exit_code == 2
    assert "--html" in out.output and "is a folder" in out.output and "run.html" in out.output
    assert "Traceback" not in out.output


def _fields(suite: SuiteResult) -> dict[str, Any]:
    return {name: getattr(suite, name) for name in SuiteResult.__dataclass_fields__}
