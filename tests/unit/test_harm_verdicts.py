"""Forgetting probes are harm claims judged by the one judge; words follow the typed numbers.

Defects on 416dd1a this pins (issue 8):
- a forgetting result carried no typed direction: Holm found its harm test only through
  ``evidence["null"]["direction"]``, and its message said "harm z=+3.3σ" while its
  ``z_score`` was −3.3;
- signed metrics got an effect ratio ("×−540.5 the null median" when the null median of a
  log-prob change is slightly negative);
- ``prompt_collapse`` opted out of calibration yet used nulls handed to it, and said
  "no calibration" in the words of a missing null_adapter;
- ``null_adapter`` published its statistics as ``evidence["null_stats"]`` for other layers;
- ``sway check`` read the delta_kl verdict's words from ``evidence["headline"]``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core.calibration import compare_to_null
from dlm_sway.core.result import ProbeResult, SuiteResult, Verdict
from dlm_sway.core.stats import NullStats
from dlm_sway.probes.base import RunContext
from dlm_sway.probes.external_perplexity import ExternalPerplexityProbe, ExternalPerplexitySpec
from dlm_sway.probes.prompt_collapse import PromptCollapseProbe, PromptCollapseSpec
from dlm_sway.suite.evidence import apply_holm

# Only names 416dd1a also has are imported up here, so that each test below fails there
# for its own defect rather than all of them at collection.
RunSuite = Callable[..., SuiteResult]
HARM = "harm"  # Direction.HARM is a StrEnum: equal to its value

NULL10 = {"name": "null", "kind": "null_adapter", "runs": 10}
CD = {"name": "cd", "kind": "calibration_drift", "items_limit": 30}


def with_nulls(null: dict[str, Any], *entries: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """``null`` calibrating every entry (calibration_drift's null is drawn only when named)."""
    return ({**null, "calibrate_kinds": sorted({e["kind"] for e in entries})}, *entries)


EP = {"name": "ep", "kind": "external_perplexity", "chunks": 4}
DKL = {
    "name": "dkl",
    "kind": "delta_kl",
    "prompts": ["The capital of France is", "Once upon a time", "def main():", "Hello"],
}
#: (backend, what the forgetting probes conclude on it): forgets / null in disguise / no-op.
BACKENDS = {
    "forgets": lambda: DummyDifferentialBackend(),
    "null_in_disguise": lambda: DummyDifferentialBackend(planted=0.0),
    "noop": lambda: DummyDifferentialBackend(strength=0.0),
}


def _z_in(message: str) -> str:
    m = re.search(r"z=([+-]\d+\.\d\d)σ", message)
    assert m, message
    return m.group(1)


def _p_in(message: str) -> str:
    m = re.search(r"\bp=([0-9.e+-]+) vs", message)
    assert m, message
    return m.group(1)


# --- direction and Holm ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("with_null", [True, False])
def test_forgetting_results_are_typed_harm_claims(
    backend: str, with_null: bool, run_suite: RunSuite
) -> None:
    entries = with_nulls({**NULL10, "runs": 4}, CD, EP) if with_null else (CD, EP)
    res = run_suite(*entries, backend=BACKENDS[backend]())
    for name in ("cd", "ep"):
        r = res.by_name(name)
        assert r.direction == HARM, r
        assert r.verdict in (Verdict.PASS, Verdict.WARN, Verdict.FAIL), r.message
        assert r.measured and r.measured in r.message and r.headline
        assert r.message.startswith(r.headline)
        for key in ("null", "weight", "headline"):  # typed fields, not evidence keys
            assert key not in r.evidence


def test_forgetting_probes_stay_out_of_the_holm_family(run_suite: RunSuite) -> None:
    res = run_suite(*with_nulls(NULL10, DKL, CD, EP))
    cd, ep, dkl = res.by_name("cd"), res.by_name("ep"), res.by_name("dkl")
    assert cd.p_value is not None and ep.p_value is not None  # they were calibrated
    assert cd.p_adjusted is None and ep.p_adjusted is None
    assert "Holm" not in cd.message and "Holm" not in ep.message
    # the effect claim is the only member of its family: Holm leaves its p alone
    assert dkl.p_value is not None and dkl.p_adjusted == pytest.approx(dkl.p_value)


def test_a_harm_pass_is_never_demoted_by_holm() -> None:
    """A harm PASS claims *no* harm: a large p is what it rests on, not a failed effect."""
    from dlm_sway.core.result import Direction, NullSummary

    null = NullSummary(
        construction="norm_matched",
        method="t_prediction",
        k=10,
        samples=(0.1,) * 10,
        z_threshold=3.0,
    )
    harm = ProbeResult(
        name="cd",
        kind="calibration_drift",
        verdict=Verdict.PASS,
        score=1.0,
        raw=0.0,
        z_score=-1.0,
        p_value=0.84,
        message="no forgetting beyond noise: ...",
        direction=Direction.HARM,
        headline="no forgetting beyond noise",
        null=null,
    )
    effect = ProbeResult(
        name="dkl",
        kind="delta_kl",
        verdict=Verdict.PASS,
        score=0.9,
        raw=0.5,
        z_score=5.0,
        p_value=1e-6,
        message="above noise: ...",
        headline="above noise",
        null=null,
    )
    out = {r.name: r for r in apply_holm([harm, effect])}
    assert out["cd"] == harm
    assert out["dkl"].p_adjusted == pytest.approx(1e-6)  # family of one


# --- signed metrics: no effect ratio --------------------------------------------------------


def _ep_against(samples: list[float], **spec: Any) -> ProbeResult:
    stats = NullStats.from_samples(samples, construction="norm_matched")
    ctx = RunContext(backend=DummyDifferentialBackend(), null_stats={"ep": stats})
    return ExternalPerplexityProbe().run(ExternalPerplexitySpec(name="ep", **spec), ctx)


def test_slightly_negative_null_median_gives_no_ratio() -> None:
    """416dd1a printed '×−540.5 the null median' here: Δ log-prob is signed."""
    r = _ep_against([-0.0012, -0.0016, 0.0009, -0.0021, 0.0004, -0.0007])
    assert r.effect_ratio is None
    assert "×" not in r.message and "null median" not in r.message
    assert "null SDs from the null mean" in r.message
    assert r.null is not None and r.null.non_negative is False


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.floats(min_value=-0.05, max_value=0.05, allow_nan=False, allow_infinity=False),
        min_size=2,
        max_size=12,
    )
)
def test_external_perplexity_never_reports_a_ratio(samples: list[float]) -> None:
    r = _ep_against(samples, chunks=1, chunk_chars=200)
    assert r.effect_ratio is None and "×" not in r.message
    assert r.direction == HARM
    if r.z_score is not None:
        assert _z_in(r.message) == f"{r.z_score:+.2f}"


@settings(max_examples=300, deadline=None)
@given(
    raw=st.floats(min_value=-2.0, max_value=2.0, allow_nan=False),
    samples=st.lists(
        st.floats(min_value=-1.0, max_value=1.0, allow_nan=False), min_size=2, max_size=20
    ),
    practical_ok=st.booleans(),
)
def test_judge_harm_on_a_signed_metric_never_shows_a_ratio(
    raw: float, samples: list[float], practical_ok: bool
) -> None:
    from dlm_sway.core.judge import judge_harm

    c = compare_to_null(raw, samples, sign=-1)
    j = judge_harm(
        c,
        what=f"mean Δ {raw:+.4f}",
        versus="vs nulls",
        practical_ok=practical_ok,
        limit_text="limit: Δ ≥ -0.1",
        z_bar=3.0,
        non_negative=False,
    )
    assert "×" not in j.message
    if c.z is not None:
        assert f"z={c.z:+.2f}σ" in j.message
    if j.verdict is Verdict.FAIL:
        assert not practical_ok and j.score == 0.0
    if j.verdict is Verdict.WARN:
        assert j.score is not None and j.score <= 0.5


# --- the numbers in the words are the typed fields ------------------------------------------


@pytest.mark.parametrize("backend", ["forgets", "null_in_disguise"])
def test_forgetting_messages_quote_their_typed_fields(backend: str, run_suite: RunSuite) -> None:
    res = run_suite(*with_nulls(NULL10, CD, EP), backend=BACKENDS[backend]())
    cd, ep = res.by_name("cd"), res.by_name("ep")
    for r in (cd, ep):
        assert r.z_score is not None and r.p_value is not None, r.message
        assert _z_in(r.message) == f"{r.z_score:+.2f}"  # 416dd1a: "+3.33" next to −3.33
        assert _p_in(r.message) == f"{r.p_value:.2g}"  # how every report prints p
        assert r.null is not None and f"vs {r.null.k} norm-matched nulls" in r.message
    assert cd.raw is not None and cd.ft_value is not None
    assert f"({cd.raw:.1%})" in cd.message and f"mean Δ {cd.ft_value:+.3f}" in cd.message
    if cd.effect_ratio is not None:
        assert f"{cd.effect_ratio:.3g}× the null median" in cd.message
    assert ep.raw is not None and ep.base_value is not None and ep.ft_value is not None
    assert f"mean Δ log-prob {ep.raw:+.4f}" in ep.message
    ppl = f"perplexity {math.exp(-ep.base_value):.3g} → {math.exp(-ep.ft_value):.3g}"
    assert ppl in ep.message


def test_the_forgetting_verdict_follows_its_harm_z(run_suite: RunSuite) -> None:
    res = run_suite(*with_nulls(NULL10, {**CD, "items_limit": 60}, EP))  # 60 items: harm z ≥ 3 here
    for r in (res.by_name("cd"), res.by_name("ep")):
        assert r.z_score is not None and r.z_score >= 3.0  # more forgetting than every null
        assert r.verdict is Verdict.FAIL and r.score == 0.0
        assert r.headline == "forgets more than random adapters"


def test_prompt_collapse_is_not_calibrated_even_when_handed_nulls() -> None:
    from tests.unit.test_adherence_probes import FadingBackend

    nulls = NullStats.from_samples([300.0, 350.0, 280.0, 330.0], construction="norm_matched")
    spec = PromptCollapseSpec(name="pc", prompts=["Hi there"])
    ctx = RunContext(backend=FadingBackend(amp=1.0, tau=1e9), null_stats={"pc": nulls})
    r = PromptCollapseProbe().run(spec, ctx)
    assert r.null is None and r.z_score is None and r.p_value is None and r.effect_ratio is None
    assert "not calibrated against null adapters" in r.message
    assert PromptCollapseProbe.uncalibrated_reason in r.message
    assert r.measured in r.message and r.headline == "above threshold"


# --- null_adapter publishes typed statistics only -------------------------------------------


def test_null_adapter_statistics_are_typed_not_evidence(run_suite: RunSuite) -> None:
    res = run_suite(*with_nulls({**NULL10, "rank_multipliers": [0.5, 1.0]}, DKL, CD))
    null = res.by_name("null")
    for key in ("null_stats", "null_stats_by_rank", "weight"):
        assert key not in null.evidence
    cal = null.calibration
    assert cal is not None and set(cal.by_rank) == {"rank_0.50", "rank_1.00"}
    assert set(cal.stats) == {"dkl", "cd"} and cal.stats["cd"].n == 10
    # the human detail stays
    assert null.evidence["calibrated"] == ["cd", "dkl"] and "skipped_kinds" in null.evidence


# --- sway check reads the typed verdict -----------------------------------------------------


def _suite_of(result: ProbeResult) -> SuiteResult:
    now = datetime.now(UTC)
    return SuiteResult(
        spec_path="x",
        started_at=now,
        finished_at=now,
        base_model_id="b",
        adapter_id="a",
        sway_version="0",
        probes=(result,),
    )


def _dkl(verdict: Verdict, headline: str, **kw: Any) -> ProbeResult:
    fields: dict[str, Any] = {"raw": 0.004, "z_score": 2.4, "p_value": 0.008, **kw}
    return ProbeResult(
        name="divergence",
        kind="delta_kl",
        verdict=verdict,
        headline=headline,
        message=f"{headline}: ...",
        **fields,
    )


def test_check_banner_reads_typed_headlines() -> None:
    from dlm_sway.cli.check import banner

    colour, line = banner(_suite_of(_dkl(Verdict.FAIL, "real but negligible")))
    assert colour == "red" and line.startswith("negligible")
    colour, line = banner(_suite_of(_dkl(Verdict.WARN, "real but below the bar")))
    assert colour == "yellow" and "real effect" in line and "not enough evidence" not in line
    colour, line = banner(_suite_of(_dkl(Verdict.WARN, "not calibrated", z_score=None)))
    assert line.startswith("no verdict") and "above" not in line
