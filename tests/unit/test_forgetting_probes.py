"""calibration_drift and external_perplexity on the dummy backend, plus the packaged data."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.result import Direction, SuiteResult, Verdict
from dlm_sway.data import (
    corpus_sections,
    load_general_corpus_chunks,
    load_general_pack,
    pack_categories,
)
from dlm_sway.probes.base import RunContext, build_probe
from dlm_sway.probes.calibration_drift import (
    CalibrationDriftProbe,
    CalibrationDriftSpec,
    select_items,
)
from dlm_sway.probes.external_perplexity import ExternalPerplexityProbe, ExternalPerplexitySpec

RunSuite = Callable[..., SuiteResult]

NULL5 = {"name": "null", "kind": "null_adapter", "runs": 5}
#: calibration_drift's null is drawn only on request (``null_on_request``).
NULL5_CD = {**NULL5, "calibrate_kinds": ["calibration_drift"]}


def cd(name: str = "cd", **kw: Any) -> dict[str, Any]:
    return {"name": name, "kind": "calibration_drift", **kw}


def dk(name: str = "dk") -> dict[str, Any]:
    return {"name": name, "kind": "delta_kl", "prompts": ["The capital of France is", "Hello"]}


def ep(name: str = "ep", **kw: Any) -> dict[str, Any]:
    return {"name": name, "kind": "external_perplexity", **kw}


def _deltas(backend: DummyDifferentialBackend, pairs: list[tuple[str, str]]) -> list[float]:
    with backend.as_base() as view:
        base = [view.logprob_of(p, g) / len(g.split()) for p, g in pairs]
    with backend.as_finetuned() as view:
        ft = [view.logprob_of(p, g) / len(g.split()) for p, g in pairs]
    return [f - b for f, b in zip(ft, base, strict=True)]


# --------------------------------------------------------------------------- packaged data


class TestPackagedData:
    def test_pack_integrity(self) -> None:
        items = load_general_pack()
        ids = [it.id for it in items]
        assert len(ids) >= 220
        assert len(set(ids)) == len(ids)
        assert all(it.gold.strip() and it.prompt.strip() for it in items)
        counts = Counter(it.category for it in items)
        assert sum(1 for n in counts.values() if n >= 15) >= 8
        assert len({(it.prompt, it.gold) for it in items}) == len(items)

    def test_corpus_size_and_topics(self) -> None:
        sections = corpus_sections()
        assert len(sections) >= 10
        words = sum(len(p.split()) for _, paras in sections for p in paras)
        assert words >= 3000

    def test_chunks_respect_size_and_spread_over_topics(self) -> None:
        chunks = load_general_corpus_chunks(8, 600)
        assert len(chunks) == 8
        assert all(64 <= len(c) <= 600 for c in chunks)
        firsts = [paras[0][:40] for _, paras in corpus_sections()]
        assert [c[:40] for c in chunks] == firsts[:8]  # one chunk per topic first
        assert load_general_corpus_chunks(8, 600) == chunks

    def test_chunk_arguments_are_checked(self) -> None:
        with pytest.raises(ValueError, match="n must be"):
            load_general_corpus_chunks(0, 600)
        with pytest.raises(ValueError, match="max_chars"):
            load_general_corpus_chunks(4, 10)


# --------------------------------------------------------------------------- calibration_drift


class TestCalibrationDrift:
    def test_maths_pins_fraction_and_mean_delta(self, run_suite: RunSuite) -> None:
        be = DummyDifferentialBackend()
        spec = CalibrationDriftSpec(name="cd", items_limit=30)
        items = select_items(spec, 0)
        deltas = _deltas(DummyDifferentialBackend(), [(it.prompt, it.gold) for it in items])
        res = run_suite(cd(items_limit=30), backend=be).by_name("cd")
        expected_frac = float(np.mean([d < -1.0 for d in deltas]))
        assert res.raw == pytest.approx(expected_frac)
        assert res.ft_value == pytest.approx(float(np.mean(deltas)))
        assert res.evidence["total_items"] == 30
        assert res.evidence["regressed_count"] == round(expected_frac * 30)
        assert 0.0 < expected_frac < 1.0  # the pin is not trivially 0 or 1

    def test_fixed_thresholds_without_null(self, run_suite: RunSuite) -> None:
        res = run_suite(cd()).by_name("cd")
        assert res.z_score is None and res.null is None
        assert res.direction is Direction.HARM
        frac, mean = res.raw, res.ft_value
        assert frac is not None and mean is not None
        ok = frac < 0.15 and mean >= -0.5
        assert res.verdict == (Verdict.PASS if ok else Verdict.FAIL)
        assert "no null calibration for calibration_drift: fixed thresholds" in res.message
        assert "assert_fraction_regressed_lt" in res.message

    def test_noop_adapter_passes(self, run_suite: RunSuite) -> None:
        res = run_suite(cd(), backend=DummyDifferentialBackend(strength=0.0)).by_name("cd")
        assert res.verdict == Verdict.PASS
        assert res.raw == 0.0 and res.ft_value == pytest.approx(0.0)
        assert res.score == pytest.approx(1.0)

    def test_selection_is_stratified_and_seeded(self) -> None:
        spec = CalibrationDriftSpec(name="cd", items_limit=24)
        a, b, c = select_items(spec, 0), select_items(spec, 0), select_items(spec, 1)
        assert [i.id for i in a] == [i.id for i in b]
        assert [i.id for i in a] != [i.id for i in c]
        assert set(Counter(i.category for i in a).values()) == {2}  # 12 categories × 2

    def test_category_filter(self, run_suite: RunSuite) -> None:
        res = run_suite(cd(categories=["geography", "history"], items_limit=None)).by_name("cd")
        per_cat = res.evidence["per_category"]
        assert set(per_cat) == {"geography", "history"}
        n = sum(1 for it in load_general_pack() if it.category in {"geography", "history"})
        assert res.evidence["total_items"] == n

    def test_extra_items_are_scored_in_full(self, run_suite: RunSuite) -> None:
        extra = [
            {"prompt": "The lighthouse keeper's cat is named", "gold": " Biscuit"},
            {"prompt": "Our team meets every", "gold": " Tuesday", "category": "team"},
        ]
        res = run_suite(cd(items_limit=5, extra_items=extra)).by_name("cd")
        assert res.evidence["total_items"] == 7
        assert {"user", "team"} <= set(res.evidence["per_category"])

    def test_only_extra_items(self, run_suite: RunSuite) -> None:
        extra = [{"prompt": f"Item number {i} is", "gold": f" x{i}"} for i in range(4)]
        res = run_suite(cd(pack="none", extra_items=extra)).by_name("cd")
        assert res.evidence["total_items"] == 4
        assert set(res.evidence["per_category"]) == {"user"}

    def test_empty_selection_is_a_clear_spec_error(self) -> None:
        with pytest.raises(SpecValidationError, match="no items"):
            build_probe(cd(pack="none"))
        with pytest.raises(SpecValidationError, match="match no item; known categories"):
            build_probe(cd(categories=["astrology"]))
        with pytest.raises(SpecValidationError, match="empty list"):
            build_probe(cd(categories=[]))
        with pytest.raises(SpecValidationError, match="extra_items"):
            build_probe(cd(extra_items=[{"prompt": "x", "gold": "  "}]))

    def test_skips_without_backend(self) -> None:
        spec = CalibrationDriftSpec(name="cd")
        res = CalibrationDriftProbe().run(spec, RunContext(backend=None))
        assert res.verdict == Verdict.SKIP

    def test_nan_adapter_is_an_error_never_a_pass(self) -> None:
        # Called directly: the runner's preflight would stop a NaN adapter before any probe.
        ctx = RunContext(backend=DummyDifferentialBackend(nan=True))
        res = CalibrationDriftProbe().run(CalibrationDriftSpec(name="cd"), ctx)
        assert res.verdict == Verdict.ERROR
        assert res.raw is None

    def test_evidence_worst_items_and_ci(self, run_suite: RunSuite) -> None:
        res = run_suite(cd(), backend=DummyDifferentialBackend(strength=1.5)).by_name("cd")
        worst = res.evidence["worst_items"]
        assert 0 < len(worst) <= 10
        ds = [w["delta"] for w in worst]
        assert ds == sorted(ds) and all(d < -1.0 for d in ds)
        assert res.ci_95 is not None and res.ci_95[0] <= (res.raw or 0) <= res.ci_95[1]

    def test_calibrated_forgetting_adapter_fails(self, run_suite: RunSuite) -> None:
        # K=10 (the default): with 5 nulls, harm z ≥ 3 holds for only some null-seed families
        res = run_suite({**NULL5_CD, "runs": 10}, cd()).by_name("cd")
        assert res.null is not None and res.null.k == 10
        assert res.direction is Direction.HARM  # Holm must not demote a "no harm" PASS
        # z and p are those of the harm claim: more forgetting than the nulls is positive
        assert res.z_score is not None and res.p_value is not None
        assert res.z_score >= 3.0 and res.p_value < 0.01
        assert res.verdict == Verdict.FAIL and res.score == 0.0
        assert res.headline == "forgets more than random adapters"
        assert res.message.startswith("forgets more than random adapters")

    def test_default_null_leaves_it_to_fixed_thresholds_without_scoring_it(
        self, run_suite: RunSuite
    ) -> None:
        """Its null is degenerate for trained sizes, so K passes over its items are skipped
        unless asked for; the message and the null_adapter's evidence say so."""
        plain = DummyDifferentialBackend(strength=1.5)
        asked = DummyDifferentialBackend(strength=1.5)
        suite = run_suite(NULL5, dk(), cd(), backend=plain)
        res = suite.by_name("cd")
        assert res.null is None and res.z_score is None
        assert "nulls only when calibrate_kinds names it" in res.message
        skipped = suite.by_name("null").evidence["skipped_kinds"]
        assert [s["name"] for s in skipped] == ["cd"]
        assert skipped[0]["reason"].startswith("calibrated only when calibrate_kinds names it")
        named = {**NULL5, "calibrate_kinds": ["delta_kl", "calibration_drift"]}
        assert run_suite(named, dk(), cd(), backend=asked).by_name("cd").null is not None
        # 5 nulls x the items: what the default saves
        assert asked.stats.forward_passes > plain.stats.forward_passes

    def test_null_before_only_an_on_request_probe_says_how_to_ask(
        self, run_suite: RunSuite
    ) -> None:
        with pytest.raises(SpecValidationError, match="name calibration_drift in calibrate_kinds"):
            run_suite(NULL5, cd())

    def test_null_in_disguise_is_not_failed(self, run_suite: RunSuite) -> None:
        be = DummyDifferentialBackend(planted=0.0)
        res = run_suite(NULL5_CD, cd(), backend=be).by_name("cd")
        assert res.null is not None and res.z_score is not None and res.z_score < 3.0
        assert res.verdict in (Verdict.PASS, Verdict.WARN)

    def test_nulls_score_the_entrys_items(self) -> None:
        target = CalibrationDriftSpec(name="cd", items_limit=12)
        calib = CalibrationDriftProbe.calibrate_spec(RunContext(backend=None, seed=3), target)
        assert isinstance(calib, CalibrationDriftSpec)
        assert calib.selection_seed == 3 and calib.items_limit == 12
        ids = [i.id for i in select_items(calib, 999)]
        assert ids == [i.id for i in select_items(target, 3)]

    def test_registered_in_the_calibration_category(self) -> None:
        from dlm_sway.probes.base import registry

        assert registry()["calibration_drift"] is CalibrationDriftProbe
        assert registry()["external_perplexity"] is ExternalPerplexityProbe
        assert CalibrationDriftProbe.category == ExternalPerplexityProbe.category == "calibration"


# --------------------------------------------------------------------------- external_perplexity


class TestExternalPerplexity:
    def test_maths_pins_mean_delta(self, run_suite: RunSuite) -> None:
        be = DummyDifferentialBackend()
        texts = load_general_corpus_chunks(3, 300)
        ref = DummyDifferentialBackend()
        with ref.as_base() as view:
            base = [view.rolling_logprob(t) for t in texts]
        with ref.as_finetuned() as view:
            ft = [view.rolling_logprob(t) for t in texts]
        deltas = [f.mean_logprob - b.mean_logprob for b, f in zip(base, ft, strict=True)]
        res = run_suite(ep(chunks=3, chunk_chars=300), backend=be).by_name("ep")
        assert res.raw == pytest.approx(float(np.mean(deltas)))
        assert res.evidence["per_chunk_delta"] == pytest.approx(deltas)
        n = sum(b.logprobs.shape[0] for b in base)
        assert res.base_value == pytest.approx(sum(b.total_logprob for b in base) / n)
        assert res.ft_value == pytest.approx(sum(f.total_logprob for f in ft) / n)
        assert res.ci_95 is not None and res.ci_95[0] <= (res.raw or 0) <= res.ci_95[1]

    def test_noop_adapter_passes_with_zero_delta(self, run_suite: RunSuite) -> None:
        res = run_suite(ep(), backend=DummyDifferentialBackend(strength=0.0)).by_name("ep")
        assert res.verdict == Verdict.PASS
        assert res.raw == pytest.approx(0.0)
        assert res.score == pytest.approx(1.0)

    def test_fixed_threshold_without_null(self, run_suite: RunSuite) -> None:
        res = run_suite(ep()).by_name("ep")
        assert res.raw is not None and res.z_score is None
        assert res.verdict == (Verdict.PASS if res.raw >= -0.1 else Verdict.FAIL)

    def test_calibrated_path(self, run_suite: RunSuite) -> None:
        res = run_suite(NULL5, ep(), backend=DummyDifferentialBackend(strength=1.0)).by_name("ep")
        assert res.null is not None and res.null.k == 5 and not res.null.non_negative
        assert res.direction is Direction.HARM
        assert res.z_score is not None and res.z_score >= 3.0  # harm z
        assert res.verdict == Verdict.FAIL and res.score == 0.0
        assert res.effect_ratio is None and "×" not in res.message  # δ is signed
        assert "null SDs from the null mean" in res.message

    def test_nulls_score_the_same_chunks(self) -> None:
        target = ExternalPerplexitySpec(name="ep", chunks=6, chunk_chars=500)
        assert ExternalPerplexityProbe.calibrate_spec(RunContext(backend=None), target) is target

    def test_nan_adapter_is_an_error(self) -> None:
        ctx = RunContext(backend=DummyDifferentialBackend(nan=True))
        res = ExternalPerplexityProbe().run(ExternalPerplexitySpec(name="ep"), ctx)
        assert res.raw is None
        assert res.verdict == Verdict.ERROR

    def test_skips_without_backend(self) -> None:
        spec = ExternalPerplexitySpec(name="ep")
        assert ExternalPerplexityProbe().run(spec, RunContext(backend=None)).verdict == Verdict.SKIP

    def test_spec_bounds(self) -> None:
        with pytest.raises(SpecValidationError, match="chunk_chars"):
            build_probe(ep(chunk_chars=10))
        with pytest.raises(SpecValidationError, match="unknown key"):
            build_probe(ep(max_chunks=4))


def test_pack_categories_are_the_pack_order() -> None:
    cats = pack_categories()
    assert cats[0] == load_general_pack()[0].category
    assert len(cats) == len(set(cats))
