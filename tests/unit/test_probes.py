"""delta_kl, adapter_ablation and null_adapter on the dummy backend, through the runner."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core.divergence import divergence
from dlm_sway.core.errors import ProbeError, SwayError
from dlm_sway.core.result import ProbeResult, SuiteResult, Verdict
from dlm_sway.core.stats import NullStats
from dlm_sway.probes import base
from dlm_sway.probes._null_proxy import NullCalibrationBackendProxy
from dlm_sway.probes.adapter_ablation import overshoot, saturation_lambda
from dlm_sway.probes.base import Probe, ProbeSpec, RunContext
from dlm_sway.probes.delta_kl import DeltaKLProbe, DeltaKLSpec

RunSuite = Callable[..., SuiteResult]

NULL3 = {"name": "null", "kind": "null_adapter", "runs": 3}

# Test-only probe kinds (registered for this module only, see the fixture below).
CALIB_SWAY_ERR = "_test_probes_calib_sway_error"
CALIB_TYPE_ERR = "_test_probes_calib_type_error"
NULL_RUN_FAILS = "_test_probes_null_run_fails"
NULL_RUN_CRASHES = "_test_probes_null_run_crashes"


def dkl(name: str = "dkl", prompts: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    return {"name": name, "kind": "delta_kl", "prompts": prompts or _prompts(), **kw}


def abl(name: str = "abl", prompts: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    return {"name": name, "kind": "adapter_ablation", "prompts": prompts or _prompts(), **kw}


def _prompts() -> list[str]:
    return ["The quick brown fox", "Alpha beta gamma delta", "Hello world", "Once upon a time"]


def _fixed(name: str, spec: ProbeSpec, raw: float = 0.5) -> ProbeResult:
    return ProbeResult(name=name, kind=spec.kind, verdict=Verdict.PASS, raw=raw, score=0.5)


@pytest.fixture(scope="module", autouse=True)
def test_probe_kinds() -> Iterator[None]:
    class _CalibSwayError(Probe):
        kind = CALIB_SWAY_ERR
        spec_cls = ProbeSpec

        def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
            return _fixed(spec.name, spec)

        @classmethod
        def calibrate_spec(cls, ctx: RunContext, target: ProbeSpec | None = None) -> ProbeSpec:
            raise SwayError("cannot build a null spec without a document")

    class _CalibTypeError(_CalibSwayError):
        kind = CALIB_TYPE_ERR

        @classmethod
        def calibrate_spec(cls, ctx: RunContext, target: ProbeSpec | None = None) -> ProbeSpec:
            raise TypeError("plugin bug")

    class _NullRunFails(Probe):
        kind = NULL_RUN_FAILS
        spec_cls = ProbeSpec

        def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
            if isinstance(ctx.backend, NullCalibrationBackendProxy):
                raise ProbeError(spec.name, "needs a tokenizer the proxy does not expose")
            return _fixed(spec.name, spec)

        @classmethod
        def calibrate_spec(cls, ctx: RunContext, target: ProbeSpec | None = None) -> ProbeSpec:
            assert target is not None
            return target

    class _NullRunCrashes(_NullRunFails):
        kind = NULL_RUN_CRASHES

        def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
            if isinstance(ctx.backend, NullCalibrationBackendProxy):
                raise KeyError("missing key in a third-party probe")
            return _fixed(spec.name, spec)

    yield
    for kind in (CALIB_SWAY_ERR, CALIB_TYPE_ERR, NULL_RUN_FAILS, NULL_RUN_CRASHES):
        base._REGISTRY.pop(kind, None)


# --- delta_kl ---------------------------------------------------------------------------------


class TestDeltaKL:
    def test_trained_adapter_passes_against_nulls(self, run_suite: RunSuite) -> None:
        r = run_suite(NULL3, dkl()).by_name("dkl")
        assert r.verdict is Verdict.PASS
        assert r.z_score is not None and r.z_score >= 3.0
        assert r.effect_ratio is not None and r.effect_ratio > 1.0
        assert r.score is not None and r.score > 0.5
        assert "above noise" in r.message

    def test_noop_adapter_fails_as_noise(self, run_suite: RunSuite) -> None:
        r = run_suite(NULL3, dkl(), backend=DummyDifferentialBackend(strength=0.0)).by_name("dkl")
        assert r.verdict is Verdict.FAIL
        assert r.raw == pytest.approx(0.0, abs=1e-9)
        # norm-matched nulls of a zero-norm adapter are zero too: no usable null,
        # and the message says plainly that nothing changed
        assert r.z_score is None
        assert r.score is not None and r.score < 0.5
        assert "indistinguishable from noise" in r.message
        assert "changes nothing" in r.message

    def test_without_null_adapter_uses_fixed_threshold(self, run_suite: RunSuite) -> None:
        strong = run_suite(dkl()).by_name("dkl")
        assert strong.verdict is Verdict.PASS
        assert strong.z_score is None and strong.effect_ratio is None and strong.null is None
        assert strong.headline == "above threshold"
        assert "no null calibration for delta_kl: fixed thresholds" in strong.message
        noop = run_suite(dkl(), backend=DummyDifferentialBackend(strength=0.0)).by_name("dkl")
        assert noop.verdict is Verdict.FAIL
        assert "changes nothing" in noop.message
        high_bar = run_suite(dkl(assert_mean_gte=0.5)).by_name("dkl")
        assert high_bar.verdict is Verdict.FAIL and high_bar.headline == "below threshold"
        assert "(threshold 0.5, assert_mean_gte)" in high_bar.message  # names the field
        assert high_bar.score is not None and high_bar.score <= 0.25

    def test_ci_contains_raw(self, run_suite: RunSuite) -> None:
        r = run_suite(NULL3, dkl()).by_name("dkl")
        assert r.ci_95 is not None and r.raw is not None
        lo, hi = r.ci_95
        assert lo <= r.raw <= hi and lo < hi

    def test_evidence(self, run_suite: RunSuite) -> None:
        r = run_suite(NULL3, dkl(top_k=32, weight=2.0)).by_name("dkl")
        ev = r.evidence
        assert ev["divergence_kind"] == "js"
        assert len(ev["per_prompt"]) == ev["num_prompts"] == 4
        assert float(np.mean(ev["per_prompt"])) == pytest.approx(r.raw)
        assert ev["max"] == pytest.approx(max(ev["per_prompt"]))
        assert ev["top_k"] == 32
        # decisions and their numbers are typed fields, never evidence keys
        assert not {"weight", "null", "headline", "z_by_rank"} & set(ev)
        assert r.weight == 2.0 and r.category == "adherence"
        assert r.null is not None and r.null.k == 3 and r.null.construction == "norm_matched"
        assert r.null.method == "t_prediction" and r.null.log_scale is True
        assert r.null.non_negative is True and r.null.z_threshold == 3.0
        assert r.message.startswith(f"{r.headline}: {r.measured}")
        assert r.measured == "mean JS " + f"{r.raw:.4g}" + " nats over 4 prompt(s)"

    def test_top_k_defaults_to_suite_default(self, run_suite: RunSuite) -> None:
        assert run_suite(dkl(), top_k=16).by_name("dkl").evidence["top_k"] == 16

    def test_kl_mode_is_kl_of_ft_given_base(self, run_suite: RunSuite) -> None:
        prompts = _prompts()
        r = run_suite(dkl(divergence="kl", top_k=64)).by_name("dkl")
        be = DummyDifferentialBackend()
        with be.as_base() as v:
            b = [v.next_token_dist(p, top_k=64) for p in prompts]
        with be.as_finetuned() as v:
            f = [v.next_token_dist(p, top_k=64) for p in prompts]
        expected = np.mean([divergence(x, y, "kl") for x, y in zip(b, f, strict=True)])
        reverse = np.mean([divergence(y, x, "kl") for x, y in zip(b, f, strict=True)])
        assert r.raw == pytest.approx(float(expected))
        assert r.raw != pytest.approx(float(reverse), rel=1e-3)
        assert "KL(ft‖base)" in r.message and "KL(ft‖base)" in r.measured
        assert r.evidence["divergence_kind"] == "kl"

    def test_kl_mode_calibrates_too(self, run_suite: RunSuite) -> None:
        r = run_suite(NULL3, dkl(divergence="kl")).by_name("dkl")
        assert r.verdict is Verdict.PASS and r.z_score is not None and r.z_score >= 3

    def test_calibration_spec_is_the_entry_itself(self) -> None:
        spec = DeltaKLSpec(name="x", prompts=["a b"], top_k=8)
        assert DeltaKLProbe.calibrate_spec(RunContext(backend=None), spec) == spec


# --- adapter_ablation -------------------------------------------------------------------------


class TestAdapterAblation:
    def test_trained_adapter_passes_with_calibration(self, run_suite: RunSuite) -> None:
        r = run_suite(NULL3, abl()).by_name("abl")
        assert r.verdict is Verdict.PASS, r.message
        assert r.z_score is not None and r.z_score >= 3 and r.headline == "above noise"
        ev = r.evidence
        assert ev["linearity"] >= 0.85 and 0.3 <= ev["saturation_lambda"] <= 1.05
        assert ev["overshoot"] >= 1.02
        curve = ev["mean_divergence_per_lambda"]
        assert curve[0] == 0.0 and curve == sorted(curve)
        assert ev["lambdas"] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
        # raw is the calibrated quantity: the effect at λ=1, on the nulls' scale
        assert r.raw == curve[4] and r.null is not None and r.null.log_scale
        assert f"R²={ev['linearity']:.3f}" in r.measured
        assert not {"weight", "null", "headline", "passed_effect_vs_null"} & set(ev)

    def test_failed_shape_check_fails_and_names_the_field(self, run_suite: RunSuite) -> None:
        # a linear curve can never reach R² ≥ 1 exactly on the dummy: linearity fails
        r = run_suite(NULL3, abl(assert_linearity_gte=1.0)).by_name("abl")
        assert r.verdict is Verdict.FAIL
        assert r.headline == "above noise, but a fixed check failed"
        assert "(assert_linearity_gte)" in r.message and "R²=" in r.message
        assert r.score == 0.25
        band = run_suite(NULL3, abl(assert_saturation_between=[0.25, 0.5])).by_name("abl")
        assert band.verdict is Verdict.FAIL and "(assert_saturation_between)" in band.message
        over = run_suite(NULL3, abl(assert_overshoot_gte=5.0)).by_name("abl")
        assert over.verdict is Verdict.FAIL and "(assert_overshoot_gte)" in over.message

    def test_effect_at_one_matches_delta_kl(self, run_suite: RunSuite) -> None:
        res = run_suite(NULL3, abl(), dkl())
        assert res.by_name("abl").raw == pytest.approx(res.by_name("dkl").raw)
        assert res.by_name("abl").z_score == pytest.approx(res.by_name("dkl").z_score)

    def test_noop_adapter_fails_as_noise(self, run_suite: RunSuite) -> None:
        be = DummyDifferentialBackend(strength=0.0)
        r = run_suite(NULL3, abl(), backend=be).by_name("abl")
        assert r.verdict is Verdict.FAIL
        assert "indistinguishable from noise" in r.message
        assert r.raw == 0.0 and r.score == 0.0

    def test_noop_adapter_fails_without_calibration(self, run_suite: RunSuite) -> None:
        r = run_suite(abl(), backend=DummyDifferentialBackend(strength=0.0)).by_name("abl")
        assert r.verdict is Verdict.FAIL
        assert r.evidence["saturation_reason"] == "flat_curve"
        assert "changes nothing" in r.message

    def test_skips_without_scaling(self, run_suite: RunSuite, two_view_backend: Any) -> None:
        r = run_suite(abl(), dkl(), backend=two_view_backend)
        assert r.by_name("abl").verdict is Verdict.SKIP
        assert "LoRA-scale" in r.by_name("abl").message
        assert r.by_name("dkl").verdict is Verdict.PASS  # the rest of the suite still runs

    def test_grid_ending_at_one_does_not_fail_on_unmeasured_overshoot(
        self, run_suite: RunSuite
    ) -> None:
        r = run_suite(NULL3, abl(lambdas=[0.0, 0.25, 0.5, 0.75, 1.0])).by_name("abl")
        assert r.evidence["overshoot"] is None and "overshoot not measured" in r.measured
        assert r.verdict is Verdict.PASS, r.message

    def test_grid_without_zero_is_calibrated_at_one(self, run_suite: RunSuite) -> None:
        # λ=0 and λ=1 are measured whatever the grid (issue 7, item 5): the effect is judged.
        r = run_suite(NULL3, abl(lambdas=[0.25, 0.5, 1.0, 1.5]))
        default = run_suite(NULL3, abl()).by_name("abl")
        assert r.by_name("abl").z_score == pytest.approx(default.z_score)
        assert r.by_name("abl").evidence["lambdas"] == [0.0, 0.25, 0.5, 1.0, 1.5]
        assert r.by_name("null").evidence["skipped_kinds"] == []


class TestAblationHelpers:
    def test_saturation_flat_curve(self) -> None:
        assert saturation_lambda([0, 0.5, 1], [0.0, 0.0, 0.0]) == (None, "flat_curve")
        assert saturation_lambda([0, 0.5, 1], [0.0, 0.3, math.nan]) == (None, "flat_curve")

    def test_saturation_linear_is_at_one(self) -> None:
        lams = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
        assert saturation_lambda(lams, [x * 0.1 for x in lams]) == (1.0, "found")

    def test_saturation_early(self) -> None:
        assert saturation_lambda([0, 0.25, 0.5, 1.0], [0, 0.95, 0.97, 1.0]) == (0.25, "found")

    def test_saturation_non_monotone(self) -> None:
        lam, reason = saturation_lambda([0, 0.25, 0.5, 1.0], [0.0, 0.8, 0.5, 1.0])
        assert (lam, reason) == (1.0, "non_monotonic")

    def test_saturation_without_lambda_one_uses_the_maximum(self) -> None:
        assert saturation_lambda([0, 0.5, 2.0], [0.0, 0.5, 1.0]) == (2.0, "found")
        assert saturation_lambda([0, 0.5, 2.0], [0.0, 0.95, 1.0]) == (0.5, "found")

    def test_overshoot(self) -> None:
        assert overshoot([0, 1, 1.5], [0.0, 0.2, 0.3]) == pytest.approx(1.5)
        assert overshoot([0, 1, 1.5], [0.0, 0.2, 0.1]) == pytest.approx(0.5)  # collapse

    @pytest.mark.parametrize(
        ("lams", "ds"),
        [
            ([0, 0.5, 2.0], [0.0, 0.1, 0.3]),  # no λ=1
            ([0, 0.5, 1.0], [0.0, 0.1, 0.3]),  # λ=1 is the largest
            ([0, 1.0, 2.0], [0.0, 0.0, 0.3]),  # nothing at λ=1
        ],
    )
    def test_overshoot_undefined_is_one(self, lams: list[float], ds: list[float]) -> None:
        assert overshoot(lams, ds) == 1.0


# --- null_adapter -----------------------------------------------------------------------------


class TestNullAdapter:
    def test_rank_multipliers_give_z_by_rank(self, run_suite: RunSuite) -> None:
        res = run_suite({**NULL3, "rank_multipliers": [2.0, 0.5, 1.0]}, dkl())
        null = res.by_name("null")
        assert null.calibration is not None
        assert set(null.calibration.by_rank) == {"rank_0.50", "rank_1.00", "rank_2.00"}
        assert "0.5x, 1x, 2x" in null.message
        r = res.by_name("dkl")
        assert r.null is not None
        zr = r.null.z_by_rank
        assert zr["rank_0.50"] > zr["rank_1.00"] > zr["rank_2.00"]
        assert zr["rank_1.00"] == pytest.approx(r.z_score)  # the primary group is 1x

    def test_single_multiplier_has_no_rank_profile(self, run_suite: RunSuite) -> None:
        res = run_suite(NULL3, dkl())
        cal = res.by_name("null").calibration
        assert cal is not None and set(cal.by_rank) == {"rank_1.00"}
        dkl_null = res.by_name("dkl").null
        assert dkl_null is not None and dict(dkl_null.z_by_rank) == {}

    def test_one_run_is_a_load_error(self, make_suite: Callable[..., Any]) -> None:
        # One null has no spread: it could never calibrate anything.
        with pytest.raises(
            SwayError, match=r"suite\[0\] \(null\): runs: .*greater than or equal to 2"
        ):
            make_suite({**NULL3, "runs": 1}, dkl())

    def test_degenerate_null_falls_back(self) -> None:
        one = NullStats.from_samples([0.01], construction="norm_matched")
        assert one.degenerate
        ctx = RunContext(backend=DummyDifferentialBackend(), null_stats={"dkl": one})
        r = DeltaKLProbe().run(DeltaKLSpec(name="dkl", prompts=_prompts()), ctx)
        assert r.z_score is None
        assert "null unusable (only 1 null sample" in r.message

    def test_nothing_to_calibrate_is_a_load_error(self, make_suite: Callable[..., Any]) -> None:
        with pytest.raises(SwayError, match=r"suite\[1\] \(null\): nothing to calibrate"):
            make_suite(dkl("before"), NULL3)

    def test_disabled_entries_are_not_calibrated(self, make_suite: Callable[..., Any]) -> None:
        with pytest.raises(SwayError) as info:
            make_suite(NULL3, dkl(enabled=False))
        assert "nothing to calibrate: no enabled probe follows it" in str(info.value)
        assert "no probe would give a verdict" in str(info.value)

    def test_backend_without_null_views_skips(
        self, run_suite: RunSuite, two_view_backend: Any
    ) -> None:
        res = run_suite(NULL3, dkl(), backend=two_view_backend)
        assert res.by_name("null").verdict is Verdict.SKIP
        assert res.by_name("dkl").z_score is None
        assert "no null calibration for delta_kl" in res.by_name("dkl").message

    def test_calibrate_kinds_restricts(self, run_suite: RunSuite) -> None:
        res = run_suite({**NULL3, "calibrate_kinds": ["adapter_ablation"]}, dkl(), abl())
        assert res.by_name("null").evidence["calibrated"] == ["abl"]
        assert set(res.null_stats) == {"abl"}
        assert res.by_name("abl").z_score is not None
        assert res.by_name("dkl").z_score is None

    def test_each_entry_is_calibrated_on_its_own_prompts(self, run_suite: RunSuite) -> None:
        res = run_suite(NULL3, dkl("one", _prompts()[:1]), dkl("all", _prompts()))
        cal = res.by_name("null").calibration
        assert cal is not None and set(cal.stats) == {"one", "all"}
        assert cal.stats["one"].mean != pytest.approx(cal.stats["all"].mean)

    def test_null_samples_are_deterministic(self, run_suite: RunSuite) -> None:
        def stats(null: dict[str, Any]) -> Any:
            cal = run_suite(null, dkl()).by_name("null").calibration
            assert cal is not None
            return cal.stats

        a, b = stats(NULL3), stats(NULL3)
        assert a == b
        c = stats({**NULL3, "seed_base": 7})
        assert c["dkl"].samples != a["dkl"].samples

    def test_raising_calibration_is_listed_in_skipped_kinds(self, run_suite: RunSuite) -> None:
        res = run_suite(NULL3, {"name": "odd", "kind": CALIB_SWAY_ERR}, dkl())
        null = res.by_name("null")
        assert null.verdict is Verdict.PASS
        (entry,) = null.evidence["skipped_kinds"]
        assert entry["name"] == "odd" and entry["kind"] == CALIB_SWAY_ERR
        assert "without a document" in entry["reason"]
        assert null.evidence["calibrated"] == ["dkl"]
        assert res.by_name("dkl").z_score is not None

    def test_probe_failing_under_every_null_is_listed(self, run_suite: RunSuite) -> None:
        res = run_suite(NULL3, {"name": "tok", "kind": NULL_RUN_FAILS}, dkl())
        null = res.by_name("null")
        assert null.evidence["calibrated"] == ["dkl"]
        reasons = {s["name"]: s["reason"] for s in null.evidence["skipped_kinds"]}
        assert "tokenizer" in reasons["tok"]
        assert "not calibrated" in null.message

    def test_non_sway_calibration_error_is_listed_not_fatal(self, run_suite: RunSuite) -> None:
        res = run_suite(NULL3, {"name": "plugin", "kind": CALIB_TYPE_ERR}, dkl())
        assert res.by_name("null").verdict is Verdict.PASS
        assert res.by_name("dkl").z_score is not None

    def test_non_sway_error_under_null_is_recorded_not_fatal(self, run_suite: RunSuite) -> None:
        res = run_suite(NULL3, {"name": "plugin", "kind": NULL_RUN_CRASHES}, dkl())
        assert res.by_name("null").verdict is Verdict.PASS
        assert res.by_name("dkl").z_score is not None

    def test_uncalibrated_entry_never_borrows_another_entrys_null(
        self, run_suite: RunSuite
    ) -> None:
        res = run_suite(
            {**NULL3, "calibrate_kinds": ["adapter_ablation"]},
            abl("delta_kl", _prompts()[:2]),  # an ablation entry that happens to be named delta_kl
            dkl("dkl"),
        )
        assert res.by_name("dkl").z_score is None
