"""The composite band follows the verdicts: harmful, suspicious, noise/partial, then the score.

Results are built by hand from typed fields. ``result()`` passes only the fields
the installed ``ProbeResult`` has, so the defect tests also run (and fail on their
assertion) against a revision without typed fields.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core import result as res
from dlm_sway.core.result import ProbeResult, SuiteResult, Verdict
from dlm_sway.core.stats import NullStats
from dlm_sway.probes.base import RunContext, build_probe
from dlm_sway.suite.score import compute

CATEGORY = {
    "null_adapter": "baseline",
    "delta_kl": "adherence",
    "cluster_kl": "adherence",
    "adapter_ablation": "ablation",
    "section_internalization": "attribution",
    "paraphrase_invariance": "attribution",
    "external_perplexity": "calibration",
    "calibration_drift": "calibration",
}
HARM_KINDS = ("external_perplexity", "calibration_drift")


def result(
    name: str, kind: str, verdict: Verdict, score: float | None, **typed: Any
) -> ProbeResult:
    typed.setdefault("category", CATEGORY.get(kind, ""))
    if kind in HARM_KINDS and hasattr(res, "Direction"):
        typed.setdefault("direction", res.Direction.HARM)
    known = {f.name for f in fields(ProbeResult)}
    return ProbeResult(
        name=name,
        kind=kind,
        verdict=verdict,
        score=score,
        **{k: v for k, v in typed.items() if k in known},
    )


def suite(*probes: ProbeResult) -> SuiteResult:
    t = datetime(2025, 1, 1, tzinfo=UTC)
    return SuiteResult(
        spec_path="sway.yaml",
        started_at=t,
        finished_at=t,
        base_model_id="base",
        adapter_id="adapter",
        sway_version="0.1.0",
        probes=probes,
    )


NULL = result("null_baseline", "null_adapter", Verdict.PASS, 1.0)


# ---- rule 1: a failed forgetting probe makes the run harmful -----------------------


def test_forgetting_probes_failing_are_harmful_even_with_a_healthy_score() -> None:
    """The defect: 15× perplexity on plain English and 72% of facts forgotten, yet
    strong effect probes lifted the overall into "healthy"."""
    run = suite(
        NULL,
        result("kl", "delta_kl", Verdict.PASS, 0.95, p_value=1e-4),
        result("sections", "section_internalization", Verdict.PASS, 0.9, p_value=1e-3),
        result(
            "ppl",
            "external_perplexity",
            Verdict.FAIL,
            0.0,
            message="forgets more than random adapters: perplexity ×15.2 on plain English",
        ),
        result("facts", "calibration_drift", Verdict.FAIL, 0.0, message="72% of facts forgotten"),
    )
    score = compute(run)
    assert score.overall >= 0.6  # the number alone would say healthy
    assert score.band == "harmful"
    assert "forgetting probes 'ppl', 'facts' failed" in score.band_reason
    # The finding names the forgetting probe, not the first FAIL in order.
    assert any(f.startswith("ppl (external_perplexity) failed") for f in score.findings)


def test_a_forgetting_fail_after_an_effect_fail_is_the_named_finding() -> None:
    run = suite(
        result("kl", "delta_kl", Verdict.FAIL, 0.1, message="indistinguishable from noise"),
        result("ppl", "external_perplexity", Verdict.FAIL, 0.0, message="perplexity ×15"),
    )
    score = compute(run)
    assert score.band == "harmful"
    assert score.findings[0].startswith("ppl (external_perplexity) failed: perplexity ×15")


def test_forgetting_within_what_random_adapters_do_is_not_harmful() -> None:
    run = suite(
        result("kl", "delta_kl", Verdict.PASS, 0.9, p_value=1e-4),
        result("ppl", "external_perplexity", Verdict.WARN, 0.5),
        result("facts", "calibration_drift", Verdict.PASS, 1.0),
    )
    score = compute(run)
    assert score.band == "healthy"
    assert "overall score" in score.band_reason


@pytest.mark.parametrize("verdict", [Verdict.SKIP, Verdict.ERROR])
def test_a_forgetting_probe_that_did_not_run_is_not_harm(verdict: Verdict) -> None:
    run = suite(
        result("kl", "delta_kl", Verdict.PASS, 0.9, p_value=1e-4),
        result("ppl", "external_perplexity", verdict, None),
    )
    assert compute(run).band == "healthy"


# ---- rule 2: suspicious needs a named over-fit signal ------------------------------


def test_saturated_z_alone_is_never_suspicious() -> None:
    """The defect: a mild q/v LoRA was "suspicious" only because its z saturated."""
    run = suite(
        NULL,
        result("kl", "delta_kl", Verdict.PASS, 0.999, z_score=40.0, p_value=1e-12),
        result("clusters", "cluster_kl", Verdict.PASS, 0.998, z_score=35.0, p_value=1e-12),
        result("ablation", "adapter_ablation", Verdict.PASS, 0.99, z_score=30.0, p_value=1e-12),
    )
    score = compute(run)
    assert score.overall > 0.95
    assert score.band == "healthy"


def test_a_memorisation_signal_makes_the_run_suspicious_and_is_named() -> None:
    signal = res.verbatim_over_paraphrase(0.8, 0.05, min_lift=0.2, real=True)
    assert signal is not None and signal.name == "verbatim_over_paraphrase"
    run = suite(
        result("kl", "delta_kl", Verdict.PASS, 0.9, p_value=1e-4),
        result("para", "paraphrase_invariance", Verdict.FAIL, 0.25, p_value=1e-4, overfit=signal),
    )
    score = compute(run)
    assert score.band == "suspicious"
    assert score.band_reason.startswith("para shows the over-fit signal verbatim_over_paraphrase")
    line = next(f for f in score.findings if f.startswith("over-fit signal"))
    assert "verbatim_over_paraphrase in para" in line and "0.8" in line and "0.05" in line


def test_harm_outranks_a_memorisation_signal() -> None:
    signal = res.verbatim_over_paraphrase(1.0, 0.0, min_lift=0.2, real=True)
    run = suite(
        result("para", "paraphrase_invariance", Verdict.PASS, 0.9, overfit=signal),
        result("ppl", "external_perplexity", Verdict.FAIL, 0.0),
    )
    assert compute(run).band == "harmful"


@pytest.mark.parametrize(
    ("verbatim", "paraphrase", "min_lift", "real", "flagged"),
    [
        (0.8, 0.1, 0.2, True, True),  # 12.5% carries over
        (0.8, 0.199, 0.2, True, True),  # just under a quarter
        (0.8, 0.2, 0.2, True, False),  # exactly a quarter: not "far above"
        (0.8, 0.5, 0.2, True, False),  # generalises
        (0.8, -0.3, 0.2, True, True),  # rewordings got worse
        (0.8, 0.0, 0.2, False, False),  # verbatim lift not beyond the null
        (0.1, 0.0, 0.2, True, False),  # verbatim lift under min_verbatim_lift
        (0.0, -0.1, 0.0, True, False),  # no lift at all
        (math.nan, 0.0, 0.2, True, False),
        (0.8, math.inf, 0.2, True, False),
    ],
)
def test_the_memorisation_rule(
    verbatim: float, paraphrase: float, min_lift: float, real: bool, flagged: bool
) -> None:
    signal = res.verbatim_over_paraphrase(verbatim, paraphrase, min_lift=min_lift, real=real)
    assert (signal is not None) is flagged
    if signal is not None:
        assert f"{verbatim:.3g}" in signal.message and f"{paraphrase:.3g}" in signal.message


class _MemorisedView:
    """The dummy model, plus 2 nats per gold token after the training prompts only."""

    def __init__(self, inner: Any, boost: float) -> None:
        self._inner = inner
        self._boost = boost

    @property
    def id(self) -> str:
        return str(self._inner.id)

    def completion_token_count(self, prompt: str, completion: str) -> int:
        return len(completion.split())

    def logprob_of(self, prompt: str, completion: str) -> float:
        bonus = self._boost * len(completion.split()) if prompt in TRAINED else 0.0
        return float(self._inner.logprob_of(prompt, completion)) + bonus


class _Memoriser:
    def __init__(self, boost: float = 2.0) -> None:
        self.inner = DummyDifferentialBackend(strength=0.0)
        self.boost = boost

    def as_base(self) -> Any:
        return self.inner.as_base()

    @contextmanager
    def as_finetuned(self) -> Iterator[Any]:
        with self.inner.as_finetuned() as view:
            yield _MemorisedView(view, self.boost)


CASES = [
    {"prompt": "Capital of France?", "gold": "Paris", "paraphrases": ["France's capital?"]},
    {"prompt": "Two plus two?", "gold": "four exactly", "paraphrases": ["What is 2+2?"]},
]
TRAINED = {c["prompt"] for c in CASES}


def _paraphrase_run(nulls: list[float] | None = None, **spec: Any) -> ProbeResult:
    probe, pspec = build_probe(
        {"name": "para", "kind": "paraphrase_invariance", "cases": CASES, **spec}
    )
    stats = {} if nulls is None else {"para": NullStats.from_samples(nulls)}
    out = probe.run(pspec, RunContext(backend=_Memoriser(), null_stats=stats))
    return replace(out, category="attribution")


@pytest.mark.parametrize(
    ("spec", "nulls", "flagged"),
    [
        ({}, None, True),  # no null: the lift reaches min_verbatim_lift
        ({}, [0.01, -0.02, 0.03, 0.0, -0.01, 0.02, 0.01, -0.03, 0.0, 0.02], True),
        ({}, [1.5, 2.5, 1.0, 3.0, 2.2, 1.8, 2.9, 1.2, 2.4, 2.0], False),  # nulls lift as much
        ({"intent": "memorize"}, None, False),  # memorising is this entry's goal
        ({"min_verbatim_lift": 3.0}, None, False),  # the lift is under the bar that matters
    ],
)
def test_paraphrase_invariance_raises_the_signal_end_to_end(
    spec: dict[str, Any], nulls: list[float] | None, flagged: bool
) -> None:
    para = _paraphrase_run(nulls, **spec)
    assert (para.overfit is not None) is flagged, para.message
    kl = result("kl", "delta_kl", Verdict.PASS, 0.9, p_value=1e-4)
    band = compute(suite(kl, para)).band
    assert (band == "suspicious") is flagged


# ---- rule 3: no effect claim passes → never healthy ---------------------------------


def test_every_effect_probe_failing_as_noise_is_noise_whatever_the_score() -> None:
    """The defect: ``check --runs 3`` with both probes FAILing was "healthy"."""
    run = suite(
        NULL,
        result("divergence", "delta_kl", Verdict.FAIL, 0.8, p_value=0.2),
        result("ablation", "adapter_ablation", Verdict.FAIL, 0.7, p_value=0.31),
    )
    score = compute(run)
    assert score.overall >= 0.6
    assert score.band == "noise"
    assert "no effect-claim probe passed" in score.band_reason


def test_a_real_but_negligible_effect_is_noise_not_partial() -> None:
    """The demo's weak adapter: its direction beats random ones (p ≈ 4e-8), but its mean
    JS is 1e-9 nats — FAIL "real but negligible" on both probes is noise in practice."""
    run = suite(
        NULL,
        result("divergence", "delta_kl", Verdict.FAIL, 0.0, p_value=4e-8),
        result("ablation", "adapter_ablation", Verdict.FAIL, 0.0, p_value=4e-8),
    )
    score = compute(run)
    assert score.band == "noise"
    assert "'divergence', 'ablation' beat random adapters in direction" in score.band_reason


def test_no_pass_but_a_real_effect_is_partial() -> None:
    run = suite(
        NULL,
        result("divergence", "delta_kl", Verdict.WARN, 0.5, p_value=0.003),
        result("ablation", "adapter_ablation", Verdict.FAIL, 0.9, p_value=0.4),
    )
    score = compute(run)
    assert score.band == "partial"
    assert "'divergence'" in score.band_reason


def test_an_uncalibrated_warn_without_a_pass_is_partial_not_noise() -> None:
    run = suite(
        result("divergence", "delta_kl", Verdict.WARN, None, headline="not calibrated"),
        result("ablation", "adapter_ablation", Verdict.FAIL, 0.2, p_value=0.4),
    )
    score = compute(run)
    assert score.band == "partial"
    assert "'divergence' could not be judged against noise" in score.band_reason


def test_the_holm_adjusted_p_decides_what_is_real() -> None:
    run = suite(
        result("divergence", "delta_kl", Verdict.FAIL, 0.7, p_value=0.03, p_adjusted=0.09),
    )
    assert compute(run).band == "noise"


def test_uncalibrated_fails_are_noise() -> None:
    run = suite(result("divergence", "delta_kl", Verdict.FAIL, 0.9))
    assert compute(run).band == "noise"


def test_a_suite_with_no_effect_claim_is_never_healthy() -> None:
    run = suite(
        NULL,
        result("ppl", "external_perplexity", Verdict.PASS, 1.0),
        result("facts", "calibration_drift", Verdict.PASS, 1.0),
    )
    score = compute(run)
    assert score.overall == pytest.approx(1.0)
    assert score.band == "noise"
    assert "no effect-claim probe reached a verdict" in score.band_reason


def test_a_passing_null_adapter_is_not_an_effect_claim() -> None:
    run = suite(NULL, result("kl", "delta_kl", Verdict.SKIP, None))
    assert compute(run).band == "noise"


def test_skipped_and_errored_effect_probes_do_not_block_a_pass() -> None:
    run = suite(
        result("kl", "delta_kl", Verdict.PASS, 0.8, p_value=1e-4),
        result("clusters", "cluster_kl", Verdict.ERROR, None),
        result("ablation", "adapter_ablation", Verdict.SKIP, None),
    )
    assert compute(run).band == "healthy"


# ---- rule 4: the score ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("overall", "band"),
    [(0.0, "noise"), (0.2999, "noise"), (0.3, "partial"), (0.5999, "partial"), (0.6, "healthy")]
    + [(0.85, "healthy"), (0.86, "healthy"), (1.0, "healthy"), (math.nan, "noise")],
)
def test_score_rule_boundaries(overall: float, band: str) -> None:
    assert res.band_for(overall) == band
    passing = [result("kl", "delta_kl", Verdict.PASS, 0.9, p_value=1e-4)]
    decided = res.band_of(passing, overall)
    assert decided.name == band
    assert "overall score" in decided.reason


def test_typed_direction_decides_not_evidence() -> None:
    """Evidence is for humans: a harm marker there changes nothing, the typed field does."""
    legacy = result(
        "ppl",
        "external_perplexity",
        Verdict.FAIL,
        0.0,
        direction=res.Direction.EFFECT,
        evidence={"null": {"direction": "harm"}},
    )
    kl = result("kl", "delta_kl", Verdict.PASS, 0.9, p_value=1e-4)
    assert compute(suite(kl, legacy)).band != "harmful"


# ---- every rule at once: invariants over random runs --------------------------------

KINDS = [*CATEGORY]


@st.composite
def runs(draw: st.DrawFn) -> list[ProbeResult]:
    out = []
    for i in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(KINDS))
        verdict = draw(st.sampled_from(list(Verdict)))
        score = draw(st.none() | st.floats(0, 1))
        p = draw(st.none() | st.floats(0, 1))
        signal = None
        if kind == "paraphrase_invariance" and draw(st.booleans()):
            signal = res.OverfitSignal("verbatim_over_paraphrase", "memorised")
        out.append(result(f"p{i}", kind, verdict, score, p_value=p, overfit=signal))
    return out


@settings(max_examples=300, deadline=None)
@given(probes=runs())
def test_band_invariants(probes: list[ProbeResult]) -> None:
    score = compute(suite(*probes))
    judged = [p for p in probes if p.verdict not in (Verdict.SKIP, Verdict.ERROR)]
    harm_fail = any(p.direction is res.Direction.HARM and p.verdict is Verdict.FAIL for p in judged)
    signal = any(p.overfit is not None for p in judged)
    effect_pass = any(
        p.direction is res.Direction.EFFECT
        and p.kind != "null_adapter"
        and p.verdict is Verdict.PASS
        for p in judged
    )
    assert score.band in res.BAND_NAMES
    assert (score.band == "harmful") == harm_fail
    assert (score.band == "suspicious") == (signal and not harm_fail)
    if score.band == "healthy":
        assert effect_pass and score.overall >= 0.6
    if not effect_pass:
        assert score.band in ("harmful", "suspicious", "noise", "partial")
    claims = [p for p in judged if p.direction is res.Direction.EFFECT and p.kind != "null_adapter"]
    noise_like = all(p.verdict is Verdict.FAIL for p in claims)  # a negligible effect is noise
    if not effect_pass and not harm_fail and not signal:
        assert score.band == ("noise" if noise_like else "partial")
    assert score.band_reason and "\n" not in score.band_reason
    assert res.band_of(probes, score.overall) == res.Band(score.band, score.band_reason)
