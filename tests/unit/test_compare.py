"""``sway compare``: saved runs side by side, regressions vs the first run, exit codes."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from dlm_sway.cli.app import app
from dlm_sway.core.result import ProbeResult, SuiteResult, SwayScore, Verdict
from dlm_sway.report.compare import compare_runs
from dlm_sway.report.compare_html import to_html

PROMPTS = ["The quick brown fox", "Alpha beta gamma delta", "Hello world, once again"]
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
SUITE = [
    {"name": "calib", "kind": "null_adapter", "runs": 10},
    {"name": "topic", "kind": "delta_kl", "prompts": PROMPTS},
    {"name": "scale", "kind": "adapter_ablation", "prompts": PROMPTS[:2]},
]


def saved_run(folder: Path, name: str, options: dict[str, Any], suite: list[Any] = SUITE) -> Path:
    """A real ``sway run --json`` file on the dummy backend."""
    spec = folder / f"{name}.yaml"
    models = {"ft": {"kind": "dummy", "base": "b", "adapter": "builtin:x", "options": options}}
    spec.write_text(yaml.safe_dump({"version": 1, "models": models, "suite": suite}), "utf-8")
    out = folder / f"{name}.json"
    result = CliRunner().invoke(app, ["run", str(spec), "--json", str(out)], env=ENV)
    assert result.exit_code == 0, result.output
    return out


def sway(*args: str | Path) -> Any:
    return CliRunner().invoke(app, ["compare", *map(str, args)], env=ENV)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("runs")
    return {
        "trained": saved_run(folder, "trained", {"strength": 1.0, "planted": 1.0}),
        "again": saved_run(folder, "again", {"strength": 1.0, "planted": 1.0}),
        "noop": saved_run(folder, "noop", {"strength": 0.0}),
    }


def probes(path: Path) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in json.loads(path.read_text("utf-8"))["probes"]}


def test_deltas_are_against_the_first_run_and_a_lost_pass_is_a_regression(
    runs: dict[str, Path],
) -> None:
    result = sway(runs["trained"], runs["noop"], "--format", "json")
    assert result.exit_code == 0, result.output  # reporting alone never fails
    data = json.loads(result.stdout)
    assert data["baseline"] == "trained"
    rows = {row["name"]: row for row in data["probes"]}
    assert list(rows) == ["calib", "topic", "scale"]
    first, second = probes(runs["trained"])["topic"], probes(runs["noop"])["topic"]
    cell = rows["topic"]["runs"][1]
    assert cell["delta_raw"] == pytest.approx(second["raw"] - first["raw"])
    assert cell["delta_score"] == pytest.approx(second["score"] - first["score"])
    assert rows["topic"]["runs"][0]["delta_raw"] is None  # the baseline has no delta
    assert first["verdict"] == "pass" and second["verdict"] == "fail"
    found = {(r["probe"], r["kind"]) for r in data["regressions"]}
    assert ("topic", "verdict") in found and ("topic", "score") in found
    assert ("composite", "composite") in found


def test_fail_on_regression_exits_1_after_printing_the_table(runs: dict[str, Path]) -> None:
    result = sway(runs["trained"], runs["again"], runs["noop"], "--fail-on-regression")
    assert result.exit_code == 1, result.output
    out = result.stdout
    assert "topic" in out and "scale" in out and "(baseline)" in out
    assert re.search(r"noop: topic: verdict PASS → FAIL", out), out


def test_identical_runs_do_not_regress(runs: dict[str, Path]) -> None:
    result = sway(runs["trained"], runs["again"], "--fail-on-regression", "--format", "md")
    assert result.exit_code == 0, result.output
    assert "no regression vs trained" in result.stdout
    assert "| topic (delta_kl) |" in result.stdout


def test_an_improvement_is_not_a_regression(runs: dict[str, Path]) -> None:
    result = sway(runs["noop"], runs["trained"], "--fail-on-regression")
    assert result.exit_code == 0, result.output


def test_runs_with_different_probes_show_gaps(runs: dict[str, Path], tmp_path: Path) -> None:
    other = saved_run(
        tmp_path,
        "other",
        {"strength": 1.0, "planted": 1.0},
        [SUITE[0], SUITE[1], {"name": "extra", "kind": "delta_kl", "prompts": PROMPTS[:1]}],
    )
    result = sway(runs["trained"], other, "--format", "json", "--fail-on-regression")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {(g["probe"], g["run"]) for g in data["gaps"]} == {
        ("scale", "other"),
        ("extra", "trained"),
    }
    md = sway(runs["trained"], other, "--format", "md").stdout
    assert "(not in this run)" in md


@pytest.mark.parametrize("content", [None, "{not json", '{"schema_version": 2}'])
def test_an_unreadable_file_is_exit_2_naming_it(
    runs: dict[str, Path], tmp_path: Path, content: str | None
) -> None:
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content, "utf-8")
    result = sway(runs["trained"], bad)
    assert result.exit_code == 2, result.output
    assert str(bad) in result.output
    assert "Traceback" not in result.output


def test_one_file_or_an_output_over_an_input_is_exit_2(runs: dict[str, Path]) -> None:
    assert sway(runs["trained"]).exit_code == 2
    clobber = sway(runs["trained"], runs["noop"], "--format", "md", "--out", runs["noop"])
    assert clobber.exit_code == 2, clobber.output
    assert "would overwrite an input" in clobber.output
    assert json.loads(runs["noop"].read_text("utf-8"))["probes"]  # untouched


def test_html_is_self_contained_with_a_trajectory_chart(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    target = tmp_path / "compare.html"
    result = sway(runs["trained"], runs["again"], runs["noop"], "-f", "html", "-o", target)
    assert result.exit_code == 0, result.output
    page = target.read_text("utf-8")
    for external in ("<script", "<link", "src=", "href=", "url(", "@import"):
        assert external not in page, external
    svg = page[page.index("<svg") : page.index("</svg>")]
    # overall + the probes that have a score, each a line through the 3 runs
    assert svg.count("<polyline") >= 3
    assert "trained" in svg and "noop" in svg
    overall = json.loads(runs["noop"].read_text("utf-8"))["score"]["overall"]
    assert f"{overall:.2f}" in page  # the numbers are in the text too, not only drawn


def _suite(*probes: ProbeResult) -> SuiteResult:
    now = datetime.now(UTC)
    return SuiteResult("s.yaml", now, now, "base", "adapter", "0", tuple(probes))


def _score(overall: float) -> SwayScore:
    return SwayScore(overall=overall, band="healthy", components={}, weights={})


@pytest.mark.parametrize(
    ("before", "after", "regressed"),
    [
        ((Verdict.PASS, 0.90), (Verdict.PASS, 0.85), set()),  # within max_drop
        ((Verdict.PASS, 0.90), (Verdict.PASS, 0.75), {"score"}),
        ((Verdict.PASS, 0.90), (Verdict.WARN, 0.88), {"verdict"}),
        ((Verdict.WARN, 0.50), (Verdict.PASS, 0.90), set()),
        ((Verdict.PASS, 0.90), (Verdict.SKIP, None), {"verdict"}),  # no longer judged
        ((Verdict.SKIP, None), (Verdict.FAIL, 0.10), set()),  # no baseline to lose
        ((Verdict.FAIL, 0.10), (Verdict.ERROR, None), set()),
    ],
)
def test_what_counts_as_a_regression(
    before: tuple[Verdict, float | None], after: tuple[Verdict, float | None], regressed: set[str]
) -> None:
    runs = [
        (label, f"{label}.json", _suite(ProbeResult("p", "delta_kl", v, score=s)), _score(0.8))
        for label, (v, s) in (("a", before), ("b", after))
    ]
    comparison = compare_runs(runs, max_drop=0.10)
    assert {r.kind for r in comparison.regressions} == regressed
    assert "<svg" in to_html(comparison)
