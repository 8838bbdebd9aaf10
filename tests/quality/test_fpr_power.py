"""Quality lane: does sway's verdict keep its promised error rates?

False positives: a null adapter poses as the fine-tune (:class:`NullAsFinetune`)
and the suite judges it against its own K nulls, exactly as it would judge a
real adapter. At a one-sided threshold z ≥ t the PASS rate must not exceed
1 − Φ(t) beyond binomial noise: we allow the exact binomial 99% quantile of the
count. Power: the dummy backend's adapter with a clearly planted signal.

Every study switches the practical floor off (``assert_mean_gte: 0``), so only
the null comparison decides; seeds are fixed, so every count here is
deterministic and a regression in calibration moves it.
"""

from __future__ import annotations

from typing import Any

import pytest

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core.result import Verdict
from dlm_sway.demo.assets import prompts as demo_prompts
from dlm_sway.probes.null_adapter import DEFAULT_RUNS
from dlm_sway.suite.loader import from_dict
from dlm_sway.suite.quality import (
    PROBE,
    Z_05,
    Z_3,
    NullAsFinetune,
    StudyResult,
    binomial_allowance,
    fpr_study,
    nominal_alpha,
    power_study,
    study_spec,
    wilson_interval,
)
from dlm_sway.suite.runner import run

PROMPTS = demo_prompts()[:8]
#: Planted strength the default K must detect at z ≥ 3 (power ≈ 0.7 at 0.2, 1.0 at 0.3).
CLEAR_STRENGTH = 0.3


def _null_dummy() -> DummyDifferentialBackend:
    # planted=0: the dummy's own adapter is a random direction of the trained norm too.
    return DummyDifferentialBackend(planted=0.0)


def _within_nominal(study: StudyResult, z: float) -> None:
    rate = study.at(z)
    allowed = binomial_allowance(rate.trials, nominal_alpha(z))
    assert rate.passes <= allowed, (
        f"{study.config}: {rate.passes}/{rate.trials} nulls PASS at z ≥ {z:.3g} "
        f"(nominal {nominal_alpha(z):.3%}, at most {allowed} expected at the 99% quantile)"
    )


@pytest.fixture(scope="module")
def default_fpr() -> StudyResult:
    """The shipped defaults: norm-matched nulls, t-prediction on log scale, DEFAULT_RUNS."""
    return fpr_study(
        _null_dummy,
        trials=300,
        runs=DEFAULT_RUNS,
        construction="norm_matched",
        method="t_prediction",
        prompts=PROMPTS,
        seed0=0,
    )


def test_default_fpr_at_alpha_05_is_nominal(default_fpr: StudyResult) -> None:
    _within_nominal(default_fpr, Z_05)
    # and not vacuously: a calibrated test does reject about 5% of nulls at z ≥ 1.645
    assert default_fpr.at(Z_05).passes >= 3


def test_default_fpr_at_z3_is_nominal(default_fpr: StudyResult) -> None:
    _within_nominal(default_fpr, Z_3)


def test_reference_mode_passes_random_adapters_of_the_trained_norm() -> None:
    """The reference (fixed-std nulls, (x − mean)/pstdev, 3 nulls) PASSes a random
    direction of the trained size almost always: the motivating failure."""
    study = fpr_study(
        _null_dummy,
        trials=200,
        runs=3,
        construction="init_scale",
        method="reference_z",
        prompts=PROMPTS,
        seed0=0,
    )
    for z in (Z_05, Z_3):
        lo, _ = study.at(z).wilson95
        assert lo > 0.9, f"reference mode FPR at z ≥ {z:.3g}: {study.at(z).rate:.1%}"


def test_reference_statistic_is_overconfident_even_with_a_matching_null() -> None:
    """With an impostor from its own fixed-std null, the reference's (x − m)/pstdev at
    K=3 still rejects far more often than z promises (≈19% at 1.645, ≈10% at 3)."""
    study = fpr_study(
        _null_dummy,
        trials=200,
        runs=3,
        construction="init_scale",
        method="reference_z",
        prompts=PROMPTS,
        seed0=0,
        ft_construction="init_scale",
    )
    for z in (Z_05, Z_3):
        rate = study.at(z)
        assert rate.passes > binomial_allowance(rate.trials, nominal_alpha(z))
        assert rate.wilson95[0] > 2 * nominal_alpha(z)


def test_default_k_detects_a_clearly_planted_effect() -> None:
    (study,) = power_study(
        lambda strength, trial: DummyDifferentialBackend(
            planted=strength, adapter_seed=100 + trial
        ),
        strengths=[CLEAR_STRENGTH],
        trials=100,
        runs=DEFAULT_RUNS,
        prompts=PROMPTS,
        seed0=0,
    )
    assert study.at(Z_3).rate >= 0.9, study.to_dict()


def test_one_run_answers_every_threshold() -> None:
    """PASS at z ≥ 3 read from a run at 1.645 equals the verdict of a run at 3."""
    study = fpr_study(
        lambda: DummyDifferentialBackend(planted=0.0),
        trials=3,
        runs=DEFAULT_RUNS,
        prompts=PROMPTS,
        seed0=5000,
    )
    for i, rec in enumerate(study.records):
        backend = NullAsFinetune(_null_dummy(), ft_seed=rec.seed_base + DEFAULT_RUNS)
        spec = study_spec(
            PROMPTS,
            runs=DEFAULT_RUNS,
            construction="norm_matched",
            method="t_prediction",
            z_threshold=Z_3,
            seed_base=rec.seed_base,
        )
        res = next(p for p in run(from_dict(spec), backend).probes if p.name == PROBE)
        assert res.z_score == pytest.approx(rec.z)
        assert (res.verdict == Verdict.PASS) == study.records[i].passed[1]


def test_null_as_finetune_never_reuses_its_own_seed() -> None:
    backend = NullAsFinetune(_null_dummy(), ft_seed=42)
    with pytest.raises(ValueError, match="seed 42"):
        backend.as_null_adapter(42, construction="norm_matched")
    with backend.as_null_adapter(43, construction="norm_matched") as view:
        assert view.id.startswith("null_norm_matched_43")
    with backend.as_finetuned() as view:
        assert view.id.startswith("null_norm_matched_42")
    assert not hasattr(backend, "as_scaled_adapter")
    assert callable(backend.base_layout_pairs)


def test_null_as_finetune_hides_a_noise_floor_the_inner_lacks() -> None:
    class TwoViews:
        def __init__(self) -> None:
            self._inner = _null_dummy()

        def as_base(self) -> Any:
            return self._inner.as_base()

        def as_finetuned(self) -> Any:
            return self._inner.as_finetuned()

        def as_null_adapter(self, seed: int, **kw: Any) -> Any:
            return self._inner.as_null_adapter(seed, **kw)

    assert not hasattr(NullAsFinetune(TwoViews(), ft_seed=1), "base_layout_pairs")


def test_wilson_interval_brackets_the_rate() -> None:
    assert wilson_interval(0, 100)[0] == 0.0
    lo, hi = wilson_interval(5, 100)
    assert lo < 0.05 < hi
    assert wilson_interval(100, 100)[1] == 1.0


# --------------------------------------------------------------------------- tiny HF model


@pytest.mark.hf
def test_tiny_model_default_fpr_is_nominal(tiny_backend: Any, tiny_prompts: list[str]) -> None:
    """A random LoRA with the trained adapter's per-module norm, posing as the fine-tune,
    PASSes no more often than α = 0.05 allows."""
    study = fpr_study(
        lambda: tiny_backend,
        trials=40,
        runs=DEFAULT_RUNS,
        construction="norm_matched",
        method="t_prediction",
        prompts=tiny_prompts,
        seed0=0,
    )
    _within_nominal(study, Z_05)
    _within_nominal(study, Z_3)


@pytest.mark.hf
def test_tiny_model_reference_mode_fpr_is_far_above_nominal(
    tiny_backend: Any, tiny_prompts: list[str]
) -> None:
    study = fpr_study(
        lambda: tiny_backend,
        trials=40,
        runs=3,
        construction="init_scale",
        method="reference_z",
        prompts=tiny_prompts,
        seed0=0,
    )
    rate = study.at(Z_3)
    assert rate.wilson95[0] > 0.8, f"reference FPR {rate.passes}/{rate.trials}"
    assert min(r.z for r in study.records) > 3.0
