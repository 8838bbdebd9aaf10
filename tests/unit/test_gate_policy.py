"""The gate policy and its one decision: exit code, terminal line, JUnit, markdown and JSON agree.

What a CI job relies on: ``sway gate`` exits 0 only when something was verified
and nothing failed, errored, skipped or warned without an explicit allowance;
every reason it fails is a failing JUnit test case; a suite that verified
nothing exits 2, never 0. Suites here use a fixed-outcome test probe (registered
for the test only), so each verdict is exactly the one the test asks for.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dlm_sway.cli.app import app
from dlm_sway.core.result import (
    Direction,
    NullSummary,
    ProbeResult,
    SuiteResult,
    SwayScore,
    Verdict,
    band_for,
)

ENV = {"COLUMNS": "100", "NO_COLOR": "1", "FORCE_COLOR": None, "TTY_COMPATIBLE": None}
KIND = "gate_policy_test_outcome"
CALIBRATED = NullSummary(
    construction="norm_matched", method="t_prediction", k=10, samples=(), z_threshold=3.0
)
PROMPTS = ["The quick brown fox", "Alpha beta gamma delta", "Hello world", "Once upon a time"]
TRAINED = {"strength": 1.0, "planted": 1.0}


@pytest.fixture
def outcome_kind() -> Iterator[str]:
    """A probe kind whose verdict is whatever its entry says (needs no model)."""
    from dlm_sway.probes import base
    from dlm_sway.probes.base import Probe, ProbeSpec, RunContext

    class OutcomeSpec(ProbeSpec):
        outcome: Literal["pass", "fail", "warn", "skip", "error"] = "pass"

    class OutcomeProbe(Probe):
        """Test double: returns the verdict its entry names."""

        kind = KIND
        spec_cls = OutcomeSpec
        needs_backend = False
        uncalibrated_reason = "a test double with a fixed outcome"

        def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
            assert isinstance(spec, OutcomeSpec)
            verdict = Verdict(spec.outcome)
            score = {Verdict.PASS: 0.9, Verdict.WARN: 0.7, Verdict.FAIL: 0.1}.get(verdict)
            # A PASS stands for a claim judged against null adapters (the gate requires one).
            null = CALIBRATED if verdict is Verdict.PASS else None
            return ProbeResult(
                spec.name,
                spec.kind,
                verdict,
                score=score,
                message=f"fixed {spec.outcome}",
                null=null,
            )

    base.registry()  # built-ins first, so ours is added to a loaded registry
    assert base._REGISTRY.get(KIND) is OutcomeProbe
    yield KIND
    base._REGISTRY.pop(KIND, None)


@pytest.fixture
def cli() -> Any:
    runner = CliRunner()

    def invoke(*args: str | Path) -> Any:
        return runner.invoke(app, [str(a) for a in args], env=ENV)

    return invoke


def outcome_spec(tmp_path: Path, *entries: dict[str, Any], **top: Any) -> Path:
    """A model-free spec of outcome probes: ``{"name": "a", "outcome": "skip"}``."""
    suite = [{"kind": KIND, **entry} for entry in entries]
    data = {"version": 1, "models": {"ft": {"kind": "dummy", "base": "d"}}, "suite": suite, **top}
    path = tmp_path / "outcomes.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def dummy_spec(tmp_path: Path, options: dict[str, Any], **top: Any) -> Path:
    data = {
        "version": 1,
        "models": {"ft": {"kind": "dummy", "base": "dummy-base", "options": options}},
        "defaults": {"seed": 0},
        "suite": [
            {"name": "calib", "kind": "null_adapter", "runs": 10},
            {"name": "topic", "kind": "delta_kl", "prompts": PROMPTS},
            {"name": "scale", "kind": "adapter_ablation", "prompts": PROMPTS[:2]},
        ],
        **top,
    }
    path = tmp_path / "dummy.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def unloadable_spec(tmp_path: Path) -> Path:
    """An hf spec whose base does not exist: any check that runs before the model loads
    reports its own problem; one that runs after would report the missing base instead."""
    data = {
        "version": 1,
        "models": {"ft": {"kind": "hf", "base": "./no-such-base", "adapter": "./no-adapter"}},
        "suite": [
            {"name": "calib", "kind": "null_adapter", "runs": 10},
            {"name": "topic", "kind": "delta_kl", "prompts": PROMPTS},
        ],
    }
    path = tmp_path / "unloadable.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def usage_error(result: Any, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, f"{needle!r} missing from:\n{result.output}"


def junit_failing(root: ET.Element) -> set[tuple[str, str]]:
    """(classname, name) of every test case a CI counts as failed (failure or error)."""
    return {
        (case.get("classname", ""), case.get("name", ""))
        for case in root.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    }


# --- 1. every reason the gate fails is a failing JUnit test case ---------------------------


def test_gate_junit_fails_on_the_threshold_alone(cli: Any, tmp_path: Path) -> None:
    """All probes pass but the composite misses --threshold: the XML must not say green."""
    spec = dummy_spec(tmp_path, TRAINED)
    junit = tmp_path / "gate.xml"
    result = cli("gate", spec, "--threshold", "0.99", "--junit", junit)
    assert result.exit_code == 1, result.output
    root = ET.fromstring(junit.read_text(encoding="utf-8"))
    assert int(root.get("failures", "0")) >= 1
    assert ("sway", "gate") in junit_failing(root)
    gate_case = root.find("testcase[@classname='sway'][@name='gate']")
    assert gate_case is not None
    failure = gate_case.find("failure")
    assert failure is not None and "threshold 0.99" in failure.get("message", "")


def test_gate_outputs_all_carry_the_exit_codes_decision(cli: Any, tmp_path: Path) -> None:
    for options, threshold in ((TRAINED, "0.5"), (TRAINED, "0.99"), ({"strength": 0.0}, "0.5")):
        out = tmp_path / f"{options['strength']}-{threshold}"
        spec = dummy_spec(tmp_path, options)
        paths = {"json": out / "r.json", "md": out / "r.md", "xml": out / "r.xml"}
        result = cli(
            "gate", spec, "--threshold", threshold, "--json", paths["json"],
            "--markdown", paths["md"], "--junit", paths["xml"],
        )  # fmt: skip
        assert result.exit_code in (0, 1), result.output
        gate = json.loads(paths["json"].read_text(encoding="utf-8"))["gate"]
        assert gate["exit_code"] == result.exit_code
        assert gate["passed"] == (result.exit_code == 0)
        root = ET.fromstring(paths["xml"].read_text(encoding="utf-8"))
        assert bool(junit_failing(root)) == (result.exit_code != 0)
        counted = int(root.get("failures", "0")) + int(root.get("errors", "0"))
        assert counted == len(junit_failing(root))
        assert int(root.get("tests", "0")) == len(root.findall("testcase"))
        markdown = paths["md"].read_text(encoding="utf-8")
        assert "## Gate" in markdown
        assert ("**PASSED**" in markdown) == (result.exit_code == 0)
        for reason in gate["reasons"]:
            assert reason["message"] in result.stderr.replace("\n", "")
        # `sway report` of the saved run re-renders the same gate case.
        again = cli("report", paths["json"], "--format", "junit")
        assert again.exit_code == 0, again.output
        assert junit_failing(ET.fromstring(again.stdout)) == junit_failing(root)


# --- 2. SKIP and WARN fail unless allowed; nothing judged is exit 2 -------------------------


@pytest.mark.parametrize("verdict", ["skip", "warn"])
def test_a_run_time_skip_or_warn_fails_the_gate(
    cli: Any, tmp_path: Path, outcome_kind: str, verdict: str
) -> None:
    spec = outcome_spec(tmp_path, {"name": "good"}, {"name": "shaky", "outcome": verdict})
    junit = tmp_path / "gate.xml"
    result = cli("gate", spec, "--threshold", "0", "--junit", junit)
    assert result.exit_code == 1, result.output
    assert "gate FAILED" in result.stderr and "shaky" in result.stderr
    assert f"--allow-{verdict}" in result.stderr  # the message says how to allow it
    assert (KIND, "shaky") in junit_failing(ET.fromstring(junit.read_text(encoding="utf-8")))


@pytest.mark.parametrize("verdict", ["skip", "warn"])
@pytest.mark.parametrize("how", ["flag name", "flag all", "spec list", "spec true"])
def test_an_explicit_allowance_lets_a_skip_or_warn_through(
    cli: Any, tmp_path: Path, outcome_kind: str, verdict: str, how: str
) -> None:
    entries = ({"name": "good"}, {"name": "shaky", "outcome": verdict})
    flag: list[str] = []
    top: dict[str, Any] = {}
    if how == "flag name":
        flag = [f"--allow-{verdict}", "shaky"]
    elif how == "flag all":
        flag = [f"--allow-{verdict}", "all"]
    else:
        top = {"gate": {f"allow_{verdict}": ["shaky"] if how == "spec list" else True}}
    spec = outcome_spec(tmp_path, *entries, **top)
    junit = tmp_path / "gate.xml"
    result = cli("gate", spec, "--threshold", "0", "--junit", junit, *flag)
    assert result.exit_code == 0, result.output
    assert "gate passed" in result.stderr and "shaky" in result.stderr  # the allowance is shown
    assert junit_failing(ET.fromstring(junit.read_text(encoding="utf-8"))) == set()


def test_allowing_skips_does_not_allow_warns(cli: Any, tmp_path: Path, outcome_kind: str) -> None:
    spec = outcome_spec(tmp_path, {"name": "good"}, {"name": "shaky", "outcome": "warn"})
    result = cli("gate", spec, "--threshold", "0", "--allow-skip", "all")
    assert result.exit_code == 1, result.output


def test_an_entry_disabled_in_the_spec_does_not_fail_the_gate(
    cli: Any, tmp_path: Path, outcome_kind: str
) -> None:
    spec = outcome_spec(
        tmp_path, {"name": "good"}, {"name": "later", "outcome": "fail", "enabled": False}
    )
    result = cli("gate", spec, "--threshold", "0")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("flags", [[], ["--allow-skip", "all"], ["--allow-skip", "off"]])
def test_a_suite_that_verified_nothing_exits_2(
    cli: Any, tmp_path: Path, outcome_kind: str, flags: list[str]
) -> None:
    spec = outcome_spec(tmp_path, {"name": "off", "outcome": "skip"})
    junit = tmp_path / "gate.xml"
    result = cli("gate", spec, "--threshold", "0", "--junit", junit, *flags)
    usage_error(result, "nothing was verified")
    assert "gate passed" not in result.output
    root = ET.fromstring(junit.read_text(encoding="utf-8"))
    gate_case = root.find("testcase[@classname='sway'][@name='gate']")
    assert gate_case is not None and gate_case.find("error") is not None


@pytest.mark.parametrize(
    ("where", "needle"),
    [("flag", "--allow-skip"), ("spec", "gate.allow_skip"), ("warn flag", "--allow-warn")],
)
def test_unknown_names_in_allow_lists_exit_2_naming_them(
    cli: Any, tmp_path: Path, outcome_kind: str, where: str, needle: str
) -> None:
    top = {"gate": {"allow_skip": ["good", "nope"]}} if where == "spec" else {}
    spec = outcome_spec(tmp_path, {"name": "good"}, **top)
    flags = {"flag": ["--allow-skip", "nope"], "warn flag": ["--allow-warn", "nope"]}.get(where, [])
    usage_error(cli("gate", spec, *flags), needle, "'nope'", "good")
    if where == "spec":  # a typo in the spec's gate section is caught by `run` and dry runs too
        usage_error(cli("run", spec, "--dry-run"), needle, "'nope'")


@pytest.mark.parametrize("value", ["1", '"yes"', "null", "[1]", "{a: 1}", "good"])
def test_the_gate_section_is_strict(
    cli: Any, tmp_path: Path, outcome_kind: str, value: str
) -> None:
    spec = outcome_spec(tmp_path, {"name": "good"})
    spec.write_text(
        spec.read_text(encoding="utf-8") + f"gate:\n  allow_skip: {value}\n", encoding="utf-8"
    )
    usage_error(cli("gate", spec), "gate.allow_skip")


# --- 8. --threshold and --weights are checked before anything loads -------------------------


@pytest.mark.parametrize("threshold", ["nan", "inf", "-inf", "-0.1", "1.0000001", "1e309"])
def test_threshold_must_be_finite_within_0_1(cli: Any, tmp_path: Path, threshold: str) -> None:
    result = cli("gate", unloadable_spec(tmp_path), "--threshold", threshold)
    usage_error(result, "--threshold")
    assert "no-such-base" not in result.output  # refused before the model load was tried


@pytest.mark.parametrize(
    "weights", ["adherence=nan", "adherence=inf", "adherence=1e999", "adherence=-1", "x=1", ","]
)
@pytest.mark.parametrize("command", [["gate"], ["run"], ["run", "--dry-run"]])
def test_weights_are_validated_before_anything_runs(
    cli: Any, tmp_path: Path, weights: str, command: list[str]
) -> None:
    result = cli(*command, unloadable_spec(tmp_path), "--weights", weights)
    usage_error(result, "--weights")
    assert "no-such-base" not in result.output


# --- check uses the same decision: nothing judged is exit 2 ---------------------------------


def test_check_exits_2_when_nothing_was_judged(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A preflight abort leaves only an ERROR: `check` must not exit 0 as if it had a verdict."""
    import dlm_sway.cli.check as check_module

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "b"}))
    aborted = fake_suite(
        ProbeResult("__preflight__", "preflight", Verdict.ERROR, message="non-finite logits")
    )
    monkeypatch.setattr(check_module, "execute", lambda *a, **k: (aborted, score_of(0.0)))
    usage_error(cli("check", adapter, "--base", "b"), "nothing was verified")


def test_demo_exits_2_when_nothing_was_judged(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both demo suites aborted before any probe: a clean exit 2, not exit 0 or a crash."""
    import dlm_sway.backends.builtin_models as builtin_models
    import dlm_sway.cli.demo as demo_module

    aborted = fake_suite(
        ProbeResult("__preflight__", "preflight", Verdict.ERROR, message="non-finite logits")
    )
    monkeypatch.setattr(builtin_models, "ensure_converted", lambda: None)
    monkeypatch.setattr(demo_module, "execute", lambda *a, **k: (aborted, score_of(0.0)))
    usage_error(cli("demo", "--json-dir", tmp_path / "out"), "nothing was verified", "strong")
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"strong.json", "weak.json", "impostor.json"} <= written


# --- the decision itself, over arbitrary runs ------------------------------------------------


def fake_suite(*probes: ProbeResult) -> SuiteResult:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    return SuiteResult("s.yaml", start, start + timedelta(seconds=1), "b", "a", "0", probes)


def score_of(overall: float) -> SwayScore:
    return SwayScore(overall, band_for(overall), {}, {})


verdicts = st.sampled_from(list(Verdict))
probe_rows = st.lists(
    st.tuples(
        st.sampled_from(["null_adapter", "delta_kl", "preference_flip", "calibration_drift"]),
        verdicts,
        st.booleans(),  # judged against null adapters
    ),
    max_size=6,
)


@st.composite
def gate_cases(draw: st.DrawFn) -> tuple[SuiteResult, SwayScore, Any]:
    from dlm_sway.core.gate import GatePolicy

    rows = draw(probe_rows)
    probes = tuple(
        ProbeResult(
            f"p{i}",
            kind,
            v,
            message=f"m{i}",
            null=CALIBRATED if calibrated else None,
            direction=Direction.HARM if kind == "calibration_drift" else Direction.EFFECT,
        )
        for i, (kind, v, calibrated) in enumerate(rows)
    )
    names = [p.name for p in probes]
    subset = (
        st.frozensets(st.sampled_from(names), max_size=len(names))
        if names
        else st.just(frozenset())
    )
    policy = GatePolicy(
        threshold=draw(st.floats(0, 1)),
        allow_skip=draw(subset),
        allow_all_skips=draw(st.booleans()),
        allow_warn=draw(subset),
        allow_all_warns=draw(st.booleans()),
        disabled=draw(subset),
    )
    overall = draw(st.one_of(st.floats(0, 1), st.just(math.nan)))
    return fake_suite(*probes), score_of(overall), policy


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gate_cases())
def test_the_gate_passes_only_on_verified_clean_runs(case: tuple[Any, Any, Any]) -> None:
    from dlm_sway.core.gate import decide
    from dlm_sway.report.json_report import read_run, to_json
    from dlm_sway.report.junit import to_junit

    suite, score, policy = case
    decision = decide(suite, score, policy)
    bad: dict[str, str] = {}  # probe name → the reason code that must name it
    for p in suite.probes:
        if p.verdict is Verdict.FAIL:
            bad[p.name] = "failed"
        elif p.verdict is Verdict.ERROR:
            bad[p.name] = "errored"
        elif p.verdict is Verdict.SKIP and not policy.skip_allowed(p.name):
            bad[p.name] = "skipped"
        elif p.verdict is Verdict.WARN and not policy.warn_allowed(p.name):
            bad[p.name] = "warned"
    claims = [
        p
        for p in suite.probes
        if p.kind not in ("null_adapter", "calibration_drift")
        and p.verdict in (Verdict.PASS, Verdict.FAIL, Verdict.WARN)
    ]
    passed = [p for p in claims if p.verdict is Verdict.PASS]
    uncalibrated = bool(passed) and all(p.null is None for p in passed)
    below = not score.overall >= policy.threshold
    clean = not bad and bool(claims) and not uncalibrated and not below
    assert decision.passed == clean
    assert decision.exit_code == (0 if clean else 2 if not claims and not any(
        code in ("failed", "errored") for code in bad.values()
    ) else 1)  # fmt: skip
    for name, code in bad.items():
        assert any(r.code == code and name in r.probes for r in decision.reasons), (name, code)
    assert any(r.code == "threshold" for r in decision.reasons) == below
    # The JUnit file fails exactly when the gate does, on every probe the gate names.
    root = ET.fromstring(to_junit(suite, score, gate=decision))
    failing = junit_failing(root)
    assert (("sway", "gate") in failing) == (not decision.passed)
    for name, code in bad.items():
        kind = next(p.kind for p in suite.probes if p.name == name)
        assert (kind, name) in failing, (name, code)
    counted = int(root.get("failures", "0")) + int(root.get("errors", "0"))
    assert counted == len(failing)
    # And the JSON file carries the same decision back.
    if math.isfinite(score.overall):
        assert read_run(json.loads(to_json(suite, score, gate=decision)))[2] == decision
